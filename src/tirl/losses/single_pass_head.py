"""Offline IQLearn through the LM head in one pass: the loss at the cost of a fused cross-entropy.

`chunked_iq_loss` (tirl.losses) computes the action's logit ℓ_t[a_t] and lse = logsumexp(ℓ_t) in a forward pass over
row chunks and recomputes each chunk's logits in backward: one [N, V] × D matmul more than a fused cross-entropy
(Liger's `fused_linear_cross_entropy`), which forms the logits gradient while the chunk's logits are in memory and
multiplies it into grad_hidden and grad_W right away. The IQ loss allows the same, because the gradient of every row's
logits is known as soon as that row's (and at most its successor's) logsumexp is. `single_pass_iq_loss` has the
signature of `chunked_iq_loss`, and `chunked_iq_loss` and the full-logits `iq_loss` are its test oracles (Liger's
rule).

Derivation (docs/method.md §1–2; rows i = 1..N are the completion positions in row-major order, so the successor state of
row i, when it is in the MDP, is row i + 1):

    L = Σ_i w_i·(lse_i − logit_i) + λ·Σ_i w_i·m_i·r_i² − β·Σ_i w_i·H_i
    r_i = Q_i − γ·c_i·V_{i+1}

    lse_i = LSE(ℓ_i), logit_i = ℓ_i[a_i], H_i the entropy of softmax(ℓ_i)
    w_i  = 1/N (token reduction; N = num_items_in_batch or the local count), or 1/(n_b·S) for the row's sequence b
           (sequence reduction; n_b its completion tokens, S = num_sequences_in_batch or the local count)
    m_i  = 1 where the TD term is defined (not the last action of a truncated completion, not after EOS)
    c_i  = 1 where V(s_{i+1}) is the next row's value (0 after EOS and at the end of a completion)
    Q_i, V_i  Q and V in the value form (`QV.q`, `QV.v`; `tirl.losses.objective.ValueForm`):
           Q_i = logit_i + A·lse_i + s_i,  V_i = C·lse_i + s_i,  with
              logits     A = 0,  C = 1, s = 0
              reference  A = 0,  C = 1, s = −LSE_θ0 (a constant)
              head       A = −1, C = 0, s = v_ψ (its own tensor, with its own gradient)

With D_i = ∂L/∂r_i = 2λ·w_i·m_i·r_i, and c'_i = c_{i−1} (0 with stop_grad_next), the logits gradient of row i is

    ∂L/∂ℓ_i = b_i·softmax(ℓ_i) + g_i·onehot(a_i) + β·w_i·softmax(ℓ_i)·(log softmax(ℓ_i) + H_i)
    b_i = ∂L/∂lse_i   = w_i + A·D_i − C·γ·c'_i·D_{i−1}
    g_i = ∂L/∂logit_i = −w_i + D_i
    ∂L/∂s_i = D_i − γ·c'_i·D_{i−1}          (head form: the gradient of v_ψ, returned through autograd)

    logits/reference: b_i = w_i − γ·c'_i·D_{i−1}, needs r_{i−1}, i.e. lse_i: known once row i's logsumexp is;
                      g_i needs r_i, i.e. lse_{i+1}: known in the chunk except for the chunk's last row.
    head:             b_i = w_i − D_i and g_i need only row i (V_{i+1} = v_ψ is given): everything is local.

So a chunk of rows computes its logits once (one matmul, into a buffer of the matmul dtype), and the softmax maths
runs over it in blocks of rows (on CUDA the whole chunk at once, through torch.compile): the actions' logits gathered,
their logsumexp, r of every row whose successor is in reach (a block inside the chunk takes one row more, only for
that row's logsumexp; the previous block's last row is carried over), and the whole gradient, written over the block's
logits. The softmax and one-hot parts are combined in float32 before the low-precision matmuls, as a fused
cross-entropy does: adding the one-hot part separately (from saved logit, lse after the loop) would round b·p_a to
bf16 on its own, and for a confident token b·p_a + g nearly cancels (CE: w·(p_a − 1)), so its error would be 2⁻⁹·w
instead of 2⁻⁹·w·(1 − p_a). Only the last row of a chunk whose successor opens the next chunk gets its one-hot term
late: g of that row lacks −2λ·w·m·γ·c·C·lse_{next}, added after the loop in float32 from one row of W (O(D) per
chunk, no logits). The loss and statistics come from the same logit, lse, H, so they equal the two-pass head's.

The gradients are formed in forward (for grad_output = 1) and kept for backward, which scales them by grad_output, so
gradient accumulation, loss scaling and `loss * num_processes` work as usual. Under `torch.no_grad()` or with no input
requiring a gradient, forward computes only the statistics (a `qv_from_hidden` forward). A frozen head
(`weight.requires_grad` False, e.g. LoRA) gets no grad_W. Online IQLearn (`online_iq_loss_from_qv`) has the same
chain structure (its policy rows change the per-row weights: no MLE term, 2λα·w^π·m for D, and a constant value-gap
coefficient in b), but is not implemented here: it keeps the two-pass head.

Callers choose, as for the two-pass head (`tirl.losses.chunked_head`), whether the per-chunk maths runs through
`torch.compile` (`compiled`; on CUDA the whole chunk at once) and supply `gather`, a context that makes the head's
parameters whole (ZeRO-3). It is entered once, around the autograd node (which then records the whole weight, the
shape of the gradient formed in forward) and its forward, as TRL does for fused losses; backward touches only the
stored gradients, so it needs no gathering. Nothing here reads the environment. Float16 autocast: the gradient is
rounded to float16 before any loss scale is applied (it is formed in forward), so entries below 6e-8 flush to zero;
use the two-pass head there (bfloat16 and float32 have no such limit).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .chunked_head import MAX_CHUNK_ELEMENTS, Gather
from .iq import NO_COUNTS, LossOutput, loss_statistics
from .mdp import IGNORE_INDEX, QV, acc_dtype, next_values, shift_labels
from .objective import MLE, Counts, Objective

# Float32 scratch of the eager softmax maths, in elements (8 MB): the one block buffer of a fused cross-entropy. The
# IQ head splits it over the buffers it needs (the upcast logits and their exponentials under autocast; one in float32),
# look-ahead row included, so that its scratch is never larger than the cross-entropy's.
SCRATCH_ELEMENTS = 2**21


def block_rows(vocab: int, buffers: int) -> int:
    """Rows of one eager block: `buffers` float32 buffers of (rows + 1) × vocab fit in `SCRATCH_ELEMENTS`."""
    return max(1, SCRATCH_ELEMENTS // (buffers * vocab) - 1)


def _prev(x: torch.Tensor) -> torch.Tensor:
    """x shifted to the next row: out[i] = x[i − 1], out[0] = 0."""
    out = torch.zeros_like(x)
    out[1:] = x[:-1]
    return out


def _next(x: torch.Tensor) -> torch.Tensor:
    """x shifted to the previous row: out[i] = x[i + 1], out[−1] = 0."""
    out = torch.zeros_like(x)
    out[:-1] = x[1:]
    return out


@dataclass
class _BlockRows:
    """The per-row inputs of `_chunk_step`: [k] each for a block (its look-ahead row included), [N] when held for the
    whole pass and cut per block with `rows[bs:ext]`; in the accumulation dtype but `actions`."""

    actions: torch.Tensor  # a_i (long)
    w: torch.Tensor  # MLE weight
    e: torch.Tensor  # 2λ·w·m
    gc: torch.Tensor  # γ·c
    gcb: torch.Tensor  # γ·c', 0 with iq_stop_grad_next
    shift: torch.Tensor  # s_i, the value form's shift
    shift_next: torch.Tensor  # s_{i+1}
    g_ent: torch.Tensor | None  # β·w; None without the entropy term

    def __getitem__(self, rows: slice) -> _BlockRows:
        return _BlockRows(self.actions[rows], self.w[rows], self.e[rows], self.gc[rows], self.gcb[rows],
                          self.shift[rows], self.shift_next[rows], None if self.g_ent is None else self.g_ent[rows])


class _Carry(NamedTuple):
    """What a block hands the next ([1] each): its last row's r without the −γ·c·C·lse_next part, e and γ·c·C of that
    row (γ·c·C is 0 when the block looked ahead and r is complete)."""

    r: torch.Tensor
    e: torch.Tensor
    gcc: torch.Tensor


@dataclass(frozen=True)
class _StepSettings:
    """What stays fixed over a pass of `_chunk_step` calls."""

    bias: torch.Tensor | None  # [V] in the accumulation dtype
    A: float  # the value form's Q_i = logit_i + A·lse_i + s_i
    C: float  # and V_i = C·lse_i + s_i
    with_grad: bool  # form the logits gradient (else statistics only)
    td_grad: bool  # λ ≠ 0: the TD term enters the gradient
    out_dtype: torch.dtype  # of the returned gradient


def _chunk_step(z: torch.Tensor, rows: _BlockRows, carry: _Carry, settings: _StepSettings, bufs=None):
    """Statistics and logits gradient of a block of rows: the whole chunk, compiled by torch.compile (CUDA), or a few
    rows at a time, eagerly (CPU), so that its float32 buffers stay small.

    z [k, V]: the block's logits without bias, in the matmul dtype; a float32 z is overwritten (it is the caller's
    buffer). Returns (dℓ [k, V] in `settings.out_dtype` or None, logit, lse, H, top-1, r [k] (the last row partial),
    r of the previous block's last row [1]). `bufs` (eager): float32 buffers of at least [k, V] for the upcast logits
    (None when z is float32 already) and the exponentials, reused instead of allocated per block.
    """
    A, C = settings.A, settings.C
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    z = z.to(acc) if bufs is None or bufs[0] is None else bufs[0][: z.shape[0]].copy_(z)
    if settings.bias is not None:
        z.add_(settings.bias)
    zmax = z.amax(-1)
    logit = z.gather(-1, rows.actions[:, None]).squeeze(-1)
    top1 = logit >= zmax
    z.sub_(zmax[:, None])  # ℓ − max
    p = z.exp() if bufs is None else torch.exp(z, out=bufs[1][: z.shape[0]])  # softmax × Σ exp(ℓ − max)
    sum_p = p.sum(-1)
    log_sum = sum_p.log()
    lse = zmax + log_sum
    z.mul_(p)  # (ℓ − max)·p: the entropy's sum, and the entropy gradient below (no third [k, V] buffer)
    entropy = log_sum - z.sum(-1) / sum_p
    # TD residuals: r_i = Q_i − γ·c_i·V_{i+1}; V_{i+1} of the block's last row is the next block's (partial here)
    v = C * lse + rows.shift
    v_next = torch.cat([v[1:], rows.shift_next[-1:]])
    r = logit + A * lse + rows.shift - rows.gc * v_next
    r_prev = carry.r - carry.gcc * lse[:1]
    if not settings.with_grad:
        return None, logit, lse, entropy, top1, r, r_prev
    w = rows.w
    if settings.td_grad:
        d = rows.e * r
        d_prev = torch.cat([carry.e * r_prev, d[:-1]])  # D_{i−1}
        b = w + A * d - C * rows.gcb * d_prev
        g = d - w
    else:
        b, g = w, -w
    # dℓ = b·softmax + g·onehot(a) (+ β·w·softmax·(log softmax + H)), written over z
    g_ent = rows.g_ent
    if g_ent is None:
        torch.mul(p, (b / sum_p)[:, None], out=z)
    else:
        # β·w·softmax·(log softmax + H) = β·w/Σp·((ℓ − max)·p + (H − log Σp)·p)
        z.mul_((g_ent / sum_p)[:, None]).add_(p.mul_(((b + g_ent * (entropy - log_sum)) / sum_p)[:, None]))
    z.scatter_add_(-1, rows.actions[:, None], g[:, None])
    return z.to(settings.out_dtype), logit, lse, entropy, top1, r, r_prev


_COMPILED: dict[str, object] = {}


def _compiled_chunk_step():
    if "step" not in _COMPILED:
        _COMPILED["step"] = torch.compile(_chunk_step, dynamic=True, fullgraph=True)
    return _COMPILED["step"]


def _addmm_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, buf: torch.Tensor | None = None) -> None:
    """acc += a @ b: on CUDA with the product kept in float32 (not rounded to bf16 per chunk first), as TRL does;
    elsewhere through `buf` when given (a reused product buffer instead of a fresh one per chunk)."""
    if acc.device.type == "cuda" and a.dtype in (torch.float16, torch.bfloat16) and acc.dtype == torch.float32:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    elif a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif buf is None:
        acc.add_(a @ b)
    else:
        acc.add_(torch.mm(a, b, out=buf))


@dataclass
class _Plan:
    """Per-row constants of the loss ([N] each, in the accumulation dtype) and its static settings."""

    actions: torch.Tensor
    w: torch.Tensor  # MLE weight
    e: torch.Tensor  # 2λ·w·m
    gc: torch.Tensor  # γ·c
    gcb: torch.Tensor  # γ·c_{i−1}, 0 with iq_stop_grad_next
    td: torch.Tensor  # m
    shift: torch.Tensor | None  # −LSE_θ0 (reference form); the head form's comes from its tensor
    g_ent: torch.Tensor | None  # β·w
    iq_lambda: float
    A: float
    C: float
    chunk_size: int
    grads: tuple[bool, bool, bool, bool]  # hidden, weight, bias, value
    compiled: bool  # the per-chunk maths through torch.compile (`_compiled_chunk_step`)


class _Pass:
    """One forward pass of `SinglePassIQFunction` over row chunks: the per-row results, the gradients formed on the
    way, and the carry between blocks (module docstring)."""

    def __init__(self, hidden, weight, bias, value_rows, plan: _Plan):
        device = hidden.device
        self.hidden, self.weight, self.plan = hidden, weight, plan
        self.compute_dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
                              else hidden.dtype)
        acc = self.acc = acc_dtype(hidden)
        n = self.n = hidden.shape[0]
        need_h, need_w, need_b, need_v = plan.grads
        self.with_grad = need_h or need_w or need_b or need_v
        self.logit, self.lse, self.entropy, self.r = (torch.empty(n, device=device, dtype=acc) for _ in range(4))
        self.top1 = torch.empty(n, device=device, dtype=torch.bool)
        self.grad_h = torch.zeros(hidden.shape, device=device, dtype=acc) if need_h else None
        self.grad_w = torch.zeros(weight.shape, device=device, dtype=acc) if need_w else None
        self.grad_b = torch.zeros(bias.shape, device=device, dtype=acc) if need_b else None
        shift = value_rows.detach().to(acc) if value_rows is not None else plan.shift
        shift = torch.zeros(n, device=device, dtype=acc) if shift is None else shift
        self.rows = _BlockRows(actions=plan.actions, w=plan.w, e=plan.e, gc=plan.gc, gcb=plan.gcb, shift=shift,
                               shift_next=_next(shift), g_ent=plan.g_ent)  # [N] each, cut per block
        self.gcc = plan.gc * plan.C  # γ·c·C: the part of r_i that waits for lse_{i+1}
        self.step = _compiled_chunk_step() if plan.compiled else _chunk_step
        vocab = weight.shape[0]
        # eagerly, the softmax maths runs over blocks of a few rows (in `SCRATCH_ELEMENTS` of float32) while the
        # chunk's logits, then its gradient, stay in one [c, V] buffer of the matmul dtype
        upcast = self.compute_dtype != acc  # the block's logits need a float32 copy (the matmul ran in low precision)
        self.block = plan.chunk_size if plan.compiled else block_rows(vocab, 2 if upcast else 1)
        self.settings = _StepSettings(bias=None if bias is None else bias.to(acc), A=plan.A, C=plan.C,
                                      with_grad=self.with_grad, td_grad=plan.iq_lambda != 0,
                                      out_dtype=self.compute_dtype if plan.compiled else acc)
        # three distinct tensors: no aliasing guards in the compiled step
        self.carry = _Carry(*(torch.zeros(1, device=device, dtype=acc) for _ in range(3)))
        self.ends: list[int] = []  # chunk-last rows whose g lacks the next chunk's lse
        self.w_c = weight.to(self.compute_dtype)
        c = plan.chunk_size
        self.buf = torch.empty((min(c, n), vocab), device=device, dtype=self.compute_dtype)
        self.gw_buf = torch.empty(weight.shape, device=device, dtype=self.compute_dtype) if need_w and n > c else None
        rows_buf = min(self.block + 1, n)
        self.bufs = None if plan.compiled else (
            torch.empty((rows_buf, vocab), device=device, dtype=acc) if upcast else None,
            torch.empty((rows_buf, vocab), device=device, dtype=acc))

    def chunk(self, s: int, e: int) -> None:
        """Rows s..e − 1: their logits (one matmul), the softmax maths block by block, the gradient matmuls."""
        h_c = self.hidden[s:e].to(self.compute_dtype)
        logits = torch.mm(h_c, self.w_c.t(), out=self.buf[: e - s])
        dz = None
        for bs in range(s, e, self.block):
            dz = self.block_step(logits, s, e, bs, min(bs + self.block, e))
        if dz is None:
            return
        grad_z = dz if self.plan.compiled else logits  # [c, V] in the matmul dtype
        if self.grad_b is not None:
            self.grad_b += grad_z.sum(0, dtype=self.acc)
        if self.grad_h is not None:
            self.grad_h[s:e] = grad_z @ self.w_c
        if self.grad_w is not None:
            _addmm_(self.grad_w, grad_z.t(), h_c, self.gw_buf)

    def block_step(self, logits, s: int, e: int, bs: int, be: int):
        """Rows bs..be − 1 of the chunk s..e − 1 through `_chunk_step`; the eager gradient is written over `logits`."""
        plan = self.plan
        # a block inside the chunk takes one row more, for the logsumexp its last row's r needs (that row is
        # recomputed as the next block's first); the chunk's last row waits for the correction `fix_chunk_ends`
        ext = be + 1 if be < e else be
        z = logits[bs - s : ext - s]
        saved = z[-1].clone() if ext > be and z.dtype == self.acc else None  # float32 maths runs in place
        sl, k = slice(bs, be), be - bs
        dz, logit, lse, entropy, top1, r, r_prev = self.step(z, self.rows[bs:ext], self.carry, self.settings, self.bufs)
        self.logit[sl], self.lse[sl], self.entropy[sl], self.top1[sl], self.r[sl] = (
            logit[:k], lse[:k], entropy[:k], top1[:k], r[:k])
        if bs > 0:
            self.r[bs - 1] = r_prev[0]
        # r of the last row is complete when the block looked ahead, else it lacks −γ·c·C·lse_next
        gcc_last = self.gcc[be - 1 : be].clone() if ext == be else torch.zeros_like(self.carry.gcc)
        self.carry = _Carry(r=self.r[be - 1 : be].clone(), e=plan.e[be - 1 : be].clone(), gcc=gcc_last)
        if be == e and e < self.n:
            self.ends.append(e - 1)
        if saved is not None:
            z[-1].copy_(saved)
        if dz is not None and not plan.compiled and dz.data_ptr() != z.data_ptr():
            z[:k].copy_(dz[:k])
        return dz

    def td_weights(self) -> torch.Tensor:
        """D_i = 2λ·w_i·m_i·r_i, complete (after every chunk)."""
        return 2 * self.plan.iq_lambda * self.plan.w * self.plan.td * self.r

    def fix_chunk_ends(self, d: torch.Tensor) -> None:
        """The one-hot part the chunk-last rows missed: D_i − e_i·r_i(partial), one row of W each."""
        plan = self.plan
        if not (self.with_grad and plan.iq_lambda != 0 and self.ends):
            return
        idx = torch.tensor(self.ends, device=self.hidden.device)
        fix = d[idx] - plan.e[idx] * (self.r[idx] + self.gcc[idx] * self.lse[idx + 1])  # r_i as its chunk saw it
        rows = plan.actions[idx]
        if self.grad_h is not None:
            self.grad_h[idx] += fix[:, None] * self.w_c[rows].to(self.acc)
        if self.grad_w is not None:
            self.grad_w.index_add_(0, rows, fix[:, None] * self.hidden[idx].to(self.compute_dtype).to(self.acc))
        if self.grad_b is not None:
            self.grad_b.index_add_(0, rows, fix)

    def loss(self) -> torch.Tensor:
        plan = self.plan
        loss = (plan.w * (self.lse - self.logit)).sum() + plan.iq_lambda * (plan.w * plan.td * self.r.square()).sum()
        if plan.g_ent is not None:
            loss = loss - (plan.g_ent * self.entropy).sum()
        return loss


class SinglePassIQFunction(torch.autograd.Function):
    """The offline IQ loss of rows h [N, D] through the head W [V, D] (+ b), gradients formed in forward.

    Inputs: hidden rows, weight, bias or None, the head form's value rows [N] or None, and a `_Plan`. Outputs: the
    loss (differentiable) and the detached per-row logit, lse, H, top-1 and r.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, value_rows, plan: _Plan):
        run = _Pass(hidden, weight, bias, value_rows, plan)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, run.n, plan.chunk_size):
                run.chunk(s, min(s + plan.chunk_size, run.n))
            d = run.td_weights()
            run.fix_chunk_ends(d)
        grad_value = d - plan.gcb * _prev(d) if plan.grads[3] else None  # ∂L/∂s_i, the head form's v_ψ
        grads = (run.grad_h, run.grad_w, run.grad_b, grad_value)
        ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in grads))
        ctx.present = tuple(x is not None for x in grads)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype,
                      None if value_rows is None else value_rows.dtype)
        ctx.mark_non_differentiable(run.logit, run.lse, run.entropy, run.top1, run.r)
        return run.loss(), run.logit, run.lse, run.entropy, run.top1, run.r

    @staticmethod
    def backward(ctx, grad_loss, *_):
        grads = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None, None, None
        # grad_output = 1 (the usual case): the stored gradients as they are, so a retain_graph second backward is
        # exact. Otherwise they are scaled in place (no second [V, D] buffer, as Liger); a second backward through
        # the same graph then fails in autograd's version check instead of returning twice-scaled gradients.
        scale = None if bool(grad_loss == 1) else grad_loss
        out = []
        for g, present, dtype in zip(grads, ctx.present, ctx.dtypes, strict=True):
            if not present:
                out.append(None)
                continue
            if scale is not None:
                g.mul_(scale.to(g.dtype))
            out.append(g if g.dtype == dtype else g.to(dtype))
        return (*out, None)


class _Layout(NamedTuple):
    """Where the rows of the single pass sit in the batch, all [B, T − 1]."""

    actions: torch.Tensor
    mask: torch.Tensor
    td_mask: torch.Tensor  # m: the TD term is defined


def _row_weights(mask: torch.Tensor, objective: Objective, counts: Counts, acc: torch.dtype) -> torch.Tensor:
    """w per position [B, T − 1]: `masked_mean`'s weights (its denominators clamped at 1)."""
    device = mask.device
    total = counts.expert(objective.iq_reduction)
    if objective.iq_reduction == "token":
        total = mask.sum() if total is None else torch.as_tensor(total, device=device)
        return mask.to(acc) / total.to(acc).clamp(min=1)
    per_row = mask.sum(-1, keepdim=True)
    total = (per_row > 0).sum() if total is None else torch.as_tensor(total, device=device)
    return mask.to(acc) / per_row.clamp(min=1).to(acc) / total.to(acc).clamp(min=1)


def _plan(labels: torch.Tensor, objective: Objective, counts: Counts, reference_lse: torch.Tensor | None,
          grads: tuple[bool, bool, bool, bool], chunk_size: int, compiled: bool,
          acc: torch.dtype) -> tuple[_Plan, _Layout]:
    """The per-row constants of the loss, and where the rows sit in the batch."""
    o = objective
    actions, mask = shift_labels(labels)
    # c_i (successor is the next row) and m_i (TD term defined), exactly as the losses define them: next_values of a
    # V that is 1 on every completion position
    ones = QV(logit=mask.to(acc), lse=mask.to(acc), actions=actions, mask=mask)
    has_next, td_mask = next_values(ones, o.eos_token_ids)
    w = _row_weights(mask, o, counts, acc)[mask]
    td = td_mask[mask].to(acc)
    gc = o.iq_gamma * has_next[mask].to(acc)
    plan = _Plan(
        actions=actions[mask],
        w=w,
        e=2 * o.iq_lambda * w * td,
        gc=gc,
        gcb=torch.zeros_like(gc) if o.iq_stop_grad_next else _prev(gc),
        td=td,
        shift=None if reference_lse is None else -reference_lse.detach().to(acc)[mask],
        g_ent=o.entropy_coef * w if o.entropy_coef != 0 else None,
        iq_lambda=float(o.iq_lambda),
        A=o.iq_value.A,
        C=o.iq_value.C,
        chunk_size=chunk_size,
        grads=grads,
        compiled=compiled,
    )
    return plan, _Layout(actions, mask, td_mask)


def single_pass_iq_loss(
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
    """`chunked_iq_loss` with the gradient formed in the forward pass: one pass through the LM head (module docstring).

    hidden: [B, T, D] final hidden states; weight: [V, D] the LM head (bias: [V]); labels: [B, T] unshifted;
    `value_input` the value form's input ([B, T − 1]: LSE_θ0 for reference, v_ψ(h) for head, whose gradient flows
    back through it). Same loss, gradients and `LossOutput` as `chunked_iq_loss(...)` with the same arguments, up to
    floating-point summation order; `.qv` holds the detached per-position quantities. `compiled` and `gather` are
    `qv_from_hidden`'s (`tirl.losses.chunked_head`).
    """
    if chunk_size <= 0:
        raise ValueError(f"iq_chunk_size must be positive, got {chunk_size}")
    if objective.loss_type != "nll":
        raise ValueError(f"the single-pass head computes the nll token loss, not loss_type={objective.loss_type!r}")
    form = objective.iq_value
    form.check_input(value_input)
    if form.input is not None and (1.0 if form.input_trained else -1.0) != form.S:
        # the gradient below is derived for x subtracted as data (reference) or added as a trained input (head)
        raise ValueError(f"the single-pass head computes S = -1 for a data input and S = +1 for a trained one, not "
                         f"the {form.name} form's S = {form.S:g}; train it with iq_head='two_pass'")
    labels = labels.to(hidden.device)
    acc = acc_dtype(hidden)
    if value_input is not None and value_input.shape != (labels.shape[0], labels.shape[1] - 1):
        raise ValueError(f"the {form.name} form's input has shape {tuple(value_input.shape)}, expected "
                         f"{(labels.shape[0], labels.shape[1] - 1)}")
    mask = labels[:, 1:] != IGNORE_INDEX
    rows = hidden[:, :-1][mask]  # [N, D]
    value_rows = value_input.to(device=hidden.device, dtype=acc)[mask] if form.input_trained else None
    reference_lse = value_input.to(hidden.device) if form.input and not form.input_trained else None
    # λ = 0: v_ψ is not in the loss and gets no gradient (None, not zeros, as from `iq_loss_from_qv`: an optimizer
    # skips a parameter without a gradient but counts a step for a zero one)
    grad_on = torch.is_grad_enabled()
    grads = tuple(grad_on and x is not None and x.requires_grad
                  for x in (rows, weight, bias, value_rows if objective.iq_lambda != 0 else None))
    plan, batch = _plan(labels, objective, counts, reference_lse, grads, chunk_size, compiled, acc)
    # ZeRO-3: the head is gathered once, around the autograd node as well as its forward, so that the node records the
    # whole weight's shape, the shape of the gradient formed in forward (TRL's pattern for fused losses)
    with gather():
        plan.chunk_size = max(1, min(chunk_size, MAX_CHUNK_ELEMENTS // weight.shape[0]))
        loss, logit, lse, entropy, top1, r = SinglePassIQFunction.apply(rows, weight, bias, value_rows, plan)
    return _output(loss, logit, lse, entropy, top1, r, plan, batch, value_rows)


def _output(loss, logit, lse, entropy, top1, r, plan: _Plan, batch: _Layout, value_rows) -> LossOutput:
    """The `LossOutput` of the per-row results, laid out [B, T − 1] (detached), as `iq_loss_from_qv` reports it."""
    mask, td_mask = batch.mask, batch.td_mask
    with torch.no_grad():

        def scatter(x: torch.Tensor) -> torch.Tensor:
            return x.new_zeros(mask.shape).masked_scatter(mask, x)

        shift = value_rows if value_rows is not None else plan.shift
        v = None if shift is None else scatter(plan.C * lse + shift)  # V in a form other than the logits
        qv = QV(logit=scatter(logit), lse=scatter(lse), actions=batch.actions, mask=mask,
                entropy=scatter(entropy), is_top1=scatter(top1), v_override=v)
        weights = scatter(plan.w)

        def mean(per_token: torch.Tensor) -> torch.Tensor:  # the loss's own reduction: Σ w·x
            return (weights * per_token).sum()

        return loss_statistics(loss, -qv.logprob, scatter(r) * td_mask, qv.v, mask, td_mask, mean, qv)


__all__ = ["SinglePassIQFunction", "single_pass_iq_loss"]
