"""The frozen initial policy the online trainers hold, prepared for sharded training as TRL's GRPO prepares its own.

GAIL needs it for the KL penalty (log π_ref) and, by default, as its discriminator's trunk; online IQLearn with
`iq_value="reference"` needs the starting model's logsumexp at the states of its samples. It is a frozen copy of the
model the trainer starts from (`frozen_copy`; with LoRA, merged), then prepared like `GRPOTrainer.ref_model`
(`prepare_reference`): DeepSpeed (`trl.models.prepare_deepspeed`), FSDP (`trl.models.prepare_fsdp`), else
`accelerator.prepare_model(..., evaluation_mode=True)` (placed on the device, never wrapped for gradients).

tirl reads the reference's trunk and LM head directly rather than through its `forward` (hidden states shared with
the discriminator, Q and V in chunks), so FSDP2 parameters, sharded when no `forward` runs, are gathered around each
use (`full_parameters`); the LM head then goes through `tirl.qv.head.head_qv`, which handles DTensor and ZeRO-3
heads the same way for the policy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate import Accelerator
from accelerate.utils import is_peft_model
from torch import nn
from torch.distributed.fsdp import FSDPModule
from trl.models import prepare_deepspeed, prepare_fsdp

from ..qv.head import head_qv, model_qv
from ..qv.inputs import ValueInput
from .rollouts import Rollout


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode copy of a causal LM as it is now (the reference / initial policy).

    A PEFT model is copied and merged into a plain model (at the start of training its adapters are the identity, so
    this is the initial policy). Instance-level `forward` patches (such as `tirl.qv.head`'s) are dropped from the copy:
    they hold a reference to the original model's forward.
    """
    ref = copy.deepcopy(model)
    if is_peft_model(ref):
        ref = ref.merge_and_unload()
    for module in ref.modules():
        module.__dict__.pop("forward", None)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref.eval()


def prepare_reference(model: nn.Module, accelerator: Accelerator, *, deepspeed: bool, fsdp: bool) -> nn.Module:
    """`model` prepared for inference next to a policy trained with `accelerator`, exactly as `GRPOTrainer` prepares
    its reference model (`deepspeed`/`fsdp`: the trainer's `is_deepspeed_enabled`/`is_fsdp_enabled`)."""
    if deepspeed:
        return prepare_deepspeed(model, accelerator)
    if fsdp:
        return prepare_fsdp(model, accelerator)
    return accelerator.prepare_model(model, evaluation_mode=True)


@contextmanager
def full_parameters(model: nn.Module) -> Iterator[None]:
    """Within the block, an FSDP2-sharded `model` has its whole parameters on every process (`FSDPModule.unshard`),
    so its submodules can be called directly; resharded after. Nothing to do for other models (DeepSpeed ZeRO-3
    gathers per submodule call, and `head_qv` gathers the LM head)."""
    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


@torch.no_grad()
def starting_model_values(kind: ValueInput, ref: nn.Module, accelerator: Accelerator, rollout: Rollout,
                          chunk_size: int) -> torch.Tensor:
    """The value input `kind` as the frozen reference computes it (`ValueInput.of_starting_model`: LSE_θ0) at every
    position of a rollout's rows, in input-position layout [N, L] (the value at position t belongs to the logits that
    predict token t + 1; the last position holds 0)."""
    with full_parameters(ref), accelerator.autocast():
        values = kind.of_starting_model(model_qv(accelerator.unwrap_model(ref), rollout.input_ids,
                                                 rollout.attention_mask, rollout.labels, chunk_size=chunk_size))
    return torch.nn.functional.pad(values.float(), (0, 1))


@torch.no_grad()
def reference_logprobs(ref: nn.Module, accelerator: Accelerator, batch: dict, hidden: torch.Tensor | None,
                       chunk_size: int) -> torch.Tensor:
    """log π_ref(a_t|s_t) of every action of a collated batch ([B, T − 1]); `hidden`: the reference trunk's final
    hidden states of the batch when already computed (the discriminator shares the trunk), else computed here. Call
    it inside `full_parameters(ref)` (GAIL's discriminator phase holds it for the shared trunk as well)."""
    model = accelerator.unwrap_model(ref)
    if hidden is None:
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  position_ids=batch.get("position_ids"), use_cache=False).last_hidden_state
    return head_qv(model, hidden, batch["labels"], chunk_size=chunk_size).logprob.detach()


__all__ = ["frozen_copy", "full_parameters", "prepare_reference", "reference_logprobs", "starting_model_values"]
