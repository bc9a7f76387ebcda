"""GAIL: the adversarial maths, the discriminator, reward → policy-gradient flow, resume, the CLI."""

import copy
import json
import math

import pytest
import torch
from datasets import Dataset

from tirl import losses as L
from tirl.data import load_rows, to_trl
from tirl.losses import gail as A
from tirl.trainers import GAILConfig, GAILTrainer
from tirl.trainers.checkpoints import optimizer_state_from_flat, optimizer_state_to_flat
from tirl.trainers.discriminator import TokenDiscriminator, truncated_trunk
from tirl.trainers.reference_model import frozen_copy

EOS = 2


# --------------------------------------------------------------------------------------------------------------------
# Pure maths


def test_reward_is_log_d_minus_log_one_minus_d():
    x = torch.tensor([-8.0, -2.0, 0.0, 0.5, 8.0], dtype=torch.float64)
    d = torch.sigmoid(x)
    assert torch.allclose(A.discriminator_reward(x), torch.log(d) - torch.log1p(-d), atol=1e-9)
    assert torch.isfinite(A.discriminator_reward(torch.tensor([1e4]))).all()  # no log(0) for a saturated D


def test_discriminator_loss_is_balanced_bce_on_hand_values():
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    expert = torch.tensor([[True, True, False], [False, False, False]])
    policy = torch.tensor([[False, False, False], [True, True, False]])
    # expert: −log σ(0), −log σ(2);  policy: −log(1 − σ(1)), −log(1 − σ(0))
    e = (math.log(2) + math.log1p(math.exp(-2))) / 2
    p = (math.log1p(math.exp(1)) + math.log(2)) / 2
    assert A.discriminator_loss(logits, expert, policy).item() == pytest.approx(0.5 * (e + p), abs=1e-6)
    stats = A.discriminator_stats(logits, expert, policy)
    # expert: D(0) = ½ is a tie (½ right), D(2) > ½ right -> 0.75; policy: D(1) > ½ wrong, tie -> 0.25
    assert stats.expert_accuracy.item() == pytest.approx(0.75) and stats.policy_accuracy.item() == pytest.approx(0.25)
    assert stats.accuracy.item() == pytest.approx(0.5)
    assert stats.expert_reward.item() == pytest.approx(1.0) and stats.policy_reward.item() == pytest.approx(0.5)


def test_discounted_returns_hand_checked_and_stop_at_mask():
    r = torch.tensor([[1.0, 2.0, 3.0, 9.0, 4.0]])
    mask = torch.tensor([[True, True, True, False, True]])
    g = A.discounted_returns(r, mask, gamma=0.5)
    # positions 0..2: 1 + .5·2 + .25·3 = 2.75, 2 + .5·3 = 3.5, 3; masked 0; the next segment restarts: 4
    assert g.tolist() == [[2.75, 3.5, 3.0, 0.0, 4.0]]


def test_advantages_are_centred_and_scaled_over_the_mask():
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    adv = A.advantages(returns, mask, normalize=True)
    assert adv[0, 3] == 0
    assert adv[mask].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert adv[mask].square().mean().item() == pytest.approx(1.0, abs=1e-4)
    assert A.advantages(returns, mask, normalize=False)[mask].tolist() == [-1.0, 0.0, 1.0]


def test_ppo_clip_gradient_is_minus_ratio_times_advantage_unless_clipped():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=torch.float64))
    new = torch.log(torch.tensor([[0.5, 0.8, 0.8, 0.2]], dtype=torch.float64)).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    per_token, clipped = A.ppo_clip_loss(new, old, adv, mask, clip_eps=0.2)
    (grad,) = torch.autograd.grad(per_token.sum(), new)
    ratio = torch.exp(new - old).detach()
    # token 0: ρ = 1 (the REINFORCE case): −A; token 1: ρ = 1.6 > 1.2 with A > 0: clipped, 0;
    # token 2: ρ = 1.6 with A < 0: not clipped (min picks the unclipped), −ρA; token 3: ρ = 0.4 < 0.8 with A < 0: clipped
    assert clipped.tolist() == [[False, True, False, True]]
    expected = torch.tensor([[-1.0, 0.0, ratio[0, 2].item(), 0.0]], dtype=torch.float64)
    assert torch.allclose(grad, expected, atol=1e-12)


def test_shaped_rewards_and_kl_estimate():
    r = torch.tensor([[1.0, 1.0]])
    old = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -2.0]])
    shaped = A.shaped_rewards(r, old, ref, kl_coef=0.1, entropy_coef=0.01)
    assert torch.allclose(shaped, torch.tensor([[1.0 - 0.1 * 0.5 + 0.01, 1.0 + 0.02]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    kl = A.kl_estimate(old, ref, mask)
    assert kl[0, 1] == 0 and kl[0, 0] > 0
    with pytest.raises(ValueError):
        A.shaped_rewards(r, old, None, kl_coef=0.1)


def test_mask_after_eos_matches_the_loss_conventions():
    labels = torch.full((2, 8), -100)
    labels[0, 2:7] = torch.tensor([5, EOS, 6, 7, 8])  # EOS then template tokens
    labels[1, 3:8] = torch.tensor([5, 6, 7, 8, 9])  # truncated: kept whole
    actions, mask = L.shift_labels(labels)
    kept = A.mask_after_eos(actions, mask, EOS)
    assert kept.sum(-1).tolist() == [2, 5]
    qv = L.qv_from_logits(torch.randn(2, 8, 12), labels)
    _, td_mask = L.next_values(qv, EOS)
    assert torch.equal(kept[0], td_mask[0])  # row 0: the TD mask drops exactly the after-EOS tokens
    assert A.mask_after_eos(actions, mask, None).equal(mask)


def test_optimizer_state_round_trips_without_pickle():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.randn(3)
    opt.step()
    tensors, meta = optimizer_state_to_flat(opt.state_dict())
    json.dumps(meta)  # JSON-ready
    back = optimizer_state_from_flat(tensors, json.loads(json.dumps(meta)))
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=1e-3)
    opt2.load_state_dict(back)
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(opt2.state_dict()["state"][0][k], opt.state_dict()["state"][0][k])


# --------------------------------------------------------------------------------------------------------------------
# The discriminator module


def test_frozen_copy_and_truncated_trunk(tiny):
    from tirl.qv.head import add_qv_head

    model, tok = tiny
    add_qv_head(model, chunk_size=16)
    ref = frozen_copy(model)
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # training the policy must not move the copy
    assert not torch.equal(next(model.parameters()), next(ref.parameters()))
    ids = torch.tensor([tok("1+1=2")["input_ids"]])
    assert ref(input_ids=ids).logits.shape[-1] == len(tok)  # its own forward, not the policy's patched one
    short = truncated_trunk(ref.base_model, 1)
    assert len(short.layers) == 1 and len(ref.base_model.layers) == 2
    assert short.layers[0] is ref.base_model.layers[0]  # shared, not copied
    h_short = short(input_ids=ids).last_hidden_state
    h_full = ref.base_model(input_ids=ids).last_hidden_state
    assert h_short.shape == h_full.shape and not torch.allclose(h_short, h_full)
    with pytest.raises(ValueError):
        truncated_trunk(ref.base_model, 3)


def test_discriminator_starts_at_one_half_and_trains_only_its_head(tiny):
    model, tok = tiny
    disc = TokenDiscriminator(frozen_copy(model).base_model, hidden_size=64, head_hidden=16)
    ids = torch.tensor([tok("12+30=42")["input_ids"]])
    x = disc(ids)
    assert x.shape == (1, ids.shape[1] - 1) and torch.count_nonzero(x) == 0  # D = ½, r = 0
    assert {n.split(".")[0] for n in disc.trainable_state_dict()} == {"head"}
    disc.train()
    assert disc.head.training and not disc.trunk.training  # a frozen (possibly shared) trunk never leaves eval mode


# --------------------------------------------------------------------------------------------------------------------
# The trainer


def trl_rows(tokenizer, n=64, split="train", seed=0):
    return Dataset.from_list(to_trl(load_rows("arithmetic", split=split, limit=n, seed=seed), tokenizer))


def gail_args(tmp_path, **kw):
    args = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=16, max_steps=2,
        report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
        logging_steps=1, seed=0, disable_tqdm=True, max_new_tokens=24,
    )
    args.update(kw)
    return GAILConfig(**args)


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
                                      gail_disc_learning_rate=1e-2), train_dataset=trl_rows(tok), processing_class=tok)
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
    with pytest.raises(ValueError):
        GAILConfig(output_dir=str(tmp_path), gail_disc_steps=0)
    with pytest.raises(ValueError):
        GAILConfig(output_dir=str(tmp_path), num_policy_samples=0)
    assert GAILConfig(output_dir=str(tmp_path)).iq_lambda == 0.0  # the expert term is plain MLE by default


@pytest.mark.slow
def test_cli_gail_run_finishes_and_resumes(tmp_path):
    from test_cli import run_cli

    out = tmp_path / "run"
    args = ["train", "--method", "gail", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_train_examples", "32",
            "--num_eval_examples", "8", "--max_steps", "4", "--per_device_train_batch_size", "4", "--max_new_tokens",
            "16", "--save_steps", "2", "--logging_steps", "2", "--output_dir", str(out), "--bf16", "false",
            "--disable_tqdm", "true", "--report_to", "none", "--gail_disc_num_layers", "1"]
    proc = run_cli(*args)
    assert "tirl train finished" in proc.stdout
    assert (out / "checkpoint-4" / "tirl_discriminator" / "discriminator.safetensors").is_file()
    assert json.loads((out / "run.json").read_text())["method"] == "gail"
    proc = run_cli(*[a if a != "4" else "6" for a in args], "--resume")
    assert "checkpoint-4" in proc.stdout and "no saved discriminator" not in proc.stderr
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert any("disc_accuracy" in h for h in state["log_history"])


DDP_SCRIPT = '''
import json, sys, torch
from datasets import Dataset
from tirl.data import load_rows, to_trl
from tirl.models import tiny_model
from tirl.trainers import GAILConfig, GAILTrainer
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
