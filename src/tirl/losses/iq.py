"""The IQLearn objectives (METHOD.md §2) as pure functions of a `QV`: offline (TD-regularised MLE) and online.

Offline, means over completion tokens:
    L_MLE = E[ −log π(a_t|s_t) ]
    L_IQ  = E[ −log π(a_t|s_t) + λ·r_t² ]      offline IQLearn = TD-regularised MLE; λ = 0 is exactly L_MLE.

Online, on expert rows (E) mixed with the model's own samples (π), E_mix = (1−α)·E_E + α·E_π:
    L_on = −E_E[r_t] + E_mix[V(s_t) − γ·V(s_{t+1})] + λ·E_mix[r_t²]

Value parameterisation (METHOD.md §1). Eq. 14 takes v and π as separate arguments: L = E[λ·(v(s) + log π(a|s) −
γ·v(s'))² − log π(a|s)]. The logits give π = softmax(ℓ) and one choice of v, V = logsumexp(ℓ) ("logits"); a `QV` may
carry another V in `value`, with the same policy and Q(s_t, a_t) = log π(a_t|s_t) + V(s_t):
    reference   V = LSE_θ − LSE_θ0, θ0 the starting model (`with_reference`): V ≡ 0 and r_t = log π_θ0 at the start
    head        V = v_ψ(s), a scalar head on the final hidden state (`with_value`)
Softmax ignores a per-state shift of the logits, so a pretrained model's logsumexp (≈30 for SmolLM2) is an artefact
of pretraining, not a value; the two other forms start the TD term at E[(log π_θ0)²] instead of ≈80. The entropy
term of entropy-regularised MLE (`entropy_coef`) is the paper's other baseline.

Normalisation: token sums divided by `num_items_in_batch` when given (the number of completion tokens in the whole
accumulated batch, as `transformers.Trainer` passes it, so gradient accumulation and data parallelism are exact),
else by the local count of completion tokens. Both terms share the denominator, so λ = 0 reproduces TRL's SFT loss.
`reduction="sequence"` instead sums each sequence's token mean and divides by `num_sequences_in_batch` when given
(the sequences with a completion token in the whole accumulated batch, counted like `num_items_in_batch`), else by
the local number of sequences (`tirl.losses.mdp.masked_mean`). A trainer that passes `num_items_in_batch` must pass
the global counts of every reduction it uses: `Trainer` then neither divides by the accumulation steps nor averages
over processes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from .chunked_head import qv_from_hidden
from .mdp import QV, Reduction, masked_mean, next_values, qv_from_logits, restrict_rows

ValueForm = Literal["logits", "reference", "head"]
VALUE_FORMS: tuple[str, ...] = ("logits", "reference", "head")
PolicyTerms = Literal["both", "td", "value"]
POLICY_TERMS: tuple[str, ...] = ("both", "td", "value")


@dataclass
class LossOutput:
    """A loss and the detached statistics a trainer logs (means over completion tokens)."""

    loss: torch.Tensor
    nll: torch.Tensor  # the MLE term, same normalisation as `loss`
    td: torch.Tensor  # the χ² / TD term E[r²] before multiplying by λ
    mean_reward: torch.Tensor  # E[r_t]
    mean_value: torch.Tensor  # E[V(s_t)]
    num_tokens: torch.Tensor  # completion tokens in this micro-batch
    # detached token sums (nll, td, reward, value, tokens, td_tokens) so trainers can gather across processes and
    # divide once, instead of averaging per-process means
    sums: dict[str, torch.Tensor] | None = None


@dataclass
class OnlineLossOutput(LossOutput):
    """`LossOutput` of the expert rows (same fields, same meaning as offline), plus the policy rows' statistics.

    `sums` are the expert rows' sums (so an online run logs the same `mle_loss`/`td_loss` as an offline one), plus
    their `value_gap` = Σ V(s_t) − γV(s_{t+1}) over the tokens with a TD term; `policy_sums` are the detached sums over
    policy rows (value_gap, td, reward, tokens, td_tokens, rows). Trainers log ratios of these sums gathered over
    processes, never per-micro-batch means.
    """

    policy_sums: dict[str, torch.Tensor] | None = None
    # this micro-batch's part of E_π[V − γV'] − E_E[V − γV'] (the α-weighted value term before α), normalised by the
    # counts it was given: the whole gap only for one micro-batch on one process
    value_gap: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------------------------------
# Value parameterisations: the same policy, another V (module docstring)
# --------------------------------------------------------------------------------------------------------------------


def with_value(qv: QV, value: torch.Tensor) -> QV:
    """`qv` with V(s_t) = `value` [B, T−1] and Q(s_t, a_t) = log π(a_t|s_t) + V(s_t); the policy is unchanged."""
    if value.shape != qv.mask.shape:
        raise ValueError(f"value has shape {tuple(value.shape)}, expected {tuple(qv.mask.shape)}")
    return replace(qv, value=value.to(qv.v.dtype) * qv.mask)


def with_reference(qv: QV, reference_v: torch.Tensor) -> QV:
    """V(s_t) = LSE_θ(s_t) − LSE_θ0(s_t), from the starting model's logsumexp `reference_v` [B, T−1] (no gradient).

    Q(s_t, a_t) = ℓ_θ(s_t)[a_t] − LSE_θ0(s_t): at θ = θ0, V ≡ 0 and r_t = log π_θ0(a_t|s_t)."""
    return with_value(qv, qv.v - reference_v.detach().to(qv.v.dtype))


# --------------------------------------------------------------------------------------------------------------------
# Offline IQLearn
# --------------------------------------------------------------------------------------------------------------------


def iq_loss_from_qv(
    qv: QV,
    lam: float = 0.01,
    gamma: float = 0.99,
    eos_token_id: int | list[int] | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    reduction: Reduction = "token",
    stop_grad_next: bool = False,
    num_sequences_in_batch: int | torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> LossOutput:
    """L_IQ = E[−log π(a_t|s_t)] + λ·E[r_t²] from per-position Q and V (see the module docstring).

    E is a token mean (Σ / `num_items_in_batch`) or, with `reduction="sequence"`, a mean of per-sequence token means
    (Σ over sequences / `num_sequences_in_batch`); a count left None is this batch's own.

    r_t = Q(s_t, a_t) − γ·V(s_{t+1}) uses the value parameterisation `qv` carries (`QV.value`); −log π never depends
    on it. `entropy_coef` β > 0 subtracts β·E[H(π(·|s_t))] over the same tokens, the paper's entropy-regularised MLE
    baseline (with λ = 0); it needs `qv.entropy` in the graph (`entropy_grad=True` where the QV is built).
    """
    total = num_items_in_batch if reduction == "token" else num_sequences_in_batch

    def mean(per_token: torch.Tensor) -> torch.Tensor:
        return masked_mean(per_token, qv.mask, reduction, total)

    nll_tok = -(qv.q - qv.v) * qv.mask
    nll = mean(nll_tok)
    v_next, td_mask = next_values(qv, eos_token_id)
    if stop_grad_next:
        v_next = v_next.detach()
    reward = (qv.q_value - gamma * v_next) * td_mask
    if lam != 0:
        td = mean(reward.square())
        loss = nll + lam * td
    else:
        # λ = 0 is exactly MLE: the TD term is not even in the graph
        loss = nll
        with torch.no_grad():
            td = mean(reward.square())
    if entropy_coef != 0:
        # (under no_grad, e.g. in evaluation, the value is all that is needed)
        if qv.entropy is None or (torch.is_grad_enabled() and qv.q.requires_grad and not qv.entropy.requires_grad):
            raise ValueError("entropy_coef needs the entropy in the graph: build the QV with entropy_grad=True")
        loss = loss - entropy_coef * mean(qv.entropy * qv.mask)
    with torch.no_grad():
        sums = {
            "nll": nll_tok.sum(),
            "td": reward.square().sum(),
            "reward": reward.sum(),
            "value": (qv.state_value * qv.mask).sum(),
            "tokens": qv.mask.sum(),
            "td_tokens": td_mask.sum(),
        }
    return LossOutput(
        loss=loss,
        nll=nll.detach(),
        td=td.detach(),
        mean_reward=sums["reward"] / sums["td_tokens"].clamp(min=1),
        mean_value=sums["value"] / sums["tokens"].clamp(min=1),
        num_tokens=sums["tokens"],
        sums={k: v.detach() for k, v in sums.items()},
    )


def mle_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
    reduction: Reduction = "token",
    num_sequences_in_batch: int | torch.Tensor | None = None,
) -> LossOutput:
    """L_MLE = E[−log π(a_t|s_t)] over completion tokens, from logits [B, T, V] and unshifted labels [B, T]."""
    return iq_loss_from_qv(qv_from_logits(logits, labels), lam=0.0, num_items_in_batch=num_items_in_batch,
                           reduction=reduction, num_sequences_in_batch=num_sequences_in_batch)


def iq_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.01,
    gamma: float = 0.99,
    eos_token_id: int | list[int] | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    reduction: Reduction = "token",
    stop_grad_next: bool = False,
    num_sequences_in_batch: int | torch.Tensor | None = None,
) -> LossOutput:
    """Offline IQLearn, E[−log π + λ·r²], from full logits [B, T, V] and unshifted labels [B, T]. λ = 0 is MLE."""
    return iq_loss_from_qv(qv_from_logits(logits, labels), lam=lam, gamma=gamma, eos_token_id=eos_token_id,
                           num_items_in_batch=num_items_in_batch, reduction=reduction, stop_grad_next=stop_grad_next,
                           num_sequences_in_batch=num_sequences_in_batch)


def chunked_iq_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.01,
    gamma: float = 0.99,
    eos_token_id: int | list[int] | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    reduction: Reduction = "token",
    stop_grad_next: bool = False,
    chunk_size: int = 1024,
    bias: torch.Tensor | None = None,
    num_sequences_in_batch: int | torch.Tensor | None = None,
    compiled: bool = False,
) -> LossOutput:
    """`iq_loss` for logits = hidden @ weightᵀ (+ bias), in row chunks, never building [B, T, V].

    hidden: [B, T, D] final hidden states; weight: [V, D] the LM head weight. Same results as
    `iq_loss(hidden @ weight.T, labels, ...)` up to floating-point summation order (`compiled`: see `qv_from_hidden`).
    """
    qv = qv_from_hidden(hidden, weight, labels, chunk_size=chunk_size, bias=bias, compiled=compiled)
    return iq_loss_from_qv(qv, lam=lam, gamma=gamma, eos_token_id=eos_token_id, num_items_in_batch=num_items_in_batch,
                           reduction=reduction, stop_grad_next=stop_grad_next,
                           num_sequences_in_batch=num_sequences_in_batch)


# --------------------------------------------------------------------------------------------------------------------
# Online IQLearn: expert rows mixed with policy samples
# --------------------------------------------------------------------------------------------------------------------


def online_iq_loss_from_qv(
    qv: QV,
    is_expert: torch.Tensor,
    alpha: float = 0.1,
    lam: float = 0.01,
    gamma: float = 0.99,
    eos_token_id: int | list[int] | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    reduction: Reduction = "token",
    stop_grad_next: bool = False,
    policy_terms: PolicyTerms = "both",
    num_sequences_in_batch: int | torch.Tensor | None = None,
    num_policy_items_in_batch: int | torch.Tensor | None = None,
    num_policy_sequences_in_batch: int | torch.Tensor | None = None,
) -> OnlineLossOutput:
    """Online IQLearn on a batch of expert rows and policy-sample rows (`is_expert`: [B] bool).

        L_on = −E_E[r_t] + E_mix[V(s_t) − γV(s_{t+1})] + λ·E_mix[r_t²],   E_mix = (1−α)·E_E + α·E_π
             = E_E[−log π(a_t|s_t)] + α·(E_π[V − γV'] − E_E[V − γV']) + λ·((1−α)·E_E[r²] + α·E_π[r²])

    The second line is the first regrouped: on expert tokens −r_t + (V(s_t) − γV(s_{t+1})) = −log π(a_t|s_t), so the
    MLE-equivalent −log π appears on expert rows only, and α = 0 is exactly offline IQLearn (`iq_loss_from_qv` on the
    expert rows; the policy rows are then not even in the graph). E_E and E_π are token means over expert and policy
    rows (`reduction="sequence"`: means of per-row means), each over the whole accumulated batch on every process:
    expert sums are divided by `num_items_in_batch` (`num_sequences_in_batch`) like offline, policy sums by
    `num_policy_items_in_batch` (`num_policy_sequences_in_batch`), the policy completion tokens (rows with one) of
    the whole accumulated batch. Summed over micro-batches (and averaged over processes × their number), the losses
    are then exactly the large batch's. A count left None is this micro-batch's own (exact for one micro-batch on
    one process).

    Which terms see policy samples (`policy_terms`):
    - "value" — the initial-state term (1−γ)E[V(s_0)], telescoped over the mixture: α·(E_π[V − γV'] − E_E[V − γV']).
      Caveat (paper-digest §3.6): the telescoping identity holds for *any* policy started from the same prompts, so
      with γ = 1 and per-sequence sums this difference is V(s_0) − V(s_0) = 0 and carries no signal; it differs from
      zero here only through per-token averaging (longer rows weigh V(s_0) less) and γ < 1.
    - "td" — the χ² regulariser on the mixture: λ·((1−α)·E_E[r²] + α·E_π[r²]). This is what makes online data
      matter: it pulls the implicit reward of the model's own samples towards 0 (IQ-Learn's `regularize` option).
    - "both" (default, METHOD.md §2): both terms, the L_on above.

    Policy samples are treated as data: no gradient flows through the sampling, as in IQ-Learn's replay buffer. A
    policy row that ends without EOS was cut at `max_new_tokens`; its last TD and value term are dropped (the same
    truncation rule as for expert rows, `next_values`). Tokens after the first EOS of a policy row must already be
    masked out (the rollout code does it).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if policy_terms not in POLICY_TERMS:
        raise ValueError(f"policy_terms must be 'both', 'td' or 'value', got {policy_terms!r}")
    is_expert = is_expert.to(device=qv.mask.device, dtype=torch.bool)
    expert = restrict_rows(qv, is_expert)
    policy_mask = qv.mask & ~is_expert[:, None]
    use_value = alpha > 0 and policy_terms in ("both", "value")
    use_td = alpha > 0 and policy_terms in ("both", "td")

    # the expert part, computed exactly as offline (λ scaled by (1−α) when the TD term is mixed)
    offline = iq_loss_from_qv(
        expert,
        lam=lam * (1.0 - alpha) if use_td else lam,
        gamma=gamma,
        eos_token_id=eos_token_id,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
        stop_grad_next=stop_grad_next,
        num_sequences_in_batch=num_sequences_in_batch,
    )
    loss = offline.loss

    v_next, td_mask = next_values(qv, eos_token_id)  # [B, T−1]; rows do not interact, so expert rows are unchanged
    if stop_grad_next:
        v_next = v_next.detach()
    reward = (qv.q_value - gamma * v_next) * td_mask
    gap = (qv.state_value - gamma * v_next) * td_mask  # V(s_t) − γV(s_{t+1})
    pol_td_mask = td_mask & policy_mask
    exp_td_mask = td_mask & expert.mask
    expert_total = num_items_in_batch if reduction == "token" else num_sequences_in_batch
    policy_total = num_policy_items_in_batch if reduction == "token" else num_policy_sequences_in_batch

    def expert_mean(x: torch.Tensor) -> torch.Tensor:
        return masked_mean(x * exp_td_mask, expert.mask, reduction, expert_total)

    def policy_mean(x: torch.Tensor) -> torch.Tensor:
        return masked_mean(x * pol_td_mask, policy_mask, reduction, policy_total)

    policy_td = policy_mean(reward.square())
    value_gap = policy_mean(gap) - expert_mean(gap)
    if use_value:
        loss = loss + alpha * value_gap
    if use_td and lam != 0:
        loss = loss + lam * alpha * policy_td

    with torch.no_grad():
        policy_sums = {
            "value_gap": (gap * pol_td_mask).sum(),
            "td": (reward.square() * pol_td_mask).sum(),
            "reward": (reward * pol_td_mask).sum(),
            "value": (qv.state_value * policy_mask).sum(),
            "nll": (-(qv.q - qv.v) * policy_mask).sum(),
            "tokens": policy_mask.sum(),
            "td_tokens": pol_td_mask.sum(),
            "rows": (~is_expert).sum(),
        }
    return OnlineLossOutput(
        loss=loss,
        nll=offline.nll,
        td=offline.td,
        mean_reward=offline.mean_reward,
        mean_value=offline.mean_value,
        num_tokens=offline.num_tokens,
        sums={**offline.sums, "value_gap": (gap * exp_td_mask).sum().detach()},
        policy_sums={k: v.detach() for k, v in policy_sums.items()},
        value_gap=value_gap.detach(),
    )


__all__ = ["POLICY_TERMS", "VALUE_FORMS", "LossOutput", "OnlineLossOutput", "PolicyTerms", "ValueForm",
           "chunked_iq_loss", "iq_loss", "iq_loss_from_qv", "mle_loss", "online_iq_loss_from_qv", "with_reference",
           "with_value"]
