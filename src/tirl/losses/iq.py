"""The IQLearn objectives (docs/method.md §2) as pure functions of a `QV` and an `Objective`: offline and online.

Offline, means over completion tokens:
    L_MLE = E[ −log π(a_t|s_t) ]
    L_IQ  = E[ −log π(a_t|s_t) + λ·r_t² ]      offline IQLearn = TD-regularised MLE; λ = 0 is exactly L_MLE.

Online, on expert rows (E) mixed with the model's own samples (π), E_mix = (1−α)·E_E + α·E_π:
    L_on = −E_E[r_t] + E_mix[V(s_t) − γ·V(s_{t+1})] + λ·E_mix[r_t²]

r_t = Q(s_t, a_t) − γ·V(s_{t+1}) in the objective's value form (`Objective.iq_value`, `tirl.losses.objective`); the
−log π term never depends on it. `entropy_coef` β subtracts β·E[H(π(·|s_t))] (entropy-regularised MLE, the paper's
other baseline), and `loss_type="dft"` weights each token's −log π by sg(π(a_t|s_t)) (DFT, Wu et al. 2025; TRL's
`loss_type="dft"`). GEM, whose loss needs every logit, is `tirl.losses.gem`.

Normalisation: token sums divided by `Counts.tokens` when given (`num_items_in_batch`: the completion tokens of the
whole accumulated batch, as `transformers.Trainer` passes it, so gradient accumulation and data parallelism are
exact), else by this batch's count. Every term shares the denominator, so λ = 0 reproduces TRL's SFT loss.
`iq_reduction="sequence"` sums each sequence's token mean and divides by `Counts.sequences` (`masked_mean`). A
trainer that passes `num_items_in_batch` must pass the global counts of every reduction it uses: `Trainer` then
neither divides by the accumulation steps nor averages over processes.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Literal

import torch

from .chunked_head import Gather, qv_from_hidden
from .mdp import QV, masked_mean, qv_from_logits, restrict_rows, token_rewards
from .objective import MLE, Counts, Objective

PolicyTerms = Literal["both", "td", "value"]  # `tirl.losses.objective.POLICY_TERMS`, for type hints

NO_COUNTS = Counts()


@dataclass
class LossOutput:
    """A loss and the detached statistics a trainer logs (means over completion tokens).

    `sums` holds detached token sums (mle, td, reward, value, tokens, td_tokens), so that trainers can gather them
    across processes and divide once instead of averaging per-process means; `qv` the per-position quantities the
    loss read (the trainer logs their entropy and top-1 rate).
    """

    loss: torch.Tensor
    mle_loss: torch.Tensor  # E[−log π], the MLE term, same normalisation as `loss`
    td_loss: torch.Tensor  # E[r²], the TD (χ²) term before λ
    mean_reward: torch.Tensor  # E[r_t]
    mean_value: torch.Tensor  # E[V(s_t)]
    num_tokens: torch.Tensor  # completion tokens in this micro-batch
    sums: dict[str, torch.Tensor]
    qv: QV | None = None


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


def loss_statistics(loss: torch.Tensor, per_token_mle: torch.Tensor, reward: torch.Tensor, value: torch.Tensor,
                    mask: torch.Tensor, td_mask: torch.Tensor, mean, qv: QV | None = None) -> LossOutput:
    """The `LossOutput` of a loss from its per-token −log π, r (0 where the TD term is undefined) and V, all [B, T − 1],
    and the reduction `mean` the loss used (so `mle_loss` and `td_loss` are normalised as the loss is)."""
    with torch.no_grad():
        sums = {
            "mle": per_token_mle.sum(),
            "td": reward.square().sum(),
            "reward": reward.sum(),
            "value": (value * mask).sum(),
            "tokens": mask.sum(),
            "td_tokens": td_mask.sum(),
        }
        return LossOutput(
            loss=loss,
            mle_loss=mean(per_token_mle).detach(),
            td_loss=mean(reward.square()).detach(),
            mean_reward=sums["reward"] / sums["td_tokens"].clamp(min=1),
            mean_value=sums["value"] / sums["tokens"].clamp(min=1),
            num_tokens=sums["tokens"],
            sums={k: v.detach() for k, v in sums.items()},
            qv=qv,
        )


def td_residuals(qv: QV, objective: Objective) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """r_t = Q(s_t, a_t) − γ·V(s_{t+1}) where the TD term is defined (0 elsewhere), that mask, and γ·V(s_{t+1});
    all [B, T − 1]."""
    rw = token_rewards(qv, objective.iq_gamma, objective.eos_token_ids, objective.iq_stop_grad_next)
    return rw.reward, rw.td_mask, objective.iq_gamma * rw.next_value


def statistics_from_qv(loss: torch.Tensor, qv: QV, objective: Objective, counts: Counts = NO_COUNTS) -> LossOutput:
    """The `LossOutput` of `loss` (computed elsewhere) with the statistics of `qv` in the objective's value form."""
    def mean(per_token: torch.Tensor) -> torch.Tensor:
        return masked_mean(per_token, qv.mask, objective.iq_reduction, counts.expert(objective.iq_reduction))

    reward, td_mask, _ = td_residuals(qv, objective)
    return loss_statistics(loss, -qv.logprob, reward, qv.v, qv.mask, td_mask, mean, qv)


# --------------------------------------------------------------------------------------------------------------------
# Offline IQLearn
# --------------------------------------------------------------------------------------------------------------------


def iq_loss_from_qv(qv: QV, objective: Objective = MLE, counts: Counts = NO_COUNTS) -> LossOutput:
    """L = E[ℓ_tok] + λ·E[r_t²] − β·E[H] from per-position Q and V (module docstring), `qv` in the objective's value
    form (`ValueForm.apply`). The entropy term needs `qv.entropy` in the graph (`entropy_grad=True` where the QV is
    built). `loss_type="gem"` needs the logits: `tirl.losses.gem`."""
    o = objective
    if o.loss_type == "gem":
        raise ValueError("loss_type='gem' needs every logit of a row: use tirl.losses.gem_loss or chunked_gem_loss")

    def mean(per_token: torch.Tensor) -> torch.Tensor:
        return masked_mean(per_token, qv.mask, o.iq_reduction, counts.expert(o.iq_reduction))

    per_token_mle = -qv.logprob
    token_loss = per_token_mle * qv.logprob.exp().detach() if o.loss_type == "dft" else per_token_mle
    loss = mean(token_loss)
    reward, td_mask, _ = td_residuals(qv, o)
    if o.iq_lambda != 0:  # λ = 0 is exactly MLE: the TD term is not even in the graph
        loss = loss + o.iq_lambda * mean(reward.square())
    if o.entropy_coef != 0:
        # under no_grad (evaluation) the value is all that is needed
        if qv.entropy is None or (torch.is_grad_enabled() and qv.logit.requires_grad and not qv.entropy.requires_grad):
            raise ValueError("entropy_coef needs the entropy in the graph: build the QV with entropy_grad=True")
        loss = loss - o.entropy_coef * mean(qv.entropy * qv.mask)
    return loss_statistics(loss, per_token_mle, reward, qv.v, qv.mask, td_mask, mean, qv)


def iq_loss(logits: torch.Tensor, labels: torch.Tensor, objective: Objective = MLE,
            counts: Counts = NO_COUNTS, value_input: torch.Tensor | None = None) -> LossOutput:
    """The offline loss from full logits [B, T, V] and unshifted labels [B, T]; `value_input` [B, T − 1] is the value
    form's input (`ValueForm`: LSE_θ0 for reference, v_ψ(h) for head, None for logits)."""
    qv = qv_from_logits(logits, labels, entropy_grad=objective.entropy_coef != 0)
    return iq_loss_from_qv(objective.iq_value.apply(qv, value_input), objective, counts)


def chunked_iq_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    objective: Objective = MLE,
    counts: Counts = NO_COUNTS,
    value_input: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    chunk_size: int = 1024,
    compiled: bool = False,
    gather: Gather = nullcontext,
) -> LossOutput:
    """`iq_loss` for logits = hidden @ weightᵀ (+ bias), in row chunks, never building [B, T, V] (the two-pass head:
    Q and V in forward, the logits recomputed in backward; `tirl.losses.chunked_head`).

    hidden: [B, T, D] final hidden states; weight: [V, D] the LM head weight. Same results as `iq_loss(hidden @
    weight.T + bias, labels, ...)` up to floating-point summation order. `single_pass_iq_loss` has this signature.
    """
    qv = qv_from_hidden(hidden, weight, labels, chunk_size=chunk_size, bias=bias, compiled=compiled, gather=gather)
    return iq_loss_from_qv(objective.iq_value.apply(qv, value_input), objective, counts)


# --------------------------------------------------------------------------------------------------------------------
# Online IQLearn: expert rows mixed with policy samples
# --------------------------------------------------------------------------------------------------------------------


def online_iq_loss_from_qv(
    qv: QV,
    is_expert: torch.Tensor,
    objective: Objective = MLE,
    counts: Counts = NO_COUNTS,
) -> OnlineLossOutput:
    """Online IQLearn on a batch of expert rows and policy-sample rows (`is_expert`: [B] bool), with α the objective's
    `iq_alpha` and the terms that see the policy rows its `iq_policy_terms`. The default objective, plain MLE, has
    α = 0: the policy rows then enter no term (pass `DEFAULTS` or the trainer's objective for online IQLearn).

        L_on = −E_E[r_t] + E_mix[V(s_t) − γV(s_{t+1})] + λ·E_mix[r_t²],   E_mix = (1−α)·E_E + α·E_π
             = E_E[−log π(a_t|s_t)] + α·(E_π[V − γV'] − E_E[V − γV']) + λ·((1−α)·E_E[r²] + α·E_π[r²])

    The second line is the first regrouped: on expert tokens −r_t + (V(s_t) − γV(s_{t+1})) = −log π(a_t|s_t), so the
    MLE-equivalent −log π appears on expert rows only, and α = 0 is exactly offline IQLearn (`iq_loss_from_qv` on the
    expert rows; the policy rows are then not even in the graph). E_E and E_π are token means over expert and policy
    rows (`iq_reduction="sequence"`: means of per-row means), each over the whole accumulated batch on every process:
    expert sums are divided by `counts.expert(...)` like offline, policy sums by `counts.policy(...)`. Summed over
    micro-batches (and averaged over processes × their number), the losses are then exactly the large batch's.

    Which terms see policy samples (`iq_policy_terms`):
    - "value" — the initial-state term (1−γ)E[V(s_0)], telescoped over the mixture: α·(E_π[V − γV'] − E_E[V − γV']).
      Caveat (docs/method.md §2): the telescoping identity holds for *any* policy started from the same prompts, so
      with γ = 1 and per-sequence sums this difference is V(s_0) − V(s_0) = 0 and carries no signal; it differs from
      zero here only through per-token averaging (longer rows weigh V(s_0) less) and γ < 1.
    - "td" — the χ² regulariser on the mixture: λ·((1−α)·E_E[r²] + α·E_π[r²]). This is what makes online data
      matter: it pulls the implicit reward of the model's own samples towards 0 (IQ-Learn's `regularize` option).
    - "both" (default, docs/method.md §2): both terms, the L_on above.

    Policy samples are treated as data: no gradient flows through the sampling, as in IQ-Learn's replay buffer. A
    policy row that ends without EOS was cut at `max_new_tokens`; its last TD and value term are dropped (the same
    truncation rule as for expert rows, `next_values`). Tokens after the first EOS of a policy row must already be
    masked out (the rollout code does it).
    """
    o = objective
    alpha, policy_terms = o.iq_alpha, o.iq_policy_terms
    is_expert = is_expert.to(device=qv.mask.device, dtype=torch.bool)
    expert = restrict_rows(qv, is_expert)
    policy_mask = qv.mask & ~is_expert[:, None]
    use_value = alpha > 0 and policy_terms in ("both", "value")
    use_td = alpha > 0 and policy_terms in ("both", "td")

    # the expert part, computed exactly as offline (λ scaled by (1−α) when the TD term is mixed)
    offline = iq_loss_from_qv(expert, replace(o, iq_lambda=o.iq_lambda * (1.0 - alpha)) if use_td else o, counts)
    loss = offline.loss

    reward, td_mask, discounted = td_residuals(qv, o)  # rows do not interact, so expert rows are unchanged
    gap = (qv.v - discounted) * td_mask  # V(s_t) − γV(s_{t+1})
    pol_td_mask = td_mask & policy_mask
    exp_td_mask = td_mask & expert.mask

    def expert_mean(x: torch.Tensor) -> torch.Tensor:
        return masked_mean(x * exp_td_mask, expert.mask, o.iq_reduction, counts.expert(o.iq_reduction))

    def policy_mean(x: torch.Tensor) -> torch.Tensor:
        return masked_mean(x * pol_td_mask, policy_mask, o.iq_reduction, counts.policy(o.iq_reduction))

    policy_td = policy_mean(reward.square())
    value_gap = policy_mean(gap) - expert_mean(gap)
    if use_value:
        loss = loss + alpha * value_gap
    if use_td and o.iq_lambda != 0:
        loss = loss + o.iq_lambda * alpha * policy_td

    with torch.no_grad():
        policy_sums = {
            "value_gap": (gap * pol_td_mask).sum(),
            "td": (reward.square() * pol_td_mask).sum(),
            "reward": (reward * pol_td_mask).sum(),
            "value": (qv.v * policy_mask).sum(),
            "mle": (-qv.logprob * policy_mask).sum(),
            "tokens": policy_mask.sum(),
            "td_tokens": pol_td_mask.sum(),
            "rows": (~is_expert).sum(),
        }
    return OnlineLossOutput(
        **{**offline.__dict__, "loss": loss, "sums": {**offline.sums, "value_gap": (gap * exp_td_mask).sum().detach()}},
        policy_sums={k: v.detach() for k, v in policy_sums.items()},
        value_gap=value_gap.detach(),
    )


__all__ = ["NO_COUNTS", "LossOutput", "OnlineLossOutput", "PolicyTerms", "chunked_iq_loss", "iq_loss",
           "iq_loss_from_qv", "loss_statistics", "online_iq_loss_from_qv", "statistics_from_qv", "td_residuals"]
