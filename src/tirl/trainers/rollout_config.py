"""`RolloutConfig`: the sampling options shared by the online trainers (online IQLearn, GAIL)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .iqlearn_config import IQLearnConfig

VLLM_MODES = ("colocate", "server")


@dataclass
class RolloutConfig(IQLearnConfig):
    r"""
    `IQLearnConfig` plus how policy samples are drawn during training (the base of `OnlineIQLearnConfig` and
    `GAILConfig`; not a method of its own).

    Policy samples are completions the model generates for the prompts of the current batch. They are regenerated
    every `generate_every` optimizer steps and reused in between; each process samples for the prompts of its own
    shard, each micro-batch for its own prompts. Packed or padding-free batches are not supported (a row must be one
    prompt + completion).

    Parameters:
        generate_every (`int`, defaults to `1`):
            Regenerate the policy samples every this many optimizer steps (1 = fresh samples at every step).
        max_new_tokens (`int`, defaults to `128`):
            Longest sampled completion, in tokens. A sample that reaches it without EOS is truncated: its last TD term
            is dropped, as for expert rows cut by `max_length`.
        temperature (`float`, defaults to `1.0`):
            Sampling temperature. 1 samples from the policy being trained; other values sample from another policy.
        top_k (`int`, defaults to `0`):
            Top-k sampling (0 = off: the whole vocabulary).
        top_p (`float`, defaults to `1.0`):
            Nucleus sampling (1 = off).
        num_policy_samples (`int` or `None`, defaults to `None`):
            Completions sampled per micro-batch (one per prompt, prompts drawn from the micro-batch without
            replacement). Default: the method's (online IQLearn: max(1, round(iq_alpha × batch size)); GAIL: the
            batch size).
        use_vllm (`bool`, defaults to `False`):
            Sample with vLLM instead of `model.generate` (needs vLLM and a CUDA GPU; refused at start-up otherwise,
            never silently replaced). Follows TRL's GRPO vLLM integration (`trl.generation.VLLMGeneration`).
        vllm_mode (`str`, defaults to `"colocate"`):
            `"colocate"`: vLLM runs inside each training process; `"server"`: requests go to `trl vllm-serve`.
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
    use_vllm: bool = field(
        default=False,
        metadata={"help": "Sample with vLLM (needs the vllm package and a CUDA GPU; refused otherwise). Untested in "
                  "tirl's CI, which has no GPU."},
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={"help": "vLLM mode: 'colocate' (vLLM inside each training process) or 'server' (a separate "
                  "`trl vllm-serve` process).", "choices": list(VLLM_MODES)},
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "Colocate mode: fraction of GPU memory vLLM may use."}
    )
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "Colocate mode: tensor-parallel size of vLLM."})
    vllm_enable_sleep_mode: bool = field(
        default=False, metadata={"help": "Colocate mode: offload vLLM's weights and cache during the optimizer step."}
    )
    vllm_max_model_length: int | None = field(
        default=None, metadata={"help": "Colocate mode: vLLM context length (default: from the model config)."}
    )
    vllm_server_base_url: str | None = field(
        default=None, metadata={"help": "Server mode: base URL of the vLLM server (overrides host and port)."}
    )
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "Server mode: host of the vLLM server."})
    vllm_server_port: int = field(default=8000, metadata={"help": "Server mode: port of the vLLM server."})
    vllm_server_timeout: float = field(
        default=240.0, metadata={"help": "Server mode: seconds to wait for the vLLM server to come up."}
    )
    vllm_group_port: int = field(
        default=51216, metadata={"help": "Server mode: port of the weight-update group with the vLLM server."}
    )

    def __post_init__(self):
        super().__post_init__()
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
