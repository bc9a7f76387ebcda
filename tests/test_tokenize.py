"""`encode_prompt_completion` tokenises exactly as TRL's SFTTrainer prepares training rows."""

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from tirl.data import load_rows, to_trl
from tirl.data.tokenize import encode_prompt_completion


def trl_prepared(model, tok, rows, tmp_path):
    cfg = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, max_length=None)
    return SFTTrainer(model, cfg, train_dataset=Dataset.from_list(rows), processing_class=tok).train_dataset


def test_matches_trl_conversational(tiny, tmp_path):
    model, tok = tiny
    rows = to_trl(load_rows("arithmetic", limit=5), tok)
    prepared = trl_prepared(model, tok, rows, tmp_path)
    for row, ref in zip(rows, prepared, strict=True):
        ours = encode_prompt_completion(tok, row["prompt"], row["completion"])
        assert ours["input_ids"] == ref["input_ids"] and ours["labels"] == ref["labels"]


def test_matches_trl_plain_text(tiny, tmp_path):
    model, tok = tiny
    tok.chat_template = None
    rows = to_trl(load_rows("arithmetic", limit=5), tok)
    assert isinstance(rows[0]["prompt"], str)
    prepared = trl_prepared(model, tok, rows, tmp_path)
    for row, ref in zip(rows, prepared, strict=True):
        ours = encode_prompt_completion(tok, row["prompt"], row["completion"])
        assert ours["input_ids"] == ref["input_ids"] and ours["labels"] == ref["labels"]
        assert ours["labels"][-1] == tok.eos_token_id


def test_messages_without_chat_template_are_flattened(tiny):
    _, tok = tiny
    tok.chat_template = None
    enc = encode_prompt_completion(tok, [{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "yo"}])
    text = tok.decode(enc["input_ids"])
    assert text == "User: hi\n\nyo<|im_end|>"
