"""`OnlineIQLearnTrainer`: IQLearn on expert rows mixed with the model's own samples (docs/method.md §2, online
IQLearn)."""

from __future__ import annotations

import time

import torch

from ..losses import online_iq_loss_from_qv, restrict_rows
from .base import TirlTrainer
from .online_iqlearn_config import OnlineIQLearnConfig


class OnlineIQLearnTrainer(TirlTrainer):
    """Online IQLearn: every step appends policy samples for some of the batch's prompts to the expert rows.

        L_on = E_E[−log π] + α·(E_π[V − γV'] − E_E[V − γV']) + λ·((1−α)·E_E[r²] + α·E_π[r²])

    (`tirl.losses.online_iq_loss_from_qv`; `iq_policy_terms` picks which terms see the samples). The samples come from
    the trainer's `RolloutSampler` (`self.sampler`), drawn for all micro-batches of a step before its first forward.
    With `iq_alpha=0` nothing is sampled and every step is exactly `IQLearnTrainer`'s. Evaluation is the offline loss
    on the expert rows (no sampling), so `eval_loss` compares directly with offline IQLearn and MLE runs. With
    the reference form the trainer holds the frozen starting model (`self.ref_model`, prepared like TRL's GRPO
    reference), which records the logsumexp of each sample when it is drawn.

    Logs, besides the offline metrics (computed on the expert rows): `policy_fraction` (policy rows / rows),
    `reward/expert_mean` and `reward/policy_mean` (E[r_t] on each kind of row), `policy/td_loss` (E_π[r²]),
    `value_gap` (E_π[V − γV'] − E_E[V − γV']), `policy/completion_length`, `policy/eos_fraction`,
    `time/generation` (seconds per micro-batch spent sampling) and `time/generation_share` (of the training step).
    """

    _tag_names = ["trl", "sft", "tirl", "iqlearn", "online-iqlearn"]
    _name = "Online IQLearn"
    _config_class = OnlineIQLearnConfig
    _default_output_dir = "tirl-online-iqlearn"

    def __init__(self, model, args: OnlineIQLearnConfig | None = None, *pos, **kwargs):
        super().__init__(model, args, *pos, **kwargs)
        if self.value_input.reads_starting_model:  # LSE_θ0 at the samples' states
            self.hold_reference_model()
        self.sampler = self.make_sampler({})

    def num_policy_samples(self, batch_size: int) -> int:
        """max(1, round(α × batch size)) unless `num_policy_samples` is set; 0 when α = 0 (offline)."""
        if self.args.num_policy_samples is not None:
            return self.args.num_policy_samples
        alpha = self.objective.iq_alpha
        if alpha == 0:
            return 0
        return max(1, round(alpha * batch_size))

    # ----------------------------------------------------------------------------------------------------------------
    # One micro-batch: expert + policy rows (drawn by `get_batch_samples` for the whole step) through the online loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        start = time.perf_counter()
        batch, sample = self.sampler.next_batch(model, inputs, self.state.global_step)
        loss = super().training_step(model, batch, num_items_in_batch)
        self.sampler.log_step(sample, time.perf_counter() - start, self.metrics)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        is_expert = inputs.pop("is_expert", None)
        if is_expert is None or return_outputs:  # evaluation, α = 0, or no prompt to sample from: offline IQLearn
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        qv = self.compute_qv(model, inputs)
        counts = self.loss_counts(inputs, num_items_in_batch, is_expert)
        out = online_iq_loss_from_qv(qv, is_expert, self.objective_now(), counts)
        loss = self.finalize_loss(mode, out.loss, out, num_items_in_batch)
        self.record_loss_metrics(mode, restrict_rows(qv, is_expert), out, inputs)
        self._record_online_metrics(mode, out, is_expert)
        return loss

    def _record_online_metrics(self, mode: str, out, is_expert: torch.Tensor) -> None:
        gather = self.accelerator.gather
        p = {k: gather(v.reshape(1).double()).sum() for k, v in out.policy_sums.items()}
        expert_rows = gather(is_expert.sum().reshape(1).double()).sum()
        e = {k: gather(out.sums[k].reshape(1).double()).sum() for k in ("reward", "td_tokens", "value_gap", "tokens")}
        self.metrics.add(mode, **{
            "policy_fraction": (p["rows"] / (p["rows"] + expert_rows).clamp(min=1)).item(),
            "reward/expert_mean": (e["reward"] / e["td_tokens"].clamp(min=1)).item(),
            "reward/policy_mean": (p["reward"] / p["td_tokens"].clamp(min=1)).item(),
            "policy/td_loss": (p["td"] / p["tokens"].clamp(min=1)).item(),
            # token means from sums over every process, like the metrics above (the loss's `value_gap` is only this
            # micro-batch's share of the accumulated batch's)
            "value_gap": (p["value_gap"] / p["tokens"].clamp(min=1) - e["value_gap"] / e["tokens"].clamp(min=1)).item(),
        })
