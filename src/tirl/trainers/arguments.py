"""Groups of options the trainer configs are composed of, each declared once (the configs are flat siblings, as TRL's).

    QVArguments         how every tirl trainer reads Q and V and averages its losses: iq_chunk_size, iq_head,
                        iq_value, iq_gamma, iq_reduction
    TDArguments         the TD term of the IQLearn objectives: iq_lambda, iq_lambda_warmup_steps, iq_stop_grad_next
    TokenLossArguments  the token loss of offline training: loss_type (nll, dft, gem), gem_beta, gem_h, entropy_coef
    SamplingArguments   how the online trainers draw policy samples: generate_every, max_new_tokens, temperature,
                        top_k, top_p, num_policy_samples, and TRL's vLLM options (`VLLMArguments`)

A config is `SFTConfig` plus the groups its trainer reads plus its own fields (`IQLearnConfig`, `OnlineIQLearnConfig`,
`GAILConfig`); the groups are listed before `SFTConfig` among the bases, so their options come after TRL's in `--help`.
The objective's settings are checked once, by `tirl.losses.Objective` (`check_objective`, called from each config's
`__post_init__`, so a bad value fails where the config is made), and their defaults are the objective's
(`tirl.losses.DEFAULTS`); the head and sampling settings are checked by their groups.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..hardware import fast_bf16
from ..losses import DEFAULTS, GEM_H, LOSS_TYPES, POLICY_TERMS, REDUCTIONS, VALUE_FORMS, Objective

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
    """Switch `use_cpu` on where there is no accelerator: TRL's bf16 default otherwise refuses to start on CPU. On a
    CPU, an unset `bf16` (TRL's default: on) is on only where the CPU computes bf16 natively (`tirl.hardware`):
    emulated, it makes training several times slower. Called by every tirl config before `SFTConfig.__post_init__`."""
    if not config.use_cpu and not accelerator_available():
        config.use_cpu = True
    if config.use_cpu and config.bf16 is None and not config.fp16:
        config.bf16 = fast_bf16("cpu")


def check_objective(config) -> Objective:
    """The config's `Objective`, which checks every objective setting (the one place they are checked)."""
    return Objective.from_config(config)


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
            "and without fp16, for loss_type nll and gem. Elsewhere (evaluation, DFT, the online and GAIL policy "
            "terms, fp16), and always with 'two_pass', Q and V come from the head in forward and its logits are "
            "recomputed in backward.",
            "choices": list(IQ_HEADS),
        },
    )
    iq_value: str = field(
        default=DEFAULTS.iq_value.name,
        metadata={
            "help": "Parameterisation of V(s): 'logits' (V = logsumexp of the logits), 'reference' (V = logsumexp "
            "minus the starting model's, so V = 0 at the start; one forward pass of the starting model over the "
            "training rows before the first step) or 'head' (a zero-initialised scalar head on the final hidden "
            "state). The policy is the model's softmax in every form.",
            "choices": list(VALUE_FORMS),
        },
    )
    iq_gamma: float = field(
        default=DEFAULTS.iq_gamma,
        metadata={"help": "γ: discount in the implicit reward r_t = Q(s_t,a_t) − γ·V(s_{t+1})."},
    )
    iq_reduction: str = field(
        default=DEFAULTS.iq_reduction,
        metadata={
            "help": "How token terms are averaged: 'token' (over all completion tokens, like SFT) or 'sequence' "
            "(per-sequence mean, then mean over sequences).",
            "choices": list(REDUCTIONS),
        },
    )

    def check_head(self) -> None:
        if self.iq_chunk_size < 0:
            raise ValueError(f"iq_chunk_size must be >= 0 (0 = unchunked), got {self.iq_chunk_size}")
        if self.iq_head not in IQ_HEADS:
            raise ValueError(f"iq_head must be one of {', '.join(IQ_HEADS)}, got {self.iq_head!r}")


@dataclass
class TDArguments:
    """The TD term λ·E[r²] of offline and online IQLearn."""

    iq_lambda: float = field(
        default=DEFAULTS.iq_lambda,
        metadata={"help": "λ: weight of the TD (χ²) term E[r_t²] added to the MLE loss. 0 = plain MLE/SFT."},
    )
    iq_lambda_warmup_steps: int = field(
        default=DEFAULTS.iq_lambda_warmup_steps,
        metadata={"help": "Ramp λ linearly from 0 (MLE) to iq_lambda over this many optimizer steps (0 = no warm-up)."},
    )
    iq_stop_grad_next: bool = field(
        default=DEFAULTS.iq_stop_grad_next,
        metadata={"help": "Stop the gradient through V(s_{t+1}) in the TD term (ablation)."},
    )


@dataclass
class TokenLossArguments:
    """The token loss of offline training: MLE, or a diversity-preserving baseline (docs/method.md §2)."""

    loss_type: str = field(
        default=DEFAULTS.loss_type,
        metadata={
            "help": "Token loss: 'nll' (−log π, MLE/SFT, plus the TD term for IQLearn), 'dft' (−sg(π)·log π, TRL's "
            "loss_type='dft', Wu et al. 2025) or 'gem' (GEM, Li et al. 2025; --gem_beta, --gem_h). dft and gem take "
            "iq_lambda=0 (`tirl train --method dft|gem` sets it).",
            "choices": list(LOSS_TYPES),
        },
    )
    gem_beta: float = field(
        default=DEFAULTS.gem_beta,
        metadata={"help": "GEM's β: q = softmax(logits/β) spreads the pull towards the target (β → 1: cross-entropy)."},
    )
    gem_h: str = field(
        default=DEFAULTS.gem_h,
        metadata={"help": "GEM's weights: 'linear' (w = 1) or 'logsigmoid' (w_v = sigmoid(0.01·(z_v − z_y)), the "
                  "default of the authors' scripts).", "choices": list(GEM_H)},
    )
    entropy_coef: float = field(
        default=DEFAULTS.entropy_coef,
        metadata={"help": "β of entropy-regularised MLE: subtract β·E[H(π(·|s_t))] on expert tokens (0 = off)."},
    )


# --------------------------------------------------------------------------------------------------------------------
# Sampling, with TRL's vLLM options
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class VLLMArguments:
    """TRL's vLLM options: `GRPOConfig`'s `use_vllm` and the `vllm_*` fields its `VLLMGeneration` takes, with TRL's
    defaults and help (`tests/test_trl_compat.py` checks them against TRL's)."""

    use_vllm: bool = field(default=False, metadata={"help": "Whether to use vLLM for generating completions. If set to "
                           "`True`, the trainer will use vLLM for generation instead of the default model.generate(). "
                           "Requires `vllm` to be installed."})
    vllm_mode: str = field(default="colocate", metadata={"help": "Mode to use for vLLM integration when `use_vllm` is "
                           "set to `True`. Must be one of `'server'` or `'colocate'`. `'server'`: The trainer will send "
                           "generation requests to a separate vLLM server. Make sure a vLLM server is running (start "
                           "with `vllm serve`). `'colocate'`: vLLM will run in the same process and share the training "
                           "GPUs. This avoids the need for a separate server but may cause resource contention with "
                           "training."})
    vllm_model_impl: str = field(default="vllm", metadata={"help": "Model implementation to use for vLLM. Must be one "
                                 "of `transformers` or `vllm`. `transformers`: Use the `transformers` backend for model "
                                 "implementation. `vllm`: Use the `vllm` library for model implementation."})
    vllm_enable_sleep_mode: bool = field(default=False, metadata={"help": "Enable vLLM sleep mode to offload "
                                         "weights/cache during the optimizer step. Keeps GPU memory usage low, but "
                                         "waking the engine adds host–device transfer latency."})
    vllm_structured_outputs_regex: str | None = field(default=None, metadata={"help": "Regex for vLLM structured "
                                                      "outputs. If `None` (default), structured outputs is disabled."})
    vllm_server_base_url: str | None = field(default=None, metadata={"help": "Base URL for the vLLM server (e.g., "
                                             "'http://localhost:8000'). If provided, `vllm_server_host` and "
                                             "`vllm_server_port` are ignored."})
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "Host of the vLLM server to connect to. Ignored "
                                  "if vllm_server_base_url is provided."})
    vllm_server_port: int = field(default=8000, metadata={"help": "Port of the vLLM server to connect to. Ignored if "
                                  "vllm_server_base_url is provided."})
    vllm_server_timeout: float = field(default=240.0, metadata={"help": "Total timeout duration in seconds to wait for "
                                       "the vLLM server to be up. If the server is not up after the timeout, a "
                                       "`ConnectionError` is raised."})
    vllm_group_port: int = field(default=51216, metadata={"help": "Port number for the weight update group. This is "
                                 "used to communicate with the vLLM server. Unless the port is occupied, there is no "
                                 "need to change it."})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "Control the GPU memory utilization for "
                                               "vLLM. This setting only applies when `vllm_mode` is set to "
                                               "`'colocate'`. If you are using `vllm_mode='server'`, this parameter "
                                               "must be passed separately when launching the vLLM server via the "
                                               "`--vllm_gpu_memory_utilization` flag."})
    vllm_max_model_length: int | None = field(default=None, metadata={"help": "Context window for vLLM. Set it to at "
                                              "least the maximum prompt length in the dataset plus "
                                              "`max_completion_length`; if omitted, it is inferred from the model "
                                              "config."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "Control the tensor parallel size for vLLM. "
                                           "This setting only applies when `vllm_mode` is set to `'colocate'`. If you "
                                           "are using `vllm_mode='server'`, this parameter must be passed separately "
                                           "when launching the vLLM server via the `--vllm_tensor_parallel_size` "
                                           "flag."})


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
    sampler: str = field(
        default="packed",
        metadata={"help": "Decoding loop of the policy samples (without vLLM): packed = rows that reached EOS leave "
                  "the batch; generate = transformers' model.generate, every row until the longest ends. Same "
                  "distribution, different random stream.", "choices": ["packed", "generate"]},
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
        if self.sampler not in ("packed", "generate"):
            raise ValueError(f"sampler must be 'packed' or 'generate', got {self.sampler!r}")
        if self.vllm_mode not in VLLM_MODES:
            raise ValueError(f"vllm_mode must be one of {', '.join(VLLM_MODES)}, got {self.vllm_mode!r}")
        if self.packing or self.padding_free:
            raise ValueError(
                "online methods sample completions for the prompts of each batch, which needs one prompt + completion "
                "per row: packing and padding_free are not supported; set packing=False and padding_free=False."
            )


__all__ = ["IQ_HEADS", "POLICY_TERMS", "QVArguments", "SamplingArguments", "TDArguments", "TokenLossArguments",
           "VLLMArguments", "accelerator_available", "check_objective", "default_to_cpu", "vllm_generation_kwargs"]
