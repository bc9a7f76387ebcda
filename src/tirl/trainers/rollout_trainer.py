"""`RolloutTrainer`: what the online trainers share — sampling from the batch's prompts, the sample buffer, checkpoints.

The shape follows TRL's GKD trainer: policy samples are drawn under `unwrap_model_for_generation` (PEFT, DDP and
ZeRO-3 safe) and an enlarged batch goes to the ordinary step. Unlike GKD, expert rows are never replaced: the policy
rows are appended and flagged (`is_expert`), and the subclass's `compute_loss` weighs them.

    get_batch_samples():                        the micro-batches of one optimizer step, before its first forward
        for slot, batch in enumerate(micro-batches):
            if the buffer's slot is empty or `generate_every` steps old:   (each process, its own prompts)
                prompts = prompts_from_batch(batch)[chosen rows]
                buffer[slot] = build_rollout(prompts, generate(prompts))
        count the policy tokens and rows of all slots, over all processes  (the policy terms' denominators)
    training_step(model, batch):                once per micro-batch
        batch = mix_batch(batch, buffer[slot])  (+ subclass extras)
        Trainer.training_step(model, batch)     -> compute_loss -> backward

All of a step's samples are drawn before its first forward because the policy terms are means over the policy rows
of the whole accumulated batch (`tirl.losses.online_iq_loss_from_qv`), whose count the first micro-batch's loss
already needs. The weights only change at the optimizer step, so this samples the same policy as drawing each
micro-batch's rows just before its forward would.

Checkpoints also hold each process's sample buffer (`tirl_sample_buffer/rank-<r>.{safetensors,json}`); resuming
restores it, so a run continues with the samples it had. Subclasses add their own state via `save_extra_state` /
`load_extra_state`.
"""

from __future__ import annotations

import os
import time
import warnings

import torch

from ..discriminator import frozen_copy
from ..generation import sample_completions
from ..qv import reference
from ..qv.head import model_qv
from ..rollouts import (
    VALUE_KEYS,
    BufferEntry,
    SampleBuffer,
    build_rollout,
    choose_prompt_rows,
    mix_batch,
    prompts_from_batch,
)
from .iqlearn_trainer import IQLearnTrainer
from .rollout_config import RolloutConfig


class RolloutTrainer(IQLearnTrainer):
    """Base of the online trainers: samples completions for the batch's prompts and keeps them in a `SampleBuffer`.

    Subclasses set `_config_class`, define `num_policy_samples(batch_size)` and `compute_loss`, and may extend
    `mix_inputs` (per-row extras) and `save_extra_state` / `load_extra_state` (checkpointed state).
    """

    _config_class: type[RolloutConfig] = RolloutConfig
    _default_output_dir = "tirl-online"

    def __init__(self, model, args: RolloutConfig | None = None, *pos, **kwargs):
        if args is None:
            args = self._config_class(output_dir=self._default_output_dir)
        if not isinstance(args, self._config_class):
            raise TypeError(f"{type(self).__name__} needs a {self._config_class.__name__}, got {type(args).__name__}")
        super().__init__(model, args, *pos, **kwargs)
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.pad_token_id = int(pad)
        if not self.eos_token_ids:
            warnings.warn(
                "neither the tokenizer nor the model's generation config defines an EOS token: every policy sample "
                f"runs to max_new_tokens={args.max_new_tokens} and is treated as truncated.",
                stacklevel=2,
            )
        self.sample_buffer = SampleBuffer(args.generate_every)
        self._slot = 0
        self._slot_step: int | None = None
        self._step_rollouts: list[tuple[BufferEntry | None, float]] = []  # drawn by get_batch_samples, one per micro-batch
        self.last_step_timing: dict[str, float] = {}
        self.vllm_generation = self._init_vllm() if args.use_vllm else None
        self._vllm_synced_step = -1
        # the initial policy, frozen: GAIL's KL reference and discriminator trunk; with iq_value="reference" the
        # LSE_θ0 of policy samples (the states of expert rows have theirs precomputed, `tirl.qv.reference`)
        self.ref_model = None
        if self.needs_reference_model():
            self.ref_model = frozen_copy(self.accelerator.unwrap_model(self.model)).to(self.accelerator.device)

    def needs_reference_model(self) -> bool:
        """Whether this trainer holds a frozen copy of the initial policy (`ref_model`)."""
        return self.args.iq_value == "reference"

    @torch.no_grad()
    def reference_values(self, rollout) -> torch.Tensor:
        """LSE_θ0 of the frozen reference at every position of the rollout rows, in input-position layout [N, L]."""
        with self.accelerator.autocast():
            qv = model_qv(self.ref_model, rollout.input_ids, rollout.attention_mask, rollout.labels,
                          chunk_size=max(self.args.iq_chunk_size, 256))
        return torch.nn.functional.pad((qv.v * qv.mask).float(), (0, 1))

    # ----------------------------------------------------------------------------------------------------------------
    # Sampling

    def num_policy_samples(self, batch_size: int) -> int:
        """Completions to sample for a micro-batch of `batch_size` expert rows (`num_policy_samples` when set)."""
        if self.args.num_policy_samples is not None:
            return self.args.num_policy_samples
        return batch_size

    def _init_vllm(self):
        """TRL's vLLM generation backend, or a clear error when vLLM or a GPU is missing (never a silent fallback)."""
        from trl.import_utils import is_vllm_available

        if not is_vllm_available():
            raise ImportError(
                "use_vllm=True needs the `vllm` package, which is not installed (TRL 1.16 supports vLLM 0.17 to 0.25: "
                "pip install 'trl[vllm]'). Drop --use_vllm to sample with model.generate."
            )
        if not torch.cuda.is_available():
            raise RuntimeError("use_vllm=True needs a CUDA GPU and none is visible; drop --use_vllm to sample with "
                               "model.generate (the CPU path).")
        a = self.args
        name = getattr(self.accelerator.unwrap_model(self.model), "name_or_path", "") or ""
        if a.vllm_mode == "colocate" and not os.path.isdir(name):
            raise ValueError(
                "vLLM in colocate mode loads the model from a local directory, but this model was built in memory "
                f"(name_or_path={name!r}); save it with save_pretrained and load it from there, or use vllm_mode='server'."
            )
        from trl.generation.vllm_generation import VLLMGeneration

        # untested here (no GPU in tirl's CI): argument for argument what TRL's GRPO trainer passes
        return VLLMGeneration(
            model=self.model,
            accelerator=self.accelerator,
            processing_class=self.processing_class,
            mode=a.vllm_mode,
            server_base_url=a.vllm_server_base_url,
            server_host=a.vllm_server_host,
            server_port=a.vllm_server_port,
            group_port=a.vllm_group_port,
            server_timeout=a.vllm_server_timeout,
            tensor_parallel_size=a.vllm_tensor_parallel_size,
            gpu_memory_utilization=a.vllm_gpu_memory_utilization,
            max_model_length=a.vllm_max_model_length,
            max_num_seqs=a.per_device_train_batch_size * a.vllm_tensor_parallel_size * a.gradient_accumulation_steps,
            enable_sleep_mode=a.vllm_enable_sleep_mode,
            trust_remote_code=a.trust_remote_code,
            temperature=a.temperature,
            top_p=a.top_p,
            top_k=a.top_k,
            # explicit, like every option that changes the sampled distribution (tirl.generation); TRL's defaults too
            repetition_penalty=1.0,
            min_p=0.0,
            max_completion_length=a.max_new_tokens,
            logprobs=None,
        )

    def generate(self, model, prompts: list[list[int]]) -> list[list[int]]:
        """One sampled completion (token ids) per prompt, with vLLM or `model.generate`."""
        a = self.args
        if self.vllm_generation is not None:
            if self.state.global_step != self._vllm_synced_step:  # push the current weights once per optimizer step
                self.vllm_generation.sync_weights()
                self._vllm_synced_step = self.state.global_step
            _, completions, _, _ = self.vllm_generation.generate(prompts=prompts, images=None, num_generations=1)
            return [list(c) for c in completions]
        from trl.models import unwrap_model_for_generation

        with unwrap_model_for_generation(
            model, self.accelerator, gradient_checkpointing_kwargs=a.gradient_checkpointing_kwargs
        ) as unwrapped:
            return sample_completions(
                unwrapped, prompts, max_new_tokens=a.max_new_tokens, eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
            )

    def rollout_for(self, model, inputs: dict, slot: int | None = None) -> tuple[BufferEntry | None, float]:
        """The policy samples for micro-batch `slot` of this step (regenerated when due) and the seconds spent
        generating them. Without `slot`, successive calls within one optimizer step take slots 0, 1, ..."""
        step = self.state.global_step
        if slot is not None:
            self._slot, self._slot_step = slot, step
        elif step != self._slot_step:
            self._slot, self._slot_step = 0, step
        else:
            self._slot += 1
        n = self.num_policy_samples(int(inputs["input_ids"].shape[0]))
        if n <= 0:
            return None, 0.0
        if not self.sample_buffer.needs_refresh(self._slot, step):
            entry = self.sample_buffer.get(self._slot)
            entry.uses += 1
            return entry, 0.0
        labels = inputs["labels"]
        rows = choose_prompt_rows(labels, n)
        if not rows:
            return None, 0.0
        all_prompts = prompts_from_batch(inputs["input_ids"], inputs.get("attention_mask"), labels)
        prompts = [all_prompts[i] for i in rows]
        if any(len(p) == 0 for p in prompts):
            raise ValueError(
                "online methods sample completions for each row's prompt, but a row has no prompt tokens (its labels "
                "start at the first position). Use prompt/completion data (language-modelling rows have no prompt)."
            )
        t0 = time.perf_counter()
        completions = self.generate(model, prompts)
        seconds = time.perf_counter() - t0
        rollout = build_rollout(prompts, completions, self.eos_token_ids, self.pad_token_id, device=labels.device)
        entry = self.sample_buffer.put(self._slot, rollout, step)
        if self.args.iq_value == "reference":  # recorded with the samples, so reused samples keep them
            entry.extras[reference.COLUMN] = self.reference_values(rollout)
        entry.uses = 1
        return entry, seconds

    def mix_inputs(self, model, inputs: dict, entry: BufferEntry) -> dict:
        """The batch the loss sees: expert rows, then the entry's policy rows, flagged by `is_expert`."""
        values = {k: v for k, v in entry.extras.items() if k in VALUE_KEYS}
        return mix_batch(inputs, entry.rollout, self.pad_token_id, policy_values=values)

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        """The micro-batches of one optimizer step (`IQLearnTrainer.get_batch_samples`), with the policy samples of
        each drawn now, and the global count of their completion tokens and rows kept for the loss (`loss_counts`)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._step_rollouts = [self.rollout_for(self.model_wrapped, batch, slot)
                               for slot, batch in enumerate(batch_samples)]
        if num_items_in_batch is not None:
            policy = [entry.rollout.labels for entry, _ in self._step_rollouts if entry is not None]
            local = self.local_counts([], policy)
            self._batch_counts[1].update(self.global_counts({k: local[k] for k in ("policy_tokens", "policy_sequences")}))
        return batch_samples, num_items_in_batch

    def training_step(self, model, inputs, num_items_in_batch=None):
        t0 = time.perf_counter()
        if self._step_rollouts:  # drawn for this micro-batch by get_batch_samples
            entry, gen_seconds = self._step_rollouts.pop(0)
            t0 -= gen_seconds
        else:  # called outside Trainer's loop: sample now, and the loss counts this micro-batch alone
            entry, gen_seconds = self.rollout_for(model, inputs)
        if entry is not None:
            inputs = self.mix_inputs(model, inputs, entry)
        self._current_entry = entry
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._current_entry = None
        step_seconds = time.perf_counter() - t0  # generation included, wherever it happened
        self.last_step_timing = {"generation_s": gen_seconds, "training_step_s": step_seconds}
        self._record_rollout_metrics(entry, gen_seconds, step_seconds)
        return loss

    def _record_rollout_metrics(self, entry: BufferEntry | None, gen_seconds: float, step_seconds: float) -> None:
        device = self.accelerator.device
        if entry is not None:
            r = entry.rollout
            local = torch.tensor([r.completion_lengths().float().sum().item(), r.ended.float().sum().item(),
                                  float(r.num_rows), gen_seconds, step_seconds], device=device, dtype=torch.float64)
        else:
            local = torch.tensor([0.0, 0.0, 0.0, gen_seconds, step_seconds], device=device, dtype=torch.float64)
        g = self.accelerator.gather(local.reshape(1, -1)).reshape(-1, 5)
        m = self._metrics["train"]
        rows = g[:, 2].sum().clamp(min=1)
        m["policy/completion_length"].append((g[:, 0].sum() / rows).item())
        m["policy/eos_fraction"].append((g[:, 1].sum() / rows).item())
        m["time/generation"].append(g[:, 3].mean().item())
        m["time/generation_share"].append((g[:, 3].sum() / g[:, 4].sum().clamp(min=1e-9)).item())

    # ----------------------------------------------------------------------------------------------------------------
    # Checkpoints: the sample buffer (and subclass state) travels with each checkpoint

    def save_extra_state(self, checkpoint_dir: str) -> None:
        """Write this process's sample buffer (and, in subclasses, more state) into the checkpoint being staged.

        Called on every process by `IQLearnTrainer._save_checkpoint` before the staged checkpoint is renamed into
        place, so a checkpoint directory never exists without its samples.
        """
        self.sample_buffer.save(checkpoint_dir, rank=self.accelerator.process_index)

    def load_extra_state(self, checkpoint_dir: str) -> None:
        """Restore what `save_extra_state` wrote; a checkpoint without it (e.g. from offline IQLearn) regenerates."""
        super().load_extra_state(checkpoint_dir)
        self._slot_step = None
        if not self.sample_buffer.load(checkpoint_dir, rank=self.accelerator.process_index):
            warnings.warn(
                f"{checkpoint_dir} has no saved policy samples for process {self.accelerator.process_index}; they "
                "are regenerated at the next step.",
                stacklevel=2,
            )
