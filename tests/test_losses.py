"""tirl.losses.mdp and .iq: MLE equivalence, the loop reference, masking, terminals, normalisation, DFT."""

import pytest
import torch
import torch.nn.functional as F

from reference import EOS, logits_of, make_batch, naive_iq_reference, objective
from tirl import losses as L


def test_lambda_zero_is_exactly_mle_and_cross_entropy():
    h, W, _, labels = make_batch(dtype=torch.float32)
    logits = logits_of(h, W)
    iq = L.iq_loss(logits, labels, objective(iq_lambda=0.0, iq_gamma=0.99))
    mle = L.iq_loss(logits, labels, L.MLE)
    logits2 = logits_of(h, W)
    ce = F.cross_entropy(logits2[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.equal(iq.loss, mle.loss)
    assert abs(iq.loss.item() - ce.item()) < 1e-6
    g_iq = torch.autograd.grad(iq.loss, (h, W), retain_graph=True)
    g_ce = torch.autograd.grad(ce, (h, W))
    for a, b in zip(g_iq, g_ce, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("lam,gamma", [(0.1, 0.99), (1.0, 1.0), (0.03, 0.5)])
def test_iq_loss_matches_loop_reference(lam, gamma):
    h, W, _, labels = make_batch()
    ours = L.iq_loss(logits_of(h, W), labels, objective(iq_lambda=lam, iq_gamma=gamma)).loss
    ref = naive_iq_reference(logits_of(h, W), labels, lam, gamma)
    assert abs(ours.item() - ref.item()) < 1e-10


@pytest.mark.parametrize("path", ["naive", "chunked"])
def test_prompt_and_padding_positions_contribute_nothing(path):
    h, W, _, labels = make_batch()
    actions, mask = L.shift_labels(labels)

    def loss_of(hh):
        o = objective(iq_lambda=0.5, iq_gamma=0.9)
        if path == "naive":
            return L.iq_loss(logits_of(hh, W), labels, o).loss
        return L.chunked_iq_loss(hh, W, labels, o, chunk_size=5).loss

    base = loss_of(h)
    # perturb the hidden states of every position whose action is not a completion token, and the last position
    # (its logits predict past the end); the loss must not move and their gradient must be exactly zero
    dead = torch.zeros(labels.shape, dtype=torch.bool)
    dead[:, :-1] = ~mask
    dead[:, -1] = True
    h2 = h.detach().clone()
    h2[dead] += 100 * torch.randn_like(h2[dead])
    assert abs(loss_of(h2).item() - base.item()) < 1e-12
    grad = torch.autograd.grad(base, h)[0]
    assert grad[dead].abs().max().item() == 0.0
    # labels of prompt and padding positions are irrelevant too (only -100 marks them)
    assert grad[~dead].abs().sum() > 0


def test_value_after_eos_is_zero_and_truncation_drops_td():
    h, W, _, labels = make_batch()
    qv = L.qv_from_logits(logits_of(h, W), labels)
    v_next, td_mask = L.next_values(qv, (EOS,))
    rw = L.token_rewards(qv, iq_gamma=0.9, eos_token_ids=(EOS,))
    actions, mask = qv.actions, qv.mask
    eos_pos = (actions == EOS) & mask
    assert eos_pos.sum() == 2
    assert torch.all(v_next[eos_pos] == 0)
    assert torch.allclose(rw.reward[eos_pos], qv.q[eos_pos])  # r = Q(s, EOS) − γ·0
    # row 0: EOS at shifted index 7, then one trailing template token (index 8): MLE yes, TD no
    assert mask[0, 8] and not td_mask[0, 8]
    # r_t is written once (`token_rewards`), and the losses' TD residuals are that very tensor: 0 where undefined
    assert rw.reward[0, 8] == 0 and torch.equal(rw.td_mask, td_mask)
    residual, residual_mask, _ = L.td_residuals(qv, objective(iq_gamma=0.9))
    assert torch.equal(residual, rw.reward) and torch.equal(residual_mask, td_mask)
    # row 1: truncated without EOS, its last action has no TD term, earlier ones do
    last1 = int(mask[1].nonzero().max())
    assert not td_mask[1, last1] and td_mask[1, last1 - 1]
    # no EOS information: every completion end is terminal and keeps its TD term
    v_next2, td2 = L.next_values(qv, ())
    assert td2[1, last1] and v_next2[1, last1] == 0


def test_rewards_telescope_with_gamma_one():
    """Σ_t r_t = log π(y|x) + V(s_0) for an EOS-terminated completion when γ = 1 (docs/method.md §4)."""
    h, W, _, labels = make_batch()
    qv = L.qv_from_logits(logits_of(h, W), labels)
    rw = L.token_rewards(qv, iq_gamma=1.0, eos_token_ids=(EOS,))
    row = 2  # ends with EOS, no trailing tokens
    first = int(qv.mask[row].nonzero().min())
    lhs = rw.reward[row].sum()
    rhs = qv.logprob[row].sum() + qv.v[row, first]
    assert abs(lhs.item() - rhs.item()) < 1e-10


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_gradient_accumulation_normalisation_is_exact(reduction):
    """Micro-batches given the whole batch's counts (num_items_in_batch, num_sequences_in_batch) sum to the one-batch
    loss, values and gradients: Trainer's contract when it passes num_items_in_batch (no division by the steps)."""
    h, W, _, labels = make_batch()
    labels[1, 4:] = -100  # a row without completion tokens: not a sequence of the mean
    o = objective(iq_lambda=0.2, iq_gamma=0.95, iq_reduction=reduction)
    full = L.iq_loss(logits_of(h, W), labels, o).loss
    actions = labels[:, 1:] != -100
    counts = L.Counts(tokens=int(actions.sum()), sequences=int(actions.any(-1).sum()))
    parts = sum(L.iq_loss(logits_of(h[i : i + 1], W), labels[i : i + 1], o, counts).loss for i in range(3))
    assert abs(full.item() - parts.item()) < 1e-10
    for a, b in zip(torch.autograd.grad(full, (h, W)), torch.autograd.grad(parts, (h, W)), strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_sequence_reduction_is_the_mean_of_row_means():
    """reduction="sequence", float64 oracle: the mean over rows with completion tokens of each row's token mean of
    −log π + λ·r², whatever the micro-batch split, once the global number of sequences is given."""
    h, W, _, labels = make_batch(B=4, seed=2)
    labels[3, 4:] = -100
    lam, gamma = 0.3, 0.9
    qv = L.qv_from_logits(logits_of(h, W), labels)
    v_next, td_mask = L.next_values(qv, (EOS,))
    per_token = -qv.logprob + lam * ((qv.q - gamma * v_next) * td_mask) ** 2
    rows = [per_token[b][qv.mask[b]].mean() for b in range(4) if qv.mask[b].any()]
    oracle = sum(rows) / len(rows)
    o = objective(iq_lambda=lam, iq_gamma=gamma, iq_reduction="sequence")
    counts = L.Counts(tokens=999, sequences=len(rows))
    split = sum(L.iq_loss(logits_of(h[s], W), labels[s], o, counts).loss for s in (slice(0, 1), slice(1, 4)))
    assert abs(split.item() - oracle.item()) < 1e-10


def test_stop_grad_next_changes_only_the_gradient():
    h, W, _, labels = make_batch()
    a = L.iq_loss(logits_of(h, W), labels, objective(iq_lambda=0.5))
    b = L.iq_loss(logits_of(h, W), labels, objective(iq_lambda=0.5, iq_stop_grad_next=True))
    assert a.loss.grad_fn is not b.loss.grad_fn
    assert abs(a.loss.item() - b.loss.item()) < 1e-12
    ga, gb = torch.autograd.grad(a.loss, W)[0], torch.autograd.grad(b.loss, W)[0]
    assert not torch.allclose(ga, gb)


@pytest.mark.parametrize("field,value,match", [
    ("iq_reduction", "mean", "iq_reduction must be one of token, sequence"),
    ("iq_lambda", -0.1, "iq_lambda must be a finite number >= 0"),
    ("iq_lambda", float("nan"), "iq_lambda must be a finite number >= 0"),
    ("iq_gamma", 1.5, r"iq_gamma must be a finite number in \[0, 1\]"),
    ("iq_value", "bogus", "iq_value must be one of logits, reference, head"),
    ("loss_type", "ce", "loss_type must be one of nll, dft, gem"),
    ("gem_h", "relu", "gem_h must be one of linear, logsigmoid"),
    ("gem_beta", 0.0, "gem_beta must be a finite number > 0"),
    ("iq_lambda_warmup_steps", -1, "iq_lambda_warmup_steps must be a whole number >= 0"),
])
def test_objective_checks_each_setting_once(field, value, match):
    with pytest.raises(ValueError, match=match):
        L.Objective(**{field: value})


def test_token_loss_baselines_take_no_td_term():
    with pytest.raises(ValueError, match="loss_type='gem' is a baseline of its own"):
        L.Objective(loss_type="gem", iq_lambda=0.1)
    with pytest.raises(ValueError, match="loss_type='dft' is a baseline of its own"):
        L.Objective(loss_type="dft", entropy_coef=0.1)


def test_the_defaults_are_a_users_and_mle_is_the_neutral_objective():
    assert L.Objective() == L.DEFAULTS
    assert (L.DEFAULTS.iq_lambda, L.DEFAULTS.iq_value, L.DEFAULTS.iq_alpha) == (0.01, L.REFERENCE, 0.1)
    assert L.MLE == L.Objective.mle() == L.Objective(iq_lambda=0.0, iq_value="logits", iq_alpha=0.0)
    assert L.Objective.mle(iq_gamma=0.5).iq_gamma == 0.5 and L.MLE.iq_gamma == L.DEFAULTS.iq_gamma


def test_a_run_is_read_with_the_objective_it_trained_with():
    config = {"iq_lambda": 0.3, "iq_gamma": 0.9, "iq_value": "head", "learning_rate": 1e-3, "iq_alpha": None}
    assert L.Objective.from_run({"config": config}) == L.Objective.mle(iq_lambda=0.3, iq_gamma=0.9, iq_value="head")
    assert L.Objective.from_run({}) == L.MLE  # not a tirl run: plain MLE in the logits form
    with pytest.raises(ValueError, match=r"iq_gamma must be a finite number in \[0, 1\]"):
        L.Objective.from_run({"config": {"iq_gamma": 2.0}})


def test_warm_up_ramps_lambda_from_mle():
    o = objective(iq_lambda=0.4, iq_lambda_warmup_steps=4)
    assert [o.at(s).iq_lambda for s in (0, 1, 2, 4, 9)] == [0.0, 0.1, 0.2, 0.4, 0.4]
    assert o.at(None) is o  # evaluation: the full λ
    assert objective(iq_lambda=0.4).at(1) == objective(iq_lambda=0.4)


def test_dft_is_minus_stop_grad_p_times_log_p_float64():
    """loss_type="dft": E[−sg(π(a|s))·log π(a|s)] over completion tokens, value and gradient in float64."""
    h, W, _, labels = make_batch()
    logits = logits_of(h, W)
    ours = L.iq_loss(logits, labels, objective(loss_type="dft")).loss
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)
    mask = labels[:, 1:] != -100
    oracle = (-(logp.exp().detach() * logp) * mask).sum() / mask.sum()
    assert abs(ours.item() - oracle.item()) < 1e-12
    for a, b in zip(torch.autograd.grad(ours, (h, W), retain_graph=True), torch.autograd.grad(oracle, (h, W)),
                    strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    chunked = L.chunked_iq_loss(h, W, labels, objective(loss_type="dft"), chunk_size=4).loss
    assert abs(chunked.item() - oracle.item()) < 1e-12


def test_invalid_arguments():
    h, W, _, labels = make_batch()
    with pytest.raises(ValueError, match="needs every logit of a row"):
        L.iq_loss(logits_of(h, W), labels, objective(loss_type="gem"))
    with pytest.raises(ValueError, match="iq_value='reference' needs its reference_lse"):
        L.iq_loss(logits_of(h, W), labels, objective(iq_value="reference"))
