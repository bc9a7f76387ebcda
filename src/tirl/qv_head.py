"""Patch a causal LM so `model(..., labels=labels, qv_head=True)` returns per-token Q(s_t,a_t) and V(s_t).

The patched forward runs the backbone, then `losses.qv_from_hidden` on the final hidden states and the LM head
weight, so the [batch, seq, vocab] logits never exist. Without `qv_head=True` the original forward runs, so generation
and every other caller are unchanged. This mirrors TRL's `add_fused_lm_head` (which returns only log-probabilities;
IQLearn needs V as well) and stacks on top of it.
"""

from __future__ import annotations

import functools
import types

import torch
from torch.distributed.tensor import DTensor

from .losses import QV, qv_from_hidden, with_value
from .value_head import get_value_head


def _check_plain_logits(model: torch.nn.Module) -> None:
    config = model.config.get_text_config()
    if getattr(config, "final_logit_softcapping", None) is not None or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        raise NotImplementedError(
            f"{type(model).__name__} transforms its logits (soft-capping or scaling), which the chunked IQ loss does not "
            "reproduce; use iq_chunk_size=0 to compute the loss from the model's own logits."
        )


def head_qv(model: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> QV:
    """Q and V from final hidden states [B, T, D] through `model`'s LM head, in chunks (see `losses.qv_from_hidden`)."""
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    if isinstance(weight, DTensor):  # FSDP2 shards: gather the head once, not once per chunk
        weight = weight.full_tensor()
        bias = bias.full_tensor() if isinstance(bias, DTensor) else bias
    from trl.trainer.utils import maybe_gather_lm_head_ctx  # ZeRO-3: gather the head parameters

    with maybe_gather_lm_head_ctx(weight, bias):
        qv = qv_from_hidden(hidden.to(weight.device), weight, labels.to(weight.device), chunk_size=chunk_size, bias=bias)
    return with_head_value(model, qv, hidden)


def with_head_value(model: torch.nn.Module, qv: QV, hidden: torch.Tensor) -> QV:
    """`qv` with V = v_ψ(h_t) when `model` has a value head (`iq_value="head"`, `tirl.value_head`), else unchanged."""
    head = get_value_head(model)
    if head is None:
        return qv
    return with_value(qv, head(hidden[:, :-1].to(qv.v.device)))


def model_qv(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
             chunk_size: int = 1024) -> QV:
    """Per-token Q and V of any causal LM (PEFT-wrapped or not) without patching it and without full logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _check_plain_logits(base)
    hidden = base.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return head_qv(base, hidden, labels, chunk_size)


def add_qv_head(model: torch.nn.Module, chunk_size: int = 1024) -> None:
    """Add the `qv_head=True` path to `model.forward` (a `PreTrainedModel` for causal LM; patch before PEFT wraps it)."""
    _check_plain_logits(model)
    previous_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, qv_head: bool = False, **kwargs):
        if not qv_head:
            return previous_forward(*args, **kwargs)
        labels = kwargs.pop("labels")
        kwargs.pop("num_items_in_batch", None)
        kwargs["use_cache"] = False
        # looked up on each call: PEFT and FSDP replace the modules after patching
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        return head_qv(self, hidden, labels, chunk_size)

    model.forward = types.MethodType(forward, model)


def has_qv_head(model: torch.nn.Module) -> bool:
    return "qv_head" in getattr(model.forward, "__code__", types.SimpleNamespace(co_varnames=())).co_varnames


__all__ = ["QV", "add_qv_head", "has_qv_head", "head_qv", "model_qv", "with_head_value"]
