"""Groups of options the trainer configs are composed of, each declared once (the configs are flat siblings, as TRL's).

    QVArguments        how every tirl trainer reads Q and V and averages its losses: iq_chunk_size, iq_head, iq_value,
                       iq_gamma, iq_reduction
    TDArguments        the TD term of the IQLearn objectives: iq_lambda, iq_stop_grad_next
    SamplingArguments  how the online trainers draw policy samples: generate_every, max_new_tokens, temperature, top_k,
                       top_p, num_policy_samples, and TRL's vLLM options (`VLLMArguments`)

A config is `SFTConfig` plus the groups its trainer reads plus its own fields (`IQLearnConfig`, `OnlineIQLearnConfig`,
`GAILConfig`); the groups are listed before `SFTConfig` among the bases, so their options come after TRL's in
`--help`. Each group validates its own fields (`check_*`), called from the config's `__post_init__`.

The vLLM options are not copied: `VLLMArguments` is built from TRL's `GRPOConfig`, taking each `vllm_<name>` field
whose `<name>` TRL's vLLM backend (`VLLMGeneration`) accepts, with TRL's defaults and help, and `use_vllm`.
`vllm_generation_kwargs` maps them back onto `VLLMGeneration`'s parameters.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import GRPOConfig
from trl.generation import vllm_generation

from ..losses import POLICY_TERMS, VALUE_FORMS

REDUCTIONS = ("token", "sequence")
IQ_HEADS = ("auto", "two_pass")
VLLM_MODES = ("colocate", "server")


def accelerator_available() -> bool:
    """Whether any non-CPU device transformers can train on is present."""
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def default_to_cpu(config) -> None:
    """Switch `use_cpu` on where there is no accelerator: TRL's bf16 default otherwise refuses to start on CPU.
    Called by every tirl config before `SFTConfig.__post_init__`."""
    if not config.use_cpu and not accelerator_available():
        config.use_cpu = True


@dataclass
class QVArguments:
    """How Q and V are read and losses averaged; every tirl trainer has these (see `IQLearnConfig` for the maths)."""

    iq_chunk_size: int = field(
        default=1024,
        metadata={
            "help": "Rows per chunk of the LM-head loss that never builds [batch, seq, vocab] logits; 0 = use the "
            "model's full logits (reference path)."
        },
    )
    iq_head: str = field(
        default="auto",
        metadata={
            "help": "The chunked LM-head loss: 'auto' computes the offline loss's gradient in its forward pass (one pass "
            "through the head, the cost of a fused cross-entropy) wherever it applies: training with iq_chunk_size > 0 "
            "and without fp16. Elsewhere (evaluation, the online and GAIL policy terms, fp16), and always with "
            "'two_pass', Q and V come from the head in forward and its logits are recomputed in backward.",
            "choices": list(IQ_HEADS),
        },
    )
    iq_value: str = field(
        default="reference",
        metadata={
            "help": "Parameterisation of V(s): 'logits' (V = logsumexp of the logits), 'reference' (V = logsumexp "
            "minus the starting model's, so V = 0 at the start) or 'head' (a zero-initialised scalar head on the "
            "final hidden state). The policy is the model's softmax in every form.",
            "choices": list(VALUE_FORMS),
        },
    )
    iq_gamma: float = field(
        default=0.99,
        metadata={"help": "γ: discount in the implicit reward r_t = Q(s_t,a_t) − γ·V(s_{t+1})."},
    )
    iq_reduction: str = field(
        default="token",
        metadata={
            "help": "How token terms are averaged: 'token' (over all completion tokens, like SFT) or 'sequence' "
            "(per-sequence mean, then mean over sequences).",
            "choices": list(REDUCTIONS),
        },
    )

    def check_qv(self) -> None:
        if not 0.0 <= self.iq_gamma <= 1.0:
            raise ValueError(f"iq_gamma must be in [0, 1], got {self.iq_gamma}")
        if self.iq_chunk_size < 0:
            raise ValueError(f"iq_chunk_size must be >= 0 (0 = unchunked), got {self.iq_chunk_size}")
        if self.iq_reduction not in REDUCTIONS:
            raise ValueError(f"iq_reduction must be 'token' or 'sequence', got {self.iq_reduction!r}")
        if self.iq_head not in IQ_HEADS:
            raise ValueError(f"iq_head must be 'auto' or 'two_pass', got {self.iq_head!r}")
        if self.iq_value not in VALUE_FORMS:
            raise ValueError(f"iq_value must be 'logits', 'reference' or 'head', got {self.iq_value!r}")


@dataclass
class TDArguments:
    """The TD term λ·E[r²] of offline and online IQLearn."""

    iq_lambda: float = field(
        default=0.01,
        metadata={"help": "λ: weight of the TD (χ²) term E[r_t²] added to the MLE loss. 0 = plain MLE/SFT."},
    )
    iq_stop_grad_next: bool = field(
        default=False,
        metadata={"help": "Stop the gradient through V(s_{t+1}) in the TD term (ablation)."},
    )

    def check_td(self) -> None:
        if self.iq_lambda < 0:
            raise ValueError(f"iq_lambda must be >= 0, got {self.iq_lambda}")


# --------------------------------------------------------------------------------------------------------------------
# Sampling, with TRL's vLLM options
# --------------------------------------------------------------------------------------------------------------------

_VLLM_PARAMETERS = set(inspect.signature(vllm_generation.VLLMGeneration.__init__).parameters)


def _vllm_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """(name, type, field) of `use_vllm` and every `GRPOConfig.vllm_<p>` with `p` a `VLLMGeneration` parameter."""
    hints = typing.get_type_hints(GRPOConfig)
    out = []
    for f in dataclasses.fields(GRPOConfig):
        if f.name == "use_vllm" or (f.name.startswith("vllm_") and f.name.removeprefix("vllm_") in _VLLM_PARAMETERS):
            out.append((f.name, hints[f.name], field(default=f.default, metadata=dict(f.metadata))))
    return out


VLLMArguments = dataclasses.make_dataclass("VLLMArguments", _vllm_fields())
VLLMArguments.__module__ = __name__
VLLMArguments.__doc__ = ("TRL's vLLM options (`GRPOConfig`'s `use_vllm` and the `vllm_*` fields its `VLLMGeneration` "
                         "takes), with TRL's defaults and help.")


def vllm_generation_kwargs(config) -> dict[str, Any]:
    """`VLLMGeneration`'s keyword arguments that come from `VLLMArguments`: `vllm_<p>` → `p`."""
    return {f.name.removeprefix("vllm_"): getattr(config, f.name)
            for f in dataclasses.fields(VLLMArguments) if f.name != "use_vllm"}


@dataclass
class SamplingArguments(VLLMArguments):
    """How policy samples are drawn during training (online IQLearn, GAIL; `tirl.trainers.sampler`).

    Policy samples are completions the model generates for the prompts of the current batch. They are regenerated
    every `generate_every` optimizer steps and reused in between; each process samples for the prompts of its own
    shard, each micro-batch for its own prompts. Packed or padding-free batches are not supported (a row must be one
    prompt + completion). `use_vllm` samples with vLLM through TRL's `VLLMGeneration` (needs vLLM and a CUDA GPU;
    refused at start-up otherwise, never silently replaced; untested in tirl's CI, which has no GPU).
    """

    generate_every: int = field(
        default=1,
        metadata={"help": "Regenerate the policy samples every this many optimizer steps (1 = fresh samples each step; "
                  "in between, the last samples are reused)."},
    )
    max_new_tokens: int = field(
        default=128,
        metadata={"help": "Longest sampled completion in tokens; a sample cut here without EOS is treated as truncated."},
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature for policy samples (1 = the policy being trained)."}
    )
    top_k: int = field(default=0, metadata={"help": "Top-k sampling for policy samples (0 = off)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus (top-p) sampling for policy samples (1 = off)."})
    num_policy_samples: int | None = field(
        default=None,
        metadata={"help": "Completions sampled per micro-batch, one per prompt of the batch. Default: online IQLearn "
                  "max(1, round(iq_alpha x batch size)), GAIL the batch size."},
    )

    def check_sampling(self) -> None:
        if self.generate_every < 1:
            raise ValueError(f"generate_every must be >= 1, got {self.generate_every}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (sampling), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.num_policy_samples is not None and self.num_policy_samples < 0:
            raise ValueError(f"num_policy_samples must be >= 0, got {self.num_policy_samples}")
        if self.vllm_mode not in VLLM_MODES:
            raise ValueError(f"vllm_mode must be one of {VLLM_MODES}, got {self.vllm_mode!r}")
        if self.packing or self.padding_free:
            raise ValueError(
                "online methods sample completions for the prompts of each batch, which needs one prompt + completion "
                "per row: packing and padding_free are not supported; set packing=False and padding_free=False."
            )


__all__ = ["POLICY_TERMS", "QVArguments", "SamplingArguments", "TDArguments", "VLLMArguments", "accelerator_available",
           "default_to_cpu", "vllm_generation_kwargs"]
