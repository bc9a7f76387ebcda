"""tirl.losses.chunked_head: the chunked head equals full logits (values, statistics and gradients, float64, bias or
not), under bf16 autocast, for an all-masked batch, and run eagerly or compiled."""

import pytest
import torch
import torch.nn.functional as F

from reference import PartitionedHead, compile_devices, logits_of, make_batch, objective
from tirl import losses as L


@pytest.mark.parametrize("chunk", [1, 5, 7, 1024])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_chunked_equals_naive_values_and_gradients_float64(chunk, bias, reduction):
    h, W, b, labels = make_batch(bias=bias)
    params = (h, W) + ((b,) if bias else ())
    o = objective(iq_lambda=0.3, iq_gamma=0.9, iq_reduction=reduction)
    naive = L.iq_loss(logits_of(h, W, b), labels, o)
    chunked = L.chunked_iq_loss(h, W, labels, o, chunk_size=chunk, bias=b)
    assert abs(naive.loss.item() - chunked.loss.item()) < 1e-10
    for key in ("mle_loss", "td_loss", "mean_reward", "mean_value"):
        assert abs(getattr(naive, key).item() - getattr(chunked, key).item()) < 1e-10, key
    g_naive = torch.autograd.grad(naive.loss, params)
    g_chunk = torch.autograd.grad(chunked.loss, params)
    for a, c in zip(g_naive, g_chunk, strict=True):
        assert (a - c).abs().max().item() < 1e-6


def test_partitioned_head_is_gathered_in_forward_and_in_backward():
    """A ZeRO-3-like head (its data empty outside `gather`): the values and gradients are the whole head's, the
    gradient has the whole weight's shape, and `gather` is entered once for forward and once for backward."""
    h, W, _, labels = make_batch()
    o = objective(iq_lambda=0.3, iq_gamma=0.9)
    ref = L.iq_loss_from_qv(L.qv_from_hidden(h, W, labels, chunk_size=5), o)
    g_ref = torch.autograd.grad(ref.loss, (h, W))
    head = PartitionedHead(W)
    out = L.iq_loss_from_qv(L.qv_from_hidden(h, head.param, labels, chunk_size=5, gather=head.gather), o)
    assert head.entered == 1 and head.param.shape == (0,)
    assert abs(out.loss.item() - ref.loss.item()) < 1e-12
    g_h, g_w = torch.autograd.grad(out.loss, (h, head.param))
    assert head.entered == 2 and g_w.shape == W.shape
    for a, c in zip(g_ref, (g_h, g_w), strict=True):
        assert (a - c).abs().max().item() < 1e-12


def test_chunked_stats_match_naive():
    h, W, _, labels = make_batch()
    a = L.qv_from_logits(logits_of(h, W), labels)
    c = L.qv_from_hidden(h, W, labels, chunk_size=4)
    assert torch.allclose(a.logit, c.logit) and torch.allclose(a.lse, c.lse)
    assert torch.allclose(a.entropy, c.entropy, atol=1e-10)
    assert torch.equal(a.is_top1, c.is_top1)


def test_chunked_under_bf16_autocast_is_close_to_fp32():
    h, W, _, labels = make_batch(B=4, T=64, D=32, V=300, dtype=torch.float32)
    ref = L.iq_loss(logits_of(h, W), labels, objective(iq_lambda=0.1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = L.chunked_iq_loss(h, W, labels, objective(iq_lambda=0.1), chunk_size=64)
    assert abs(out.loss.item() - ref.loss.item()) / ref.loss.item() < 2e-2
    g = torch.autograd.grad(out.loss, W, retain_graph=True)[0]
    g_ref = torch.autograd.grad(ref.loss, W)[0]
    assert F.cosine_similarity(g.flatten(), g_ref.flatten(), dim=0) > 0.99


def test_all_masked_micro_batch_gives_differentiable_zero():
    h, W, _, labels = make_batch()
    labels[:] = -100
    out = L.chunked_iq_loss(h, W, labels, objective(iq_lambda=0.1))
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    assert W.grad is not None and torch.all(W.grad == 0)


def test_chunk_size_must_be_positive():
    h, W, _, labels = make_batch()
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        L.qv_from_hidden(h, W, labels, chunk_size=0)


@pytest.mark.slow
@pytest.mark.parametrize("device", compile_devices())
@pytest.mark.parametrize("autocast", [False, True])
def test_compiled_head_matches_the_eager_one(device, autocast):
    """The per-chunk maths through torch.compile (the CUDA default, `tirl.qv.head.compile_chunks`) gives the eager
    chunked head's values and gradients: one function, two ways to run it."""
    h, W, _, labels = make_batch(B=4, T=40, D=32, V=300, dtype=torch.float32)
    h, W, labels = h.detach().to(device), W.detach().to(device), labels.to(device)
    results = {}
    for compiled in (False, True):
        hh, WW = h.clone().requires_grad_(), W.clone().requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            out = L.chunked_iq_loss(hh, WW, labels, objective(iq_lambda=0.1), chunk_size=48,  # 3 full chunks + 1 short
                                    compiled=compiled)
        qv = L.qv_from_hidden(hh.detach(), WW.detach(), labels, chunk_size=48, compiled=compiled)
        results[compiled] = (out.loss.detach(), *torch.autograd.grad(out.loss, [hh, WW]), qv.entropy, qv.is_top1)
    tol = 1e-2 if autocast else 1e-5
    eager, fused = results[False], results[True]
    for a, b in zip(eager[:4], fused[:4], strict=True):
        assert torch.allclose(a, b, rtol=tol, atol=tol), (a - b).abs().max()
    assert (eager[4] == fused[4]).float().mean() > 0.97  # top-1 ties may break differently in bf16
