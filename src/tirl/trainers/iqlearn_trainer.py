"""`IQLearnTrainer`: TRL's `SFTTrainer` with the offline IQLearn loss (TD-regularised MLE, METHOD.md §2).

Everything but the loss is TRL's: dataset formats (prompt/completion, messages), completion-only and assistant-only
masking, packing, PEFT via `peft_config`, accelerate multi-process, mixed precision, checkpoints, `report_to`. Swap
`SFTTrainer`/`SFTConfig` for `IQLearnTrainer`/`IQLearnConfig` and set `iq_lambda`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import warnings
from collections.abc import Sequence

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import SFTTrainer

from ..losses import IGNORE_INDEX, QV, LossOutput, iq_loss_from_qv, qv_from_logits, with_reference, with_value
from ..models import eos_token_ids
from ..qv import reference
from ..qv.head import add_qv_head
from ..qv.value_head import add_value_head, get_value_head, load_value_head, save_value_head
from .iqlearn_config import IQLearnConfig

ROW_COLUMN = "_tirl_row"
# optional column: where each row came from (`FILE:LINE`), so a dropped row is named by its place in the user's file
SOURCE_COLUMN = "_tirl_source"
PARTIAL_PREFIX = ".partial-"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; training stops before the optimizer applies it."""


class NoTrainableTokensError(ValueError):
    """No example of a dataset has a completion token left to learn from."""


class IQLearnTrainer(SFTTrainer):
    """Offline IQLearn: minimise E[−log π(a_t|s_t)] + λ·E[r_t²] over completion tokens. `iq_lambda=0` is SFT.

    Logs, besides TRL's `loss`, `entropy`, `mean_token_accuracy` and `num_tokens`: `mle_loss` (the −log π term),
    `td_loss` (E[r²], before λ), `mean_reward` (E[r_t]) and `mean_value` (E[V(s_t)], in the run's `iq_value` form),
    each with an `eval_` prefix in evaluation, and `iq_lambda` (the λ in force, during a warm-up).

    `iq_value="head"` attaches a zero-initialised value head to the model (`tirl.qv.value_head`), saved as
    `value_head.safetensors` with the model and in checkpoints; `iq_value="reference"` computes the starting model's
    logsumexp over the train and eval datasets before training (`tirl.qv.reference`, cached in the run directory).
    """

    _tag_names = ["trl", "sft", "tirl", "iqlearn"]
    _name = "IQLearn"
    _paper = {
        "title": "Imitating Language via Scalable Inverse Reinforcement Learning",
        "id": "2409.01369",
        "citation": (
            "@inproceedings{wulfmeier2024imitating,\n"
            "  title={Imitating Language via Scalable Inverse Reinforcement Learning},\n"
            "  author={Wulfmeier, Markus and others},\n"
            "  booktitle={Advances in Neural Information Processing Systems},\n"
            "  year={2024}\n}"
        ),
    }

    def __init__(self, model, args: IQLearnConfig | None = None, *pos, **kwargs):
        if args is None:
            args = IQLearnConfig(output_dir="tirl-iqlearn")
        if not isinstance(args, IQLearnConfig):
            raise TypeError(f"IQLearnTrainer needs an IQLearnConfig, got {type(args).__name__}")
        super().__init__(model, args, *pos, **kwargs)
        if self.aux_loss_enabled:
            raise NotImplementedError(
                "MoE router auxiliary losses are not supported by IQLearnTrainer yet; set router_aux_loss_coef=0.0."
            )
        if self.compute_loss_func is not None:
            raise ValueError("IQLearnTrainer computes its own loss; `compute_loss_func` cannot be combined with it.")
        if args.loss_type != "nll":
            raise ValueError(f"IQLearnTrainer supports loss_type='nll' only (got {args.loss_type!r}).")
        if args.label_smoothing_factor > 0:
            raise ValueError("label_smoothing_factor is not supported by IQLearnTrainer: it changes Q, not only π.")
        base = self.model.get_base_model() if is_peft_model(self.model) else self.model
        if args.iq_chunk_size > 0:
            add_qv_head(base, chunk_size=args.iq_chunk_size)
        self.eos_token_ids = eos_token_ids(self.processing_class, base)
        # (num_items_in_batch, the other global counts of the same accumulated batch), see `get_batch_samples`
        self._batch_counts: tuple[torch.Tensor | int | None, dict[str, torch.Tensor]] | None = None
        if args.iq_value == "head":
            add_value_head(base)
        elif args.iq_value == "reference":
            self._attach_reference_values()

    # ----------------------------------------------------------------------------------------------------------------
    # Data: nothing is dropped silently

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        """TRL's preparation, plus an account of what it dropped or cut.

        TRL drops examples whose completion is entirely cut by `max_length` (e.g. a prompt longer than `max_length`)
        and does so quietly; here they are named in a warning (by their `SOURCE_COLUMN` entry, e.g. `FILE:LINE`,
        when the dataset has one, else by row index), and a dataset left with no trainable token is an error.
        Completions that lose their EOS to truncation are counted (their last TD term is dropped, see `tirl.losses`).
        """
        sources = None
        if isinstance(dataset, Dataset) and SOURCE_COLUMN in dataset.column_names:
            sources = dataset[SOURCE_COLUMN]
            dataset = dataset.remove_columns(SOURCE_COLUMN)
        track = isinstance(dataset, Dataset) and "input_ids" not in dataset.column_names and not packing
        if track:
            dataset = dataset.add_column(ROW_COLUMN, list(range(len(dataset))))
        prepared = super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        if not track:
            return prepared
        kept = prepared[ROW_COLUMN]
        dropped = sorted(set(range(len(dataset))) - set(kept))
        name = dataset_name or "train"
        if not kept:
            raise NoTrainableTokensError(
                f"none of the {len(dataset)} {name} examples has a completion token to learn from after tokenization "
                f"and truncation to max_length={args.max_length} (prompt longer than max_length, an empty completion, or "
                "a chat template that masks every token). Raise --max_length or check the data."
            )
        if dropped:
            shown = ", ".join(sources[i] if sources else str(i) for i in dropped[:10]) + (" ..." if len(dropped) > 10 else "")
            warnings.warn(
                f"{len(dropped)} of {len(dataset)} {name} examples were skipped because truncation to "
                f"max_length={args.max_length} left them no completion token ({'' if sources else 'rows '}{shown}); "
                "raise --max_length to keep them.",
                stacklevel=2,
            )
        eos = set(eos_token_ids(processing_class, self.model if hasattr(self, "model") else None))
        if eos:
            cut = sum(1 for labels in prepared["labels"] if not _ends_with(labels, eos))
            if cut:
                warnings.warn(
                    f"{cut} of {len(kept)} {name} completions do not end with EOS (cut by max_length={args.max_length}, or "
                    "a chat template that does not end the turn with EOS); they are treated as truncated: their last TD "
                    "term is dropped.",
                    stacklevel=2,
                )
        self._dropped_rows = getattr(self, "_dropped_rows", {})
        self._dropped_rows[name] = dropped
        return prepared.remove_columns(ROW_COLUMN)

    # ----------------------------------------------------------------------------------------------------------------

    # ----------------------------------------------------------------------------------------------------------------
    # Q and V in the run's value parameterisation

    def forward_qv(self, model, inputs) -> QV:
        """Per-token Q and V of a collated batch in the logits form (V = v_ψ when the model has a value head), chunked
        or from full logits according to `iq_chunk_size`."""
        if self.args.iq_chunk_size > 0:
            return model(**inputs, qv_head=True)
        head = get_value_head(self.accelerator.unwrap_model(model))
        out = model(**{k: v for k, v in inputs.items() if k != "labels"}, output_hidden_states=head is not None)
        qv = qv_from_logits(out.logits, inputs["labels"], entropy_grad=self.args.entropy_coef > 0)
        # hidden_states[-1] is the normed final state the LM head reads
        return qv if head is None else with_value(qv, head(out.hidden_states[-1][:, :-1]))

    def compute_qv(self, model, inputs) -> QV:
        """`forward_qv` in the run's `iq_value` form; consumes the batch's reference values (`tirl_ref_values`)."""
        ref = inputs.pop(reference.COLUMN, None)
        qv = self.forward_qv(model, inputs)
        if self.args.iq_value == "reference":
            if ref is None:
                raise ValueError(f"iq_value='reference' needs the batch's '{reference.COLUMN}' (the starting model's "
                                 "logsumexp); it is missing from this batch")
            qv = with_reference(qv, ref[:, :-1].to(qv.v.device))
        return qv

    def current_lambda(self) -> float:
        """λ in force: ramped linearly over `iq_lambda_warmup_steps` during training; the full λ in evaluation."""
        a = self.args
        if a.iq_lambda_warmup_steps <= 0 or not self.model.training:
            return a.iq_lambda
        return a.iq_lambda * min(1.0, self.state.global_step / a.iq_lambda_warmup_steps)

    def iq_loss(self, qv: QV, num_items_in_batch=None, counts: dict[str, torch.Tensor] | None = None) -> LossOutput:
        """The offline loss of `qv`; `counts` are `loss_counts`' global counts that go with `num_items_in_batch`."""
        a = self.args
        return iq_loss_from_qv(
            qv,
            lam=self.current_lambda(),
            gamma=a.iq_gamma,
            eos_token_id=self.eos_token_ids or None,
            num_items_in_batch=num_items_in_batch,
            reduction=a.iq_reduction,
            stop_grad_next=a.iq_stop_grad_next,
            entropy_coef=a.entropy_coef,
            num_sequences_in_batch=(counts or {}).get("sequences"),
        )

    # ----------------------------------------------------------------------------------------------------------------
    # iq_value="reference": the starting model's logsumexp, once, as a dataset column

    def _set_signature_columns_if_needed(self):
        # Trainer drops dataset columns outside this list before collating; the reference values must survive
        super()._set_signature_columns_if_needed()
        if self.args.iq_value == "reference" and reference.COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, reference.COLUMN]

    def _attach_reference_values(self) -> None:
        """Add LSE_θ0 per token to the train and eval datasets and wrap the collator to batch it."""
        if self.train_dataset is not None:
            self.train_dataset = self._with_reference_values(self.train_dataset, "train")
        if isinstance(self.eval_dataset, dict):
            self.eval_dataset = {k: self._with_reference_values(d, f"eval-{k}") for k, d in self.eval_dataset.items()}
        elif self.eval_dataset is not None:
            self.eval_dataset = self._with_reference_values(self.eval_dataset, "eval")
        self.data_collator = reference.ReferenceValueCollator(self.data_collator)

    def _with_reference_values(self, dataset, name: str):
        if not isinstance(dataset, Dataset):
            raise NotImplementedError("iq_value='reference' needs a map-style datasets.Dataset (its values are "
                                      "computed once before training); use iq_value='head' for streaming data")
        if reference.COLUMN in dataset.column_names:
            return dataset
        self._set_signature_columns_if_needed()
        keep = [c for c in self._signature_columns if c in dataset.column_names and c != reference.COLUMN]
        rows = dataset.select_columns(keep).to_list()
        model = self.model
        settings = f"chunk={self.args.iq_chunk_size};bf16={self.args.bf16};fp16={self.args.fp16}"
        key = hashlib.sha256((reference.model_fingerprint(model) + reference.rows_fingerprint(rows, settings))
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
            return self.forward_qv(model, batch)

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
    # Normalisation: the global counts that go with `num_items_in_batch`
    #
    # `Trainer` counts the completion tokens of the whole accumulated batch on every process (`num_items_in_batch`)
    # before the step's first forward. Whenever it passes that count to `compute_loss`, it no longer divides the loss
    # by the accumulation steps, and `finalize_loss` multiplies it by the number of processes (DDP averages them):
    # every loss term must then be a sum divided by a count of the whole accumulated batch. These methods give the
    # terms that are not token means (`iq_reduction="sequence"`; the online trainers' policy rows) their counts.

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        """`Trainer.get_batch_samples` (the micro-batches of one optimizer step and `num_items_in_batch`), plus the
        global number of sequences of those micro-batches, kept for `compute_loss` (`loss_counts`)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts: dict[str, torch.Tensor] = {}
        if num_items_in_batch is not None:
            counts = self.global_counts(self.local_counts([b["labels"] for b in batch_samples]))
        self._batch_counts = (num_items_in_batch, counts)
        return batch_samples, num_items_in_batch

    @staticmethod
    def local_counts(expert_labels: Sequence[torch.Tensor],
                     policy_labels: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """This process's counts over batches of unshifted labels [B, T]: `sequences` (expert rows with a completion
        token) and, when `policy_labels` is given, `policy_tokens` and `policy_sequences` (the policy rows' completion
        tokens, and rows with one). Positions are counted on `labels[:, 1:]`, the actions the losses see, as `Trainer`
        counts `num_items_in_batch`."""
        def tokens_and_rows(labels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            actions = [lab[..., 1:] != IGNORE_INDEX for lab in labels]
            tokens = sum(int(a.sum()) for a in actions)
            rows = sum(int(a.any(-1).sum()) for a in actions)
            return torch.tensor(tokens), torch.tensor(rows)

        counts = {"sequences": tokens_and_rows(expert_labels)[1]}
        if policy_labels is not None:
            counts["policy_tokens"], counts["policy_sequences"] = tokens_and_rows(policy_labels)
        return counts

    def global_counts(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Counts of this process's share of a batch made global exactly as `Trainer` makes `num_items_in_batch`
        (`Trainer._get_num_items_in_batch`): summed over processes when `average_tokens_across_devices`, then divided
        by the ranks that hold the same batch (tensor, context and sequence parallelism). A collective: every process
        must call it at the same point."""
        names = list(local)
        values = torch.stack([local[k].to(self.args.device).long().reshape(()) for k in names])
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            values = self.accelerator.gather(values.reshape(1, -1)).reshape(-1, len(names)).sum(0)
        same_batch = self.get_tp_size() * self.get_cp_size() * self.get_sp_size()
        if same_batch > 1:
            values = values / same_batch
        return dict(zip(names, values.unbind(), strict=True))

    def loss_counts(self, inputs: dict, num_items_in_batch, is_expert: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The global counts the loss divides by next to `num_items_in_batch` (see `local_counts` for the names).

        In training, those `get_batch_samples` counted for the accumulated batch that `num_items_in_batch` belongs to.
        Otherwise (evaluation, where `Trainer` counts each batch alone, or a direct `compute_loss` call) `inputs` is
        taken as the whole batch, counted the same way. Without `num_items_in_batch` the losses take local means and
        `Trainer` divides by the accumulation steps, so there is nothing to count.
        """
        if num_items_in_batch is None:
            return {}
        stored = self._batch_counts
        if stored is not None and torch.is_tensor(num_items_in_batch) and stored[0] is num_items_in_batch:
            return stored[1]
        labels = inputs["labels"]
        if is_expert is None:
            return self.global_counts(self.local_counts([labels]))
        return self.global_counts(self.local_counts([labels[is_expert]], [labels[~is_expert]]))

    # ----------------------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        qv = self.compute_qv(model, inputs)
        out = self.iq_loss(qv, num_items_in_batch, self.loss_counts(inputs, num_items_in_batch))
        loss = self.finalize_loss(mode, out.loss, out, num_items_in_batch)
        self._record_metrics(mode, qv, out, inputs)
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
            loss = loss * (self.accelerator.num_processes // self._tp_size)
        return loss

    def _check_finite(self, loss: torch.Tensor, out: LossOutput) -> None:
        # every process must agree, or one would raise while the others wait in the next collective
        finite = bool(self.accelerator.gather(torch.isfinite(loss.detach()).reshape(1)).all())
        if finite:
            return
        last = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        raise NonFiniteLossError(
            f"the training loss is {loss.item()} at step {self.state.global_step + 1} (epoch {self.state.epoch or 0:.3f}): "
            f"MLE term {out.nll.item()}, TD term {out.td.item()} (λ={self.args.iq_lambda}). Training stopped before this "
            f"batch was applied; the last checkpoint is {last or 'none (no checkpoint saved yet)'}. Try a lower "
            "--learning_rate or --iq_lambda, or --max_grad_norm, and check the data."
        )

    # ----------------------------------------------------------------------------------------------------------------
    # Checkpoints: written under a name resume never picks, then renamed in one step

    def _save_checkpoint(self, model, trial):
        """Save like `Trainer`, but atomically: a crash mid-save never leaves a `checkpoint-N` that looks complete.

        The checkpoint is written to `.partial-checkpoint-N/checkpoint-N` and renamed to `checkpoint-N` once every
        process has finished writing. `get_last_checkpoint` only matches `checkpoint-<digits>`, so a partial one is
        invisible to resume and is removed at the next save.
        """
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, PARTIAL_PREFIX + name)
        if self.args.should_save and os.path.exists(staging):
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        self._get_output_dir = lambda trial=None: staging  # where the parent class writes, for this call only
        try:
            super()._save_checkpoint(model, trial)
            self.save_extra_state(os.path.join(staging, name))
        finally:
            del self._get_output_dir
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = os.path.join(run_dir, name)
            if os.path.exists(final):  # the same step saved again, e.g. after resuming from it
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            for entry in os.listdir(run_dir):  # leftovers of an earlier crash
                if entry.startswith(PARTIAL_PREFIX):
                    shutil.rmtree(os.path.join(run_dir, entry), ignore_errors=True)
            if self.state.best_global_step:
                best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
                if os.path.exists(best):
                    self.state.best_model_checkpoint = best
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """`Trainer.save_model` (final model and each checkpoint), plus `value_head.safetensors` with iq_value="head"."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save and get_value_head(self.accelerator.unwrap_model(self.model)) is not None:
            save_value_head(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

    def save_extra_state(self, checkpoint_dir: str) -> None:
        """Hook for subclasses: write extra state (sample buffers, discriminators) into a checkpoint being staged."""

    def load_extra_state(self, checkpoint_dir: str) -> None:
        """Restore what `save_model`/`save_extra_state` wrote beyond the model weights: the value head."""
        if self.args.iq_value == "head":
            load_value_head(self.accelerator.unwrap_model(self.model), checkpoint_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        # called once, on resume, after the model and optimizer exist: the place to restore our own state too
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.load_extra_state(checkpoint)

    def _record_metrics(self, mode: str, qv: QV, out: LossOutput, inputs) -> None:
        gather = self.accelerator.gather_for_metrics
        sums = {k: gather(v.reshape(1)).sum() for k, v in out.sums.items()}
        n = sums["tokens"].clamp(min=1)
        n_td = sums["td_tokens"].clamp(min=1)
        entropy = gather(qv.entropy.sum().reshape(1)).sum() if qv.entropy is not None else torch.tensor(0.0)
        top1 = gather(qv.is_top1.sum().reshape(1)).sum() if qv.is_top1 is not None else torch.tensor(0)
        m = self._metrics[mode]
        m["mle_loss"].append((sums["nll"] / n).item())
        m["td_loss"].append((sums["td"] / n).item())
        m["mean_reward"].append((sums["reward"] / n_td).item())
        m["mean_value"].append((sums["value"] / n).item())
        m["entropy"].append((entropy / n).item())
        m["mean_token_accuracy"].append((top1 / n).item())
        if mode == "train" and self.args.iq_lambda_warmup_steps > 0:
            m["iq_lambda"].append(self.current_lambda())
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += gather(local.reshape(1)).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]


def _ends_with(labels: list[int], eos: set[int]) -> bool:
    """Whether the last completion segment of a label row contains EOS (template tokens may follow it)."""
    seen = False
    for tok in reversed(labels):
        if tok == -100:
            if seen:
                break
            continue
        seen = True
        if tok in eos:
            return True
    return False
