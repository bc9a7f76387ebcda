"""Scale-out: `tirl train --accelerate_config multi_cpu` (2 processes, gloo) matches the single-process loss curve."""

import json
import subprocess
import sys

import pytest


def train(out, *extra):
    cmd = [sys.executable, "-m", "tirl.cli", "train", "--model", "tiny-llama", "--dataset", "arithmetic",
           "--num_train_examples", "256", "--num_eval_examples", "8", "--max_steps", "6", "--save_steps", "6",
           "--logging_steps", "1", "--learning_rate", "0.5", "--optim", "sgd", "--max_grad_norm", "0", "--bf16", "false", "--report_to", "none",
           "--disable_tqdm", "true", "--seed", "0", "--output_dir", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    return [(h["step"], h["loss"], h["mle_loss"], h["td_loss"]) for h in state["log_history"] if "loss" in h]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    """Same global batch (8 = 2 × 4): same examples per step, same losses. SGD, because Adam's first steps turn
    float-rounding differences in near-zero gradients into full-size updates (sign(g)·lr)."""
    single = train(tmp_path / "one", "--per_device_train_batch_size", "8")
    double = train(tmp_path / "two", "--per_device_train_batch_size", "4", "--accelerate_config", "multi_cpu",
                   "--num_processes", "2")
    assert [s[0] for s in single] == [d[0] for d in double] == list(range(1, 7))
    for s, d in zip(single, double, strict=True):
        for a, b in zip(s[1:], d[1:], strict=True):
            assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (s, d)
