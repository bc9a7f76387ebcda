"""`GAILTrainer`: adversarial imitation (token discriminator + PPO-clip policy gradient) plus MLE
(docs/method.md §2).

One micro-batch is three phases, written out in `training_step` (maths in `tirl.losses.gail`):

    1. samples        the batch's policy samples, from the trainer's `RolloutSampler` (drawn for the whole optimizer
                      step before its first forward, regenerated every `generate_every` steps; when samples will be
                      reused, their log π_old is recorded when they are drawn)
    2. discriminator  trunk states of expert and policy rows, `gail_disc_steps` AdamW steps of its own optimizer on the
                      balanced BCE; then the rewards r_t = log D − log(1−D) of the policy tokens and log π_ref of every
                      token under the frozen initial policy (for the KL)
    3. policy         `Trainer.training_step` on expert + policy rows, whose `compute_loss` is
                        loss = mle_weight · L_MLE(expert rows) + gail_pg_coef · L_PG(policy rows)

The policy-gradient choice: PPO-clip on REINFORCE returns with a scalar baseline (no value network). With fresh samples
(`generate_every=1`) the ratio is 1 (π_old is the policy's own log-probability, detached) and this *is* REINFORCE with
a baseline; when samples are reused, the ratio to the log-probabilities recorded when they were drawn keeps the stale
steps off-policy-correct and clipped. The KL penalty and the entropy bonus are reward terms (see `tirl.losses.gail`).

The frozen initial policy (`ref_model`) is prepared as TRL's GRPO prepares its reference model
(`tirl.trainers.reference_model`), and by default is also the discriminator's trunk. The discriminator, its optimizer
and the sample buffer (with the recorded log-probabilities) are saved in each checkpoint (`tirl_discriminator/`,
safetensors + JSON) and restored on resume.
"""

from __future__ import annotations

import json
import os
import time
import warnings

import torch
from safetensors.torch import load_file, save_file

from .. import models
from ..files import write_atomic, write_text_atomic
from ..losses import LOGITS, iq_loss_from_qv, masked_mean, restrict_rows, shift_labels
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
from .base import TirlTrainer
from .checkpoints import optimizer_state_from_flat, optimizer_state_to_flat
from .discriminator import TokenDiscriminator, truncated_trunk
from .gail_config import GAILConfig
from .reference_model import frozen_copy, full_parameters, reference_logprobs
from .rollouts import policy_rows_to_batch

DISC_DIR = "tirl_discriminator"
OLD_LOGPROB = "old_logprob"  # what the sampler records about each sample for the PPO ratio: log π_old [N, Lr − 1]


class GAILTrainer(TirlTrainer):
    """GAIL with a token discriminator and an MLE term; see the module docstring for one step.

    `discriminator` (optional) replaces the one built from the config (`gail_disc_*` options); it must map
    (input_ids, attention_mask) to per-action logits like `tirl.trainers.discriminator.TokenDiscriminator`.

    Logs, besides the offline metrics on the expert rows (`mle_loss`, `entropy`, ...): `disc_loss`,
    `disc_accuracy` (balanced, measured on each micro-batch *before* the discriminator trains on it),
    `disc_accuracy/expert`, `disc_accuracy/policy`, `reward/policy_mean`, `reward/expert_mean`, `kl_to_initial`
    (k3 estimate of KL(π‖π_ref) on the policy samples), `pg_loss`, `pg_clip_fraction`, `policy/entropy`, and the
    sampling metrics of `RolloutSampler`. Evaluation reports the expert-row loss (MLE).
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
        # the initial policy, frozen: the KL reference and, by default, the discriminator's trunk (shared, so built
        # from the copy before the copy is prepared)
        ref = frozen_copy(self.accelerator.unwrap_model(self.model))
        self._disc_shares_ref_trunk = False
        self.discriminator = (discriminator if discriminator is not None else self._build_discriminator(ref))
        self.discriminator.to(self.accelerator.device)
        self.hold_reference_model(ref)
        params = [p for p in self.discriminator.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the discriminator has no trainable parameter")
        self.disc_optimizer = torch.optim.AdamW(params, lr=a.gail_disc_learning_rate, weight_decay=0.0)
        # samples that will be reused keep the log π_old of the policy that drew them
        self.sampler = self.make_sampler({OLD_LOGPROB: self._policy_logprobs} if a.generate_every > 1 else {})

    def _build_discriminator(self, ref: torch.nn.Module) -> TokenDiscriminator:
        """The discriminator of the `gail_disc_*` options; `ref` is the frozen initial policy (not yet prepared)."""
        a = self.args
        if a.gail_disc_model:
            lm, _ = models.load(a.gail_disc_model)
            policy_vocab = self.accelerator.unwrap_model(self.model).config.get_text_config().vocab_size
            if lm.config.get_text_config().vocab_size != policy_vocab:
                raise ValueError(
                    f"gail_disc_model={a.gail_disc_model!r} has a vocabulary of {lm.config.get_text_config().vocab_size} "
                    f"tokens, the policy {policy_vocab}: the discriminator reads the policy's token ids, so they must match."
                )
            trunk = lm.base_model
        elif a.gail_disc_train_trunk:
            trunk = frozen_copy(ref).base_model  # a separate copy: training it must not move the reference
        else:
            trunk = ref.base_model
            self._disc_shares_ref_trunk = a.gail_disc_num_layers is None
        if a.gail_disc_num_layers is not None:
            trunk = truncated_trunk(trunk, a.gail_disc_num_layers)
        hidden = trunk.config.get_text_config().hidden_size
        return TokenDiscriminator(trunk, hidden, head_hidden=a.gail_disc_head_hidden, train_trunk=a.gail_disc_train_trunk)

    def num_policy_samples(self, batch_size: int) -> int:
        """One completion per prompt of the micro-batch unless `num_policy_samples` is set."""
        return self.args.num_policy_samples if self.args.num_policy_samples is not None else batch_size

    # ----------------------------------------------------------------------------------------------------------------
    # What the sampler records about fresh samples

    @torch.no_grad()
    def _policy_logprobs(self, model, rollout) -> torch.Tensor:
        """log π_old(a_t|s_t) of the sampled tokens ([N, Lr − 1]) under the policy that drew them, in the training
        step's precision: what the PPO ratio of a reused sample divides by."""
        batch = {"input_ids": rollout.input_ids, "attention_mask": rollout.attention_mask, "labels": rollout.labels,
                 "use_cache": False}
        with self.accelerator.autocast():
            return self.compute_qv(model, batch, LOGITS).logprob.detach()

    # ----------------------------------------------------------------------------------------------------------------
    # One micro-batch: samples, discriminator, policy

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The three phases of one micro-batch (module docstring); its samples were drawn by `get_batch_samples`."""
        start = time.perf_counter()
        batch, sample = self.sampler.next_batch(model, inputs, self.state.global_step)  # 1. samples
        if sample.entry is not None:
            batch["gail_reward"], batch["gail_ref_logprob"] = self.discriminator_step(batch)  # 2. discriminator
            old = sample.entry.extras.get(OLD_LOGPROB)
            if old is not None:
                batch["gail_old_logprob"] = policy_rows_to_batch(old, batch)
        loss = super().training_step(model, batch, num_items_in_batch)  # 3. policy
        self.sampler.log_step(sample, time.perf_counter() - start, self.metrics)
        return loss

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
        # the reference's parameters whole for the phase: it may be the discriminator's trunk, and it gives log π_ref
        with self.accelerator.autocast(), full_parameters(self.ref_model):
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
                ref_logprob = reference_logprobs(self.ref_model, self.accelerator, batch,
                                                 hidden if self._disc_shares_ref_trunk else None,
                                                 chunk_size=max(self.args.iq_chunk_size, 256))
        self._record_disc_metrics(before, after)
        return (logits * policy_mask).detach(), ref_logprob

    def _sync_disc_grads(self) -> None:
        # every process trains its own replica of the discriminator on its own shard: average the gradients so the
        # replicas stay identical (the policy's DDP wrapper does this for the policy)
        if self.accelerator.num_processes > 1:
            for p in self.discriminator.parameters():
                if p.grad is not None:
                    p.grad = self.accelerator.reduce(p.grad, reduction="mean")

    def _record_disc_metrics(self, before, after) -> None:
        gather = self.accelerator.gather
        vals = torch.stack([before.loss, before.accuracy, before.expert_accuracy, before.policy_accuracy,
                            after.policy_reward, after.expert_reward]).double().reshape(1, -1)
        g = gather(vals.to(self.accelerator.device)).reshape(-1, 6).mean(0)
        self.metrics.add("train", **{"disc_loss": g[0].item(), "disc_accuracy": g[1].item(),
                                     "disc_accuracy/expert": g[2].item(), "disc_accuracy/policy": g[3].item(),
                                     "reward/policy_mean": g[4].item(), "reward/expert_mean": g[5].item()})

    # ----------------------------------------------------------------------------------------------------------------
    # The policy's loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        is_expert = inputs.pop("is_expert", None)
        reward = inputs.pop("gail_reward", None)
        ref_logprob = inputs.pop("gail_ref_logprob", None)
        old_logprob = inputs.pop("gail_old_logprob", None)
        if is_expert is None or return_outputs:  # evaluation: the expert loss (MLE)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        a, o = self.args, self.objective
        inputs["use_cache"] = False
        qv = self.compute_qv(model, inputs)
        expert_qv = restrict_rows(qv, is_expert)
        counts = self.loss_counts(inputs, num_items_in_batch, is_expert)
        expert = iq_loss_from_qv(expert_qv, o, counts)

        policy_mask = qv.mask & ~is_expert[:, None]
        logprob = qv.logprob  # [B + N, T − 1], differentiable
        old = logprob.detach() if old_logprob is None else old_logprob  # fresh samples: π_old is π itself
        shaped = shaped_rewards(reward, old, ref_logprob, kl_coef=a.gail_kl_coef, entropy_coef=a.gail_entropy_coef)
        returns = discounted_returns(shaped * policy_mask, policy_mask, o.iq_gamma)
        adv = advantages(returns, policy_mask, normalize=a.gail_normalize_advantages)
        per_token, clipped = ppo_clip_loss(logprob, old, adv, policy_mask, clip_eps=a.gail_clip_eps)
        # a mean over the policy tokens (rows) of the whole accumulated batch, like the expert term
        pg = masked_mean(per_token, policy_mask, o.iq_reduction, counts.policy(o.iq_reduction))
        loss = self.finalize_loss(mode, a.mle_weight * expert.loss + a.gail_pg_coef * pg, expert, num_items_in_batch)

        self.record_loss_metrics(mode, expert_qv, expert, inputs)
        with torch.no_grad():
            kl = kl_estimate(logprob.detach(), ref_logprob, policy_mask)
            n_pol = policy_mask.sum()
            pol_entropy = (qv.entropy * policy_mask).sum() if qv.entropy is not None else torch.zeros((), device=kl.device)
            local = torch.stack([(per_token * policy_mask).sum().double(), kl.sum().double(), clipped.sum().double(),
                                 pol_entropy.double(), n_pol.double()]).reshape(1, -1)
        g = self.accelerator.gather(local).reshape(-1, 5).sum(0)
        n = g[4].clamp(min=1)
        self.metrics.add(mode, **{"pg_loss": (g[0] / n).item(), "kl_to_initial": (g[1] / n).item(),
                                  "pg_clip_fraction": (g[2] / n).item(), "policy/entropy": (g[3] / n).item()})
        return loss

    # ----------------------------------------------------------------------------------------------------------------
    # Checkpoints: discriminator weights and optimizer state, next to the sample buffer

    def save_extra_state(self, checkpoint_dir: str) -> None:
        super().save_extra_state(checkpoint_dir)
        if not self.args.should_save:  # replicas are identical: the main process writes them
            return
        d = os.path.join(checkpoint_dir, DISC_DIR)
        weights = {k: v.contiguous().cpu() for k, v in self.discriminator.trainable_state_dict().items()}
        write_atomic(os.path.join(d, "discriminator.safetensors"), lambda tmp: save_file(weights, tmp))
        tensors, meta = optimizer_state_to_flat(self.disc_optimizer.state_dict())
        write_atomic(os.path.join(d, "optimizer.safetensors"), lambda tmp: save_file(tensors, tmp))
        meta["trainable"] = sorted(weights)
        write_text_atomic(os.path.join(d, "state.json"), json.dumps(meta, indent=1) + "\n")

    def load_extra_state(self, checkpoint_dir: str) -> None:
        super().load_extra_state(checkpoint_dir)
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


__all__ = ["DISC_DIR", "OLD_LOGPROB", "GAILTrainer"]
