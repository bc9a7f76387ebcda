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
    assert torch.allclose(qv.q, full.q, atol=1e-5) and torch.allclose(qv.v, full.v, atol=1e-5)
