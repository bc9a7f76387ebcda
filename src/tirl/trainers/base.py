"""`TirlTrainer`: what every tirl trainer shares — Q and V, the counts a loss divides by, metrics, checkpoints.

A TRL `SFTTrainer` (dataset formats, completion-only and assistant-only masking, PEFT, accelerate, mixed precision,
checkpoints, `report_to` are all TRL's) that computes its own loss from per-token Q and V:

- the run's `Objective` (`self.objective`, `tirl.losses.objective`), built once from the config, and Q and V in its
  value form (`ValueForm`): the chunked head patched into the model (`iq_chunk_size > 0`), and what the form reads
  besides the logits (`self.value_input`, `tirl.qv.inputs`) attached to the model, or computed by the starting model
  once as a dataset column;
- the offline loss of a batch's expert rows (`offline_loss`, also every trainer's evaluation loss) with the global
  counts it divides by (`loss_counts`, `tirl.trainers.counts`), in training through a fused head where it applies
  (`use_fused_head`), and the last steps of every loss (`finalize_loss`);
- metrics in a store of its own (`tirl.trainers.metrics`), merged into the logs by `log`;
- checkpoints written atomically (`tirl.trainers.checkpoints`) with `save_extra_state` / `load_extra_state` for what a
  trainer keeps beyond the model (value head, sample buffer, discriminator);
- an account of the rows TRL's dataset preparation drops or cuts (`tirl.trainers.dataset_report`).

Method trainers extend it by composition: the online trainers own a `RolloutSampler` (`make_sampler`), GAIL a
discriminator; both hold the frozen starting model (`ref_model`).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
from dataclasses import replace

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer import TrainOutput
from trl import SFTTrainer

from ..files import write_text_atomic
from ..losses import LOGITS, QV, Counts, LossOutput, Objective, ValueForm, gem_loss, iq_loss_from_qv, qv_from_logits
from ..models import eos_token_ids
from ..qv import reference
from ..qv.head import FusedLossCall, HeadCall, add_qv_head
from ..qv.inputs import VALUE_COLUMNS, ValueInput, value_input_of
from .checkpoints import (
    LoadExtraStateOnResume,
    checkpoint_name,
    commit_staged,
    last_checkpoint,
    rotate_checkpoints,
    staging_dir,
)
from .counts import global_counts, local_counts
from .dataset_report import prompt_limit_of, report_rows, track_rows
from .metrics import MetricStore
from .reference_model import frozen_copy, prepare_reference, starting_model_values
from .sampler import RolloutSampler

_SFT_PARAMETERS = inspect.signature(SFTTrainer.__init__)
TOTALS_FILE = "tirl_run_totals.json"  # in each checkpoint: the run's training-loss sum and tokens (MetricStore)


@contextlib.contextmanager
def _trl_loss_type(args):
    """TRL's `SFTTrainer.__init__` checks `loss_type` against the losses it computes itself (it refuses "gem", and
    "dft" under DeepSpeed); tirl computes every token loss itself, so TRL's constructor sees "nll"."""
    loss_type = args.loss_type
    args.loss_type = "nll"
    try:
        yield
    finally:
        args.loss_type = loss_type


class NonFiniteLossError(FloatingPointError):
    """The training loss, its gradient or the weights became NaN or infinite; training stops before the optimizer
    applies it, and no checkpoint with non-finite weights is written."""


class CheckpointStateError(ValueError):
    """A checkpoint's optimizer or scheduler state that loads (a valid `torch.save` archive) but does not fit the
    optimizer of the run resuming from it: another optimizer's state, or an altered file."""


class StopBeforeNonFiniteStep(TrainerCallback):
    """Before each optimizer step: a non-finite gradient (on any process) stops training before it reaches the
    weights (`TirlTrainer.check_finite_gradients`)."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.check_finite_gradients()


class TirlTrainer(SFTTrainer):
    """The base of tirl's trainers (module docstring). Subclasses set `_config_class` and `_default_output_dir`."""

    _tag_names = ["trl", "sft", "tirl"]
    _name = "tirl"
    _config_class: type = object
    _default_output_dir = "tirl-output"
    # the online trainers' `RolloutSampler`: its samples are drawn with each step's batches and counted for its
    # losses (`get_batch_samples`) and saved with each checkpoint (`save_extra_state`)
    sampler = None
    # the frozen starting model of the online trainers (LSE_θ0 of their samples, GAIL's KL reference)
    ref_model = None

    def __init__(self, model, args=None, *pos, **kwargs):
        if args is None:
            args = self._config_class(output_dir=self._default_output_dir)
        elif isinstance(args, TrainingArguments) and not isinstance(args, self._config_class):
            args = self.convert_args(args)
        if not isinstance(args, self._config_class):
            raise TypeError(f"{type(self).__name__} needs a {self._config_class.__name__}, got {type(args).__name__}")
        call = _SFT_PARAMETERS.bind(self, model, args, *pos, **kwargs).arguments
        call.pop("self")
        # rows are numbered before TRL prepares the datasets, so that what it drops can be named after; prompts too
        # long to train on go before TRL tokenises them whole
        cut = {"tokenizer": call.get("processing_class"), "prompt_limit": prompt_limit_of(args)}
        call["train_dataset"], tracked_train = track_rows(call.get("train_dataset"), args.packing, **cut)
        eval_dataset, tracked_eval = call.get("eval_dataset"), {}
        if isinstance(eval_dataset, dict):
            tracked = {k: track_rows(d, args.packing, **cut, name=k) for k, d in eval_dataset.items()}
            call["eval_dataset"] = {k: d for k, (d, _) in tracked.items()}
            tracked_eval = {k: t for k, (_, t) in tracked.items()}
        else:
            call["eval_dataset"], tracked_eval["eval"] = track_rows(eval_dataset, args.packing, **cut, name="eval")
        with _trl_loss_type(args):
            super().__init__(**call)
        if self.aux_loss_enabled:
            raise NotImplementedError(
                f"MoE router auxiliary losses are not supported by {type(self).__name__} yet; set router_aux_loss_coef=0.0."
            )
        if self.compute_loss_func is not None:
            raise ValueError(f"{type(self).__name__} computes its own loss; `compute_loss_func` cannot be combined with it.")
        if args.label_smoothing_factor > 0:
            raise ValueError(f"label_smoothing_factor is not supported by {type(self).__name__}: it changes Q, not only π.")
        base = self.model.get_base_model() if is_peft_model(self.model) else self.model
        if args.iq_chunk_size > 0:
            add_qv_head(base, chunk_size=args.iq_chunk_size)
        # every token that ends an episode, for the losses and for the report of cut completions alike
        self.eos_token_ids = eos_token_ids(self.processing_class, base)
        self.objective = Objective.from_config(args, self.eos_token_ids)
        self.value_input: ValueInput = value_input_of(self.objective.iq_value)  # what V reads besides the logits
        self.dropped_rows: dict[str, list[int]] = {}
        if tracked_train is not None:
            self.train_dataset = self._report(self.train_dataset, tracked_train, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {k: self._report(d, tracked_eval.get(k), k) for k, d in self.eval_dataset.items()}
        else:
            self.eval_dataset = self._report(self.eval_dataset, tracked_eval.get("eval"), "eval")
        self.metrics = MetricStore()
        # (num_items_in_batch, the other global counts of the same accumulated batch), see `get_batch_samples`
        self._batch_counts: tuple[torch.Tensor | int | None, dict[str, torch.Tensor]] | None = None
        self._staging: str | None = None  # where `_save_checkpoint` is writing, while it is
        self.resumed_from: str | None = None  # the checkpoint `train` resumes from
        self._save_total_limit: int | None = None  # the run's, while `train` hides it from Trainer
        self.add_callback(LoadExtraStateOnResume(self))
        self.add_callback(StopBeforeNonFiniteStep(self))
        self.value_input.attach(base)
        if self.value_input.reads_starting_model:  # LSE_θ0: once, before training, as a dataset column
            self._attach_reference_values()

    @classmethod
    def convert_args(cls, args: TrainingArguments):
        """`args` (a `TrainingArguments`, an `SFTConfig`, ...) as this trainer's config, as `SFTTrainer` converts a
        `TrainingArguments`: every field the config has keeps its value, tirl's own take their defaults."""
        import dataclasses

        values = args.to_dict()
        for name in ("hub_token", "eos_token", "pad_token"):  # to_dict masks every "*_token" field
            if hasattr(args, name):
                values[name] = getattr(args, name)
        names = {f.name for f in dataclasses.fields(cls._config_class) if f.init}
        return cls._config_class(**{k: v for k, v in values.items() if k in names})

    def _report(self, prepared, tracked, name: str):
        if tracked is None or prepared is None:
            return prepared
        prepared, self.dropped_rows[name] = report_rows(prepared, tracked, name, self.args.max_length, self.eos_token_ids)
        return prepared

    # ----------------------------------------------------------------------------------------------------------------
    # Q and V in the run's value form

    def objective_now(self) -> Objective:
        """The objective in force: λ at this step of its warm-up in training, the full λ in evaluation."""
        return self.objective.at(self.state.global_step if self.model.training else None)

    def compute_qv(self, model, inputs, form: ValueForm | None = None) -> QV:
        """Per-token Q and V of a collated batch in the run's value form (or `form`), chunked or from full logits
        according to `iq_chunk_size`; consumes the batch's value column (`take_value_column`)."""
        form = form or self.objective.iq_value
        column = self.take_value_column(inputs, form)
        objective = replace(self.objective, iq_value=form)
        if self.args.iq_chunk_size > 0:
            return model(**inputs, tirl_head=HeadCall(objective, column))
        logits, value_input = self._full_logits(model, inputs, column, form)
        qv = qv_from_logits(logits, inputs["labels"], entropy_grad=self.objective.entropy_coef != 0)
        return form.apply(qv, value_input)

    def _full_logits(self, model, inputs, column, form: ValueForm) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's full logits [B, T, V] of a batch, and `form`'s input (`column`: the batch's value column)."""
        kind = value_input_of(form)
        out = model(**{k: v for k, v in inputs.items() if k != "labels"}, output_hidden_states=kind.reads_hidden)
        # hidden_states[-1] is the normed final state the LM head reads
        hidden = out.hidden_states[-1] if kind.reads_hidden else None
        return out.logits, kind.compute(self.accelerator.unwrap_model(model), hidden, column)

    def take_value_column(self, inputs, form: ValueForm | None = None) -> torch.Tensor | None:
        """The batch's column of the value form's input [B, T − 1] (LSE_θ0 in the reference form), removed from
        `inputs`, when the form (the run's, or `form`) reads one; else None (`ValueInput.take`). Every other value
        column is removed too: the model's forward takes none."""
        own = value_input_of(form or self.objective.iq_value).take(inputs)
        for column in VALUE_COLUMNS:
            inputs.pop(column, None)
        return own

    # the value input of the starting model (LSE_θ0 of the reference form): once, before training, as a dataset column

    def _set_signature_columns_if_needed(self):
        # Trainer drops dataset columns outside this list before collating; the value column must survive
        super()._set_signature_columns_if_needed()
        column = self.value_input.column
        if column is not None and column not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, column]

    def _attach_reference_values(self) -> None:
        """Add the starting model's LSE_θ0 per token to the train and eval datasets and wrap the collator to batch
        it."""
        if self.train_dataset is not None:
            self.train_dataset = self._with_reference_values(self.train_dataset, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {k: self._with_reference_values(d, f"eval-{k}") for k, d in self.eval_dataset.items()}
        elif self.eval_dataset is not None:
            self.eval_dataset = self._with_reference_values(self.eval_dataset, "eval")
        self.data_collator = reference.ReferenceValueCollator(self.data_collator)

    def _with_reference_values(self, dataset, name: str):
        if not isinstance(dataset, Dataset):
            raise ValueError(f"iq_value='reference' computes the starting model's values once, before training, so "
                             f"it needs a map-style datasets.Dataset, not a {type(dataset).__name__}: for streaming "
                             "data use iq_value='logits' (--iq_value logits) or 'head'")
        if reference.COLUMN in dataset.column_names:
            return dataset
        self._set_signature_columns_if_needed()
        keep = [c for c in self._signature_columns if c in dataset.column_names and c != reference.COLUMN]
        rows = dataset.select_columns(keep).to_list()
        settings = f"chunk={self.args.iq_chunk_size};bf16={self.args.bf16};fp16={self.args.fp16}"
        key = hashlib.sha256((reference.model_fingerprint(self.model) + reference.rows_fingerprint(rows, settings))
                             .encode()).hexdigest()
        path = os.path.join(self.args.output_dir, reference.CACHE_DIR, f"{name}-{key[:16]}.safetensors")
        with self.accelerator.main_process_first():
            values = reference.load_values(path, key)
            if values is None:
                values = self._compute_reference_values(rows, name)
                if self.accelerator.is_main_process:
                    reference.save_values(path, values, key)
        return dataset.add_column(reference.COLUMN, values)

    def _compute_reference_values(self, rows: list[dict], name: str) -> list[list[float]]:
        """LSE_θ0 of the starting model (with LoRA: adapters disabled), in eval mode and the run's precision."""
        model = self.model
        device = self.accelerator.device
        adapters_off = model.disable_adapter() if is_peft_model(model) else contextlib.nullcontext()

        def qv_fn(batch: dict) -> QV:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            batch["use_cache"] = False
            return self.compute_qv(model, batch, LOGITS)

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), adapters_off, self.accelerator.autocast():
                return reference.compute_reference_values(
                    rows, self.data_collator, qv_fn, batch_size=self.args.per_device_eval_batch_size,
                    progress=not self.args.disable_tqdm, desc=f"reference values ({name})")
        finally:
            model.train(was_training)

    # ----------------------------------------------------------------------------------------------------------------
    # The online trainers: the frozen starting model and the sampler

    def hold_reference_model(self, ref: torch.nn.Module | None = None) -> None:
        """Hold the frozen starting model as `self.ref_model` (`ref`, else a copy of the model now), prepared as TRL's
        GRPO prepares its reference."""
        ref = ref if ref is not None else frozen_copy(self.accelerator.unwrap_model(self.model))
        self.ref_model = prepare_reference(ref, self.accelerator, deepspeed=self.is_deepspeed_enabled,
                                           fsdp=self.is_fsdp_enabled)

    def make_sampler(self, record: dict) -> RolloutSampler:
        """The trainer's `RolloutSampler`, recording `record` (name → f(model, rollout)) with each sample when drawn,
        and LSE_θ0 of the sample under `ref_model` when the value form reads it (the expert rows have theirs
        precomputed)."""
        if self.value_input.reads_starting_model:
            record = {**record, self.value_input.column: self._sample_value_column}
        return RolloutSampler(self.args, self.accelerator, self.processing_class, self.eos_token_ids,
                              self.num_policy_samples, record=record, model=self.model)

    def num_policy_samples(self, batch_size: int) -> int:
        """Completions sampled per micro-batch of `batch_size` expert rows (the online trainers say how many)."""
        raise NotImplementedError

    def _sample_value_column(self, model, rollout) -> torch.Tensor:
        return starting_model_values(self.value_input, self.ref_model, self.accelerator, rollout,
                                     chunk_size=max(self.args.iq_chunk_size, 256))

    # ----------------------------------------------------------------------------------------------------------------
    # Normalisation: the global counts that go with `num_items_in_batch` (`tirl.trainers.counts`)

    def global_counts(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`counts.global_counts` with this trainer's processes and parallelism. A collective."""
        same_batch = self.get_tp_size() * self.get_cp_size() * self.get_sp_size()
        return global_counts(local, self.accelerator, self.args, same_batch)

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        """`Trainer.get_batch_samples` (the micro-batches of one optimizer step and `num_items_in_batch`), plus the
        global number of sequences of those micro-batches, kept for `compute_loss` (`loss_counts`). With a sampler,
        the policy samples of every micro-batch are drawn now, before the step's first forward, and their completion
        tokens and rows counted over all processes too (the online losses' policy terms are means over them)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts: dict[str, torch.Tensor] = {}
        policy_labels = None
        if self.sampler is not None:
            policy_labels = self.sampler.draw_step(self.model_wrapped, batch_samples, self.state.global_step)
        if num_items_in_batch is not None:
            counts = self.global_counts(local_counts([b["labels"] for b in batch_samples], policy_labels))
        self._batch_counts = (num_items_in_batch, counts)
        return batch_samples, num_items_in_batch

    def loss_counts(self, inputs: dict, num_items_in_batch, is_expert: torch.Tensor | None = None) -> Counts:
        """The global counts the loss divides by (`Counts`; `counts.local_counts` names them).

        In training, those `get_batch_samples` counted for the accumulated batch that `num_items_in_batch` belongs to.
        Otherwise (evaluation, where `Trainer` counts each batch alone, or a direct `compute_loss` call) `inputs` is
        taken as the whole batch, counted the same way. Without `num_items_in_batch` the losses take local means and
        `Trainer` divides by the accumulation steps, so there is nothing to count.
        """
        if num_items_in_batch is None:
            return Counts()
        stored = self._batch_counts
        if stored is not None and torch.is_tensor(num_items_in_batch) and stored[0] is num_items_in_batch:
            found = stored[1]
        else:
            labels = inputs["labels"]
            local = local_counts([labels]) if is_expert is None else local_counts([labels[is_expert]], [labels[~is_expert]])
            found = self.global_counts(local)
        return Counts(tokens=num_items_in_batch, sequences=found.get("sequences"),
                      policy_tokens=found.get("policy_tokens"), policy_sequences=found.get("policy_sequences"))

    # ----------------------------------------------------------------------------------------------------------------
    # The loss

    def offline_loss(self, model, inputs, counts: Counts) -> LossOutput:
        """The offline loss of a batch (`objective_now()`): through a fused head where one applies (`use_fused_head`),
        else from the batch's `QV` (GEM without the chunked head: from the model's full logits)."""
        objective = self.objective_now()
        if self.use_fused_head():
            return model(**inputs, tirl_head=FusedLossCall(objective, self.take_value_column(inputs), counts))
        if objective.loss_type == "gem":
            logits, value_input = self._full_logits(model, inputs, self.take_value_column(inputs), objective.iq_value)
            return gem_loss(logits, inputs["labels"], objective, counts, value_input)
        return iq_loss_from_qv(self.compute_qv(model, inputs), objective, counts)

    def use_fused_head(self) -> bool:
        """Whether the offline loss goes through a fused head, whose gradient is formed in its forward pass: GEM's
        (`tirl.losses.gem`) whenever the head is chunked (`iq_chunk_size > 0`); the single-pass IQ head
        (`tirl.losses.single_pass_head`) with `iq_head="auto"` whenever a gradient is wanted, for the nll token loss,
        and not under fp16 (a gradient formed before the loss scale would flush to zero in float16). Evaluation
        (no_grad) and DFT take the two-pass head, which computes the same statistics."""
        a, loss_type = self.args, self.objective.loss_type
        if a.iq_chunk_size <= 0:
            return False
        if loss_type == "gem":
            return True
        return loss_type == "nll" and a.iq_head == "auto" and not a.fp16 and torch.is_grad_enabled()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The offline loss of the batch: the training loss of IQLearn and the evaluation loss of every trainer."""
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        counts = self.loss_counts(inputs, num_items_in_batch)
        out = self.offline_loss(model, inputs, counts)
        loss = self.finalize_loss(mode, out.loss, out, num_items_in_batch)
        self.record_loss_metrics(mode, out.qv, out, inputs)
        if mode == "train" and self.objective.iq_lambda_warmup_steps > 0:
            self.metrics.add("train", iq_lambda=self.objective_now().iq_lambda)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            return loss, outputs
        return loss

    def finalize_loss(self, mode: str, loss: torch.Tensor, out: LossOutput, num_items_in_batch) -> torch.Tensor:
        """The last steps every tirl trainer's loss goes through: stop on a non-finite training loss, and scale by the
        number of processes like TRL/Trainer (`num_items_in_batch` counts every rank's tokens while DDP averages
        gradients over ranks)."""
        if mode == "train":
            self._check_finite(loss, out)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss

    def _all_processes(self, ok: bool) -> bool:
        # every process must agree, or one would raise while the others wait in the next collective
        return bool(self.accelerator.gather(torch.tensor([ok], device=self.accelerator.device)).all())

    def _stop(self, what: str, advice: str) -> None:
        last = last_checkpoint(self.args.output_dir)
        raise NonFiniteLossError(
            f"{what} at step {self.state.global_step + 1} (epoch {self.state.epoch or 0:.3f}). Training stopped before "
            f"this batch was applied; the last checkpoint is {last or 'none (no checkpoint saved yet)'}. {advice}")

    def _check_finite(self, loss: torch.Tensor, out: LossOutput) -> None:
        if self._all_processes(bool(torch.isfinite(loss.detach()).all())):
            return
        self._stop(f"the training loss is {loss.item()} (MLE term {out.mle_loss.item()}, TD term {out.td_loss.item()}, "
                   f"λ={self.objective_now().iq_lambda})", "Try a lower --learning_rate or --iq_lambda, or "
                   "--max_grad_norm, and check the data.")

    def check_finite_gradients(self) -> None:
        """Stop when any gradient is NaN or infinite (a finite loss can still overflow in backward)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        ok = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        if not self._all_processes(ok):
            self._stop("the gradient is not finite", "Try a lower --learning_rate or --iq_lambda, or --max_grad_norm.")

    def check_finite_weights(self) -> None:
        """Stop, before a checkpoint is written, when an optimizer step made a weight NaN or infinite."""
        ok = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        if not self._all_processes(ok):
            self._stop("the weights are no longer finite (the last optimizer step overflowed)",
                       "Try a lower --learning_rate.")

    # ----------------------------------------------------------------------------------------------------------------
    # Metrics

    def record_loss_metrics(self, mode: str, qv: QV, out: LossOutput, inputs) -> None:
        """The expert rows' metrics of one micro-batch, as token means over every process: `mle_loss`, `td_loss`,
        `mean_reward`, `mean_value`, `entropy`, `mean_token_accuracy`, and `num_tokens` (TRL's)."""
        gather = self.accelerator.gather_for_metrics
        sums = {k: gather(v.reshape(1)).sum() for k, v in out.sums.items()}
        n = sums["tokens"].clamp(min=1)
        n_td = sums["td_tokens"].clamp(min=1)
        entropy = gather(qv.entropy.sum().reshape(1)).sum() if qv.entropy is not None else torch.tensor(0.0)
        top1 = gather(qv.is_top1.sum().reshape(1)).sum() if qv.is_top1 is not None else torch.tensor(0)
        self.metrics.add(mode, mle_loss=(sums["mle"] / n).item(), td_loss=(sums["td"] / n).item(),
                         mean_reward=(sums["reward"] / n_td).item(), mean_value=(sums["value"] / n).item(),
                         entropy=(entropy / n).item(), mean_token_accuracy=(top1 / n).item())
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self.metrics.train_tokens += gather(local.reshape(1)).sum().item() // self.get_tp_size()
        self.metrics.set(mode, num_tokens=self.metrics.train_tokens)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """`Trainer.log` with this trainer's metrics since the last log, averaged (`eval_` prefixed in evaluation)."""
        logs.update(self.metrics.pop("train" if self.model.training else "eval"))
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------------------------------
    # The model card

    # what the model card cannot read off the trainer: `tirl train` sets "base_model" (--model as given),
    # "dataset", "dataset_split" and "dataset_rows" (`tirl.trainers.model_card`)
    model_card_info: dict | None = None

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None) -> None:
        """The model card, README.md in `output_dir` (TRL writes it with every checkpoint, `tirl train` once more at
        the end): the base model, the method that trained it and its settings, the data, the steps and the evaluation
        before and after (`tirl.trainers.model_card`)."""
        if not self.is_world_process_zero():
            return
        from .model_card import model_card_text

        write_text_atomic(os.path.join(self.args.output_dir, "README.md"),
                          model_card_text(self, model_name=model_name, dataset_name=dataset_name, tags=tags))

    # ----------------------------------------------------------------------------------------------------------------
    # Checkpoints: written under a name resume never picks, then renamed in one step (`tirl.trainers.checkpoints`)

    def _issue_warnings_after_load(self, load_result) -> None:
        # safetensors stores a tied weight once (lm_head.weight is the embedding's), so a resumed checkpoint lacks it;
        # transformers would warn on every resume that it is missing
        model = self.accelerator.unwrap_model(self.model)
        names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
        kept = {n for n, _ in model.named_parameters()}
        tied = set(names) - kept
        missing = [k for k in load_result.missing_keys if k not in tied]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def _get_output_dir(self, trial) -> str:
        # while `_save_checkpoint` runs, Trainer writes the checkpoint into the staging directory
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Save like `Trainer`, but atomically: a crash mid-save never leaves a `checkpoint-N` that looks complete.
        Every process also writes its extra state (`save_extra_state`) before the checkpoint is renamed into place.
        Weights that are no longer finite are never saved (`check_finite_weights`)."""
        self.check_finite_weights()
        run_dir = self._get_output_dir(trial=trial)
        step = self.state.global_step
        staging = staging_dir(run_dir, step)
        if self.args.should_save and os.path.exists(staging):
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
            self.save_extra_state(os.path.join(staging, checkpoint_name(step)))
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            commit_staged(run_dir, step, self.state, self._save_total_limit or self.args.save_total_limit)
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """`Trainer.save_model` (final model and each checkpoint), plus what the value input keeps beside the weights
        (`value_head.safetensors` in the head form)."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.value_input.save(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

    def save_extra_state(self, checkpoint_dir: str) -> None:
        """Write what this trainer keeps beyond the model into a checkpoint being staged (on every process): the run's
        totals (`MetricStore.totals`) and the sampler's buffer; subclasses add theirs."""
        if self.args.should_save:
            write_text_atomic(os.path.join(checkpoint_dir, TOTALS_FILE), json.dumps(self.metrics.totals()) + "\n")
        if self.sampler is not None:
            self.sampler.save(checkpoint_dir)

    def load_extra_state(self, checkpoint_dir: str) -> None:
        """Restore what `save_model`/`save_extra_state` wrote beyond the model weights: the run's totals, the value
        head, the sample buffer."""
        totals = os.path.join(checkpoint_dir, TOTALS_FILE)
        if os.path.isfile(totals):
            with open(totals) as f:
                self.metrics.restore(json.load(f))
        self.value_input.load(self.accelerator.unwrap_model(self.model), checkpoint_dir)
        if self.sampler is not None:
            self.sampler.load(checkpoint_dir)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """`Trainer`'s, with a state that does not fit this run's optimizer or schedule as one `CheckpointStateError`
        naming the checkpoint, instead of torch's error from inside `load_state_dict`, before any step has run."""
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as e:
            if isinstance(e, torch.OutOfMemoryError):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise CheckpointStateError(
                f"cannot resume from {checkpoint}: its optimizer.pt or scheduler.pt does not fit this run's optimizer "
                f"({type(e).__name__}: {first}); the file may have been altered, and training did not start: resume "
                "from an earlier checkpoint with --resume_from_checkpoint, or pass --overwrite to start again") from None

    def training_step(self, model, inputs, num_items_in_batch=None):
        """`Trainer.training_step`, its loss counted into the run's totals."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.metrics.add_loss(loss)
        return loss

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`; a resumed run also restores the extra state (`load_extra_state`) before its first step."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:  # as Trainer resolves it, less checkpoints rotated out (`last_checkpoint`)
            checkpoint = last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
            resume_from_checkpoint = checkpoint
        self.resumed_from = checkpoint or None
        # After its last step, Trainer deletes every checkpoint directory but the best one when save_total_limit is 1,
        # whole: tirl's rotation does that instead (`rotate_checkpoints`), keeping what the trainer did not write
        limit = self._save_total_limit = self.args.save_total_limit
        if limit == 1:
            self.args.save_total_limit = None
        try:
            out = super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.args.save_total_limit, self._save_total_limit = limit, None
        if limit == 1 and self.state.best_model_checkpoint is not None and self.args.should_save:
            rotate_checkpoints(self.args.output_dir, 1, self.state.best_model_checkpoint)
        # Trainer's `train_loss` is the mean over the steps of this call; the run's is over every step since the start
        train_loss = self.metrics.totals()["loss_sum"] / max(self.state.global_step, 1)
        return TrainOutput(out.global_step, train_loss, {**out.metrics, "train_loss": train_loss})


__all__ = ["CheckpointStateError", "NonFiniteLossError", "TirlTrainer"]
