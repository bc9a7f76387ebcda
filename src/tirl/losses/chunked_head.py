"""Q and V from hidden states and the LM head in row chunks, never building the [batch, seq, vocab] logits.

`qv_from_hidden(hidden, weight, labels)` gives exactly `qv_from_logits(hidden @ weightᵀ, labels)` (up to summation
order): the memory work is isolated behind the same result as the simple version, which stays the test oracle (as in
Liger-Kernel's fused linear cross-entropy). Only completion rows go through the head.

The maths of one chunk of c rows lives in two functions, each written once:

    chunk_stats  forward:   z = h Wᵀ + b [c, V];  logit = z[a],  lse = logsumexp(z),  H = lse − Σ softmax(z)·z,  top-1
    chunk_grad   backward:  dz = g_lse·softmax(z) + g_logit·onehot(a) − g_H·softmax(z)·(log softmax(z) + H)

Both work in place on their own [c, V] buffers (two in forward, at most two in backward), in float32 (float64 for
float64 inputs), with the matmuls in the autocast dtype when autocast is on, as the model's own head would. The
caller chooses whether they run eagerly or through `torch.compile` (`compiled=True`: on a GPU the elementwise passes
over [c, V], not the matmuls, are the head's cost, and compiled they read the logits once or twice; benchmarks/
README.md), and supplies `gather`, a context that makes the head's parameters whole (ZeRO-3), entered around the
forward and again in backward. Nothing here reads the environment or knows about devices or distributed training.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from .mdp import QV, acc_dtype, shift_labels

MAX_CHUNK_ELEMENTS = 2**26  # logits per chunk: 256 MB in float32

Gather = Callable[[], AbstractContextManager]


def chunk_stats(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, actions: torch.Tensor,
                acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The action's logit, the logsumexp, the entropy and the top-1 flag of one chunk ([c] each): hidden rows h [c, D],
    head w [V, D] (in the matmul dtype), bias b [V] (in `acc`) or None, actions [c]. Two [c, V] buffers in `acc`."""
    z = (h @ w.t()).to(acc)  # [c, V]
    if b is not None:
        z += b
    zmax = z.amax(-1)
    logit = z.gather(-1, actions[:, None]).squeeze(-1)
    z -= zmax[:, None]  # ℓ − max
    p = z.exp()  # softmax × Σ exp(ℓ − max)
    sum_p = p.sum(-1)
    log_sum = sum_p.log()
    # H = lse − Σ softmax·ℓ = log Σp − Σ p·(ℓ − max) / Σp; the product overwrites z (no third buffer)
    entropy = log_sum - z.mul_(p).sum(-1) / sum_p
    return logit, zmax + log_sum, entropy, logit >= zmax


def chunk_grad(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, actions: torch.Tensor, lse: torch.Tensor,
               entropy: torch.Tensor, grad_logit: torch.Tensor | None, grad_lse: torch.Tensor | None,
               grad_entropy: torch.Tensor | None, acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dℓ of one chunk in w's dtype (for the two backward matmuls), and its column sums (the bias gradient, in `acc`)
    when there is a bias. The logits are recomputed and turned into the gradient in place."""
    z = (h @ w.t()).to(acc)  # [c, V]
    if b is not None:
        z += b
    z.sub_(lse[:, None])  # log softmax(ℓ)
    if grad_entropy is not None:
        # ∂H/∂ℓ = −softmax·(log softmax + H): one more [c, V] buffer, only for entropy-using losses
        p = z.exp()
        z.add_(entropy[:, None]).mul_(-grad_entropy[:, None].to(acc))
        if grad_lse is not None:
            z.add_(grad_lse[:, None].to(acc))
        z.mul_(p)
        del p
    elif grad_lse is not None:
        z.exp_().mul_(grad_lse[:, None].to(acc))
    else:
        z.zero_()
    if grad_logit is not None:
        z.scatter_add_(-1, actions[:, None], grad_logit[:, None].to(acc))
    return z.to(w.dtype), None if b is None else z.sum(0)


_COMPILED: dict[str, Callable] = {}


def _per_chunk(name: str, compiled: bool) -> Callable:
    """`chunk_stats` / `chunk_grad` as they are, or through `torch.compile` (built on first use, then reused)."""
    fn = {"stats": chunk_stats, "grad": chunk_grad}[name]
    if not compiled:
        return fn
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _COMPILED[name]


class ChunkedQVFunction(torch.autograd.Function):
    """logit = (h Wᵀ + b)[a], lse = logsumexp(h Wᵀ + b), the entropy and the top-1 flag for rows of h, in row chunks.

    Forward keeps only h, W, a, lse and the entropy; backward recomputes each chunk's logits (`chunk_grad`), which
    gives the gradient of any loss that depends on the logits through logit, lse and H only. The accumulators of the
    gradients of h, W and b are float32 (float64 for float64 inputs).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, actions, chunk_size: int, compiled: bool, gather: Gather):
        # hidden [N, D], weight [V, D], bias [V] or None, actions [N]
        ctx.set_materialize_grads(False)
        device = hidden.device
        compute_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
        n = hidden.shape[0]
        acc = acc_dtype(hidden)
        logit = torch.empty(n, device=device, dtype=acc)
        lse = torch.empty(n, device=device, dtype=acc)
        entropy = torch.empty(n, device=device, dtype=acc)
        is_top1 = torch.empty(n, device=device, dtype=torch.bool)
        stats = _per_chunk("stats", compiled)
        with torch.autocast(device.type, enabled=False):  # the caller holds `gather` around this node's forward
            w = weight.to(compute_dtype)
            b = None if bias is None else bias.to(acc)
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                logit[s:e], lse[s:e], entropy[s:e], is_top1[s:e] = stats(hidden[s:e].to(compute_dtype), w, b,
                                                                         actions[s:e], acc)
        ctx.save_for_backward(hidden, weight, bias, actions, lse, entropy)
        ctx.chunk_size, ctx.compute_dtype, ctx.compiled, ctx.gather = chunk_size, compute_dtype, compiled, gather
        ctx.mark_non_differentiable(is_top1)
        return logit, lse, entropy, is_top1

    @staticmethod
    def backward(ctx, grad_logit, grad_lse, grad_entropy, _):
        hidden, weight, bias, actions, lse, entropy = ctx.saved_tensors
        cd, c = ctx.compute_dtype, ctx.chunk_size
        n = hidden.shape[0]
        acc = acc_dtype(hidden)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        nothing = (None,) * 7
        if grad_logit is None and grad_lse is None and grad_entropy is None:
            return nothing
        grad = _per_chunk("grad", ctx.compiled)
        # ZeRO-3 re-partitions the head after forward: the caller's `gather` makes it whole again (its shape too)
        with torch.autocast(hidden.device.type, enabled=False), ctx.gather():
            grad_h = torch.zeros(hidden.shape, device=hidden.device, dtype=acc) if need_h else None
            grad_w = torch.zeros(weight.shape, device=weight.device, dtype=acc) if need_w else None
            grad_b = torch.zeros(bias.shape, device=bias.device, dtype=acc) if need_b else None
            w = weight.to(cd)
            b = None if bias is None else bias.to(acc)
            for s in range(0, n, c):
                e = min(s + c, n)
                hc = hidden[s:e].to(cd)
                zc, zsum = grad(hc, w, b, actions[s:e], lse[s:e], entropy[s:e],
                                None if grad_logit is None else grad_logit[s:e],
                                None if grad_lse is None else grad_lse[s:e],
                                None if grad_entropy is None else grad_entropy[s:e], acc)
                if grad_b is not None:
                    grad_b += zsum
                if grad_h is not None:
                    grad_h[s:e] = zc @ w
                if grad_w is not None:
                    grad_w += zc.t() @ hc
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            *nothing[3:],
        )


def qv_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 1024,
    bias: torch.Tensor | None = None,
    *,
    compiled: bool = False,
    gather: Gather = nullcontext,
) -> QV:
    """`qv_from_logits` for logits = hidden @ weightᵀ + bias, computed in chunks of `chunk_size` rows.

    hidden: [B, T, D] final hidden states (after the last norm); weight: [V, D] the LM head; labels: [B, T].
    Only completion rows go through the head (prompt and padding rows cost nothing), and peak extra memory is about
    two chunk_size × V float buffers instead of B × T × V; `chunk_size` is capped at MAX_CHUNK_ELEMENTS / V rows
    (64 M logits, 256 MB in float32), so a 256k vocabulary gets 256-row chunks. `compiled` runs the per-chunk maths
    through `torch.compile`; `gather` is entered around every use of `weight` and `bias` (module docstring).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    actions, mask = shift_labels(labels)
    rows = hidden[:, :-1][mask]  # [N, D], only completion positions
    # the node is built inside `gather`, so autograd records the whole head's shape (a ZeRO-3 partition is empty
    # outside it) and the gradient backward returns matches it
    with gather():
        # large vocabularies get fewer rows per chunk, so a chunk's logits never exceed MAX_CHUNK_ELEMENTS
        chunk_size = max(1, min(chunk_size, MAX_CHUNK_ELEMENTS // weight.shape[0]))
        logit_rows, lse_rows, entropy_rows, top1_rows = ChunkedQVFunction.apply(
            rows, weight, bias, actions[mask], chunk_size, compiled, gather)

    def scatter(x: torch.Tensor) -> torch.Tensor:
        # masked_scatter keeps the output connected to the graph even when no position is valid, so an all-masked
        # micro-batch still yields a differentiable zero (DDP/FSDP expect every parameter to get a gradient)
        return x.new_zeros(mask.shape).masked_scatter(mask, x)

    return QV(
        logit=scatter(logit_rows),
        lse=scatter(lse_rows),
        actions=actions,
        mask=mask,
        entropy=scatter(entropy_rows),
        is_top1=scatter(top1_rows),
    )


__all__ = ["MAX_CHUNK_ELEMENTS", "ChunkedQVFunction", "chunk_grad", "chunk_stats", "qv_from_hidden"]
