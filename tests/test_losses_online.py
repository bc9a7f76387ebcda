"""tirl.losses.iq, online IQLearn: L_on against a token-by-token loop, α = 0 is offline IQLearn (loss and gradients),
which terms see the policy rows, the telescoping caveat, and exact accumulation with global counts."""

import pytest
import torch

from reference import EOS, batch_counts, mixed_batch, objective, online_loop_reference
from tirl import losses as L


@pytest.mark.parametrize("alpha,lam,gamma", [(0.1, 0.1, 0.99), (0.5, 1.0, 1.0), (1.0, 0.03, 0.5)])
def test_online_loss_matches_online_loop_reference(alpha, lam, gamma):
    logits, labels, is_expert = mixed_batch()
    out = L.online_iq_loss_from_qv(L.qv_from_logits(logits, labels), is_expert,
                                   objective(iq_lambda=lam, iq_gamma=gamma, iq_alpha=alpha))
    ref = online_loop_reference(logits, labels, is_expert, alpha, lam, gamma)
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
    o = objective(iq_lambda=0.3, iq_gamma=0.99, iq_reduction=reduction, iq_alpha=0.0)
    counts = L.Counts(tokens=n_items)
    online = L.online_iq_loss_from_qv(qv_mixed, is_expert, o, counts)
    offline = L.iq_loss_from_qv(qv_expert, o, counts)
    assert abs(online.loss.item() - offline.loss.item()) < 1e-10
    g_on = torch.autograd.grad(online.loss, params, retain_graph=True)
    g_off = torch.autograd.grad(offline.loss, params)
    # the first parameter is per row (logits or hidden states); W is shared by all rows
    assert torch.allclose(g_on[0][:3], g_off[0][:3], atol=1e-10)
    assert torch.count_nonzero(g_on[0][3:]) == 0  # policy rows are not in the α = 0 graph
    for a, b in zip(g_on[1:], g_off[1:], strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    assert online.td_loss.item() == pytest.approx(offline.td_loss.item(), abs=1e-12)
    assert online.mle_loss.item() == pytest.approx(offline.mle_loss.item(), abs=1e-12)


def test_policy_terms_choose_what_sees_policy_samples():
    logits, labels, is_expert = mixed_batch()
    qv = L.qv_from_logits(logits, labels)
    def loss(lam, policy_terms):
        o = objective(iq_lambda=lam, iq_gamma=0.9, iq_alpha=0.4, iq_policy_terms=policy_terms)
        return L.online_iq_loss_from_qv(qv, is_expert, o).loss

    def policy_grad(lam, policy_terms):
        return torch.autograd.grad(loss(lam, policy_terms), logits, retain_graph=True)[0][3:]

    # −log π never touches policy rows: with λ = 0 and only the TD term mixed, they get no gradient at all
    assert torch.count_nonzero(policy_grad(0.0, "td")) == 0
    assert torch.count_nonzero(policy_grad(0.0, "value")) > 0
    assert torch.count_nonzero(policy_grad(0.1, "td")) > 0
    both, td, value = loss(0.1, "both"), loss(0.1, "td"), loss(0.1, "value")
    offline = L.iq_loss_from_qv(L.restrict_rows(qv, is_expert), objective(iq_lambda=0.1, iq_gamma=0.9)).loss
    # the two policy terms add up: both − offline = (td − offline) + (value − offline)
    assert (both - offline).item() == pytest.approx((td - offline).item() + (value - offline).item(), abs=1e-10)


def test_value_term_telescopes_to_zero_for_matching_rows_gamma_one():
    """docs/method.md §2: with γ = 1, per-sequence sums and V(terminal) = 0, E_π[V − V'] − E_E[V − V'] = V(s_0) − V(s_0).

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
    v_next, td_mask = L.next_values(qv, (EOS,))
    gap = (qv.v - v_next) * td_mask
    assert gap[0].sum().item() == pytest.approx(gap[1].sum().item(), abs=1e-10)  # both telescope to V(s_0)
    out = L.online_iq_loss_from_qv(qv, torch.tensor([True, False]),
                                   objective(iq_lambda=0.0, iq_gamma=1.0, iq_alpha=0.5))
    assert abs(out.value_gap.item()) > 1e-3  # per-token means: 5 vs 3 tokens, so it does not cancel


@pytest.mark.parametrize("reduction", ["token", "sequence"])
@pytest.mark.parametrize("policy_terms", ["both", "td", "value"])
def test_accumulated_micro_batches_equal_one_batch(reduction, policy_terms):
    """Micro-batches with different shares of expert and policy rows, each given the whole batch's counts, sum to the
    one-batch loss (values and gradients): gradient accumulation and data parallelism are exact for L_on."""
    logits, labels, is_expert = mixed_batch()
    o = objective(iq_lambda=0.2, iq_gamma=0.95, iq_reduction=reduction, iq_alpha=0.3, iq_policy_terms=policy_terms)
    full = L.online_iq_loss_from_qv(L.qv_from_logits(logits, labels), is_expert, o).loss
    counts = batch_counts(labels, is_expert)
    parts = sum(L.online_iq_loss_from_qv(L.qv_from_logits(logits[rows], labels[rows]), is_expert[rows], o, counts).loss
                for rows in ([0, 3], [1, 2, 4]))
    assert abs(full.item() - parts.item()) < 1e-10
    g_full, g_parts = (torch.autograd.grad(x, logits, retain_graph=True)[0] for x in (full, parts))
    assert torch.allclose(g_full, g_parts, atol=1e-12)
    if reduction == "token" and policy_terms == "both":  # and both are docs/method.md's L_on, token by token
        assert abs(parts.item() - online_loop_reference(logits, labels, is_expert, 0.3, 0.2, 0.95).item()) < 1e-10


def test_the_objective_checks_the_online_settings():
    with pytest.raises(ValueError, match=r"iq_alpha must be a finite number in \[0, 1\], got 1.5"):
        objective(iq_alpha=1.5)
    with pytest.raises(ValueError, match="iq_policy_terms must be one of both, td, value, got 'all'"):
        objective(iq_policy_terms="all")
