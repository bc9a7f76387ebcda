"""`RolloutSampler`: the policy samples of the online trainers, owned by the trainer that uses them.

It draws completions for the prompts of each micro-batch (with `tirl.generation` under TRL's
`unwrap_model_for_generation`, or TRL's vLLM backend), keeps them in the `SampleBuffer`, and records what a later phase
needs about them at the moment they are drawn (`record`: e.g. π_old for GAIL's clipped ratio, the starting model's
logsumexp for `iq_value="reference"`), so nothing is ever written back into the buffer from a loss.

    trainer.get_batch_samples():               the micro-batches of one optimizer step, before its first forward
        sampler.draw_step(model, batches, step):
            for slot, batch in enumerate(batches):
                if the buffer's slot is empty or `generate_every` steps old:      (each process, its own prompts)
                    prompts = prompts_from_batch(batch)[chosen rows]
                    buffer[slot] = build_rollout(prompts, generate(prompts)) + recorded extras
        returns the policy labels of all slots (the trainer counts them over all processes: the policy terms'
        denominators)
    trainer.training_step(model, batch):       once per micro-batch
        batch, sample = sampler.next_batch(...)   expert rows + buffer[slot]'s policy rows, flagged `is_expert`
        ... the trainer's own phases ...
        sampler.log_step(sample, seconds)

All of a step's samples are drawn before its first forward because the policy terms are means over the policy rows
of the whole accumulated batch (`tirl.losses.online_iq_loss_from_qv`), whose count the first micro-batch's loss
already needs. The weights only change at the optimizer step, so this samples the same policy as drawing each
micro-batch's rows just before its forward would. The shape follows TRL's GKD trainer, except that expert rows are
never replaced: the policy rows are appended and flagged.

Each process's buffer travels with every checkpoint (`save`/`load`: `tirl_sample_buffer/rank-<r>.{safetensors,json}`).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from trl.models import unwrap_model_for_generation

from ..generation import sample_completions
from .arguments import vllm_generation_kwargs
from .metrics import MetricStore
from .rollouts import (
    VALUE_COLUMNS,
    BufferEntry,
    Rollout,
    SampleBuffer,
    build_rollout,
    choose_prompt_rows,
    mix_batch,
    prompts_from_batch,
)

Recorder = Callable[[torch.nn.Module, Rollout], torch.Tensor]


@dataclass
class DrawnSample:
    """The policy samples a micro-batch trains on (None: it has none) and the seconds spent generating them."""

    entry: BufferEntry | None
    seconds: float = 0.0
    drawn_early: bool = False  # drawn in get_batch_samples, outside the training step that uses it


class RolloutSampler:
    """Generation, the sample buffer and what is recorded about each sample when it is drawn.

    `args`: the trainer's config (`SamplingArguments` plus `TrainingArguments`); `num_samples(batch_size)`: how many
    completions a micro-batch of that many expert rows gets; `record`: name → f(model, rollout) -> per-token tensor,
    called on fresh samples only and kept in `BufferEntry.extras` (names in `rollouts.VALUE_COLUMNS` travel into the
    mixed batch); `model`: the policy, for TRL's vLLM backend.
    """

    def __init__(self, args, accelerator, processing_class, eos_token_ids: Sequence[int],
                 num_samples: Callable[[int], int], record: dict[str, Recorder] | None = None, model=None):
        self.args = args
        self.accelerator = accelerator
        self.processing_class = processing_class
        self.eos_token_ids = list(eos_token_ids)
        self.num_samples = num_samples
        self.record = dict(record or {})
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.pad_token_id = int(pad)
        if not self.eos_token_ids:
            warnings.warn(
                "neither the tokenizer nor the model's generation config defines an EOS token: every policy sample "
                f"runs to max_new_tokens={args.max_new_tokens} and is treated as truncated.",
                stacklevel=3,
            )
        self.buffer = SampleBuffer(args.generate_every)
        self.last_step_timing: dict[str, float] = {}
        self._slot, self._slot_step = 0, None
        self._step = 0
        self._pending: list[DrawnSample] = []  # drawn by draw_step, one per micro-batch, taken by next_batch
        self.vllm_generation = self._init_vllm(model) if args.use_vllm else None
        self._vllm_synced_step = -1

    # ----------------------------------------------------------------------------------------------------------------
    # Generation

    def _init_vllm(self, model):
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
        name = getattr(self.accelerator.unwrap_model(model), "name_or_path", "") or ""
        if a.vllm_mode == "colocate" and not os.path.isdir(name):
            raise ValueError(
                "vLLM in colocate mode loads the model from a local directory, but this model was built in memory "
                f"(name_or_path={name!r}); save it with save_pretrained and load it from there, or use vllm_mode='server'."
            )
        from trl.generation import VLLMGeneration  # exported only where vLLM is installed

        # untested here (no GPU in tirl's CI): TRL's vLLM options pass through by name (`vllm_generation_kwargs`),
        # the rest as TRL's GRPO trainer sets them
        return VLLMGeneration(
            model=model,
            accelerator=self.accelerator,
            processing_class=self.processing_class,
            **vllm_generation_kwargs(a),
            max_num_seqs=a.per_device_train_batch_size * a.vllm_tensor_parallel_size * a.gradient_accumulation_steps,
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
        """One sampled completion (token ids) per prompt, with vLLM or `tirl.generation.generate_samples` (its loop:
        `args.sampler`)."""
        a = self.args
        if self.vllm_generation is not None:
            if self._step != self._vllm_synced_step:  # push the current weights once per optimizer step
                self.vllm_generation.sync_weights()
                self._vllm_synced_step = self._step
            _, completions, _, _ = self.vllm_generation.generate(prompts=prompts, images=None, num_generations=1)
            return [list(c) for c in completions]
        with unwrap_model_for_generation(
            model, self.accelerator, gradient_checkpointing_kwargs=a.gradient_checkpointing_kwargs
        ) as unwrapped:
            return sample_completions(
                unwrapped, prompts, max_new_tokens=a.max_new_tokens, eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                sampler=getattr(a, "sampler", "packed"),
            )

    # ----------------------------------------------------------------------------------------------------------------
    # Drawing

    def rollout_for(self, model, inputs: dict, step: int, slot: int | None = None) -> DrawnSample:
        """The policy samples for micro-batch `slot` of optimizer step `step` (regenerated when due, with the
        recorded extras). Without `slot`, successive calls within one optimizer step take slots 0, 1, ..."""
        self._step = step
        if slot is not None:
            self._slot, self._slot_step = slot, step
        elif step != self._slot_step:
            self._slot, self._slot_step = 0, step
        else:
            self._slot += 1
        n = self.num_samples(int(inputs["input_ids"].shape[0]))
        if n <= 0:
            return DrawnSample(None)
        if not self.buffer.needs_refresh(self._slot, step):
            entry = self.buffer.get(self._slot)
            entry.uses += 1
            return DrawnSample(entry)
        labels = inputs["labels"]
        rows = choose_prompt_rows(labels, n)
        if not rows:
            return DrawnSample(None)
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
        entry = self.buffer.put(self._slot, rollout, step)
        for name, fn in self.record.items():  # recorded with the samples, so reused samples keep them
            entry.extras[name] = fn(model, rollout)
        entry.uses = 1
        return DrawnSample(entry, seconds)

    def draw_step(self, model, batches: Sequence[dict], step: int) -> list[torch.Tensor]:
        """Draw (or reuse) the samples of every micro-batch of one optimizer step, kept for `next_batch`; returns
        their policy rows' labels, for the global counts the policy terms divide by."""
        self._pending = []
        for slot, batch in enumerate(batches):
            drawn = self.rollout_for(model, batch, step, slot)
            drawn.drawn_early = True
            self._pending.append(drawn)
        return [d.entry.rollout.labels for d in self._pending if d.entry is not None]

    def next_batch(self, model, inputs: dict, step: int) -> tuple[dict, DrawnSample]:
        """The batch a micro-batch trains on (its expert rows, then its policy rows, flagged by `is_expert`) and its
        samples. Outside Trainer's loop (no `draw_step` before) the samples are drawn now."""
        sample = self._pending.pop(0) if self._pending else self.rollout_for(model, inputs, step)
        return (inputs if sample.entry is None else self.mix(inputs, sample.entry)), sample

    def mix(self, inputs: dict, entry: BufferEntry) -> dict:
        """Expert rows, then the entry's policy rows (with their per-position values), flagged by `is_expert`."""
        values = {k: v for k, v in entry.extras.items() if k in VALUE_COLUMNS}
        return mix_batch(inputs, entry.rollout, self.pad_token_id, policy_values=values)

    # ----------------------------------------------------------------------------------------------------------------
    # Metrics and checkpoints

    def log_step(self, sample: DrawnSample, seconds: float, metrics: MetricStore) -> None:
        """Record the sampling metrics of one training step that took `seconds` (generation included, wherever it
        happened): completion length, EOS fraction, generation time and its share of the step, over all processes."""
        step_seconds = seconds + (sample.seconds if sample.drawn_early else 0.0)
        self.last_step_timing = {"generation_s": sample.seconds, "training_step_s": step_seconds}
        device = self.accelerator.device
        stats = [0.0, 0.0, 0.0]
        if sample.entry is not None:
            r = sample.entry.rollout
            stats = [r.completion_lengths().float().sum().item(), r.ended.float().sum().item(), float(r.num_rows)]
        local = torch.tensor([*stats, sample.seconds, step_seconds], device=device, dtype=torch.float64)
        g = self.accelerator.gather(local.reshape(1, -1)).reshape(-1, 5)
        rows = g[:, 2].sum().clamp(min=1)
        metrics.add("train", **{
            "policy/completion_length": (g[:, 0].sum() / rows).item(),
            "policy/eos_fraction": (g[:, 1].sum() / rows).item(),
            "time/generation": g[:, 3].mean().item(),
            "time/generation_share": (g[:, 3].sum() / g[:, 4].sum().clamp(min=1e-9)).item(),
        })

    def save(self, checkpoint_dir: str) -> None:
        """Write this process's buffer into a checkpoint being staged."""
        self.buffer.save(checkpoint_dir, rank=self.accelerator.process_index)

    def load(self, checkpoint_dir: str) -> None:
        """Restore this process's buffer from a checkpoint; one without it (e.g. from offline IQLearn) regenerates."""
        self._slot_step = None
        if not self.buffer.load(checkpoint_dir, rank=self.accelerator.process_index):
            warnings.warn(
                f"{checkpoint_dir} has no saved policy samples for process {self.accelerator.process_index}; they "
                "are regenerated at the next step.",
                stacklevel=2,
            )


__all__ = ["DrawnSample", "RolloutSampler"]
