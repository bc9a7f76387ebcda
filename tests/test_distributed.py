"""Scale-out: 2 processes (gloo) match 1 for the offline losses (`tirl train --accelerate_config multi_cpu`, both
reductions) and for online IQLearn (`torchrun`, with deterministic policy samples and gradient accumulation)."""

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
@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_two_processes_match_one(tmp_path, reduction):
    """Same global batch (8 = 2 × 4): same examples per step, same losses. SGD, because Adam's first steps turn
    float-rounding differences in near-zero gradients into full-size updates (sign(g)·lr)."""
    single = train(tmp_path / "one", "--per_device_train_batch_size", "8", "--iq_reduction", reduction)
    double = train(tmp_path / "two", "--per_device_train_batch_size", "4", "--accelerate_config", "multi_cpu",
                   "--num_processes", "2", "--iq_reduction", reduction)
    assert [s[0] for s in single] == [d[0] for d in double] == list(range(1, 7))
    for s, d in zip(single, double, strict=True):
        for a, b in zip(s[1:], d[1:], strict=True):
            assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (s, d)


ONLINE_SCRIPT = '''
import json, sys, torch
from datasets import Dataset
from tirl.data import load_rows, to_trl
from tirl.models import tiny_model
from tirl.trainers import OnlineIQLearnConfig, OnlineIQLearnTrainer
torch.set_num_threads(1)
out, reduction, pdb, gas = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model, tok = tiny_model("tiny-llama")
model = model.double()
ds = Dataset.from_list(to_trl(load_rows("arithmetic", split="train", limit=64, seed=0), tok))
cfg = OnlineIQLearnConfig(output_dir=out, per_device_train_batch_size=pdb, gradient_accumulation_steps=gas, max_steps=3,
                          report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
                          disable_tqdm=True, logging_steps=1, seed=0, optim="sgd", learning_rate=0.5, max_grad_norm=0.0,
                          lr_scheduler_type="constant", iq_lambda=0.2, iq_alpha=0.5, iq_reduction=reduction,
                          num_policy_samples=pdb, max_new_tokens=8)
tr = OnlineIQLearnTrainer(model, cfg, train_dataset=ds, processing_class=tok)

def fixed_completions(model, prompts):  # every prompt of the global batch gets the same sample in every layout
    out = []
    for p in prompts:
        h = sum(p) + len(p)
        out.append([5 + (h * (i + 3)) % 60 for i in range(2 + h % 5)] + ([tok.eos_token_id] if h % 3 else []))
    return out

tr.sampler.generate = fixed_completions
tr.train()
params = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
if tr.accelerator.is_main_process:
    print("RESULT " + json.dumps({"world": tr.accelerator.num_processes, "params_sum": params.sum().item(),
                                  "params_norm": params.norm().item(),
                                  "losses": [h["loss"] for h in tr.state.log_history if "loss" in h]}))
'''


def run_online(tmp_path, name, reduction, pdb, gas, nproc):
    script = tmp_path / "online.py"
    script.write_text(ONLINE_SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    proc = subprocess.run([*launcher, str(script), str(tmp_path / name), reduction, str(pdb), str(gas)],
                          capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return json.loads(line[7:])


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_online_two_processes_with_accumulation_match_one(tmp_path, reduction):
    """Online IQLearn, global batch 8: 2 processes × 2 micro-batches × 2 rows give the losses and weights of 1 process
    × 8 rows, because every term (expert and policy rows, both reductions) is normalised by global counts."""
    one = run_online(tmp_path, "one", reduction, pdb=8, gas=1, nproc=1)
    two = run_online(tmp_path, "two", reduction, pdb=2, gas=2, nproc=2)
    assert (one["world"], two["world"]) == (1, 2) and len(one["losses"]) == len(two["losses"]) == 3
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-6)
    assert two["params_sum"] == pytest.approx(one["params_sum"], rel=1e-6, abs=1e-6)
    assert two["params_norm"] == pytest.approx(one["params_norm"], rel=1e-9)
