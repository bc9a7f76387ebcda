"""Online IQLearn: the mixed loss (α = 0 is offline), rollouts and their masks, the trainer, resume, LoRA, CLI."""

import copy
import json

import pytest
import torch
from datasets import Dataset

from tirl import losses as L
from tirl.data import load_rows, to_trl
from tirl.generation import left_pad, sample_completions
from tirl.trainers import IQLearnConfig, IQLearnTrainer, OnlineIQLearnConfig, OnlineIQLearnTrainer
from tirl.trainers.rollouts import (
    Rollout,
    SampleBuffer,
    build_rollout,
    choose_prompt_rows,
    mix_batch,
    prompts_from_batch,
)

EOS = 2


# --------------------------------------------------------------------------------------------------------------------
# The loss


def mixed_batch(dtype=torch.float64, seed=0, V=19):
    """Logits [5, 12, V] and labels: rows 0–2 expert (EOS + template token / truncated / EOS at the end), rows 3–4
    policy samples (one ends in EOS, one was cut at max_new_tokens)."""
    g = torch.Generator().manual_seed(seed)
    B, T = 5, 12
    logits = torch.randn(B, T, V, dtype=dtype, generator=g, requires_grad=True)
    labels = torch.randint(3, V, (B, T), generator=g)
    labels[:, :4] = -100
    labels[0, 8] = EOS
    labels[0, 10:] = -100
    labels[1, -3:] = -100
    labels[2, -1] = EOS
    labels[3, :6] = -100
    labels[3, 9] = EOS
    labels[3, 10:] = -100
    labels[4, :3] = -100
    is_expert = torch.tensor([True, True, True, False, False])
    return logits, labels, is_expert


def loop_reference(logits, labels, is_expert, alpha, lam, gamma):
    """METHOD.md §2's L_on, token by token: −log π on expert tokens, r² and V − γV' where the TD term is defined."""
    lp = torch.log_softmax(logits.double(), -1)
    lse = torch.logsumexp(logits.double(), -1)
    sums = {"nll": 0.0, "r2_E": 0.0, "gap_E": 0.0, "r2_P": 0.0, "gap_P": 0.0}
    n = {"E": 0, "P": 0}
    for b in range(labels.shape[0]):
        kind = "E" if is_expert[b] else "P"
        acts = [(t, int(labels[b, t + 1])) for t in range(labels.shape[1] - 1) if labels[b, t + 1] != -100]
        seen_eos = False
        for i, (t, a) in enumerate(acts):
            n[kind] += 1
            if kind == "E":
                sums["nll"] = sums["nll"] - lp[b, t, a]
            if seen_eos:
                continue
            last = i == len(acts) - 1 or acts[i + 1][0] != t + 1
            if a == EOS:
                v_next = 0.0
            elif last:
                continue  # truncated: no TD / value term for the last action
            else:
                v_next = lse[b, t + 1]
            r = logits[b, t, a].double() - gamma * v_next
            sums[f"r2_{kind}"] = sums[f"r2_{kind}"] + r**2
            sums[f"gap_{kind}"] = sums[f"gap_{kind}"] + (lse[b, t] - gamma * v_next)
            seen_eos = a == EOS
    e = {k: v / n["E"] for k, v in sums.items() if k.endswith("E") or k == "nll"}
    p = {k: v / n["P"] for k, v in sums.items() if k.endswith("P")}
    return (e["nll"] + alpha * (p["gap_P"] - e["gap_E"]) + lam * ((1 - alpha) * e["r2_E"] + alpha * p["r2_P"]))


@pytest.mark.parametrize("alpha,lam,gamma", [(0.1, 0.1, 0.99), (0.5, 1.0, 1.0), (1.0, 0.03, 0.5)])
def test_online_loss_matches_loop_reference(alpha, lam, gamma):
    logits, labels, is_expert = mixed_batch()
    out = L.online_iq_loss_from_qv(L.qv_from_logits(logits, labels), is_expert, alpha=alpha, lam=lam, gamma=gamma,
                                   eos_token_id=EOS)
    ref = loop_reference(logits, labels, is_expert, alpha, lam, gamma)
    assert abs(out.loss.item() - ref.item()) < 1e-10


@pytest.mark.parametrize("reduction", ["token", "sequence"])
@pytest.mark.parametrize("chunked", [False, True])
def test_alpha_zero_equals_offline_iqlearn(reduction, chunked):
    """α = 0: the same loss and gradients as `iq_loss_from_qv` on the expert rows alone, whatever the policy rows hold."""
    logits, labels, is_expert = mixed_batch()
    n_items = int((labels[:3, 1:] != -100).sum()) + 7  # as if other micro-batches held 7 more expert tokens
    if chunked:
        g = torch.Generator().manual_seed(1)
        h = torch.randn(5, 12, 6, dtype=torch.float64, generator=g, requires_grad=True)
        W = torch.randn(19, 6, dtype=torch.float64, generator=g, requires_grad=True)
        qv_mixed = L.qv_from_hidden(h, W, labels, chunk_size=7)
        qv_expert = L.qv_from_hidden(h[:3], W, labels[:3], chunk_size=7)
        params = (h, W)
    else:
        qv_mixed = L.qv_from_logits(logits, labels)
        qv_expert = L.qv_from_logits(logits[:3], labels[:3])
        params = (logits,)
    kw = dict(lam=0.3, gamma=0.99, eos_token_id=EOS, num_items_in_batch=n_items, reduction=reduction)
    online = L.online_iq_loss_from_qv(qv_mixed, is_expert, alpha=0.0, **kw)
    offline = L.iq_loss_from_qv(qv_expert, **kw)
    assert abs(online.loss.item() - offline.loss.item()) < 1e-10
    g_on = torch.autograd.grad(online.loss, params, retain_graph=True)
    g_off = torch.autograd.grad(offline.loss, params)
    # the first parameter is per row (logits or hidden states); W is shared by all rows
    assert torch.allclose(g_on[0][:3], g_off[0][:3], atol=1e-10)
    assert torch.count_nonzero(g_on[0][3:]) == 0  # policy rows are not in the α = 0 graph
    for a, b in zip(g_on[1:], g_off[1:], strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    assert online.td.item() == pytest.approx(offline.td.item(), abs=1e-12)
    assert online.nll.item() == pytest.approx(offline.nll.item(), abs=1e-12)


def test_policy_terms_choose_what_sees_policy_samples():
    logits, labels, is_expert = mixed_batch()
    qv = L.qv_from_logits(logits, labels)
    kw = dict(alpha=0.4, gamma=0.9, eos_token_id=EOS)

    def policy_grad(**extra):
        loss = L.online_iq_loss_from_qv(qv, is_expert, **kw, **extra).loss
        return torch.autograd.grad(loss, logits, retain_graph=True)[0][3:]

    # −log π never touches policy rows: with λ = 0 and only the TD term mixed, they get no gradient at all
    assert torch.count_nonzero(policy_grad(lam=0.0, policy_terms="td")) == 0
    assert torch.count_nonzero(policy_grad(lam=0.0, policy_terms="value")) > 0
    assert torch.count_nonzero(policy_grad(lam=0.1, policy_terms="td")) > 0
    both = L.online_iq_loss_from_qv(qv, is_expert, lam=0.1, policy_terms="both", **kw).loss
    td = L.online_iq_loss_from_qv(qv, is_expert, lam=0.1, policy_terms="td", **kw).loss
    value = L.online_iq_loss_from_qv(qv, is_expert, lam=0.1, policy_terms="value", **kw).loss
    offline = L.iq_loss_from_qv(L.restrict_rows(qv, is_expert), lam=0.1, gamma=0.9, eos_token_id=EOS).loss
    # the two policy terms add up: both − offline = (td − offline) + (value − offline)
    assert (both - offline).item() == pytest.approx((td - offline).item() + (value - offline).item(), abs=1e-10)


def test_value_term_telescopes_to_zero_for_matching_rows_gamma_one():
    """paper-digest §3.6: with γ = 1, per-sequence sums and V(terminal) = 0, E_π[V − V'] − E_E[V − V'] = V(s_0) − V(s_0).

    A policy row that shares the expert row's prompt and first state has the same V(s_0) whatever it samples, so with
    sequence-sum weighting the value term vanishes exactly; with per-token means it does not (rows differ in length).
    """
    g = torch.Generator().manual_seed(3)
    V, T = 11, 10
    labels = torch.full((2, T), -100)
    labels[0, 4:9] = torch.randint(3, V, (5,), generator=g)
    labels[0, 8] = EOS  # expert: 5 actions ending in EOS
    labels[1, 4:7] = torch.randint(3, V, (3,), generator=g)
    labels[1, 6] = EOS  # policy: 3 actions ending in EOS, same prompt positions
    logits = torch.randn(2, T, V, dtype=torch.float64, generator=g)
    logits[1, 3] = logits[0, 3]  # the same state s_0 (same prompt): the same V(s_0)
    qv = L.qv_from_logits(logits, labels)
    v_next, td_mask = L.next_values(qv, EOS)
    gap = (qv.v - v_next) * td_mask
    assert gap[0].sum().item() == pytest.approx(gap[1].sum().item(), abs=1e-10)  # both telescope to V(s_0)
    out = L.online_iq_loss_from_qv(qv, torch.tensor([True, False]), alpha=0.5, lam=0.0, gamma=1.0, eos_token_id=EOS)
    assert abs(out.value_gap.item()) > 1e-3  # per-token means: 5 vs 3 tokens, so it does not cancel


def batch_counts(labels, is_expert):
    """The global counts a trainer passes with num_items_in_batch, for the whole batch (`labels`, `is_expert`)."""
    actions = labels[:, 1:] != -100
    e, p = actions[is_expert], actions[~is_expert]
    return dict(num_items_in_batch=int(e.sum()), num_sequences_in_batch=int(e.any(-1).sum()),
                num_policy_items_in_batch=int(p.sum()), num_policy_sequences_in_batch=int(p.any(-1).sum()))


@pytest.mark.parametrize("reduction", ["token", "sequence"])
@pytest.mark.parametrize("policy_terms", ["both", "td", "value"])
def test_accumulated_micro_batches_equal_one_batch(reduction, policy_terms):
    """Micro-batches with different shares of expert and policy rows, each given the whole batch's counts, sum to the
    one-batch loss (values and gradients): gradient accumulation and data parallelism are exact for L_on."""
    logits, labels, is_expert = mixed_batch()
    kw = dict(alpha=0.3, lam=0.2, gamma=0.95, eos_token_id=EOS, reduction=reduction, policy_terms=policy_terms)
    full = L.online_iq_loss_from_qv(L.qv_from_logits(logits, labels), is_expert, **kw).loss
    counts = batch_counts(labels, is_expert)
    parts = sum(L.online_iq_loss_from_qv(L.qv_from_logits(logits[rows], labels[rows]), is_expert[rows], **counts, **kw).loss
                for rows in ([0, 3], [1, 2, 4]))
    assert abs(full.item() - parts.item()) < 1e-10
    g_full, g_parts = (torch.autograd.grad(x, logits, retain_graph=True)[0] for x in (full, parts))
    assert torch.allclose(g_full, g_parts, atol=1e-12)
    if reduction == "token" and policy_terms == "both":  # and both are METHOD.md's L_on, token by token
        assert abs(parts.item() - loop_reference(logits, labels, is_expert, 0.3, 0.2, 0.95).item()) < 1e-10


def test_online_loss_rejects_bad_arguments():
    logits, labels, is_expert = mixed_batch()
    qv = L.qv_from_logits(logits, labels)
    with pytest.raises(ValueError):
        L.online_iq_loss_from_qv(qv, is_expert, alpha=1.5)
    with pytest.raises(ValueError):
        L.online_iq_loss_from_qv(qv, is_expert, policy_terms="all")


# --------------------------------------------------------------------------------------------------------------------
# Rollouts


def test_prompts_from_batch_takes_tokens_before_first_label():
    ids = torch.tensor([[5, 6, 7, 8, 9, 0], [5, 6, 7, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, 9, -100], [-100, -100, -100, 8, -100, -100]])
    assert prompts_from_batch(ids, mask, labels) == [[5, 6], [5, 6, 7]]


def test_build_rollout_masks_prompt_and_everything_after_first_eos():
    pad = 0
    prompts = [[5, 6, 7], [5, 6], [9]]
    completions = [[10, 11, EOS, pad, pad], [12, EOS, 13, EOS, 14], [15, 16, pad, 17, 18]]  # row 2: no EOS, a pad id
    r = build_rollout(prompts, completions, [EOS], pad)
    assert r.input_ids.tolist() == [[5, 6, 7, 10, 11, EOS], [5, 6, 12, EOS, 0, 0], [9, 15, 16, 0, 17, 18]]
    assert r.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0], [1] * 6]
    assert r.labels.tolist() == [[-100, -100, -100, 10, 11, EOS], [-100, -100, 12, EOS, -100, -100],
                                 [-100, 15, 16, 0, 17, 18]]
    assert r.ended.tolist() == [True, True, False]
    assert r.completion_lengths().tolist() == [3, 2, 5]
    # the truncated row drops its last TD term, the EOS rows keep all of theirs (conventions of tirl.losses)
    qv = L.qv_from_logits(torch.randn(3, 6, 20), r.labels)
    _, td_mask = L.next_values(qv, EOS)
    assert td_mask.sum(-1).tolist() == [3, 2, 4]


def test_mix_batch_appends_flagged_policy_rows_with_common_padding():
    expert = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.tensor([[1, 1, 1, 1]]),
              "labels": torch.tensor([[-100, 6, 7, 8]])}
    r = build_rollout([[5], [5, 6]], [[9, 10, 11, EOS], [EOS]], [EOS], 0)
    out = mix_batch(expert, r, pad_token_id=0)
    assert out["is_expert"].tolist() == [True, False, False]
    assert out["input_ids"].shape == (3, 5)
    assert out["input_ids"][0].tolist() == [5, 6, 7, 8, 0] and out["labels"][0].tolist() == [-100, 6, 7, 8, -100]
    assert out["attention_mask"][0].tolist() == [1, 1, 1, 1, 0]
    assert out["labels"][1].tolist() == [-100, 9, 10, 11, EOS]
    assert out["labels"][2].tolist() == [-100, -100, EOS, -100, -100]
    with pytest.raises(ValueError, match="padding_free"):
        mix_batch({k: v for k, v in expert.items() if k != "attention_mask"}, r, 0)


def test_left_pad_and_choose_prompt_rows():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_token_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    labels = torch.tensor([[-100, 1], [-100, -100], [-100, 2]])  # row 1 has nothing to learn: never chosen
    rows = choose_prompt_rows(labels, 5, torch.Generator().manual_seed(0))
    assert len(rows) == 5 and set(rows) == {0, 2}
    assert sorted(choose_prompt_rows(labels, 2, torch.Generator().manual_seed(0))) == [0, 2]


def test_sample_completions_with_a_tiny_model(tiny):
    model, tok = tiny
    prompts = [tok("12+3=")["input_ids"], tok("7*8=")["input_ids"]]
    comps = sample_completions(model, prompts, max_new_tokens=6, eos_token_ids=[tok.eos_token_id],
                               pad_token_id=tok.pad_token_id)
    assert len(comps) == 2 and all(len(c) == 6 for c in comps)
    assert model.training  # mode restored (the fixture's model starts in training mode)
    r = build_rollout(prompts, comps, [tok.eos_token_id], tok.pad_token_id)
    assert r.input_ids[0, : len(prompts[0])].tolist() == prompts[0]


def test_sample_buffer_refresh_and_round_trip(tmp_path):
    buf = SampleBuffer(generate_every=3)
    r = build_rollout([[5, 6]], [[7, EOS]], [EOS], 0)
    assert buf.needs_refresh(0, step=0)
    entry = buf.put(0, r, step=0)
    entry.extras["old_logprob"] = torch.tensor([[0.0, -1.5, -0.25]])
    assert not buf.needs_refresh(0, 2) and buf.needs_refresh(0, 3) and buf.needs_refresh(1, 0)
    buf.save(tmp_path, rank=1)
    other = SampleBuffer(generate_every=3)
    assert not other.load(tmp_path, rank=0)
    assert other.load(tmp_path, rank=1)
    e = other.get(0)
    assert e.step == 0 and torch.equal(e.rollout.input_ids, r.input_ids) and torch.equal(e.rollout.ended, r.ended)
    assert torch.equal(e.extras["old_logprob"], entry.extras["old_logprob"])
    assert json.loads((tmp_path / "tirl_sample_buffer" / "rank-1.json").read_text())["entries"]["0"]["step"] == 0
    assert not list((tmp_path / "tirl_sample_buffer").glob(".*"))  # no temporary file left behind


# --------------------------------------------------------------------------------------------------------------------
# The trainer


def trl_rows(tokenizer, n=64, split="train", seed=0):
    return Dataset.from_list(to_trl(load_rows("arithmetic", split=split, limit=n, seed=seed), tokenizer))


def common_args(tmp_path, **kw):
    args = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=16, max_steps=2,
        report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
        logging_steps=1, seed=0, disable_tqdm=True,
    )
    args.update(kw)
    return args


def test_trainer_alpha_zero_is_offline_iqlearn(tiny, tmp_path):
    """With α = 0 nothing is sampled and one SGD step gives exactly the offline trainer's parameters."""
    model, tok = tiny
    model = model.double()
    ds = trl_rows(tok, n=8)
    step = dict(max_steps=1, optim="sgd", learning_rate=1e-2, max_grad_norm=0.0, lr_scheduler_type="constant")
    off = IQLearnTrainer(copy.deepcopy(model), IQLearnConfig(**common_args(tmp_path, **step), iq_lambda=0.2),
                         train_dataset=ds, processing_class=tok)
    on = OnlineIQLearnTrainer(copy.deepcopy(model), OnlineIQLearnConfig(**common_args(tmp_path, **step), iq_lambda=0.2,
                                                                        iq_alpha=0.0), train_dataset=ds, processing_class=tok)
    off.train()
    on.train()
    for a, b in zip(off.model.parameters(), on.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    assert len(on.sampler.buffer) == 0


def test_trainer_mixes_flagged_policy_rows_with_correct_masks(tiny, tmp_path):
    model, tok = tiny
    cfg = OnlineIQLearnConfig(**common_args(tmp_path, max_steps=1), iq_alpha=0.5, max_new_tokens=12)
    tr = OnlineIQLearnTrainer(model, cfg, train_dataset=trl_rows(tok), processing_class=tok)
    seen = {}
    original = tr.compute_loss

    def spy(model, inputs, *a, **k):
        seen.update({k2: v.clone() for k2, v in inputs.items() if isinstance(v, torch.Tensor)})
        seen["expert_batch"] = {k2: v.clone() for k2, v in expert_batch.items()}
        return original(model, inputs, *a, **k)

    tr.compute_loss = spy
    expert_batch = dict(next(iter(tr.get_train_dataloader())))
    n_items = (expert_batch["labels"][:, 1:] != -100).sum()
    tr.training_step(tr.model, dict(expert_batch), n_items)
    B = expert_batch["input_ids"].shape[0]
    assert seen["is_expert"].tolist() == [True] * B + [False] * 2  # round(0.5 × 4) policy rows
    Le = expert_batch["input_ids"].shape[1]
    assert torch.equal(seen["input_ids"][:B, :Le], expert_batch["input_ids"])  # expert rows untouched
    assert torch.equal(seen["labels"][:B, :Le], expert_batch["labels"])
    prompts = prompts_from_batch(expert_batch["input_ids"], expert_batch["attention_mask"], expert_batch["labels"])
    entry = tr.sampler.buffer.get(0)
    for i in range(2):
        row_ids, row_labels, row_mask = seen["input_ids"][B + i], seen["labels"][B + i], seen["attention_mask"][B + i]
        n_prompt = int((row_labels == -100).int().argmin())  # first completion position
        assert row_ids[:n_prompt].tolist() in prompts  # the prompt of one of the batch's rows
        completion = row_labels[row_labels != -100].tolist()
        assert 1 <= len(completion) <= 12
        assert tok.eos_token_id not in completion[:-1]  # nothing after the first EOS is an action
        assert entry.rollout.ended[i].item() == (completion[-1] == tok.eos_token_id)
        assert int(row_mask.sum()) == n_prompt + len(completion)  # padding after it is not attended
    logged = tr.metrics.values("train")
    assert logged["policy_fraction"][-1] == pytest.approx(2 / (B + 2))
    assert {"reward/expert_mean", "reward/policy_mean", "time/generation"} <= set(logged)


def fixed_completions(prompts, eos):
    """A deterministic stand-in for sampling: each prompt's completion depends on the prompt only (2 to 6 tokens,
    one in three cut without EOS), so differently split runs see the same policy rows."""
    out = []
    for p in prompts:
        h = sum(p) + len(p)
        out.append([5 + (h * (i + 3)) % 60 for i in range(2 + h % 5)] + ([eos] if h % 3 else []))
    return out


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_online_gradient_accumulation_matches_large_batch(tiny, tmp_path, reduction):
    """PDB=2 × GAS=2 gives the same loss and update as PDB=4 × GAS=1 for online IQLearn (the policy terms are means
    over the policy rows of the whole accumulated batch), and the logged value_gap is the float64 one of each batch."""
    model, tok = tiny
    model = model.double()
    ds = trl_rows(tok, n=8)
    runs = []
    for pdb, gas in ((4, 1), (2, 2)):
        cfg = OnlineIQLearnConfig(**common_args(tmp_path, max_steps=1, per_device_train_batch_size=pdb,
                                                gradient_accumulation_steps=gas, learning_rate=1e-2, optim="sgd",
                                                max_grad_norm=0.0, lr_scheduler_type="constant"),
                                  iq_lambda=0.2, iq_alpha=0.5, iq_gamma=0.9, iq_reduction=reduction,
                                  num_policy_samples=pdb, max_new_tokens=8)
        tr = OnlineIQLearnTrainer(copy.deepcopy(model), cfg, train_dataset=ds, processing_class=tok)
        tr.sampler.generate = lambda model, prompts: fixed_completions(prompts, tok.eos_token_id)
        seen = []
        original = tr.compute_loss

        def spy(model, inputs, *a, original=original, seen=seen, **k):
            seen.append({k2: v.clone() for k2, v in inputs.items() if isinstance(v, torch.Tensor)})
            return original(model, inputs, *a, **k)

        tr.compute_loss = spy
        tr.train()
        log = next(h for h in tr.state.log_history if "loss" in h)
        # value_gap oracle: E_π[V − γV'] − E_E[V − γV'] per micro-batch (token means, float64, the step's weights),
        # averaged over the micro-batches like every logged metric
        gaps = []
        for batch in seen:
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            qv = L.qv_from_logits(logits, batch["labels"])
            v_next, td_mask = L.next_values(qv, tok.eos_token_id)
            gap = (qv.v - 0.9 * v_next) * td_mask
            expert = batch["is_expert"][:, None] & qv.mask
            policy = ~batch["is_expert"][:, None] & qv.mask
            gaps.append(gap[policy].sum() / policy.sum() - gap[expert].sum() / expert.sum())
        assert len(seen) == gas and all(int((~b["is_expert"]).sum()) == pdb for b in seen)
        assert log["value_gap"] == pytest.approx(float(sum(gaps) / len(gaps)), rel=1e-9, abs=1e-9)
        runs.append((log["loss"], torch.cat([p.detach().flatten() for p in tr.model.parameters()])))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-9)
    assert torch.allclose(runs[0][1], runs[1][1], atol=1e-9)


@pytest.mark.slow
def test_short_online_training_lowers_eval_loss(tiny, tmp_path):
    """About 30 s of online IQLearn (α = 0.1, fresh samples each step) on the generated task lowers the eval loss."""
    model, tok = tiny
    train, evald = trl_rows(tok, n=800), trl_rows(tok, n=48, split="test")
    cfg = OnlineIQLearnConfig(**common_args(tmp_path, max_steps=120, per_device_train_batch_size=8, learning_rate=3e-3,
                                            logging_steps=20), iq_lambda=0.1, iq_alpha=0.1, max_new_tokens=32)
    tr = OnlineIQLearnTrainer(model, cfg, train_dataset=train, eval_dataset=evald, processing_class=tok)
    before = tr.evaluate()
    tr.train()
    after = tr.evaluate()
    assert after["eval_loss"] < before["eval_loss"] - 1.0
    assert after["eval_mle_loss"] < before["eval_mle_loss"] - 1.0
    train_logs = [h for h in tr.state.log_history if "policy_fraction" in h]
    assert train_logs and all(h["policy_fraction"] == pytest.approx(1 / 9) for h in train_logs)
    assert all(h["time/generation"] > 0 for h in train_logs)


def test_resume_restores_the_sample_buffer(tiny, tmp_path):
    model, tok = tiny
    ds = trl_rows(tok)
    kw = common_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    cfg = OnlineIQLearnConfig(**kw, iq_alpha=0.5, max_new_tokens=10, generate_every=4)
    tr = OnlineIQLearnTrainer(copy.deepcopy(model), cfg, train_dataset=ds, processing_class=tok)
    tr.train()
    saved = tr.sampler.buffer.get(0)
    assert (tmp_path / "checkpoint-2" / "tirl_sample_buffer" / "rank-0.json").is_file()

    cfg2 = OnlineIQLearnConfig(**{**kw, "max_steps": 3}, iq_alpha=0.5, max_new_tokens=10, generate_every=4)
    tr2 = OnlineIQLearnTrainer(copy.deepcopy(model), cfg2, train_dataset=ds, processing_class=tok)
    calls = []
    tr2.sampler.generate = lambda *a, **k: calls.append(1) or pytest.fail("resumed run regenerated instead of reusing")
    tr2.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    restored = tr2.sampler.buffer.get(0)
    assert restored.step == saved.step == 0 and restored.uses == saved.uses + 1
    assert torch.equal(restored.rollout.input_ids.cpu(), saved.rollout.input_ids.cpu())
    assert not calls


def test_lora_online_trains_only_adapters(tiny, tmp_path):
    from peft import LoraConfig

    model, tok = tiny
    cfg = OnlineIQLearnConfig(**common_args(tmp_path, max_steps=3, learning_rate=1e-2), iq_alpha=0.5, max_new_tokens=8)
    tr = OnlineIQLearnTrainer(model, cfg, train_dataset=trl_rows(tok), processing_class=tok,
                              peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                     task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train()
    changed = {n for n, p in tr.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)
    assert any("policy_fraction" in h for h in tr.state.log_history)


def test_config_validation_and_vllm_refusal(tiny, tmp_path):
    with pytest.raises(ValueError, match="packing"):
        OnlineIQLearnConfig(output_dir=str(tmp_path), packing=True)
    with pytest.raises(ValueError):
        OnlineIQLearnConfig(output_dir=str(tmp_path), iq_alpha=1.5)
    with pytest.raises(ValueError):
        OnlineIQLearnConfig(output_dir=str(tmp_path), generate_every=0)
    model, tok = tiny
    with pytest.raises((ImportError, RuntimeError), match="vllm|GPU"):
        OnlineIQLearnTrainer(model, OnlineIQLearnConfig(**common_args(tmp_path), use_vllm=True),
                             train_dataset=trl_rows(tok, n=8), processing_class=tok)
    with pytest.raises(TypeError, match="OnlineIQLearnConfig"):
        OnlineIQLearnTrainer(model, IQLearnConfig(**common_args(tmp_path)), train_dataset=trl_rows(tok, n=8),
                             processing_class=tok)


def test_rollout_to_and_tensors_round_trip():
    r = build_rollout([[1]], [[2, 3]], [3], 0)
    again = Rollout(**{k: v for k, v in r.tensors().items()})
    assert torch.equal(again.labels, r.labels) and again.num_rows == 1


@pytest.mark.slow
def test_cli_online_run_finishes(tmp_path):
    from test_cli import run_cli

    out = tmp_path / "run"
    proc = run_cli("train", "--method", "iqlearn-online", "--model", "tiny-llama", "--dataset", "arithmetic",
                   "--num_train_examples", "32", "--num_eval_examples", "8", "--max_steps", "4",
                   "--per_device_train_batch_size", "4", "--iq_alpha", "0.25", "--max_new_tokens", "16",
                   "--save_steps", "4", "--logging_steps", "2", "--output_dir", str(out), "--bf16", "false",
                   "--disable_tqdm", "true", "--report_to", "none")
    assert "tirl train finished" in proc.stdout
    assert (out / "checkpoint-4" / "tirl_sample_buffer" / "rank-0.safetensors").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "iqlearn-online"
    assert (out / "training_curves.png").is_file()


def test_cli_help_documents_each_methods_options():
    from tirl.cli.train import build_parser, selected_method

    for method, flags in (("iqlearn-online", ("--iq_alpha", "--generate_every", "--max_new_tokens", "--use_vllm")),
                          ("gail", ("--gail_disc_model", "--mle_weight", "--gail_kl_coef", "--generate_every"))):
        parser = build_parser(["--method", method])
        undocumented = [a.option_strings[0] for a in parser._actions if a.option_strings and not (a.help or "").strip()]
        assert not undocumented, f"{method}: options without help: {undocumented}"
        text = parser.format_help()
        for flag in flags:
            assert flag in text, (method, flag)
    base = build_parser([]).format_help()
    assert "--gail_disc_model" not in base and "--method gail --help" in base
    assert selected_method(["--method=gail"]) == "gail" and selected_method([]) == "iqlearn"


def test_cli_reads_the_method_from_a_yaml_config(tmp_path):
    from tirl.cli.train import build_parser

    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: iqlearn-online\niq_alpha: 0.3\nmodel_name_or_path: tiny-llama\n")
    argv = ["--config", str(cfg)]
    script, config, _ = build_parser(argv).parse_args_and_config(argv)
    assert script.method == "iqlearn-online" and isinstance(config, OnlineIQLearnConfig) and config.iq_alpha == 0.3


def test_vllm_path_is_wired_like_trl(tiny, tmp_path, monkeypatch):
    """No GPU or vLLM here: a stand-in for TRL's `VLLMGeneration` checks that we pass arguments its real signature
    accepts, and that its completions become rollouts. The real vLLM path is untested."""
    import importlib
    import inspect

    vg = importlib.import_module("trl.generation.vllm_generation")
    generation = importlib.import_module("trl.generation")
    import_utils = importlib.import_module("trl.import_utils")

    real_signature = inspect.signature(vg.VLLMGeneration.__init__)
    seen = {}

    class FakeVLLM:
        def __init__(self, *args, **kwargs):
            real_signature.bind(self, *args, **kwargs)  # raises on any argument TRL does not take
            seen["init"] = kwargs

        def sync_weights(self):
            seen["synced"] = seen.get("synced", 0) + 1

        def generate(self, prompts, images, num_generations):
            seen["prompts"] = prompts
            return prompts, [[7, 8, tok.eos_token_id, 9]] * len(prompts), None, None

    monkeypatch.setattr(import_utils, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(generation, "VLLMGeneration", FakeVLLM, raising=False)  # exported only with vLLM
    model, tok = tiny
    cfg = OnlineIQLearnConfig(**common_args(tmp_path, max_steps=1), use_vllm=True, vllm_mode="server", iq_alpha=0.5,
                              max_new_tokens=5)
    tr = OnlineIQLearnTrainer(model, cfg, train_dataset=trl_rows(tok), processing_class=tok)
    assert seen["init"]["mode"] == "server" and seen["init"]["max_completion_length"] == 5
    assert (seen["init"]["repetition_penalty"], seen["init"]["min_p"], seen["init"]["top_k"]) == (1.0, 0.0, 0)
    tr.train()
    assert seen["synced"] == 1 and len(seen["prompts"]) == 2
    r = tr.sampler.buffer.get(0).rollout
    assert r.ended.all() and (r.labels != -100).sum(-1).tolist() == [3, 3]  # cut after the EOS
