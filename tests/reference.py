"""Oracles the tests compare against: small batches with every edge case, and docs/method.md written as plain loops.

The loop references restate the objectives token by token in float64, independently of `tirl.losses` (no masks, no
shift helper, no vectorised reductions), so a bug in the vectorised maths cannot hide in its own oracle.
"""

import shutil

import pytest
import torch

EOS = 2


def make_batch(B=3, T=12, D=8, V=23, dtype=torch.float64, seed=0, bias=False, two_segments=False):
    """Hidden states, head and labels whose rows cover every terminal case: EOS then a template token; truncated;
    exactly EOS; with `two_segments` (B ≥ 4) also a row of two turns, EOS ending the first, then a prompt and a
    truncated second one (and no EOS drawn at random)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, D, dtype=dtype, generator=g, requires_grad=True)
    W = torch.randn(V, D, dtype=dtype, generator=g, requires_grad=True)
    b = torch.randn(V, dtype=dtype, generator=g, requires_grad=True) if bias else None
    labels = torch.randint(3, V, (B, T), generator=g)
    if two_segments:
        labels[labels == EOS] = 3
    labels[:, :4] = -100  # prompt
    labels[0, 8] = EOS  # row 0: EOS then a trailing template token, then padding
    labels[0, 10:] = -100
    labels[1, -3:] = -100  # row 1: truncated (no EOS), then padding
    labels[2, -1] = EOS  # row 2: ends exactly with EOS
    if two_segments:
        labels[3, 7] = EOS  # row 3: EOS ends the first turn; a prompt, then a truncated second one
        labels[3, 8:10] = -100
    return h, W, b, labels


def objective(**kw):
    """An `Objective` for the maths: plain MLE in the logits form (`Objective.mle`) with this module's EOS, `kw` its
    other fields."""
    from tirl.losses import Objective

    return Objective.mle(eos_token_ids=(EOS,), **kw)


def logits_of(h, W, b=None):
    z = h @ W.T
    return z if b is None else z + b


def naive_iq_reference(logits, labels, lam, gamma):
    """An independent, loop-based statement of docs/method.md §2 for rows that end in EOS or are truncated."""
    total_nll, total_td, n = 0.0, 0.0, 0
    lp = torch.log_softmax(logits.double(), -1)
    lse = torch.logsumexp(logits.double(), -1)
    for b in range(labels.shape[0]):
        acts = [(t, int(labels[b, t + 1])) for t in range(labels.shape[1] - 1) if labels[b, t + 1] != -100]
        seen_eos = False
        for i, (t, a) in enumerate(acts):
            n += 1
            total_nll = total_nll - lp[b, t, a]
            if seen_eos:
                continue  # after EOS: outside the MDP, MLE only
            last = i == len(acts) - 1 or acts[i + 1][0] != t + 1
            if a == EOS:
                v_next = 0.0
            elif last:
                seen_eos = True  # truncated: no TD term for the last action
                continue
            else:
                v_next = lse[b, t + 1]
            r = logits[b, t, a].double() - gamma * v_next
            total_td = total_td + r**2
            seen_eos = a == EOS
    return (total_nll + lam * total_td) / n


def mixed_batch(dtype=torch.float64, seed=0, V=19):
    """Logits [5, 12, V] and labels: rows 0–2 expert (EOS + template token / truncated / EOS at the end), rows 3–4
    policy samples (one ends in EOS, one was cut at max_new_tokens)."""
    g = torch.Generator().manual_seed(seed)
    B, T = 5, 12
    logits = torch.randn(B, T, V, dtype=dtype, generator=g, requires_grad=True)
    labels = torch.randint(3, V, (B, T), generator=g)
    labels[:, :4] = -100
    labels[0, 8] = EOS
    labels[0, 10:] = -100
    labels[1, -3:] = -100
    labels[2, -1] = EOS
    labels[3, :6] = -100
    labels[3, 9] = EOS
    labels[3, 10:] = -100
    labels[4, :3] = -100
    is_expert = torch.tensor([True, True, True, False, False])
    return logits, labels, is_expert


def online_loop_reference(logits, labels, is_expert, alpha, lam, gamma):
    """docs/method.md §2's L_on, token by token: −log π on expert tokens, r² and V − γV' where the TD term is defined."""
    lp = torch.log_softmax(logits.double(), -1)
    lse = torch.logsumexp(logits.double(), -1)
    sums = {"nll": 0.0, "r2_E": 0.0, "gap_E": 0.0, "r2_P": 0.0, "gap_P": 0.0}
    n = {"E": 0, "P": 0}
    for b in range(labels.shape[0]):
        kind = "E" if is_expert[b] else "P"
        acts = [(t, int(labels[b, t + 1])) for t in range(labels.shape[1] - 1) if labels[b, t + 1] != -100]
        seen_eos = False
        for i, (t, a) in enumerate(acts):
            n[kind] += 1
            if kind == "E":
                sums["nll"] = sums["nll"] - lp[b, t, a]
            if seen_eos:
                continue
            last = i == len(acts) - 1 or acts[i + 1][0] != t + 1
            if a == EOS:
                v_next = 0.0
            elif last:
                continue  # truncated: no TD / value term for the last action
            else:
                v_next = lse[b, t + 1]
            r = logits[b, t, a].double() - gamma * v_next
            sums[f"r2_{kind}"] = sums[f"r2_{kind}"] + r**2
            sums[f"gap_{kind}"] = sums[f"gap_{kind}"] + (lse[b, t] - gamma * v_next)
            seen_eos = a == EOS
    e = {k: v / n["E"] for k, v in sums.items() if k.endswith("E") or k == "nll"}
    p = {k: v / n["P"] for k, v in sums.items() if k.endswith("P")}
    return (e["nll"] + alpha * (p["gap_P"] - e["gap_E"]) + lam * ((1 - alpha) * e["r2_E"] + alpha * p["r2_P"]))


def batch_counts(labels, is_expert):
    """The global counts a trainer passes with num_items_in_batch, for the whole batch (`labels`, `is_expert`)."""
    from tirl.losses import Counts

    actions = labels[:, 1:] != -100
    e, p = actions[is_expert], actions[~is_expert]
    return Counts(tokens=int(e.sum()), sequences=int(e.any(-1).sum()), policy_tokens=int(p.sum()),
                  policy_sequences=int(p.any(-1).sum()))


def fixed_completions(prompts, eos):
    """A deterministic stand-in for sampling: each prompt's completion depends on the prompt only (2 to 6 tokens,
    one in three cut without EOS), so differently split runs see the same policy rows."""
    out = []
    for p in prompts:
        h = sum(p) + len(p)
        out.append([5 + (h * (i + 3)) % 60 for i in range(2 + h % 5)] + ([eos] if h % 3 else []))
    return out


class PartitionedHead:
    """A ZeRO-3-like LM head weight: `param`'s data is empty outside `gather()` and the whole `full` inside it, as
    DeepSpeed partitions a parameter. `entered` counts the gathers."""

    def __init__(self, full: torch.Tensor):
        self.full = full.detach().clone()
        self.param = torch.nn.Parameter(torch.empty(0, dtype=full.dtype))
        self.entered = 0

    def gather(self):
        head = self

        class Gather:
            def __enter__(self):
                head.entered += 1
                head.param.data = head.full

            def __exit__(self, *exc):
                head.param.data = torch.empty(0, dtype=head.full.dtype)

        return Gather()


def compile_devices() -> list:
    """Devices where torch.compile can run the compiled heads: CPU with a C++ compiler, CUDA when present (a skipped
    CPU entry when neither is)."""
    devices = []
    if shutil.which("g++") or shutil.which("c++"):
        devices.append("cpu")
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices or [pytest.param("cpu", marks=pytest.mark.skip(reason="no C++ compiler for torch.compile, no CUDA"))]
