"""GEM (Li et al., ICLR 2025, "Preserving Diversity in Supervised Fine-Tuning of Large Language Models"), a
diversity-preserving replacement for the MLE token loss (docs/method.md §2, baselines).

For a completion position with logits z [V] and target y:

    q   = sg(softmax(z / β))                             a sharpened copy of the policy, no gradient
    w_v = 1 (h = "linear")   or   sg(σ(0.01·(z_v − z_y)))  (h = "logsigmoid", the authors' scripts' default)
    ℓ   = −Σ_v q_v·w_v·(log p_y − log p_v) = Σ_v q_v·w_v·(z_v − z_y)      (the logsumexp cancels)

and L = E[ℓ] over completion tokens, reduced as every tirl loss (`masked_mean`, `Objective.iq_reduction`, `Counts`).
Its logit gradient is ∂ℓ/∂z = q⊙w − (Σ_v q_v·w_v)·e_y: with h = linear, q − e_y where cross-entropy has p − e_y, so
the pull towards y is spread by the sharpened policy q instead of p. β → 1 with h = linear recovers cross-entropy's
gradient.

    gem_loss          from full logits [B, T, V] (the simple path, the oracle; autograd through the formula)
    chunked_gem_loss  from hidden states and the LM head in row chunks, the gradient formed in forward from the closed
                      form above (one pass through the head, as a fused cross-entropy); `chunked_iq_loss`'s signature

Both return a `LossOutput` whose statistics (`mle_loss` = E[−log π], `td_loss`, rewards) are those of the same
positions under the objective's value form, so a GEM run logs what an MLE run logs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from .chunked_head import MAX_CHUNK_ELEMENTS, Gather
from .iq import NO_COUNTS, LossOutput, statistics_from_qv
from .mdp import QV, acc_dtype, masked_mean, qv_from_logits, shift_labels
from .objective import MLE, Counts, Objective


def _check(objective: Objective) -> None:
    if objective.loss_type != "gem":
        raise ValueError(f"the GEM loss needs loss_type='gem', got {objective.loss_type!r}")


def gem_weights(z: torch.Tensor, z_target: torch.Tensor, h: str) -> torch.Tensor | None:
    """w_v (no gradient): None for h = "linear" (all ones), sigmoid(0.01·(z_v − z_y)) for h = "logsigmoid"."""
    if h == "linear":
        return None
    return torch.sigmoid(0.01 * (z - z_target[..., None])).detach()


def gem_loss(logits: torch.Tensor, labels: torch.Tensor, objective: Objective = MLE, counts: Counts = NO_COUNTS,
             value_input: torch.Tensor | None = None) -> LossOutput:
    """The GEM loss from full logits [B, T, V] and unshifted labels [B, T] (module docstring): the formula as written,
    through log-softmax and autograd. `value_input` is the value form's input, for the statistics only."""
    _check(objective)
    actions, mask = shift_labels(labels)
    z = logits[:, :-1].to(acc_dtype(logits))
    log_p = torch.log_softmax(z, -1)
    with torch.no_grad():
        q = torch.softmax(z / objective.gem_beta, -1)
        w = gem_weights(z, z.gather(-1, actions[..., None]).squeeze(-1), objective.gem_h)
        qw = q if w is None else q * w
    log_p_y = log_p.gather(-1, actions[..., None])
    per_token = -(qw * (log_p_y - log_p)).sum(-1) * mask
    loss = masked_mean(per_token, mask, objective.iq_reduction, counts.expert(objective.iq_reduction))
    with torch.no_grad():
        qv = qv_from_logits(logits.detach(), labels)
    return statistics_from_qv(loss, objective.iq_value.apply(qv, value_input), objective, counts)


def gem_chunk(z: torch.Tensor, actions: torch.Tensor, row_weight: torch.Tensor, beta: float, logsigmoid: bool,
              with_grad: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                        torch.Tensor]:
    """One chunk of rows: z [c, V] the logits in the accumulation dtype (overwritten), actions [c], the reduction's
    per-row weight [c]. Returns (dz = row_weight·(q⊙w − Σq⊙w·e_y) [c, V] or None, the loss rows ℓ [c] (unweighted),
    logsumexp, the target logit, the entropy, the top-1 flag)."""
    logit = z.gather(-1, actions[:, None]).squeeze(-1)
    zmax = z.amax(-1)
    top1 = logit >= zmax
    lse = torch.logsumexp(z, -1)
    p = torch.softmax(z, -1)
    entropy = lse - (p * z).sum(-1)
    qw = torch.softmax(z / beta, -1)
    if logsigmoid:
        qw.mul_(torch.sigmoid(0.01 * (z - logit[:, None])))
    mass = qw.sum(-1)  # Σ_v q_v·w_v
    loss_rows = (qw * z).sum(-1) - mass * logit
    if not with_grad:
        return None, loss_rows, lse, logit, entropy, top1
    qw.scatter_add_(-1, actions[:, None], -mass[:, None])
    return qw.mul_(row_weight[:, None]), loss_rows, lse, logit, entropy, top1


_COMPILED: dict[str, Callable] = {}


def _gem_chunk(compiled: bool) -> Callable:
    if not compiled:
        return gem_chunk
    if "gem" not in _COMPILED:
        _COMPILED["gem"] = torch.compile(gem_chunk, dynamic=True, fullgraph=True)
    return _COMPILED["gem"]


class ChunkedGEMFunction(torch.autograd.Function):
    """Σ_i row_weight_i·ℓ_i over rows h [N, D] through the head W [V, D] (+ b), gradients formed in forward (one pass
    through the head). Outputs the loss (differentiable) and the detached per-row lse, logit, entropy and top-1."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, actions, row_weight, beta: float, logsigmoid: bool, chunk_size: int,
                compiled: bool, grad_on: bool):
        device = hidden.device
        cd = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
        acc = acc_dtype(hidden)
        n = hidden.shape[0]
        # (grad mode is off inside forward: whether a gradient is wanted was read by the caller)
        need_h, need_w, need_b = (grad_on and x is not None and x.requires_grad for x in (hidden, weight, bias))
        with_grad = need_h or need_w or need_b
        stats = [torch.empty(n, device=device, dtype=acc) for _ in range(4)]
        top1 = torch.empty(n, device=device, dtype=torch.bool)
        grad_h = torch.zeros(hidden.shape, device=device, dtype=acc) if with_grad and need_h else None
        grad_w = torch.zeros(weight.shape, device=device, dtype=acc) if with_grad and need_w else None
        grad_b = torch.zeros(bias.shape, device=device, dtype=acc) if with_grad and need_b else None
        step = _gem_chunk(compiled)
        with torch.autocast(device.type, enabled=False):
            w = weight.to(cd)
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                h = hidden[s:e].to(cd)
                z = (h @ w.t()).to(acc)
                if bias is not None:
                    z += bias.to(acc)
                dz, *row_stats, top1[s:e] = step(z, actions[s:e], row_weight[s:e], beta, logsigmoid, with_grad)
                for out, x in zip(stats, row_stats, strict=True):
                    out[s:e] = x
                if dz is None:
                    continue
                if grad_b is not None:
                    grad_b += dz.sum(0)
                dz = dz.to(cd)
                if grad_h is not None:
                    grad_h[s:e] = dz @ w
                if grad_w is not None:
                    grad_w += (dz.t() @ h).to(acc)
        loss_rows, lse, logit, entropy = stats
        grads = (grad_h, grad_w, grad_b)
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in grads))
        ctx.present = tuple(g is not None for g in grads)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(lse, logit, entropy, top1)
        return (row_weight * loss_rows).sum(), lse, logit, entropy, top1

    @staticmethod
    def backward(ctx, grad_loss, *_):
        out = [None if not present else (g * grad_loss.to(g.dtype)).to(dtype)
               for g, present, dtype in zip(ctx.saved_tensors, ctx.present, ctx.dtypes, strict=True)]
        return (*out, *([None] * 7))


def chunked_gem_loss(
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
    """`gem_loss` for logits = hidden @ weightᵀ (+ bias), in row chunks, never building [B, T, V], the gradient formed
    in forward (module docstring). `chunked_iq_loss`'s signature; `gem_loss` is its oracle."""
    _check(objective)
    if chunk_size <= 0:
        raise ValueError(f"iq_chunk_size must be positive, got {chunk_size}")
    labels = labels.to(hidden.device)
    actions, mask = shift_labels(labels)
    acc = acc_dtype(hidden)
    # the reduction's weight of each position: masked_mean of an indicator, position by position
    total = counts.expert(objective.iq_reduction)
    if objective.iq_reduction == "token":
        denom = torch.as_tensor(mask.sum() if total is None else total, device=hidden.device).to(acc).clamp(min=1)
        row_weight = (mask.to(acc) / denom)[mask]
    else:
        per_row = mask.sum(-1, keepdim=True).clamp(min=1).to(acc)
        seqs = (mask.sum(-1) > 0).sum() if total is None else total
        row_weight = (mask.to(acc) / per_row / torch.as_tensor(seqs, device=hidden.device).to(acc).clamp(min=1))[mask]
    with gather():
        chunk = max(1, min(chunk_size, MAX_CHUNK_ELEMENTS // weight.shape[0]))
        loss, lse, logit, entropy, top1 = ChunkedGEMFunction.apply(
            hidden[:, :-1][mask], weight, bias, actions[mask], row_weight, float(objective.gem_beta),
            objective.gem_h == "logsigmoid", chunk, compiled, torch.is_grad_enabled())

    def scatter(x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(mask.shape).masked_scatter(mask, x)

    qv = QV(logit=scatter(logit), lse=scatter(lse), actions=actions, mask=mask, entropy=scatter(entropy),
            is_top1=scatter(top1))
    return statistics_from_qv(loss, objective.iq_value.apply(qv, value_input), objective, counts)


__all__ = ["ChunkedGEMFunction", "chunked_gem_loss", "gem_chunk", "gem_loss", "gem_weights"]
