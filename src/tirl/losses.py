"""The maths of `tirl`: token-level MLE and IQLearn losses as pure functions.

Token-level MDP (METHOD.md §1). For a prompt x and a target y ending in EOS:
    state  s_t = (x, y_<t),   action a_t = y_t,   s_{t+1} = s_t ⊕ a_t,   EOS leads to a terminal state with V = 0.
    Q(s_t, ·)       = ℓ_t                   the LM logits at the position that predicts y_t
    V(s_t)          = logsumexp(ℓ_t)
    log π(a_t|s_t)  = Q(s_t, a_t) − V(s_t)
    r_t             = Q(s_t, a_t) − γ·V(s_{t+1})      the implicit reward

Objectives (METHOD.md §2), means over completion tokens:
    L_MLE = E[ −log π(a_t|s_t) ]
    L_IQ  = E[ −log π(a_t|s_t) + λ·r_t² ]      offline IQLearn = TD-regularised MLE; λ = 0 is exactly L_MLE.

Value parameterisation (METHOD.md §1). Eq. 14 takes v and π as separate arguments: L = E[λ·(v(s) + log π(a|s) −
γ·v(s'))² − log π(a|s)]. The logits give π = softmax(ℓ) and one choice of v, V = logsumexp(ℓ) ("logits"); a `QV` may
carry another V in `value`, with the same policy and Q(s_t, a_t) = log π(a_t|s_t) + V(s_t):
    reference   V = LSE_θ − LSE_θ0, θ0 the starting model (`with_reference`): V ≡ 0 and r_t = log π_θ0 at the start
    head        V = v_ψ(s), a scalar head on the final hidden state (`with_value`)
Softmax ignores a per-state shift of the logits, so a pretrained model's logsumexp (≈30 for SmolLM2) is an artefact
of pretraining, not a value; the two other forms start the TD term at E[(log π_θ0)²] instead of ≈80.

Everything here is built from three per-position tensors: q = Q(s_t, a_t), v = V(s_t) and the action mask. They come
either from full logits (`qv_from_logits`, the simple reference) or from hidden states and the LM head weight in row
chunks (`qv_from_hidden`, which never materialises [batch, seq, vocab]); every loss has a logits form and a chunked form
with the same results, and the logits form is the test oracle for the chunked one.

Conventions, decided once here:
- `labels` are unshifted, like Hugging Face's: `labels[:, t]` is the token at input position t, −100 where it is not
  an action (prompt, padding, packed-sequence boundaries). The logits at position t predict token t + 1; the shift
  happens in `shift_labels` and nowhere else. Every per-token output has shape [batch, seq − 1].
- Terminal states: the action EOS ends the episode, so V(s_{t+1}) = 0 after it. A completion that ends without EOS was
  truncated; its state is not terminal, and we *drop* the TD term of its last action (we do not bootstrap, because
  the value after the last input token is not computed). Tokens a chat template renders after EOS inside the
  completion (e.g. the "\n" after "<|im_end|>") are outside the MDP: they keep their MLE term, as in TRL, but get no
  TD term. Without `eos_token_id` every completion end is treated as terminal.
- Normalisation: token sums divided by `num_items_in_batch` when given (the number of completion tokens in the whole
  accumulated batch, as `transformers.Trainer` passes it, so gradient accumulation and data parallelism are exact),
  else by the local count of completion tokens. Both terms share the denominator, so λ = 0 reproduces TRL's SFT
  loss. `reduction="sequence"` instead sums each sequence's token mean and divides by `num_sequences_in_batch` when
  given (the sequences with a completion token in the whole accumulated batch, counted like `num_items_in_batch`),
  else by the local number of sequences. A trainer that passes `num_items_in_batch` must pass the global counts of
  every reduction it uses: `Trainer` then neither divides by the accumulation steps nor averages over processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

import torch

IGNORE_INDEX = -100
MAX_CHUNK_ELEMENTS = 2**26  # logits per chunk of the chunked head: 256 MB in float32

Reduction = Literal["token", "sequence"]


@dataclass
class QV:
    """Per-position quantities of the token MDP, all [batch, seq − 1], zero where `mask` is False."""

    q: torch.Tensor  # Q(s_t, a_t), the target logit (float32)
    v: torch.Tensor  # V(s_t) = logsumexp(ℓ_t) (float32)
    actions: torch.Tensor  # a_t, with ignored positions set to 0 (long)
    mask: torch.Tensor  # True where a_t is a completion token (bool)
    entropy: torch.Tensor | None = None  # H(π(·|s_t)); None when not computed; differentiable only when asked for
    is_top1: torch.Tensor | None = None  # whether a_t is the argmax action, no gradient
    value: torch.Tensor | None = None  # V(s_t) of another parameterisation (module docstring); None: V = logsumexp

    @property
    def logprob(self) -> torch.Tensor:
        """log π(a_t|s_t) = ℓ_t[a_t] − logsumexp(ℓ_t), whatever the value parameterisation."""
        return (self.q - self.v) * self.mask

    @property
    def state_value(self) -> torch.Tensor:
        """V(s_t) in the parameterisation the loss uses."""
        return self.v if self.value is None else self.value

    @property
    def q_value(self) -> torch.Tensor:
        """Q(s_t, a_t) = log π(a_t|s_t) + V(s_t); for the logits form exactly the target logit."""
        return self.q if self.value is None else (self.logprob + self.value) * self.mask


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
class TokenRewards:
    """Per-token reward decomposition, all [batch, seq − 1], zero where `mask` is False."""

    reward: torch.Tensor  # r_t = Q(s_t, a_t) − γ·V(s_{t+1})
    value: torch.Tensor  # V(s_t)
    next_value: torch.Tensor  # γ-free V(s_{t+1}); 0 after EOS
    logprob: torch.Tensor  # log π(a_t|s_t)
    mask: torch.Tensor  # completion tokens
    td_mask: torch.Tensor  # tokens whose TD term is defined (not truncated, not after EOS)

    def sequence_reward(self) -> torch.Tensor:
        """R = Σ_t r_t over the tokens with a defined reward, per sequence: [batch]."""
        return (self.reward * self.td_mask).sum(-1)


# --------------------------------------------------------------------------------------------------------------------
# Per-position Q and V
# --------------------------------------------------------------------------------------------------------------------


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
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
    z = logits[:, :-1].to(_acc_dtype(logits))  # [B, T−1, V]
    v = torch.logsumexp(z, dim=-1)  # [B, T−1]
    q = z.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = is_top1 = None
    if with_stats or entropy_grad:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            p = torch.softmax(z, dim=-1)
            entropy = (v - (p * z).sum(-1)) * mask
        with torch.no_grad():
            is_top1 = (q >= z.amax(-1)) & mask
    return QV(q=q * mask, v=v * mask, actions=actions, mask=mask, entropy=entropy, is_top1=is_top1)


def _chunk_stats(z: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, V, entropy and top-1 flag of one chunk of logits z [c, V] (any float dtype; maths in float32)."""
    z = z.float()
    zmax = z.amax(-1, keepdim=True)
    q = z.gather(-1, actions[:, None]).squeeze(-1)
    p = (z - zmax).exp()
    sum_p = p.sum(-1)
    log_sum = sum_p.log()
    entropy = log_sum - ((z - zmax) * p).sum(-1) / sum_p
    zmax = zmax.squeeze(-1)
    return q, zmax + log_sum, entropy, q >= zmax


def _chunk_grad(z: torch.Tensor, actions: torch.Tensor, v: torch.Tensor, grad_v: torch.Tensor,
                grad_q: torch.Tensor) -> torch.Tensor:
    """dℓ = g_v·softmax(ℓ) + g_q·onehot(a) for one chunk of logits z [c, V], in z's dtype (for the two matmuls)."""
    onehot = torch.arange(z.shape[-1], device=z.device)[None, :] == actions[:, None]
    g = (z.float() - v[:, None]).exp() * grad_v[:, None] + onehot * grad_q[:, None]
    return g.to(z.dtype)


_FUSED: dict[str, object] = {}


def _fused(name: str):
    """`_chunk_stats` / `_chunk_grad` compiled by torch.compile into one or two kernels each, built on first use.

    Eagerly, a chunk makes about eight float32 passes over its [c, V] logits (upcast, max, exp, sums; in backward
    exp, scale, downcast); on a GPU those passes, not the matmuls, are the cost of the head (benchmarks/README.md).
    Compiled, each function reads the low-precision logits once or twice and writes its result once."""
    if name not in _FUSED:
        fn = {"stats": _chunk_stats, "grad": _chunk_grad}[name]
        _FUSED[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _FUSED[name]


def use_fused_head(hidden: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the chunked head runs its per-chunk maths through `torch.compile` (`_fused`).

    `TIRL_FUSED_HEAD=auto` (default): on CUDA devices with Triton only. `1`: also elsewhere (CPU needs a C++
    compiler). `0`: never.
    Float64 inputs (the gradient tests) and LM heads with a bias always take the eager path."""
    mode = os.environ.get("TIRL_FUSED_HEAD", "auto").lower()
    if mode in ("0", "false", "no", "off") or bias is not None or hidden.dtype == torch.float64:
        return False
    if mode != "auto":
        return True
    from torch.utils._triton import has_triton  # torch.compile's GPU backend; without it, stay eager

    return hidden.is_cuda and has_triton()


class ChunkedQVFunction(torch.autograd.Function):
    """q = (h Wᵀ + b)[a] and v = logsumexp(h Wᵀ + b) for rows of h, in row chunks, without the [N, V] logits.

    Forward keeps only h, W, a, v and the entropy H; backward recomputes each chunk's logits and turns them in place
    into dℓ = g_v·softmax(ℓ) + g_q·onehot(a) − g_H·softmax(ℓ)·(log softmax(ℓ) + H), the gradient of any loss that
    depends on the logits through q, v and H only (the H term only when a loss uses the entropy, e.g. entropy-
    regularised MLE).
    The matmuls run in the autocast dtype when autocast is on (as the model's own head would); the logsumexp, the
    softmax and the gradient accumulators are float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, actions, chunk_size: int):  # hidden [N, D], weight [V, D], actions [N]
        ctx.set_materialize_grads(False)
        device = hidden.device
        compute_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
        n = hidden.shape[0]
        acc = _acc_dtype(hidden)
        q = torch.empty(n, device=device, dtype=acc)
        v = torch.empty(n, device=device, dtype=acc)
        entropy = torch.empty(n, device=device, dtype=acc)
        is_top1 = torch.empty(n, device=device, dtype=torch.bool)
        fused = use_fused_head(hidden, bias)
        with torch.autocast(device.type, enabled=False):
            w = weight.to(compute_dtype)
            b = None if bias is None else bias.to(acc)
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                if fused:
                    q[s:e], v[s:e], entropy[s:e], is_top1[s:e] = _fused("stats")(hidden[s:e].to(compute_dtype) @ w.t(), actions[s:e])
                    continue
                z = (hidden[s:e].to(compute_dtype) @ w.t()).to(acc)  # [c, V]
                if b is not None:
                    z += b
                zmax = z.amax(-1)
                qc = z.gather(-1, actions[s:e, None]).squeeze(-1)
                q[s:e] = qc
                is_top1[s:e] = qc >= zmax
                z -= zmax[:, None]  # ℓ − max
                p = z.exp()  # softmax × Σ exp(ℓ − max)
                sum_p = p.sum(-1)
                v[s:e] = zmax + sum_p.log()
                # H = V − Σ softmax·ℓ = log Σp − Σ p·(ℓ − max) / Σp; the product overwrites z (no third buffer)
                entropy[s:e] = sum_p.log() - z.mul_(p).sum(-1) / sum_p
        ctx.save_for_backward(hidden, weight, bias, actions, v, entropy)
        ctx.chunk_size = chunk_size
        ctx.compute_dtype = compute_dtype
        ctx.fused = fused
        ctx.mark_non_differentiable(is_top1)
        return q, v, entropy, is_top1

    @staticmethod
    def backward(ctx, grad_q, grad_v, grad_entropy, _):
        hidden, weight, bias, actions, v, entropy = ctx.saved_tensors
        cd, c = ctx.compute_dtype, ctx.chunk_size
        n = hidden.shape[0]
        acc = _acc_dtype(hidden)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros(hidden.shape, device=hidden.device, dtype=acc) if need_h else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=acc) if need_w else None
        grad_b = torch.zeros(bias.shape, device=bias.device, dtype=acc) if need_b else None
        if grad_q is None and grad_v is None and grad_entropy is None:
            return None, None, None, None, None
        from trl.trainer.utils import maybe_gather_lm_head_ctx  # ZeRO-3 re-partitions the head after forward

        with torch.autocast(hidden.device.type, enabled=False), maybe_gather_lm_head_ctx(weight, bias):
            w = weight.to(cd)
            fused = ctx.fused and grad_entropy is None  # the compiled chunk maths has no entropy term
            if fused:
                zeros = torch.zeros(n, device=hidden.device, dtype=acc)
                g_v = zeros if grad_v is None else grad_v.to(acc)
                g_q = zeros if grad_q is None else grad_q.to(acc)
            for s in range(0, n, c):
                e = min(s + c, n)
                hc = hidden[s:e].to(cd)
                if fused:  # never with a bias (use_fused_head)
                    zc = _fused("grad")(hc @ w.t(), actions[s:e], v[s:e], g_v[s:e], g_q[s:e])
                else:
                    z = (hc @ w.t()).to(acc)
                    if bias is not None:
                        z += bias.to(acc)
                    # dℓ = g_v·softmax(ℓ) + g_q·onehot(a), built in place of the logits
                    z.sub_(v[s:e, None])  # log softmax(ℓ)
                    if grad_entropy is not None:
                        # ∂H/∂ℓ = −softmax·(log softmax + H): one more [c, V] buffer, only for entropy-using losses
                        p = z.exp()
                        z.add_(entropy[s:e, None]).mul_(-grad_entropy[s:e, None].to(acc))
                        if grad_v is not None:
                            z.add_(grad_v[s:e, None].to(acc))
                        z.mul_(p)
                        del p
                    elif grad_v is not None:
                        z.exp_().mul_(grad_v[s:e, None].to(acc))
                    else:
                        z.zero_()
                    if grad_q is not None:
                        z.scatter_add_(-1, actions[s:e, None], grad_q[s:e, None].to(acc))
                    if grad_b is not None:
                        grad_b += z.sum(0)
                    zc = z.to(cd)
                if grad_h is not None:
                    grad_h[s:e] = zc @ w
                if grad_w is not None:
                    grad_w += zc.t() @ hc
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
        )


def qv_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 1024,
    bias: torch.Tensor | None = None,
) -> QV:
    """`qv_from_logits` for logits = hidden @ weightᵀ + bias, computed in chunks of `chunk_size` rows.

    hidden: [B, T, D] final hidden states (after the last norm); weight: [V, D] the LM head; labels: [B, T].
    Only completion rows go through the head (prompt and padding rows cost nothing), and peak extra memory is about
    two chunk_size × V float buffers instead of B × T × V; `chunk_size` is capped at MAX_CHUNK_ELEMENTS / V rows
    (64 M logits, 256 MB in float32), so a 256k vocabulary gets 256-row chunks.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    # large vocabularies get fewer rows per chunk, so a chunk's logits never exceed MAX_CHUNK_ELEMENTS
    chunk_size = max(1, min(chunk_size, MAX_CHUNK_ELEMENTS // weight.shape[0]))
    actions, mask = shift_labels(labels)
    rows = hidden[:, :-1][mask]  # [N, D], only completion positions
    q_rows, v_rows, h_rows, top1_rows = ChunkedQVFunction.apply(rows, weight, bias, actions[mask], chunk_size)

    def scatter(x: torch.Tensor) -> torch.Tensor:
        # masked_scatter keeps the output connected to the graph even when no position is valid, so an all-masked
        # micro-batch still yields a differentiable zero (DDP/FSDP expect every parameter to get a gradient)
        return x.new_zeros(mask.shape).masked_scatter(mask, x)

    return QV(
        q=scatter(q_rows),
        v=scatter(v_rows),
        actions=actions,
        mask=mask,
        entropy=scatter(h_rows),
        is_top1=scatter(top1_rows),
    )


# --------------------------------------------------------------------------------------------------------------------
# Value parameterisations: the same policy, another V (module docstring)
# --------------------------------------------------------------------------------------------------------------------

ValueForm = Literal["logits", "reference", "head"]
VALUE_FORMS: tuple[str, ...] = ("logits", "reference", "head")


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
# Terminal handling and rewards
# --------------------------------------------------------------------------------------------------------------------


def eos_positions(actions: torch.Tensor, mask: torch.Tensor, eos_token_id: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_eos, after_eos), both [B, T−1]: completion positions whose action is EOS, and completion positions that
    follow an EOS inside the same completion segment (a maximal run of completion positions; several per row in
    multi-turn data)."""
    eos_ids = torch.as_tensor(eos_token_id, device=mask.device).reshape(-1)
    is_eos = torch.isin(actions, eos_ids) & mask
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    prev_mask = torch.zeros_like(mask)
    prev_mask[:, 1:] = mask[:, :-1]
    seg_start = torch.where(mask & ~prev_mask, positions, -1).cummax(-1).values
    last_eos = torch.where(is_eos, positions, -1).cummax(-1).values
    prev_eos = torch.full_like(last_eos, -1)
    prev_eos[:, 1:] = last_eos[:, :-1]
    return is_eos, mask & (prev_eos >= seg_start)


def next_values(qv: QV, eos_token_id: int | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """V(s_{t+1}) for every action and the mask of actions whose TD term is defined.

    Returns (v_next, td_mask), both [B, T−1]. v_next is V (`qv.state_value`) at the next completion position, 0 after EOS (terminal)
    and 0 at the end of a completion. td_mask excludes the last action of a completion truncated without EOS and any
    action that follows an EOS inside the same completion (see the module docstring).
    """
    mask = qv.mask
    next_mask = torch.zeros_like(mask)
    next_mask[:, :-1] = mask[:, 1:]
    value = qv.state_value
    v_next = torch.zeros_like(value)
    v_next[:, :-1] = value[:, 1:]
    if eos_token_id is None:
        # no EOS to tell terminal from truncated: every completion end is terminal
        return v_next * next_mask, mask.clone()

    is_eos, after_eos = eos_positions(qv.actions, mask, eos_token_id)
    segment_end = mask & ~next_mask
    truncated = segment_end & ~is_eos & ~after_eos
    terminal = is_eos | segment_end
    td_mask = mask & ~truncated & ~after_eos
    return v_next * ~terminal, td_mask


def token_rewards(qv: QV, gamma: float = 0.99, eos_token_id: int | list[int] | None = None) -> TokenRewards:
    """Implicit per-token rewards r_t = Q(s_t, a_t) − γ·V(s_{t+1}) (METHOD.md §4) from `qv_from_logits`/`_hidden`."""
    v_next, td_mask = next_values(qv, eos_token_id)
    reward = (qv.q_value - gamma * v_next) * qv.mask
    return TokenRewards(
        reward=reward,
        value=qv.state_value,
        next_value=v_next,
        logprob=qv.logprob,
        mask=qv.mask,
        td_mask=td_mask,
    )


# --------------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------------


def _reduce(per_token: torch.Tensor, qv: QV, reduction: Reduction, num_items_in_batch,
            num_sequences_in_batch=None) -> torch.Tensor:
    """`masked_mean` over `qv.mask`, divided by the global count of the reduction when given."""
    total = num_items_in_batch if reduction == "token" else num_sequences_in_batch
    return masked_mean(per_token, qv.mask, reduction, total)


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
    counts = (num_items_in_batch, num_sequences_in_batch)
    nll_tok = -(qv.q - qv.v) * qv.mask
    nll = _reduce(nll_tok, qv, reduction, *counts)
    v_next, td_mask = next_values(qv, eos_token_id)
    if stop_grad_next:
        v_next = v_next.detach()
    reward = (qv.q_value - gamma * v_next) * td_mask
    if lam != 0:
        td = _reduce(reward.square(), qv, reduction, *counts)
        loss = nll + lam * td
    else:
        # λ = 0 is exactly MLE: the TD term is not even in the graph
        loss = nll
        with torch.no_grad():
            td = _reduce(reward.square(), qv, reduction, *counts)
    if entropy_coef != 0:
        # (under no_grad, e.g. in evaluation, the value is all that is needed)
        if qv.entropy is None or (torch.is_grad_enabled() and qv.q.requires_grad and not qv.entropy.requires_grad):
            raise ValueError("entropy_coef needs the entropy in the graph: build the QV with entropy_grad=True")
        loss = loss - entropy_coef * _reduce(qv.entropy * qv.mask, qv, reduction, *counts)
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
    return iq_loss_from_qv(qv_from_logits(logits, labels), lam=0.0, num_items_in_batch=num_items_in_batch, reduction=reduction,
                           num_sequences_in_batch=num_sequences_in_batch)


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
    return iq_loss_from_qv(
        qv_from_logits(logits, labels),
        lam=lam,
        gamma=gamma,
        eos_token_id=eos_token_id,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
        stop_grad_next=stop_grad_next,
        num_sequences_in_batch=num_sequences_in_batch,
    )


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
) -> LossOutput:
    """`iq_loss` for logits = hidden @ weightᵀ (+ bias), in row chunks, never building [B, T, V].

    hidden: [B, T, D] final hidden states; weight: [V, D] the LM head weight. Same results as
    `iq_loss(hidden @ weight.T, labels, ...)` up to floating-point summation order.
    """
    return iq_loss_from_qv(
        qv_from_hidden(hidden, weight, labels, chunk_size=chunk_size, bias=bias),
        lam=lam,
        gamma=gamma,
        eos_token_id=eos_token_id,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
        stop_grad_next=stop_grad_next,
        num_sequences_in_batch=num_sequences_in_batch,
    )


# --------------------------------------------------------------------------------------------------------------------
# Online IQLearn: expert rows mixed with policy samples (METHOD.md §2)
# --------------------------------------------------------------------------------------------------------------------

PolicyTerms = Literal["both", "td", "value"]


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


def restrict_rows(qv: QV, rows: torch.Tensor) -> QV:
    """`qv` with every row outside `rows` ([B] bool) masked out, as if those rows had no completion token."""
    keep = qv.mask & rows[:, None]
    return QV(
        q=qv.q * keep,
        v=qv.v * keep,
        actions=qv.actions,
        mask=keep,
        entropy=None if qv.entropy is None else qv.entropy * keep,
        is_top1=None if qv.is_top1 is None else qv.is_top1 & keep,
        value=None if qv.value is None else qv.value * keep,
    )


def masked_mean(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    reduction: Reduction,
    total: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of `per_token` [B, T−1] over `mask`, as every loss here takes it:

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
    if policy_terms not in ("both", "td", "value"):
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
    policy_total = num_policy_items_in_batch if reduction == "token" else num_policy_sequences_in_batch

    def expert_mean(x: torch.Tensor) -> torch.Tensor:
        return _reduce(x * exp_td_mask, expert, reduction, num_items_in_batch, num_sequences_in_batch)

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
