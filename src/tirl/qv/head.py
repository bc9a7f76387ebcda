"""Patch a causal LM so `model(..., labels=labels, qv_head=True)` returns per-token Q(s_t,a_t) and V(s_t), and
`model(..., labels=labels, iq_loss={...})` the offline IQ loss through the single-pass head.

The patched forward runs the backbone, then `losses.qv_from_hidden` (or `losses.single_pass_iq_loss`, whose gradient
is formed in this forward pass) on the final hidden states and the LM head weight, so the [batch, seq, vocab] logits
never exist. Without either keyword the original forward runs, so generation and every other caller are unchanged.
This mirrors TRL's `add_fused_lm_head` (which returns only log-probabilities; IQLearn needs V as well) and stacks on
top of it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import types

import torch
from torch.distributed.tensor import DTensor
from trl.trainer.utils import maybe_gather_lm_head_ctx

from ..losses import QV, SinglePassLossOutput, qv_from_hidden, single_pass_iq_loss, with_value
from .value_head import get_value_head


def _check_plain_logits(model: torch.nn.Module) -> None:
    config = model.config.get_text_config()
    if getattr(config, "final_logit_softcapping", None) is not None or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        raise NotImplementedError(
            f"{type(model).__name__} transforms its logits (soft-capping or scaling), which the chunked IQ loss does not "
            "reproduce; use iq_chunk_size=0 to compute the loss from the model's own logits."
        )


def compile_chunks(hidden: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the chunked head runs its per-chunk maths through `torch.compile` (`tirl.losses.chunked_head`).

    `TIRL_FUSED_HEAD=auto` (default): on CUDA devices where Triton, torch.compile's GPU backend, is installed and
    supported (compute capability 7.0 or newer). `1`: also elsewhere (CPU needs a C++ compiler). `0`: never.
    Float64 inputs (the gradient tests) and LM heads with a bias always take the eager path, as before the compiled
    path existed (neither was benchmarked compiled)."""
    mode = os.environ.get("TIRL_FUSED_HEAD", "auto").lower()
    if mode in ("0", "false", "no", "off") or bias is not None or hidden.dtype == torch.float64:
        return False
    if mode != "auto":
        return True
    if not hidden.is_cuda or importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.get_device_capability(hidden.device)[0] >= 7


def _head_parameters(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight and bias, FSDP2 (DTensor) shards gathered once (not once per chunk; `full_tensor` is
    differentiable, so their gradients go back sharded). ZeRO-3 partitions stay as they are: the chunked heads enter
    TRL's `maybe_gather_lm_head_ctx` themselves (`gather`)."""
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
        bias = bias.full_tensor() if isinstance(bias, DTensor) else bias
    return weight, bias


def head_qv(model: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> QV:
    """Q and V from final hidden states [B, T, D] through `model`'s LM head, in chunks (`losses.qv_from_hidden`).

    Where the head's parameters are sharded, they are made whole here: FSDP2 (DTensor) parameters are gathered once
    (`_head_parameters`), and ZeRO-3 partitions through TRL's `maybe_gather_lm_head_ctx`, which the chunked head
    enters in forward and again in backward."""
    weight, bias = _head_parameters(model)
    h = hidden.to(weight.device)
    qv = qv_from_hidden(h, weight, labels.to(weight.device), chunk_size=chunk_size, bias=bias,
                        compiled=compile_chunks(h, bias), gather=functools.partial(maybe_gather_lm_head_ctx, weight, bias))
    return with_head_value(model, qv, hidden)


def head_iq_loss(model: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024, *,
                 reference_v: torch.Tensor | None = None, **objective) -> SinglePassLossOutput:
    """The offline IQ loss of final hidden states [B, T, D] through `model`'s LM head in one pass
    (`losses.single_pass_iq_loss`, its keywords in `objective`): the same loss, gradients and statistics as
    `iq_loss_from_qv(head_qv(...), **objective)` in the run's value form, the gradient formed in this forward.

    The value form: V = v_ψ(h_t) when `model` has a value head (`iq_value="head"`), V = LSE_θ − LSE_θ0 with
    `reference_v` [B, T − 1] (`iq_value="reference"`), else the logits form. The head's parameters are made whole and
    the per-chunk maths compiled as for `head_qv`; ZeRO-3's gather is entered once, around the loss's autograd node
    and its forward (backward applies the stored gradients; TRL's pattern for fused losses)."""
    weight, bias = _head_parameters(model)
    h = hidden.to(weight.device)
    value_head = get_value_head(model)
    value = None if value_head is None else value_head(hidden[:, :-1].to(weight.device))
    if reference_v is not None:
        reference_v = reference_v.to(weight.device)
    return single_pass_iq_loss(h, weight, labels.to(weight.device), chunk_size=chunk_size, bias=bias, value=value,
                               reference_v=reference_v, compiled=compile_chunks(h, bias),
                               gather=functools.partial(maybe_gather_lm_head_ctx, weight, bias), **objective)


def with_head_value(model: torch.nn.Module, qv: QV, hidden: torch.Tensor) -> QV:
    """`qv` with V = v_ψ(h_t) when `model` has a value head (`iq_value="head"`, `tirl.qv.value_head`), else unchanged."""
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
    """Add the `qv_head=True` and `iq_loss={...}` paths to `model.forward` (a `PreTrainedModel` for causal LM; patch
    before PEFT wraps it). `iq_loss` holds `head_iq_loss`'s keywords: the objective, its counts and `reference_v`.
    Both run inside the model's forward, so DDP/FSDP wrappers and their hooks see one ordinary forward."""
    _check_plain_logits(model)
    previous_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, qv_head: bool = False, iq_loss: dict | None = None, **kwargs):
        if not qv_head and iq_loss is None:
            return previous_forward(*args, **kwargs)
        labels = kwargs.pop("labels")
        kwargs.pop("num_items_in_batch", None)
        kwargs["use_cache"] = False
        # looked up on each call: PEFT and FSDP replace the modules after patching
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if iq_loss is not None:
            return head_iq_loss(self, hidden, labels, chunk_size, **iq_loss)
        return head_qv(self, hidden, labels, chunk_size)

    model.forward = types.MethodType(forward, model)


def has_qv_head(model: torch.nn.Module) -> bool:
    return "qv_head" in getattr(model.forward, "__code__", types.SimpleNamespace(co_varnames=())).co_varnames


__all__ = ["QV", "add_qv_head", "compile_chunks", "has_qv_head", "head_iq_loss", "head_qv", "model_qv",
           "with_head_value"]
