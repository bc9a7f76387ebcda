"""Reliability: bad input, non-finite losses, killed runs, interrupted checkpoints, reproducibility, untrusted input.

docs/reliability.md lists each fault tried here and the behaviour these tests pin down.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from conftest import common_args, trl_rows
from tirl import models
from tirl.trainers import IQLearnConfig, IQLearnTrainer, NonFiniteLossError, NoTrainableTokensError


def args(tmp_path, **kw):
    return IQLearnConfig(**common_args(tmp_path, **{"per_device_eval_batch_size": 8, "learning_rate": 3e-3,
                                                    "max_steps": 4, **kw}))


# ---------------------------------------------------------------------------------------------------------------------
# Bad input (the file-level cases, with line numbers, are in test_data.py)


def test_prompt_longer_than_max_length_is_reported_not_silently_dropped(tiny, tmp_path):
    model, tok = tiny
    ds = Dataset.from_list([{"prompt": "x" * 200, "completion": "y"}, {"prompt": "a", "completion": "b"},
                            {"prompt": "z" * 300, "completion": "w"}])
    with pytest.warns(UserWarning, match=r"2 of 3 train examples were skipped .* \(rows 0, 2\)"):
        IQLearnTrainer(model, args(tmp_path, max_length=64), train_dataset=ds, processing_class=tok)
    with pytest.raises(NoTrainableTokensError, match="none of the 2 train examples"):
        IQLearnTrainer(model, args(tmp_path, max_length=64), train_dataset=ds.select([0, 2]), processing_class=tok)


def test_completion_cut_by_max_length_is_counted_as_truncated(tiny, tmp_path):
    model, tok = tiny
    ds = Dataset.from_list([{"prompt": "a", "completion": "b" * 200}, {"prompt": "a", "completion": "b"}])
    with pytest.warns(UserWarning, match=r"1 of 2 train completions do not end with EOS"):
        IQLearnTrainer(model, args(tmp_path, max_length=64), train_dataset=ds, processing_class=tok)


def test_cut_completions_are_counted_with_the_eos_ids_the_loss_uses(tiny, tmp_path):
    """The model's generation config may end episodes with more ids than the tokenizer's EOS; the loss treats them as
    terminal, so a completion cut right after one is not truncated, and the warning must not count it (it used to,
    because it looked only at the tokenizer while TRL prepared the data, before the trainer had the model)."""
    model, tok = tiny
    tok.chat_template = None  # plain "prompt + completion + EOS": the cut below lands exactly where intended
    hash_id = tok("#")["input_ids"][0]
    model.generation_config.eos_token_id = [tok.eos_token_id, hash_id]
    n_prompt = len(tok("a")["input_ids"])
    # max_length keeps 3 completion tokens: row 0 then ends with "#" (an EOS for the loss), row 1 with "3" (cut)
    ds = Dataset.from_list([{"prompt": "a", "completion": "12#456"}, {"prompt": "a", "completion": "123456"}])
    with pytest.warns(UserWarning, match=r"1 of 2 train completions do not end with EOS"):
        tr = IQLearnTrainer(model, args(tmp_path, max_length=n_prompt + 3), train_dataset=ds, processing_class=tok)
    assert hash_id in tr.eos_token_ids
    ends = [[t for t in row if t != -100][-1] for row in tr.train_dataset["labels"]]
    assert ends == [hash_id, tok("3")["input_ids"][0]]


def test_standard_completion_without_eos_gets_eos_appended(tiny, tmp_path):
    model, tok = tiny
    tok.chat_template = None
    ds = Dataset.from_list([{"prompt": "q\n", "completion": "no eos here"}])
    tr = IQLearnTrainer(model, args(tmp_path), train_dataset=ds, processing_class=tok)
    labels = [t for t in tr.train_dataset[0]["labels"] if t != -100]
    assert labels[-1] == tok.eos_token_id


def test_chat_template_that_masks_every_token_is_an_error(tiny, tmp_path):
    model, tok = tiny
    ds = Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 2)
    with pytest.raises(ValueError, match="chat template"):
        IQLearnTrainer(model, args(tmp_path, assistant_only_loss=True), train_dataset=ds, processing_class=tok)


class PoisonAt(TrainerCallback):
    """Sets a weight to NaN at the start of a given step, as a diverging run would."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kw):
        if state.global_step == self.step - 1:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))


def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(tiny, tmp_path):
    model, tok = tiny
    cfg = args(tmp_path, max_steps=10, save_strategy="steps", save_steps=2)
    tr = IQLearnTrainer(model, cfg, train_dataset=trl_rows(tok, n=32), processing_class=tok, callbacks=[PoisonAt(5)])
    with pytest.raises(NonFiniteLossError) as err:
        tr.train()
    msg = str(err.value)
    assert "at step 5" in msg and "checkpoint-4" in msg
    last = get_last_checkpoint(str(tmp_path))
    assert last.endswith("checkpoint-4")
    weights = load_file(os.path.join(last, "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


# ---------------------------------------------------------------------------------------------------------------------
# Faults


def test_crash_while_writing_a_checkpoint_leaves_no_valid_looking_checkpoint(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    cfg = args(tmp_path, max_steps=6, save_strategy="steps", save_steps=2)
    tr = IQLearnTrainer(model, cfg, train_dataset=trl_rows(tok, n=32), processing_class=tok)
    original = tr._save_rng_state

    def crash_on_second_save(output_dir):
        if tr.state.global_step == 4:
            raise OSError("disk full (simulated)")
        return original(output_dir)

    monkeypatch.setattr(tr, "_save_rng_state", crash_on_second_save)
    with pytest.raises(OSError, match="simulated"):
        tr.train()
    names = sorted(os.listdir(tmp_path))
    assert "checkpoint-2" in names and "checkpoint-4" not in names
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-2")
    # the half-written one is under a name resume ignores, and the next save clears it away
    assert any(n.startswith(".partial-checkpoint-4") for n in names)
    cfg2 = args(tmp_path, max_steps=6, save_strategy="steps", save_steps=2)
    tr2 = IQLearnTrainer(models.tiny_model("tiny-llama")[0], cfg2, train_dataset=trl_rows(tok, n=32), processing_class=tok)
    tr2.train(resume_from_checkpoint=True)
    names = sorted(os.listdir(tmp_path))
    assert "checkpoint-6" in names and not any(n.startswith(".partial") for n in names)


def cli(*a, **kw):
    return [sys.executable, "-m", "tirl.cli", "train", "--model", "tiny-llama", "--dataset", "arithmetic",
            "--num_train_examples", "400", "--num_eval_examples", "8", "--per_device_train_batch_size", "4",
            "--learning_rate", "3e-3", "--logging_steps", "1", "--bf16", "false", "--disable_tqdm", "true",
            "--report_to", "none", "--seed", "0", *a]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(tmp_path):
    steps, every = "60", "10"
    ref, run = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(cli("--max_steps", steps, "--save_steps", every, "--output_dir", str(ref)), check=True,
                   capture_output=True, timeout=300)

    proc = subprocess.Popen(cli("--max_steps", steps, "--save_steps", every, "--output_dir", str(run)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run / "checkpoint-20").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (run / f"checkpoint-{steps}").exists(), "killed too late to test anything"
    assert not (run / "model.safetensors").exists()

    out = subprocess.run(cli("--max_steps", steps, "--save_steps", every, "--output_dir", str(run), "--resume"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from" in out.stdout
    a, b = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    # the loss curve continues: the resumed run's per-step losses equal the uninterrupted run's
    hist_a = {h["step"]: h["loss"] for h in json.loads((ref / f"checkpoint-{steps}" / "trainer_state.json").read_text())["log_history"] if "loss" in h}
    hist_b = {h["step"]: h["loss"] for h in json.loads((run / f"checkpoint-{steps}" / "trainer_state.json").read_text())["log_history"] if "loss" in h}
    assert hist_a.keys() == hist_b.keys()
    assert all(abs(hist_a[s] - hist_b[s]) < 1e-4 for s in hist_a)


# ---------------------------------------------------------------------------------------------------------------------
# Reproducibility


def test_same_seed_gives_the_same_metrics_twice(tmp_path):
    histories = []
    for i in range(2):
        model, tok = models.tiny_model("tiny-llama", seed=0)
        tr = IQLearnTrainer(model, args(tmp_path / str(i), max_steps=5), train_dataset=trl_rows(tok, n=64),
                            processing_class=tok)
        tr.train()
        histories.append([(h["step"], h["loss"], h["td_loss"]) for h in tr.state.log_history if "loss" in h])
    assert histories[0] == histories[1]


# ---------------------------------------------------------------------------------------------------------------------
# Untrusted input


def test_pickled_weights_are_never_loaded(tmp_path, tiny):
    model, tok = tiny
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"x": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(models.ModelNotAvailableError, match=r"has pickled weights only \(pytorch_model.bin\): tirl "
                       "loads safetensors only"):
        models.load(str(tmp_path))
    assert not marker.exists()


def test_remote_code_is_not_run_by_default(tmp_path, tiny):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom transformers import LlamaForCausalLM as Evil\n")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "evil.Evil"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with contextlib.suppress(ValueError):  # transformers may refuse outright; either way the code must not run
        models.load(str(tmp_path))
    assert not marker.exists()


