"""The token-level MDP (docs/method.md §1): Q and V per token, the label shift, EOS and truncation, implicit rewards.

For a prompt x and a target y ending in EOS:
    state  s_t = (x, y_<t),   action a_t = y_t,   s_{t+1} = s_t ⊕ a_t,   EOS leads to a terminal state with V = 0.
    Q(s_t, ·)       = ℓ_t                   the LM logits at the position that predicts y_t
    V(s_t)          = logsumexp(ℓ_t)
    log π(a_t|s_t)  = Q(s_t, a_t) − V(s_t)
    r_t             = Q(s_t, a_t) − γ·V(s_{t+1})      the implicit reward

Everything in `tirl.losses` is built from per-position tensors held in a `QV`: the action's logit, the logsumexp of
the logits and the action mask (and V in the loss's value form). They come either from full logits (`qv_from_logits`,
here, the simple reference) or from hidden states and the LM head weight in row chunks
(`tirl.losses.chunked_head.qv_from_hidden`, which never materialises [batch, seq, vocab]); the logits form is the
test oracle of the chunked one. V is `QV.v`: the logsumexp in the logits form; a value form other than the logits
(`tirl.losses.objective.ValueForm`) sets `QV.v_override`, with the same policy and
Q(s_t, a_t) = log π(a_t|s_t) + V(s_t).

Conventions, decided once here:
- `labels` are unshifted, like Hugging Face's: `labels[:, t]` is the token at input position t, `IGNORE_INDEX` (−100)
  where it is not an action (prompt, padding, packed-sequence boundaries). The logits at position t predict token
  t + 1; the shift happens in `shift_labels` and nowhere else. Every per-token output has shape [batch, seq − 1].
- Terminal states: the action EOS ends the episode, so V(s_{t+1}) = 0 after it. A completion that ends without EOS was
  truncated; its state is not terminal, and we *drop* the TD term of its last action (we do not bootstrap, because
  the value after the last input token is not computed). Tokens a chat template renders after EOS inside the
  completion (e.g. the "\\n" after "<|im_end|>") are outside the MDP: they keep their MLE term, as in TRL, but get no
  TD term. Without EOS ids every completion end is treated as terminal.
- Means: `masked_mean` is the one reduction of every loss (token means, or means of per-sequence means), divided by a
  count of the whole accumulated batch when one is given (see its docstring and `tirl.losses.iq`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

IGNORE_INDEX = -100  # the label of a position that is not an action (Hugging Face's and TRL's convention)

Reduction = Literal["token", "sequence"]


@dataclass
class QV:
    """Per-position quantities of the token MDP, all [batch, seq − 1], zero where `mask` is False.

    Two logit statistics and one value: `logit` = ℓ_t[a_t] and `lse` = logsumexp(ℓ_t) give the policy,
    log π(a_t|s_t) = logit − lse, in every value form; `v` is V(s_t) in the form the loss uses (`lse` itself in the
    logits form; in the others, the `v_override` that `tirl.losses.objective.ValueForm.apply` sets), and
    `q` = Q(s_t, a_t) = log π + V.
    """

    logit: torch.Tensor  # ℓ_t[a_t], the logit of the action taken (float32)
    lse: torch.Tensor  # logsumexp(ℓ_t) (float32)
    actions: torch.Tensor  # a_t, with ignored positions set to 0 (long)
    mask: torch.Tensor  # True where a_t is a completion token (bool)
    entropy: torch.Tensor | None = None  # H(π(·|s_t)); None when not computed; differentiable only when asked for
    is_top1: torch.Tensor | None = None  # whether a_t is the argmax action, no gradient
    v_override: torch.Tensor | None = None  # V(s_t) set by a value form other than the logits; None: V = lse (read `v`)

    @property
    def logprob(self) -> torch.Tensor:
        """log π(a_t|s_t) = ℓ_t[a_t] − logsumexp(ℓ_t), whatever the value form."""
        return (self.logit - self.lse) * self.mask

    @property
    def v(self) -> torch.Tensor:
        """V(s_t) in the loss's value form (logsumexp(ℓ_t) in the logits form)."""
        return self.lse if self.v_override is None else self.v_override

    @property
    def q(self) -> torch.Tensor:
        """Q(s_t, a_t) = log π(a_t|s_t) + V(s_t); in the logits form exactly the action's logit."""
        return self.logit if self.v_override is None else (self.logprob + self.v_override) * self.mask


@dataclass
class TokenRewards:
    """Per-token reward decomposition, all [batch, seq − 1], zero where `mask` is False."""

    reward: torch.Tensor  # r_t = Q(s_t, a_t) − γ·V(s_{t+1}); 0 where `td_mask` is False
    value: torch.Tensor  # V(s_t)
    next_value: torch.Tensor  # γ-free V(s_{t+1}); 0 after EOS
    logprob: torch.Tensor  # log π(a_t|s_t)
    mask: torch.Tensor  # completion tokens
    td_mask: torch.Tensor  # tokens whose TD term is defined (not truncated, not after EOS)

    def sequence_reward(self) -> torch.Tensor:
        """R = Σ_t r_t over the tokens with a defined reward, per sequence: [batch]."""
        return (self.reward * self.td_mask).sum(-1)


# --------------------------------------------------------------------------------------------------------------------
# Per-position Q and V from full logits
# --------------------------------------------------------------------------------------------------------------------


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """Float32 for the softmax-sized maths, or float64 when the inputs already are (the gradient checks use it)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def shift_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions and their mask for the logits at positions 0..T−2: `labels[:, 1:]`. The only shift in `tirl`."""
    actions = labels[:, 1:]
    mask = actions != IGNORE_INDEX
    return actions.masked_fill(~mask, 0), mask


def qv_from_logits(logits: torch.Tensor, labels: torch.Tensor, with_stats: bool = True,
                   entropy_grad: bool = False) -> QV:
    """Q(s_t, a_t) and V(s_t) from full logits [B, T, V] and unshifted labels [B, T].

    The logsumexp is taken once, in float32, and serves both −log π and the TD term (a second softmax-sized pass
    would double the loss cost). `entropy_grad` keeps the entropy in the graph (entropy-regularised MLE).
    """
    actions, mask = shift_labels(labels)
    z = logits[:, :-1].to(acc_dtype(logits))  # [B, T−1, V]
    lse = torch.logsumexp(z, dim=-1)  # [B, T−1]
    logit = z.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = is_top1 = None
    if with_stats or entropy_grad:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            p = torch.softmax(z, dim=-1)
            entropy = (lse - (p * z).sum(-1)) * mask
        with torch.no_grad():
            is_top1 = (logit >= z.amax(-1)) & mask
    return QV(logit=logit * mask, lse=lse * mask, actions=actions, mask=mask, entropy=entropy, is_top1=is_top1)


def restrict_rows(qv: QV, rows: torch.Tensor) -> QV:
    """`qv` with every row outside `rows` ([B] bool) masked out, as if those rows had no completion token."""
    keep = qv.mask & rows[:, None]
    return QV(
        logit=qv.logit * keep,
        lse=qv.lse * keep,
        actions=qv.actions,
        mask=keep,
        entropy=None if qv.entropy is None else qv.entropy * keep,
        is_top1=None if qv.is_top1 is None else qv.is_top1 & keep,
        v_override=None if qv.v_override is None else qv.v_override * keep,
    )


# --------------------------------------------------------------------------------------------------------------------
# Terminal handling and rewards
# --------------------------------------------------------------------------------------------------------------------


def eos_positions(actions: torch.Tensor, mask: torch.Tensor,
                  eos_token_ids: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_eos, after_eos), both [B, T−1]: completion positions whose action is EOS, and completion positions that
    follow an EOS inside the same completion segment (a maximal run of completion positions; several per row in
    multi-turn data)."""
    eos_ids = torch.as_tensor(eos_token_ids, device=mask.device).reshape(-1)
    is_eos = torch.isin(actions, eos_ids) & mask
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    prev_mask = torch.zeros_like(mask)
    prev_mask[:, 1:] = mask[:, :-1]
    seg_start = torch.where(mask & ~prev_mask, positions, -1).cummax(-1).values
    last_eos = torch.where(is_eos, positions, -1).cummax(-1).values
    prev_eos = torch.full_like(last_eos, -1)
    prev_eos[:, 1:] = last_eos[:, :-1]
    return is_eos, mask & (prev_eos >= seg_start)


def next_values(qv: QV, eos_token_ids: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """V(s_{t+1}) for every action and the mask of actions whose TD term is defined.

    Returns (v_next, td_mask), both [B, T−1]. v_next is V (`qv.v`) at the next completion position, 0 after
    EOS (terminal) and 0 at the end of a completion. td_mask excludes the last action of a completion truncated
    without EOS and any action that follows an EOS inside the same completion (see the module docstring).
    """
    mask = qv.mask
    next_mask = torch.zeros_like(mask)
    next_mask[:, :-1] = mask[:, 1:]
    value = qv.v
    v_next = torch.zeros_like(value)
    v_next[:, :-1] = value[:, 1:]
    if not eos_token_ids:
        # no EOS to tell terminal from truncated: every completion end is terminal
        return v_next * next_mask, mask.clone()

    is_eos, after_eos = eos_positions(qv.actions, mask, eos_token_ids)
    segment_end = mask & ~next_mask
    truncated = segment_end & ~is_eos & ~after_eos
    terminal = is_eos | segment_end
    td_mask = mask & ~truncated & ~after_eos
    return v_next * ~terminal, td_mask


def token_rewards(qv: QV, iq_gamma: float, eos_token_ids: Sequence[int] = (),
                  stop_grad_next: bool = False) -> TokenRewards:
    """Implicit per-token rewards r_t = Q(s_t, a_t) − γ·V(s_{t+1}) (docs/method.md §1), γ = `iq_gamma`, in the
    value form `qv` carries; 0 where the TD term is undefined (`next_values`). The one place r_t is written: the
    losses' TD residuals (`tirl.losses.iq.td_residuals`) and the rewards read off a checkpoint both call it.
    `stop_grad_next`: no gradient through V(s_{t+1}) (`iq_stop_grad_next`)."""
    v_next, td_mask = next_values(qv, eos_token_ids)
    if stop_grad_next:
        v_next = v_next.detach()
    reward = (qv.q - iq_gamma * v_next) * td_mask
    return TokenRewards(
        reward=reward,
        value=qv.v,
        next_value=v_next,
        logprob=qv.logprob,
        mask=qv.mask,
        td_mask=td_mask,
    )


# --------------------------------------------------------------------------------------------------------------------
# The one reduction
# --------------------------------------------------------------------------------------------------------------------


def masked_mean(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    reduction: Reduction,
    total: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of `per_token` [B, T−1] over `mask`, as every loss in `tirl.losses` takes it:

        token:     Σ_{b,t} x_bt / N,                     N = Σ_{b,t} mask_bt
        sequence:  Σ_b (Σ_t x_bt / n_b) / S,             n_b = Σ_t mask_bt, S = #{b : n_b > 0}

    `total` replaces N (or S) with the count of the whole accumulated batch on every process (`num_items_in_batch`
    and its siblings), so that the micro-batches' results sum to the large batch's mean; None: this batch's own count.
    The denominator is clamped at 1, so a batch without masked tokens gives a finite zero, not 0/0.
    """
    if reduction == "token":
        num, local = per_token.sum(), mask.sum()
    elif reduction == "sequence":
        counts = mask.sum(-1)
        has = counts > 0
        num, local = ((per_token.sum(-1) / counts.clamp(min=1)) * has).sum(), has.sum()
    else:
        raise ValueError(f"reduction must be 'token' or 'sequence', got {reduction!r}")
    denom = local if total is None else torch.as_tensor(total, device=per_token.device)
    return num / denom.clamp(min=1)


__all__ = ["IGNORE_INDEX", "QV", "Reduction", "TokenRewards", "acc_dtype", "eos_positions", "masked_mean",
           "next_values", "qv_from_logits", "restrict_rows", "shift_labels", "token_rewards"]
