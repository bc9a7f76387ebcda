"""Scale-out: 2 processes (gloo) match 1 for the offline losses (`tirl train --accelerate_config multi_cpu`, both
reductions) and for online IQLearn (`torchrun`, with deterministic policy samples and gradient accumulation); under
FSDP2, IQLearn with the chunked head matches 1 process and GAIL matches DDP."""

import json
import subprocess
import sys
from pathlib import Path

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
sys.path.insert(0, TESTS)
from reference import fixed_completions
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
# every prompt of the global batch gets the same sample in every layout
tr.sampler.generate = lambda model, prompts: fixed_completions(prompts, tok.eos_token_id)
tr.train()
params = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
if tr.accelerator.is_main_process:
    print("RESULT " + json.dumps({"world": tr.accelerator.num_processes, "params_sum": params.sum().item(),
                                  "params_norm": params.norm().item(),
                                  "losses": [h["loss"] for h in tr.state.log_history if "loss" in h]}))
'''


def run_online(tmp_path, name, reduction, pdb, gas, nproc):
    script = tmp_path / "online.py"
    script.write_text(f"TESTS = {str(Path(__file__).parent)!r}\n" + ONLINE_SCRIPT)
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


# --------------------------------------------------------------------------------------------------------------------
# FSDP2 (`torch.distributed.fsdp.fully_shard`) on CPU with gloo. accelerate shards with FSDP only on accelerators (on
# CPU its `fsdp_config` silently gives DDP), so the script shards as accelerate's FSDP2 plugin does (each decoder
# layer, then the root) and keeps DDP off; GAIL's reference goes through `prepare_reference(fsdp=True)`, which is
# TRL's `prepare_fsdp`, as on a GPU cluster. What runs sharded is tirl's: the chunked head on a DTensor LM head, the
# gradients of the loss, the reference's `full_parameters` and the discriminator on the shared, sharded trunk.

FSDP_SCRIPT = '''
import json, sys, types, torch
from accelerate.utils import FullyShardedDataParallelPlugin
from datasets import Dataset
from torch.distributed.fsdp import FSDPModule, fully_shard
sys.path.insert(0, TESTS)
from reference import fixed_completions
from tirl.data import load_rows, to_trl
from tirl.models import tiny_model
from tirl.trainers.reference_model import prepare_reference
from tirl import trainers as T
torch.set_num_threads(1)
out, method, pdb, shard = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "fsdp"
model, tok = tiny_model("tiny-llama")
model = model.double()
ds = Dataset.from_list(to_trl(load_rows("arithmetic", split="train", limit=64, seed=0), tok))
common = dict(output_dir=out, per_device_train_batch_size=pdb, max_steps=2, report_to="none", use_cpu=True, bf16=False,
              gradient_checkpointing=False, save_strategy="no", disable_tqdm=True, logging_steps=1, seed=0, optim="sgd",
              learning_rate=0.5, max_grad_norm=0.0, lr_scheduler_type="constant", iq_chunk_size=16)
if method == "iqlearn":
    tr = T.IQLearnTrainer(model, T.IQLearnConfig(**common, iq_lambda=0.2), train_dataset=ds, processing_class=tok)
else:
    tr = T.GAILTrainer(model, T.GAILConfig(**common, max_new_tokens=8, gail_kl_coef=0.5), train_dataset=ds,
                       processing_class=tok)
    tr.sampler.generate = lambda model, prompts: fixed_completions(prompts, tok.eos_token_id)
if shard:
    for layer in tr.model.model.layers:
        fully_shard(layer)
    fully_shard(tr.model)
    tr.accelerator.prepare_model = lambda model, *a, **k: model  # no DDP around the FSDP2 model
    if method == "gail":  # the discriminator shares the reference's trunk, so it is sharded with it
        fsdp = types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2)),
                                     torch_device_mesh=None, device=tr.accelerator.device)
        tr.ref_model = prepare_reference(tr.ref_model, fsdp, deepspeed=False, fsdp=True)
tr.train()
head_error = None
if shard:  # outside a forward the LM head is a DTensor: head_qv gathers it, and its gradient goes back sharded
    from tirl.losses import qv_from_logits
    from tirl.qv.head import head_qv
    W = tr.model.get_output_embeddings().weight
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 6, W.shape[1], dtype=torch.float64, generator=g)
    labels = torch.randint(3, W.shape[0], (2, 6), generator=g)
    labels[:, :2] = -100
    W.grad = None
    qv = head_qv(tr.model, hidden, labels, chunk_size=4)
    qv.logprob.sum().backward()
    Wf = W.full_tensor().detach().requires_grad_()
    oracle = qv_from_logits(hidden @ Wf.T, labels)
    oracle.logprob.sum().backward()
    head_error = max((qv.logit - oracle.logit).abs().max().item(), (qv.lse - oracle.lse).abs().max().item(),
                     (W.grad.full_tensor() - Wf.grad).abs().max().item())
whole = lambda p: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().flatten()
params = torch.cat([whole(p) for p in tr.model.parameters()])
disc = torch.cat([whole(p) for p in tr.discriminator.parameters()]) if method == "gail" else params
if tr.accelerator.is_main_process:
    print("RESULT " + json.dumps({
        "world": tr.accelerator.num_processes, "sharded": isinstance(tr.model, FSDPModule),
        "dtensor_head": hasattr(tr.model.get_output_embeddings().weight, "full_tensor"), "head_error": head_error,
        "params_sum": params.sum().item(), "params_norm": params.norm().item(), "disc_norm": disc.norm().item(),
        "log": [{k: v for k, v in h.items() if not k.startswith("time/")} for h in tr.state.log_history if "loss" in h]}))
'''


def run_sharded(tmp_path, name, method, pdb, nproc, shard):
    script = tmp_path / "sharded.py"
    script.write_text(f"TESTS = {str(Path(__file__).parent)!r}\n" + FSDP_SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    proc = subprocess.run([*launcher, str(script), str(tmp_path / name), method, str(pdb), shard],
                          capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return json.loads(line[7:])


def assert_same_run(a, b):
    assert len(a["log"]) == len(b["log"]) == 2
    for x, y in zip(a["log"], b["log"], strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=1e-9, abs=1e-12), k
    for k in ("params_sum", "params_norm", "disc_norm"):
        assert b[k] == pytest.approx(a[k], rel=1e-12), k


@pytest.mark.slow
def test_fsdp2_iqlearn_with_the_chunked_head_matches_one_process(tmp_path):
    """IQLearn, chunked head, global batch 8: 2 processes under FSDP2 (the LM head a DTensor) give the losses, metrics
    and weights of 1 unsharded process."""
    one = run_sharded(tmp_path, "one", "iqlearn", pdb=8, nproc=1, shard="none")
    two = run_sharded(tmp_path, "two", "iqlearn", pdb=4, nproc=2, shard="fsdp")
    assert (one["world"], one["sharded"], two["world"], two["sharded"], two["dtensor_head"]) == (1, False, 2, True, True)
    assert_same_run(one, two)
    assert two["head_error"] < 1e-12


@pytest.mark.slow
def test_fsdp2_gail_steps_match_ddp(tmp_path):
    """GAIL with its reference prepared by TRL's `prepare_fsdp` (and the discriminator on its sharded trunk): two steps
    under FSDP2 give DDP's losses, discriminator metrics and weights, policy and discriminator, on the same 2 × 4 rows.
    (Not 1 process: the discriminator's loss and the advantages' normalisation are per-process means by design.)"""
    ddp = run_sharded(tmp_path, "ddp", "gail", pdb=4, nproc=2, shard="none")
    fsdp = run_sharded(tmp_path, "fsdp", "gail", pdb=4, nproc=2, shard="fsdp")
    assert (ddp["sharded"], fsdp["sharded"], fsdp["dtensor_head"]) == (False, True, True)
    assert fsdp["log"][1]["disc_accuracy"] != 0.5 and fsdp["log"][1]["kl_to_initial"] > 0  # both networks moved
    assert_same_run(ddp, fsdp)
