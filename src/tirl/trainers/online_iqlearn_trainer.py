"""`OnlineIQLearnTrainer`: IQLearn on expert rows mixed with the model's own samples (METHOD.md §2, online IQLearn)."""

from __future__ import annotations

import torch

from ..losses import online_iq_loss_from_qv, restrict_rows
from .online_iqlearn_config import OnlineIQLearnConfig
from .rollout_trainer import RolloutTrainer


class OnlineIQLearnTrainer(RolloutTrainer):
    """Online IQLearn: every step appends policy samples for some of the batch's prompts to the expert rows.

        L_on = E_E[−log π] + α·(E_π[V − γV'] − E_E[V − γV']) + λ·((1−α)·E_E[r²] + α·E_π[r²])

    (`tirl.losses.online_iq_loss_from_qv`; `iq_policy_terms` picks which terms see the samples). With `iq_alpha=0`
    nothing is sampled and every step is exactly `IQLearnTrainer`'s. Evaluation is the offline loss on the expert
    rows (no sampling), so `eval_loss` compares directly with offline IQLearn and MLE runs.

    Logs, besides `IQLearnTrainer`'s metrics (computed on the expert rows): `policy_fraction` (policy rows / rows),
    `reward/expert_mean` and `reward/policy_mean` (E[r_t] on each kind of row), `policy/td_loss` (E_π[r²]),
    `value_gap` (E_π[V − γV'] − E_E[V − γV']), `policy/completion_length`, `policy/eos_fraction`,
    `time/generation` (seconds per micro-batch spent sampling) and `time/generation_share` (of the training step).
    """

    _tag_names = ["trl", "sft", "tirl", "iqlearn", "online-iqlearn"]
    _name = "Online IQLearn"
    _config_class = OnlineIQLearnConfig
    _default_output_dir = "tirl-online-iqlearn"

    def num_policy_samples(self, batch_size: int) -> int:
        """max(1, round(α × batch size)) unless `num_policy_samples` is set; 0 when α = 0 (offline)."""
        a = self.args
        if a.num_policy_samples is not None:
            return a.num_policy_samples
        if a.iq_alpha == 0:
            return 0
        return max(1, round(a.iq_alpha * batch_size))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        is_expert = inputs.pop("is_expert", None)
        if is_expert is None or return_outputs:  # evaluation, α = 0, or no prompt to sample from: offline IQLearn
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        qv = self.compute_qv(model, inputs)
        a = self.args
        counts = self.loss_counts(inputs, num_items_in_batch, is_expert)
        out = online_iq_loss_from_qv(
            qv,
            is_expert,
            alpha=a.iq_alpha,
            lam=a.iq_lambda,
            gamma=a.iq_gamma,
            eos_token_id=self.eos_token_ids or None,
            num_items_in_batch=num_items_in_batch,
            reduction=a.iq_reduction,
            stop_grad_next=a.iq_stop_grad_next,
            policy_terms=a.iq_policy_terms,
            num_sequences_in_batch=counts.get("sequences"),
            num_policy_items_in_batch=counts.get("policy_tokens"),
            num_policy_sequences_in_batch=counts.get("policy_sequences"),
        )
        loss = self.finalize_loss(mode, out.loss, out, num_items_in_batch)
        self._record_metrics(mode, restrict_rows(qv, is_expert), out, inputs)
        self._record_online_metrics(mode, out, is_expert)
        return loss

    def _record_online_metrics(self, mode: str, out, is_expert: torch.Tensor) -> None:
        gather = self.accelerator.gather
        p = {k: gather(v.reshape(1).double()).sum() for k, v in out.policy_sums.items()}
        expert_rows = gather(is_expert.sum().reshape(1).double()).sum()
        e = {k: gather(out.sums[k].reshape(1).double()).sum() for k in ("reward", "td_tokens", "value_gap", "tokens")}
        m = self._metrics[mode]
        m["policy_fraction"].append((p["rows"] / (p["rows"] + expert_rows).clamp(min=1)).item())
        m["reward/expert_mean"].append((e["reward"] / e["td_tokens"].clamp(min=1)).item())
        m["reward/policy_mean"].append((p["reward"] / p["td_tokens"].clamp(min=1)).item())
        m["policy/td_loss"].append((p["td"] / p["tokens"].clamp(min=1)).item())
        # token means from sums over every process, like the metrics above (the loss's `value_gap` is only this
        # micro-batch's share of the accumulated batch's)
        m["value_gap"].append((p["value_gap"] / p["tokens"].clamp(min=1) - e["value_gap"] / e["tokens"].clamp(min=1)).item())
