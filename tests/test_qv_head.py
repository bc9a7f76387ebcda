"""tirl.qv.head: Q and V of a model through its LM head, and the choices the chunked head leaves to its caller."""

import pytest
import torch

from tirl import losses as L
from tirl.qv import head as qv_head


def test_the_environment_decides_compilation_here_not_in_the_maths(monkeypatch):
    """`TIRL_FUSED_HEAD` is read by the caller of the chunked head: auto = CUDA with Triton, 1 = always, 0 = never;
    float64 inputs and heads with a bias stay eager."""
    h, bias = torch.zeros(2, 4), torch.zeros(3)
    monkeypatch.setenv("TIRL_FUSED_HEAD", "auto")
    assert not qv_head.compile_chunks(h, None)  # CPU
    assert not qv_head.compile_chunks(h.double(), None) and not qv_head.compile_chunks(h, bias)
    if torch.cuda.is_available():
        import importlib.util

        assert qv_head.compile_chunks(h.cuda(), None) == (importlib.util.find_spec("triton") is not None)
    monkeypatch.setenv("TIRL_FUSED_HEAD", "1")
    assert qv_head.compile_chunks(h, None)
    assert not qv_head.compile_chunks(h.double(), None) and not qv_head.compile_chunks(h, bias)
    monkeypatch.setenv("TIRL_FUSED_HEAD", "0")
    assert not qv_head.compile_chunks(h, None)


@pytest.mark.parametrize("mode,expected", [("0", False), ("1", True)])
def test_head_qv_passes_its_choice_and_the_gather_to_the_chunked_head(tiny, monkeypatch, mode, expected):
    model, tok = tiny
    seen = {}
    real = qv_head.qv_from_hidden

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **{**kwargs, "compiled": False})  # the decision is what is tested, not torch.compile

    monkeypatch.setattr(qv_head, "qv_from_hidden", spy)
    monkeypatch.setenv("TIRL_FUSED_HEAD", mode)
    ids = torch.tensor([tok("12+3=15")["input_ids"]])
    labels = ids.clone()
    labels[:, :4] = -100
    qv = qv_head.model_qv(model, ids, None, labels, chunk_size=4)
    assert seen["compiled"] is expected
    with seen["gather"]():  # a context (ZeRO-3's gather; nothing to do here)
        pass
    full = L.qv_from_logits(model(input_ids=ids).logits, labels)
    assert torch.allclose(qv.logit, full.logit, atol=1e-5) and torch.allclose(qv.lse, full.lse, atol=1e-5)


@pytest.mark.parametrize("form", ["logits", "reference", "head"])
def test_fused_loss_through_the_patched_forward_is_head_qv_plus_the_loss(tiny, monkeypatch, form):
    """`model(..., tirl_head=FusedLossCall(...))` (the single-pass head, `fused_loss`) gives the loss and gradients
    of `iq_loss_from_qv(model(..., tirl_head=HeadCall(...)))` in the same value form, and passes the caller's compile
    choice and gather context on, like `head_qv`."""
    from tirl.qv.value_head import add_value_head

    model, tok = tiny
    model = model.double()
    if form == "head":
        head = add_value_head(model)
        with torch.no_grad():
            head.linear.weight.normal_(0, 0.3)
    qv_head.add_qv_head(model, chunk_size=3)
    seen = {}
    real = qv_head.single_pass_iq_loss

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(qv_head, "single_pass_iq_loss", spy)
    ids = torch.tensor([tok("12+3=15")["input_ids"], tok("4+40=44")["input_ids"]])
    labels = ids.clone()
    labels[:, :4] = -100
    reference_lse = torch.full((2, ids.shape[1] - 1), 2.5, dtype=torch.float64) if form == "reference" else None
    objective = L.Objective(iq_lambda=0.3, iq_gamma=0.9, iq_value=form)
    out = model(input_ids=ids, labels=labels, tirl_head=qv_head.FusedLossCall(objective, reference_lse))
    assert seen["compiled"] is False and seen["chunk_size"] == 3
    with seen["gather"]():
        pass
    qv = model(input_ids=ids, labels=labels, tirl_head=qv_head.HeadCall(objective, reference_lse))
    ref = L.iq_loss_from_qv(qv, objective)
    params = [p for p in model.parameters() if p.requires_grad]
    assert abs(out.loss.item() - ref.loss.item()) < 1e-12
    g_out = torch.autograd.grad(out.loss, params, allow_unused=True)
    g_ref = torch.autograd.grad(ref.loss, params, allow_unused=True)
    for a, b in zip(g_out, g_ref, strict=True):
        assert (a is None) == (b is None)
        assert a is None or torch.allclose(a, b, rtol=0, atol=1e-12)
    assert torch.allclose(out.qv.v, qv.v.detach(), atol=1e-12)
