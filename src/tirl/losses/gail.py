"""The maths of GAIL for language models (docs/method.md §2), as pure functions on per-token tensors.

Token-level adversarial imitation. A discriminator D(s_t, a_t) ∈ (0, 1) scores each completion token, expert = 1:

    D(s_t, a_t) = σ(x_t),        x_t = the discriminator's logit for the action a_t taken in state s_t
    L_D  = ½·E_E[−log D] + ½·E_π[−log(1 − D)]            balanced binary cross-entropy, expert vs policy tokens
    r_t  = log D − log(1 − D) = x_t                       the per-token reward (AIRL-style; the logit itself)

The policy maximises the discounted reward of its own samples with a policy-gradient step, plus an MLE term on the
expert rows (the paper pairs GAIL with MLE, `mle_weight` = 1):

    r̃_t  = r_t − β_KL·(log π_old(a_t|s_t) − log π_ref(a_t|s_t)) − β_H·log π_old(a_t|s_t)
    G_t  = Σ_{k ≥ t} γ^{k−t} r̃_k                            return-to-go within the sampled completion
    A_t  = (G_t − b) / σ_G                                  b, σ_G: mean and std of G over the policy tokens
    L_PG = −E_π[ min(ρ_t·A_t, clip(ρ_t, 1 − ε, 1 + ε)·A_t) ],   ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t)

This is PPO-clip with a REINFORCE-style return and a scalar baseline (no value network). When samples are used once
(`generate_every` = 1) ρ_t = 1 and clipping never binds, so the gradient is exactly REINFORCE with a baseline,
−E_π[A_t·∇log π_θ]; clipping only matters when a sample buffer is reused for several steps. The KL penalty to the
initial policy π_ref and the entropy bonus are folded into the reward (the usual RLHF and max-ent RL forms: the
expected return then includes −β_KL·KL(π‖π_ref) + β_H·H(π) per step), so they need no extra differentiable pass.
A completion that ends in EOS is terminal (nothing after it); one cut at `max_new_tokens` is not bootstrapped (there
is no value network), its return simply stops.

All per-token tensors are [B, T − 1] in the shifted layout of `tirl.losses.mdp` (position t scores action a_t =
labels[:, t + 1]), zero where their mask is False.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .mdp import eos_positions


@dataclass
class DiscriminatorStats:
    """Detached statistics of one discriminator evaluation (means over the tokens of each class)."""

    loss: torch.Tensor  # the balanced BCE L_D
    accuracy: torch.Tensor  # balanced accuracy ½(P[D > ½ | expert] + P[D < ½ | policy]); D = ½ counts as ½
    expert_accuracy: torch.Tensor
    policy_accuracy: torch.Tensor
    expert_reward: torch.Tensor  # E_E[r_t]
    policy_reward: torch.Tensor  # E_π[r_t]


def discriminator_loss(logits: torch.Tensor, expert_mask: torch.Tensor, policy_mask: torch.Tensor) -> torch.Tensor:
    """L_D = ½·E_E[−log σ(x)] + ½·E_π[−log(1 − σ(x))], each a token mean over its class.

    Balanced: policy rows are usually far fewer tokens than expert rows (a fraction of the batch), and an unweighted
    BCE would let the discriminator ignore them. `−log σ(x)` is computed as softplus(−x) (stable for any x).
    """
    expert_term = (F.softplus(-logits) * expert_mask).sum() / expert_mask.sum().clamp(min=1)
    policy_term = (F.softplus(logits) * policy_mask).sum() / policy_mask.sum().clamp(min=1)
    return 0.5 * (expert_term + policy_term)


@torch.no_grad()
def discriminator_stats(logits: torch.Tensor, expert_mask: torch.Tensor, policy_mask: torch.Tensor) -> DiscriminatorStats:
    """Loss, balanced accuracy (threshold D = ½, i.e. x = 0) and mean rewards of a discriminator evaluation."""
    n_e = expert_mask.sum().clamp(min=1)
    n_p = policy_mask.sum().clamp(min=1)
    # a tie (x = 0, D = ½ exactly, e.g. the zero-initialised head) counts as half right, like a coin flip
    right_e = (logits > 0).float() + 0.5 * (logits == 0).float()
    right_p = (logits < 0).float() + 0.5 * (logits == 0).float()
    acc_e = (right_e * expert_mask).sum() / n_e
    acc_p = (right_p * policy_mask).sum() / n_p
    reward = discriminator_reward(logits)
    return DiscriminatorStats(
        loss=discriminator_loss(logits, expert_mask, policy_mask),
        accuracy=0.5 * (acc_e + acc_p),
        expert_accuracy=acc_e,
        policy_accuracy=acc_p,
        expert_reward=(reward * expert_mask).sum() / n_e,
        policy_reward=(reward * policy_mask).sum() / n_p,
    )


def discriminator_reward(logits: torch.Tensor) -> torch.Tensor:
    """r = log D − log(1 − D) with D = σ(x): exactly the logit x (log σ(x) − log σ(−x) = x), so no log of 0 ever."""
    return logits


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + γ·G_{t+1} over each row's masked positions; G = 0 where `mask` is False. [B, T] -> [B, T].

    A masked position ends the sum, so the return of a completion never leaks into padding or into the next
    completion of a row. Computed by a backward scan (a closed form with γ^{−t} overflows for long sequences).
    """
    rewards = rewards * mask
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        out[:, t] = running
    return out


def advantages(returns: torch.Tensor, mask: torch.Tensor, normalize: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """A_t = G_t − b with the baseline b = mean of G over the masked tokens; divided by their std when `normalize`.

    A scalar baseline (REINFORCE with a baseline): no value network to train. With one token the std is 0 and the
    advantage is 0 (there is nothing to compare against).
    """
    n = mask.sum().clamp(min=1)
    mean = (returns * mask).sum() / n
    centred = (returns - mean) * mask
    if normalize:
        std = (centred.square().sum() / n).sqrt()
        centred = centred / (std + eps)
    return centred


def shaped_rewards(
    reward: torch.Tensor,
    old_logprob: torch.Tensor,
    ref_logprob: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy_coef: float = 0.0,
) -> torch.Tensor:
    """r̃_t = r_t − β_KL·(log π_old − log π_ref) − β_H·log π_old (see the module docstring). Inputs are detached."""
    shaped = reward.detach()
    if kl_coef:
        if ref_logprob is None:
            raise ValueError("kl_coef > 0 needs the reference log-probabilities")
        shaped = shaped - kl_coef * (old_logprob - ref_logprob).detach()
    if entropy_coef:
        shaped = shaped - entropy_coef * old_logprob.detach()
    return shaped


def ppo_clip_loss(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip surrogate −min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) with ρ = exp(log π − log π_old), and the clipped mask.

    Returns (per-token loss [B, T], whether the clip was active per token [B, T]); the caller reduces over `mask`.
    d(loss_t)/d(log π_t) = −ρ_t·A_t where the clip is inactive and 0 where it is active.
    """
    ratio = torch.exp((logprob - old_logprob.detach()) * mask)
    adv = adv.detach()
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped) * mask
    with torch.no_grad():
        active = (clipped < unclipped) & mask.bool()
    return per_token, active


@torch.no_grad()
def kl_estimate(logprob: torch.Tensor, ref_logprob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate on samples from π: k3 = (ρ − 1) − log ρ with ρ = π_ref/π (Schulman's k3).

    Unbiased, and non-negative token by token (unlike the plain log-ratio), so a logged mean is never negative.
    """
    log_ratio = (ref_logprob - logprob) * mask
    return (torch.expm1(log_ratio) - log_ratio) * mask


def mask_after_eos(actions: torch.Tensor, mask: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """`mask` without the actions that follow an EOS inside the same completion (a chat template's trailing "\\n").

    Those tokens are outside the MDP (`tirl.losses` gives them no TD term); a discriminator would separate expert
    from policy rows by them alone, since policy samples stop at their EOS. The EOS itself is kept.
    """
    if eos_token_id is None:
        return mask
    return mask & ~eos_positions(actions, mask, eos_token_id)[1]


__all__ = ["DiscriminatorStats", "advantages", "discounted_returns", "discriminator_loss", "discriminator_reward",
           "discriminator_stats", "kl_estimate", "mask_after_eos", "ppo_clip_loss", "shaped_rewards"]
