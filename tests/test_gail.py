"""GAILTrainer: the discriminator learns to separate expert from policy rows, the discriminator's reward flows into the
policy gradient exactly as REINFORCE with a baseline, resume restores the discriminator, its optimizer and π_old, and
2 processes keep their replicas in sync. (The maths: test_losses_gail.py; the module: test_discriminator.py.)"""

import copy
import json

import pytest
import torch

from conftest import common_args, trl_rows
from tirl.losses import gail as A
from tirl.trainers import GAILConfig, GAILTrainer
from tirl.trainers.reference_model import full_parameters


def gail_args(tmp_path, **kw):
    return GAILConfig(**common_args(tmp_path, **{"max_new_tokens": 24, **kw}))


def test_the_reference_is_frozen_prepared_and_shared_with_the_discriminator(tiny, tmp_path):
    model, tok = tiny
    tr = GAILTrainer(model, gail_args(tmp_path), train_dataset=trl_rows(tok, n=8), processing_class=tok)
    ref = tr.accelerator.unwrap_model(tr.ref_model)
    assert ref is not tr.model and not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert next(ref.parameters()).device == tr.accelerator.device
    assert tr.discriminator.trunk is ref.base_model  # the default trunk is the reference's: no extra memory
    with full_parameters(tr.ref_model):  # nothing to gather without FSDP
        assert torch.equal(next(ref.parameters()), next(model.parameters()))


def test_discriminator_separates_expert_from_policy_on_a_tiny_run(tiny, tmp_path):
    model, tok = tiny
    tr = GAILTrainer(model, gail_args(tmp_path, max_steps=12, learning_rate=1e-4), train_dataset=trl_rows(tok),
                     processing_class=tok)
    tr.train()
    acc = [h["disc_accuracy"] for h in tr.state.log_history if "disc_accuracy" in h]
    assert len(acc) == 12 and acc[0] == pytest.approx(0.5)  # the zero-initialised head starts at chance
    # measured on each micro-batch before the discriminator trains on it: held-out accuracy
    assert sum(acc[-4:]) / 4 > 0.6, acc
    logged = {k for h in tr.state.log_history for k in h}
    assert {"disc_loss", "disc_accuracy", "reward/policy_mean", "kl_to_initial", "pg_loss", "mle_loss", "entropy",
            "policy/entropy"} <= logged


def _one_batch(tr):
    """A micro-batch through GAIL's first two phases: policy samples mixed in, the discriminator's rewards."""
    batch = dict(next(iter(tr.get_train_dataloader())))
    batch, sample = tr.sampler.next_batch(tr.model, batch, tr.state.global_step)
    batch["gail_reward"], batch["gail_ref_logprob"] = tr.discriminator_step(batch)
    return batch, sample.entry


def test_reward_flows_into_the_policy_gradient(tiny, tmp_path):
    """Gradient check: with mle_weight = 0 and no KL/entropy shaping, ∇loss = ∇ of −Σ A_t·log π(a_t|s_t) / n_policy,
    where A is built from the discriminator's rewards; negating the rewards negates the policy gradient."""
    model, tok = tiny
    model = model.double()
    tr = GAILTrainer(model, gail_args(tmp_path, mle_weight=0.0, gail_kl_coef=0.0, gail_disc_steps=3, max_new_tokens=12,
                                      gail_disc_learning_rate=1e-2, iq_value="logits"), train_dataset=trl_rows(tok),
                     processing_class=tok)
    batch, _ = _one_batch(tr)
    reward = batch["gail_reward"]
    assert torch.count_nonzero(reward[batch["is_expert"]]) == 0 and torch.count_nonzero(reward) > 0
    params = [p for p in tr.model.parameters() if p.requires_grad]

    def grads(rew):
        inputs = {k: v.clone() for k, v in batch.items()}
        inputs["gail_reward"] = rew
        loss = tr.compute_loss(tr.model, inputs)
        return torch.autograd.grad(loss, params)

    g = grads(reward)
    # the reference: REINFORCE with the same advantages, written out
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
    qv = tr.compute_qv(tr.model, dict(inputs))
    pol = qv.mask & ~batch["is_expert"][:, None]
    adv = A.advantages(A.discounted_returns(reward * pol, pol, tr.args.iq_gamma), pol)
    ref_loss = -(adv * qv.logprob * pol).sum() / pol.sum()
    g_ref = torch.autograd.grad(ref_loss, params)
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-9)
    assert max(x.abs().max().item() for x in g) > 1e-6
    g_neg = grads(-reward)
    for a, b in zip(g, g_neg, strict=True):
        assert torch.allclose(a, -b, atol=1e-9)


def test_gail_resume_restores_discriminator_optimizer_and_buffer(tiny, tmp_path):
    model, tok = tiny
    ds = trl_rows(tok)
    kw = dict(max_steps=2, save_strategy="steps", save_steps=2, generate_every=5)
    tr = GAILTrainer(copy.deepcopy(model), gail_args(tmp_path, **kw), train_dataset=ds, processing_class=tok)
    tr.train()
    ckpt = tmp_path / "checkpoint-2"
    assert {p.name for p in (ckpt / "tirl_discriminator").iterdir()} == {"discriminator.safetensors",
                                                                          "optimizer.safetensors", "state.json"}
    head = {k: v.clone() for k, v in tr.discriminator.trainable_state_dict().items()}
    opt_state = tr.disc_optimizer.state_dict()["state"]
    old_lp = tr.sampler.buffer.get(0).extras["old_logprob"].clone()

    tr2 = GAILTrainer(copy.deepcopy(model), gail_args(tmp_path, **{**kw, "max_steps": 2}), train_dataset=ds,
                      processing_class=tok)
    assert not torch.equal(next(iter(tr2.discriminator.trainable_state_dict().values())), next(iter(head.values())))
    restored = {}
    load = tr2.load_extra_state

    def spy(checkpoint_dir):  # what resume restored, before the next step trains on
        load(checkpoint_dir)
        restored["head"] = {k: v.clone() for k, v in tr2.discriminator.trainable_state_dict().items()}
        restored["opt"] = copy.deepcopy(tr2.disc_optimizer.state_dict()["state"])
        restored["old_lp"] = tr2.sampler.buffer.get(0).extras["old_logprob"].clone()

    tr2.load_extra_state = spy
    tr2.train(resume_from_checkpoint=str(ckpt))
    for k, v in restored["head"].items():
        assert torch.equal(v, head[k]), k
    for pid, st in restored["opt"].items():
        assert torch.equal(st["exp_avg"], opt_state[pid]["exp_avg"])
    assert torch.equal(restored["old_lp"], old_lp)  # π_old survives for PPO reuse


def test_gail_config_validation(tmp_path):
    with pytest.raises(ValueError, match="gail_disc_steps must be >= 1"):
        GAILConfig(output_dir=str(tmp_path), gail_disc_steps=0)
    with pytest.raises(ValueError, match="num_policy_samples must be >= 1"):
        GAILConfig(output_dir=str(tmp_path), num_policy_samples=0)
    # the expert term is plain MLE: GAIL has no λ, and its objective is the neutral one
    from tirl.losses import Objective

    config = GAILConfig(output_dir=str(tmp_path))
    assert not hasattr(config, "iq_lambda") and Objective.from_config(config).iq_lambda == 0.0


DDP_SCRIPT = '''
import json, sys, torch
from datasets import Dataset
from tirl.data import load_rows, to_trl
from tirl.models import tiny_model
from tirl.trainers import GAILConfig, GAILTrainer
from tirl.trainers.reference_model import full_parameters
torch.set_num_threads(1)
model, tok = tiny_model("tiny-llama")
ds = Dataset.from_list(to_trl(load_rows("arithmetic", split="train", limit=64, seed=0), tok))
cfg = GAILConfig(output_dir=sys.argv[1], per_device_train_batch_size=4, max_steps=3, report_to="none", use_cpu=True,
                 bf16=False, gradient_checkpointing=False, save_strategy="steps", save_steps=3, disable_tqdm=True,
                 max_new_tokens=12, gradient_accumulation_steps=2, generate_every=2)
tr = GAILTrainer(model, cfg, train_dataset=ds, processing_class=tok)
tr.train()
flat = lambda ps: torch.cat([p.detach().flatten() for p in ps])[None]
disc = tr.accelerator.gather(flat(tr.discriminator.trainable_parameters()))
policy = tr.accelerator.gather(flat(tr.model.parameters()))
prompt = torch.tensor(tr.sampler.buffer.get(0).rollout.input_ids[0, :40])[None]
prompts = tr.accelerator.gather(torch.nn.functional.pad(prompt, (0, 40 - prompt.shape[1])))
if tr.accelerator.is_main_process:
    print("RESULT " + json.dumps({"world": tr.accelerator.num_processes, "disc_same": torch.equal(disc[0], disc[1]),
                                  "policy_same": torch.equal(policy[0], policy[1]),
                                  "prompts_differ": not torch.equal(prompts[0], prompts[1]),
                                  "slots": sorted(tr.sampler.buffer.entries)}))
'''


@pytest.mark.slow
def test_two_processes_sample_their_own_shards_and_keep_replicas_in_sync(tmp_path):
    """`torchrun` with 2 CPU processes (gloo): each samples for its own prompts, the discriminator replicas and the
    policy replicas stay identical, and every process's sample buffer is checkpointed."""
    import subprocess
    import sys

    script = tmp_path / "ddp_gail.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(out)], capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    res = json.loads(line[7:])
    assert res == {"world": 2, "disc_same": True, "policy_same": True, "prompts_differ": True, "slots": [0, 1]}
    names = {p.name for p in (out / "checkpoint-3" / "tirl_sample_buffer").iterdir()}
    assert names == {"rank-0.json", "rank-0.safetensors", "rank-1.json", "rank-1.safetensors"}
