"""`GAILTrainer`: adversarial imitation (token discriminator + PPO-clip policy gradient) plus MLE (METHOD.md §2).

Per micro-batch (maths in `tirl.losses.gail`):

    1. policy samples for the batch's prompts (regenerated every `generate_every` steps; `RolloutTrainer`)
    2. discriminator: trunk states of expert and policy rows, `gail_disc_steps` AdamW steps on the balanced BCE
       (its own optimizer, outside the policy's), then rewards r_t = log D − log(1−D) for the policy tokens
    3. reference log-probabilities log π_ref of the policy tokens under the frozen initial model (for the KL)
    4. one forward of the policy on expert + policy rows:
         loss = mle_weight · L_IQ(expert rows; λ = iq_lambda, 0 = MLE) + gail_pg_coef · L_PG(policy rows)

The policy-gradient choice: PPO-clip on REINFORCE returns with a scalar baseline (no value network). With fresh samples
(`generate_every=1`) the ratio is 1 and this *is* REINFORCE with a baseline; when samples are reused, the ratio to the
log-probabilities recorded at their first use keeps the stale steps off-policy-correct and clipped. The KL penalty
and the entropy bonus are reward terms (see `tirl.losses.gail`).

The discriminator, its optimizer and the sample buffer (with the recorded log-probabilities) are saved in each
checkpoint (`tirl_discriminator/`, safetensors + JSON) and restored on resume.
"""

from __future__ import annotations

import json
import os
import warnings

import torch

from ..discriminator import TokenDiscriminator, frozen_copy, truncated_trunk
from ..files import write_atomic, write_text_atomic
from ..losses import masked_mean, qv_from_hidden, restrict_rows, shift_labels
from ..losses.gail import (
    advantages,
    discounted_returns,
    discriminator_loss,
    discriminator_stats,
    kl_estimate,
    mask_after_eos,
    ppo_clip_loss,
    shaped_rewards,
)
from ..rollouts import BufferEntry
from .gail_config import GAILConfig
from .rollout_trainer import RolloutTrainer

DISC_DIR = "tirl_discriminator"


class GAILTrainer(RolloutTrainer):
    """GAIL with a token discriminator and an MLE term; see the module docstring for one step.

    `discriminator` (optional) replaces the one built from the config (`gail_disc_*` options); it must map
    (input_ids, attention_mask) to per-action logits like `tirl.discriminator.TokenDiscriminator`.

    Logs, besides `IQLearnTrainer`'s metrics on the expert rows (`mle_loss`, `entropy`, ...): `disc_loss`,
    `disc_accuracy` (balanced, measured on each micro-batch *before* the discriminator trains on it),
    `disc_accuracy/expert`, `disc_accuracy/policy`, `reward/policy_mean`, `reward/expert_mean`, `kl_to_initial`
    (k3 estimate of KL(π‖π_ref) on the policy samples), `pg_loss`, `pg_clip_fraction`, `policy/entropy`, and the
    sampling metrics of `RolloutTrainer`. Evaluation reports the expert-row loss (MLE when iq_lambda = 0).
    """

    _tag_names = ["trl", "sft", "tirl", "gail"]
    _name = "GAIL"
    _config_class = GAILConfig
    _default_output_dir = "tirl-gail"

    def __init__(self, model, args: GAILConfig | None = None, *pos, discriminator: TokenDiscriminator | None = None,
                 **kwargs):
        super().__init__(model, args, *pos, **kwargs)
        a = self.args
        if a.temperature != 1.0 or a.top_k or a.top_p < 1.0:
            warnings.warn(
                f"GAIL's policy gradient assumes samples from the policy itself, but sampling uses temperature="
                f"{a.temperature}, top_k={a.top_k}, top_p={a.top_p}: the gradient is then biased.",
                stacklevel=2,
            )
        device = self.accelerator.device
        self._disc_shares_ref_trunk = False
        self.discriminator = (discriminator if discriminator is not None else self._build_discriminator()).to(device)
        params = [p for p in self.discriminator.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the discriminator has no trainable parameter")
        self.disc_optimizer = torch.optim.AdamW(params, lr=a.gail_disc_learning_rate, weight_decay=0.0)

    def _build_discriminator(self) -> TokenDiscriminator:
        a = self.args
        if a.gail_disc_model:
            from .. import models

            lm, _ = models.load(a.gail_disc_model)
            policy_vocab = self.accelerator.unwrap_model(self.model).config.get_text_config().vocab_size
            if lm.config.get_text_config().vocab_size != policy_vocab:
                raise ValueError(
                    f"gail_disc_model={a.gail_disc_model!r} has a vocabulary of {lm.config.get_text_config().vocab_size} "
                    f"tokens, the policy {policy_vocab}: the discriminator reads the policy's token ids, so they must match."
                )
            trunk = lm.base_model
        elif a.gail_disc_train_trunk:
            trunk = frozen_copy(self.ref_model).base_model  # a separate copy: training it must not move the reference
        else:
            trunk = self.ref_model.base_model
            self._disc_shares_ref_trunk = a.gail_disc_num_layers is None
        if a.gail_disc_num_layers is not None:
            trunk = truncated_trunk(trunk, a.gail_disc_num_layers)
        hidden = trunk.config.get_text_config().hidden_size
        return TokenDiscriminator(trunk, hidden, head_hidden=a.gail_disc_head_hidden, train_trunk=a.gail_disc_train_trunk)

    def needs_reference_model(self) -> bool:
        return True  # the KL reference and, by default, the discriminator's trunk

    def num_policy_samples(self, batch_size: int) -> int:
        """One completion per prompt of the micro-batch unless `num_policy_samples` is set."""
        return self.args.num_policy_samples if self.args.num_policy_samples is not None else batch_size

    # ----------------------------------------------------------------------------------------------------------------
    # Discriminator step and per-token rewards (before the policy's forward)

    def mix_inputs(self, model, inputs: dict, entry: BufferEntry) -> dict:
        batch = super().mix_inputs(model, inputs, entry)
        reward, ref_logprob = self.discriminator_step(batch)
        batch["gail_reward"] = reward
        batch["gail_ref_logprob"] = ref_logprob
        old = entry.extras.get("old_logprob")
        if old is not None:
            batch["gail_old_logprob"] = self._to_batch_layout(old, batch)
        return batch

    @staticmethod
    def _to_batch_layout(policy_tokens: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per-token values of the policy rows ([N, Lr − 1]) placed in the mixed batch's layout ([B + N, L − 1])."""
        total, L = batch["input_ids"].shape
        out = torch.zeros(total, L - 1, dtype=policy_tokens.dtype, device=batch["input_ids"].device)
        n, lr = policy_tokens.shape
        out[total - n :, :lr] = policy_tokens.to(out.device)
        return out

    def discriminator_step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Train the discriminator on this micro-batch; return the rewards and reference log-probs ([B + N, T − 1])."""
        a = self.args
        disc = self.discriminator
        is_expert = batch["is_expert"]
        actions, mask = shift_labels(batch["labels"])
        in_mdp = mask_after_eos(actions, mask, self.eos_token_ids or None)
        expert_mask = in_mdp & is_expert[:, None]
        policy_mask = in_mdp & ~is_expert[:, None]
        trunk_inputs = (batch["input_ids"], batch["attention_mask"], batch.get("position_ids"))
        disc.train()
        with self.accelerator.autocast():
            hidden = None
            if not disc.train_trunk:
                with torch.no_grad():
                    hidden = disc.hidden_states(*trunk_inputs)
            for k in range(a.gail_disc_steps):
                h = hidden if hidden is not None else disc.hidden_states(*trunk_inputs)
                logits = disc.logits_from_hidden(h)
                if k == 0:  # accuracy on data the discriminator has not trained on yet (fresh samples)
                    before = discriminator_stats(logits.detach(), expert_mask, policy_mask)
                loss = discriminator_loss(logits, expert_mask, policy_mask)
                self.disc_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._sync_disc_grads()
                self.disc_optimizer.step()
            with torch.no_grad():
                h = hidden if hidden is not None else disc.hidden_states(*trunk_inputs)
                logits = disc.logits_from_hidden(h)
                after = discriminator_stats(logits, expert_mask, policy_mask)
                ref_logprob = self._ref_logprobs(batch, hidden if self._disc_shares_ref_trunk else None)
        self._record_disc_metrics(before, after)
        return (logits * policy_mask).detach(), ref_logprob

    def _sync_disc_grads(self) -> None:
        # every process trains its own replica of the discriminator on its own shard: average the gradients so the
        # replicas stay identical (the policy's DDP wrapper does this for the policy)
        if self.accelerator.num_processes > 1:
            for p in self.discriminator.parameters():
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")

    @torch.no_grad()
    def _ref_logprobs(self, batch: dict, ref_hidden: torch.Tensor | None) -> torch.Tensor:
        """log π_ref(a_t|s_t) for every action of the batch, from the frozen initial model ([B + N, T − 1])."""
        ref = self.ref_model
        if ref_hidden is None:
            ref_hidden = ref.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                        position_ids=batch.get("position_ids"), use_cache=False).last_hidden_state
        head = ref.get_output_embeddings()
        qv = qv_from_hidden(ref_hidden, head.weight, batch["labels"], chunk_size=max(self.args.iq_chunk_size, 256),
                            bias=getattr(head, "bias", None))
        return qv.logprob.detach()

    def _record_disc_metrics(self, before, after) -> None:
        gather = self.accelerator.gather
        vals = torch.stack([before.loss, before.accuracy, before.expert_accuracy, before.policy_accuracy,
                            after.policy_reward, after.expert_reward]).double().reshape(1, -1)
        g = gather(vals.to(self.accelerator.device)).reshape(-1, 6).mean(0)
        m = self._metrics["train"]
        m["disc_loss"].append(g[0].item())
        m["disc_accuracy"].append(g[1].item())
        m["disc_accuracy/expert"].append(g[2].item())
        m["disc_accuracy/policy"].append(g[3].item())
        m["reward/policy_mean"].append(g[4].item())
        m["reward/expert_mean"].append(g[5].item())

    # ----------------------------------------------------------------------------------------------------------------
    # The policy's loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        is_expert = inputs.pop("is_expert", None)
        reward = inputs.pop("gail_reward", None)
        ref_logprob = inputs.pop("gail_ref_logprob", None)
        old_logprob = inputs.pop("gail_old_logprob", None)
        if is_expert is None or return_outputs:  # evaluation: the expert loss (MLE when iq_lambda = 0)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        a = self.args
        inputs["use_cache"] = False
        qv = self.compute_qv(model, inputs)
        expert_qv = restrict_rows(qv, is_expert)
        counts = self.loss_counts(inputs, num_items_in_batch, is_expert)
        expert = self.iq_loss(expert_qv, num_items_in_batch, counts)

        policy_mask = qv.mask & ~is_expert[:, None]
        logprob = qv.logprob  # [B + N, T − 1], differentiable
        first_use = old_logprob is None
        old = logprob.detach() if first_use else old_logprob
        shaped = shaped_rewards(reward, old, ref_logprob, kl_coef=a.gail_kl_coef, entropy_coef=a.gail_entropy_coef)
        returns = discounted_returns(shaped * policy_mask, policy_mask, a.iq_gamma)
        adv = advantages(returns, policy_mask, normalize=a.gail_normalize_advantages)
        per_token, clipped = ppo_clip_loss(logprob, old, adv, policy_mask, clip_eps=a.gail_clip_eps)
        # a mean over the policy tokens (rows) of the whole accumulated batch, like the expert term
        pg = masked_mean(per_token, policy_mask, a.iq_reduction,
                         counts.get("policy_tokens" if a.iq_reduction == "token" else "policy_sequences"))
        loss = self.finalize_loss(mode, a.mle_weight * expert.loss + a.gail_pg_coef * pg, expert, num_items_in_batch)

        if first_use and self._current_entry is not None:  # record π_old for later reuses of these samples
            n = int((~is_expert).sum())
            lr = self._current_entry.rollout.input_ids.shape[1]
            self._current_entry.extras["old_logprob"] = logprob.detach()[-n:, : lr - 1].clone()

        self._record_metrics(mode, expert_qv, expert, inputs)
        with torch.no_grad():
            kl = kl_estimate(logprob.detach(), ref_logprob, policy_mask)
            n_pol = policy_mask.sum()
            pol_entropy = (qv.entropy * policy_mask).sum() if qv.entropy is not None else torch.zeros((), device=kl.device)
            local = torch.stack([(per_token * policy_mask).sum().double(), kl.sum().double(), clipped.sum().double(),
                                 pol_entropy.double(), n_pol.double()]).reshape(1, -1)
        g = self.accelerator.gather(local).reshape(-1, 5).sum(0)
        n = g[4].clamp(min=1)
        m = self._metrics[mode]
        m["pg_loss"].append((g[0] / n).item())
        m["kl_to_initial"].append((g[1] / n).item())
        m["pg_clip_fraction"].append((g[2] / n).item())
        m["policy/entropy"].append((g[3] / n).item())
        return loss

    # ----------------------------------------------------------------------------------------------------------------
    # Checkpoints: discriminator weights and optimizer state, next to the sample buffer

    def save_extra_state(self, checkpoint_dir: str) -> None:
        super().save_extra_state(checkpoint_dir)
        if not self.args.should_save:  # replicas are identical: the main process writes them
            return
        from safetensors.torch import save_file

        d = os.path.join(checkpoint_dir, DISC_DIR)
        weights = {k: v.contiguous().cpu() for k, v in self.discriminator.trainable_state_dict().items()}
        write_atomic(os.path.join(d, "discriminator.safetensors"), lambda tmp: save_file(weights, tmp))
        tensors, meta = optimizer_state_to_flat(self.disc_optimizer.state_dict())
        write_atomic(os.path.join(d, "optimizer.safetensors"), lambda tmp: save_file(tensors, tmp))
        meta["trainable"] = sorted(weights)
        write_text_atomic(os.path.join(d, "state.json"), json.dumps(meta, indent=1) + "\n")

    def load_extra_state(self, checkpoint_dir: str) -> None:
        super().load_extra_state(checkpoint_dir)
        from safetensors.torch import load_file

        d = os.path.join(checkpoint_dir, DISC_DIR)
        if not os.path.isfile(os.path.join(d, "state.json")):
            warnings.warn(f"{checkpoint_dir} has no saved discriminator; it starts again from its initial state.",
                          stacklevel=2)
            return
        with open(os.path.join(d, "state.json")) as f:
            meta = json.load(f)
        weights = load_file(os.path.join(d, "discriminator.safetensors"), device=str(self.accelerator.device))
        expected = set(self.discriminator.trainable_state_dict())
        if set(weights) != expected:
            raise ValueError(
                f"the discriminator saved in {d} has parameters {sorted(weights)[:4]}..., this run's has "
                f"{sorted(expected)[:4]}...: resume with the same gail_disc_* options."
            )
        self.discriminator.load_state_dict(weights, strict=False)
        tensors = load_file(os.path.join(d, "optimizer.safetensors"), device=str(self.accelerator.device))
        self.disc_optimizer.load_state_dict(optimizer_state_from_flat(tensors, meta))


def optimizer_state_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A torch optimizer `state_dict` as safetensors-ready tensors plus JSON-ready metadata (no pickle).

    Tensors are named `state.<param id>.<key>`; non-tensor per-parameter values and `param_groups` go to the JSON.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars, "format": 1}


def optimizer_state_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of `optimizer_state_to_flat`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


__all__ = ["GAILTrainer", "optimizer_state_from_flat", "optimizer_state_to_flat"]
