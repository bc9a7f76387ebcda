"""Patch a causal LM so that `model(..., labels=labels, tirl_head=...)` computes, from the final hidden states and the
LM head weight, either the per-token `QV` in the objective's value form (`HeadCall`: the two-pass chunked head) or the
loss itself through a fused head (`FusedLossCall`: the single-pass IQ head, the GEM head), whose gradient is formed in
this forward. Each call type has one result type.

The [batch, seq, vocab] logits never exist. Without `tirl_head` the original forward runs, so generation and every
other caller are unchanged. This mirrors TRL's `add_fused_lm_head` (which returns only log-probabilities; IQLearn needs
V as well) and stacks on top of it. The head runs inside the model's forward, so DDP/FSDP wrappers and their hooks see
one ordinary forward (the value head of `iq_value="head"` is a submodule called there too).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import types
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor
from trl.trainer.utils import maybe_gather_lm_head_ctx

from ..losses import (
    NO_COUNTS,
    QV,
    Counts,
    LossOutput,
    Objective,
    ValueForm,
    chunked_gem_loss,
    qv_from_hidden,
    single_pass_iq_loss,
)
from .inputs import value_input_of


@dataclass
class HeadCall:
    """`model(..., tirl_head=HeadCall(...))` returns the `QV` of the labels in `objective.iq_value`'s form (the
    two-pass head; the loss is taken from it outside). `value_column` is the batch's column of the value form's input
    [B, T − 1] (`ValueInput.take`: LSE_θ0 in the reference form), None for a form without one.
    """

    objective: Objective
    value_column: torch.Tensor | None = None


@dataclass
class FusedLossCall:
    """`model(..., tirl_head=FusedLossCall(...))` returns the `LossOutput` of `objective` through a fused head
    (`fused_loss`). `value_column` as in `HeadCall`; `counts` the global counts the loss divides by.
    """

    objective: Objective
    value_column: torch.Tensor | None = None
    counts: Counts = NO_COUNTS


def _check_plain_logits(model: torch.nn.Module) -> None:
    config = model.config.get_text_config()
    if getattr(config, "final_logit_softcapping", None) is not None or getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        raise NotImplementedError(
            f"{type(model).__name__} transforms its logits (soft-capping or scaling), which the chunked IQ loss does not "
            "reproduce; use iq_chunk_size=0 to compute the loss from the model's own logits."
        )


def compile_chunks(hidden: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the chunked heads run their per-chunk maths through `torch.compile` (`tirl.losses.chunked_head`).

    `TIRL_FUSED_HEAD=auto` (default): on CUDA devices where Triton, torch.compile's GPU backend, is installed and
    supported (compute capability 7.0 or newer). `1`: also elsewhere (CPU needs a C++ compiler). `0`: never.
    Float64 inputs (the gradient tests) and LM heads with a bias always take the eager path (neither is benchmarked
    compiled)."""
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


def _head_kwargs(model: torch.nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The hidden states on the head's device, the head weight, and the keywords every chunked head takes: the bias,
    the compile choice and the ZeRO-3 gather."""
    weight, bias = _head_parameters(model)
    h = hidden.to(weight.device)
    return h, weight, {"bias": bias, "compiled": compile_chunks(h, bias),
                       "gather": functools.partial(maybe_gather_lm_head_ctx, weight, bias)}


def value_input(form: ValueForm, model: torch.nn.Module, hidden: torch.Tensor,
                value_column: torch.Tensor | None) -> torch.Tensor | None:
    """The input `form` reads besides the logits ([B, T − 1], on the hidden states' device), as its `ValueInput`
    computes it from `model`, its final hidden states [B, T, D] and the batch's `value_column`; None in the logits
    form."""
    x = value_input_of(form).compute(model, hidden, value_column)
    return None if x is None else x.to(hidden.device)


def head_qv(model: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024,
            form: ValueForm | None = None, value_column: torch.Tensor | None = None) -> QV:
    """Q and V from final hidden states [B, T, D] through `model`'s LM head, in chunks (`losses.qv_from_hidden`), in
    `form` (None: the logits form; `value_column`: `value_input`'s).

    Where the head's parameters are sharded, they are made whole here: FSDP2 (DTensor) parameters are gathered once
    (`_head_parameters`), and ZeRO-3 partitions through TRL's `maybe_gather_lm_head_ctx`, which the chunked head
    enters in forward and again in backward."""
    h, weight, kw = _head_kwargs(model, hidden)
    qv = qv_from_hidden(h, weight, labels.to(weight.device), chunk_size=chunk_size, **kw)
    if form is None:
        return qv
    return form.apply(qv, value_input(form, model, h, value_column))


def fused_loss(model: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, call: FusedLossCall,
               chunk_size: int = 1024) -> LossOutput:
    """The loss of `call.objective` from final hidden states [B, T, D] through `model`'s LM head in one pass, the
    gradient formed in this forward: the single-pass IQ head (`losses.single_pass_iq_loss`), or the GEM head for
    `loss_type="gem"`. The same loss, gradients and statistics as the two-pass head plus the loss in the run's value
    form. ZeRO-3's gather is entered once, around the loss's autograd node and its forward (TRL's pattern)."""
    h, weight, kw = _head_kwargs(model, hidden)
    o = call.objective
    loss_fn = chunked_gem_loss if o.loss_type == "gem" else single_pass_iq_loss
    return loss_fn(h, weight, labels.to(weight.device), o, call.counts,
                   value_input(o.iq_value, model, h, call.value_column), chunk_size=chunk_size, **kw)


def model_qv(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
             chunk_size: int = 1024, form: ValueForm | None = None, value_column: torch.Tensor | None = None) -> QV:
    """Per-token Q and V of any causal LM (PEFT-wrapped or not), without patching it and without full logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _check_plain_logits(base)
    hidden = base.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return head_qv(base, hidden, labels, chunk_size, form, value_column)


def add_qv_head(model: torch.nn.Module, chunk_size: int = 1024) -> None:
    """Add the `tirl_head=HeadCall(...)` (a `QV`) and `tirl_head=FusedLossCall(...)` (a `LossOutput`) paths to
    `model.forward` (a `PreTrainedModel` for causal LM; patch before PEFT wraps it)."""
    _check_plain_logits(model)
    previous_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, tirl_head: HeadCall | FusedLossCall | None = None, **kwargs):
        if tirl_head is None:
            return previous_forward(*args, **kwargs)
        labels = kwargs.pop("labels")
        kwargs.pop("num_items_in_batch", None)
        kwargs["use_cache"] = False
        # looked up on each call: PEFT and FSDP replace the modules after patching
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if isinstance(tirl_head, FusedLossCall):
            return fused_loss(self, hidden, labels, tirl_head, chunk_size)
        return head_qv(self, hidden, labels, chunk_size, tirl_head.objective.iq_value, tirl_head.value_column)

    model.forward = types.MethodType(forward, model)


def has_qv_head(model: torch.nn.Module) -> bool:
    return "tirl_head" in getattr(model.forward, "__code__", types.SimpleNamespace(co_varnames=())).co_varnames


__all__ = ["FusedLossCall", "HeadCall", "add_qv_head", "compile_chunks", "fused_loss", "has_qv_head", "head_qv",
           "model_qv", "value_input"]
