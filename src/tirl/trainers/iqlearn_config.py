"""`IQLearnConfig`: TRL's `SFTConfig` plus the IQLearn knobs (METHOD.md §2)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import SFTConfig


def accelerator_available() -> bool:
    """Whether any non-CPU device transformers can train on is present."""
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


@dataclass
class IQLearnConfig(SFTConfig):
    r"""
    Configuration for [`IQLearnTrainer`]: every `SFTConfig` / `TrainingArguments` option, plus the offline IQLearn
    objective  L = E[−log π(a_t|s_t)] + λ·E[r_t²],  r_t = Q(s_t,a_t) − γ·V(s_{t+1})  (METHOD.md §2).

    With `iq_lambda=0` the trainer computes exactly TRL's SFT loss. Differences from `SFTConfig`'s defaults: on a
    machine without a GPU, `use_cpu` is switched on (TRL's bf16 default otherwise refuses to start on CPU).

    Parameters:
        iq_lambda (`float`, defaults to `0.01`):
            λ, the weight of the TD / χ² term E[r²]. 0 is plain MLE. The paper sweeps it and gives no default;
            METHOD.md suggests 0.1 (unconfirmed). Raw logits make r of order 10 at the start (E[r²] ≈ 80 for
            SmolLM2), so the TD term starts large: with λ = 0.1 or more, 40 steps on GSM8k flattened SmolLM2's
            sampling distribution (entropy of sampled tokens 4.5 nats against 1.8 after MLE; samples no longer
            fluent; benchmarks/quality.py), while λ = 0.01 kept it and was also the best IQLearn setting on the
            known-expert grammar.
        iq_gamma (`float`, defaults to `0.99`):
            γ, the discount in r_t = Q(s_t,a_t) − γ·V(s_{t+1}). Unconfirmed default (METHOD.md).
        iq_chunk_size (`int`, defaults to `1024`):
            Rows of hidden states pushed through the LM head at once by the chunked loss, which never builds the
            [batch, seq, vocab] logits. 0 uses the model's full logits instead (the simple reference path).
        iq_reduction (`str`, defaults to `"token"`):
            `"token"`: both terms are sums over completion tokens divided by the number of completion tokens in the
            accumulated batch (TRL's SFT normalisation). `"sequence"`: each sequence's token mean, averaged.
        iq_stop_grad_next (`bool`, defaults to `False`):
            Stop the gradient through V(s_{t+1}) in the TD term (a target-network-like ablation; the paper's
            objective differentiates through it).
        iq_value (`str`, defaults to `"logits"`):
            How V(s) is parameterised (METHOD.md §1; the policy is softmax(logits) in every form). `"logits"`:
            V = logsumexp(logits), Q = logits. `"reference"`: V = LSE_θ − LSE_θ0, relative to the starting model
            (computed once over the dataset before training and cached in the run directory; no second model is
            held; online trainers use their frozen reference for their samples), so V ≡ 0 and r_t = log π_θ0 at the
            start instead of r_t ≈ 30. `"head"`: V = v_ψ(h), a zero-initialised linear head on the final hidden
            state, trained with the model and saved beside it (`value_head.safetensors`).
        iq_lambda_warmup_steps (`int`, defaults to `0`):
            Ramp λ linearly from 0 (plain MLE) to `iq_lambda` over this many optimizer steps. 0: full λ from the
            first step. Evaluation always uses the full λ.
        entropy_coef (`float`, defaults to `0.0`):
            β of entropy-regularised MLE, the paper's other baseline: subtracts β·E[H(π(·|s_t))] over the expert
            completion tokens. Combine with `iq_lambda=0` (`--method mle`) for the baseline itself.
    """

    iq_lambda: float = field(
        default=0.01,
        metadata={"help": "λ: weight of the TD (χ²) term E[r_t²] added to the MLE loss. 0 = plain MLE/SFT."},
    )
    iq_gamma: float = field(
        default=0.99,
        metadata={"help": "γ: discount in the implicit reward r_t = Q(s_t,a_t) − γ·V(s_{t+1})."},
    )
    iq_chunk_size: int = field(
        default=1024,
        metadata={
            "help": "Rows per chunk of the LM-head loss that never builds [batch, seq, vocab] logits; 0 = use the "
            "model's full logits (reference path)."
        },
    )
    iq_reduction: str = field(
        default="token",
        metadata={
            "help": "How token terms are averaged: 'token' (over all completion tokens, like SFT) or 'sequence' "
            "(per-sequence mean, then mean over sequences).",
            "choices": ["token", "sequence"],
        },
    )
    iq_stop_grad_next: bool = field(
        default=False,
        metadata={"help": "Stop the gradient through V(s_{t+1}) in the TD term (ablation)."},
    )
    iq_value: str = field(
        default="logits",
        metadata={
            "help": "Parameterisation of V(s): 'logits' (V = logsumexp of the logits), 'reference' (V = logsumexp "
            "minus the starting model's, so V = 0 at the start) or 'head' (a zero-initialised scalar head on the "
            "final hidden state). The policy is the model's softmax in every form.",
            "choices": ["logits", "reference", "head"],
        },
    )
    iq_lambda_warmup_steps: int = field(
        default=0,
        metadata={"help": "Ramp λ linearly from 0 (MLE) to iq_lambda over this many steps (0 = no warm-up)."},
    )
    entropy_coef: float = field(
        default=0.0,
        metadata={"help": "β of entropy-regularised MLE: subtract β·E[H(π(·|s_t))] on expert tokens (0 = off)."},
    )

    def __post_init__(self):
        if not self.use_cpu and not accelerator_available():
            self.use_cpu = True
        super().__post_init__()
        if self.iq_lambda < 0:
            raise ValueError(f"iq_lambda must be >= 0, got {self.iq_lambda}")
        if not 0.0 <= self.iq_gamma <= 1.0:
            raise ValueError(f"iq_gamma must be in [0, 1], got {self.iq_gamma}")
        if self.iq_chunk_size < 0:
            raise ValueError(f"iq_chunk_size must be >= 0 (0 = unchunked), got {self.iq_chunk_size}")
        if self.iq_reduction not in ("token", "sequence"):
            raise ValueError(f"iq_reduction must be 'token' or 'sequence', got {self.iq_reduction!r}")
        if self.iq_value not in ("logits", "reference", "head"):
            raise ValueError(f"iq_value must be 'logits', 'reference' or 'head', got {self.iq_value!r}")
        if self.iq_lambda_warmup_steps < 0:
            raise ValueError(f"iq_lambda_warmup_steps must be >= 0, got {self.iq_lambda_warmup_steps}")
        if self.entropy_coef < 0:
            raise ValueError(f"entropy_coef must be >= 0, got {self.entropy_coef}")
