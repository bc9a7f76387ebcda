"""A known-expert task: a probabilistic finite-state grammar whose exact sequence distribution p*(y) is known.

With the expert's distribution known, imitation quality can be measured exactly rather than through a task proxy:
the support of p* is finite (a few thousand strings), so for a model q we can enumerate every valid string y and get

    forward KL      KL(p* ‖ q)  = Σ_y p*(y) · (log p*(y) − log q(y))          (how well q covers the expert)
    validity mass   V(q)        = Σ_{y ∈ supp p*} q(y)                      (probability q generates a valid string)
    reverse KL      KL(q̃ ‖ p*)  = Σ_y q̃(y) · (log q̃(y) − log p*(y)),  q̃ = q restricted to supp p*, renormalised

(the unrestricted reverse KL is infinite as soon as q puts any mass outside the support; 1 − V(q) is that mass).
Compounding error is read from samples of q: the fraction still inside the grammar after t generated symbols.

The grammar: states emit one of a few symbols (letters) with fixed probabilities and move to a next state; some
states may stop (emit EOS). p* is the grammar's distribution conditioned on strings of at most `max_len` symbols
(p*(y) = p_grammar(y) / Z, Z = the grammar's mass on those strings), so it sums to one over the enumerated support;
`sample` draws from it by rejection.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

EOS = "$"  # the grammar's own stop symbol in the tables below; strings themselves never contain it


@dataclass
class Grammar:
    """transitions[state] = list of (symbol, next_state, weight); symbol EOS stops. Start state 0."""

    transitions: dict[int, list[tuple[str, int, float]]]
    max_len: int = 8
    _support: dict[str, float] | None = field(default=None, repr=False)

    def _options(self, state: int) -> list[tuple[str, int, float]]:
        opts = self.transitions[state]
        total = sum(w for _, _, w in opts)
        return [(s, n, w / total) for s, n, w in opts]

    def support(self) -> dict[str, float]:
        """Every string with p*(y) > 0 and its exact probability (the probabilities sum to 1)."""
        if self._support is None:
            raw: dict[str, float] = {}
            stack = [("", 0, 1.0)]
            while stack:
                prefix, state, p = stack.pop()
                for sym, nxt, w in self._options(state):
                    if sym == EOS:
                        raw[prefix] = raw.get(prefix, 0.0) + p * w
                    elif len(prefix) < self.max_len:
                        stack.append((prefix + sym, nxt, p * w))
            z = sum(raw.values())
            self._support = {y: p / z for y, p in raw.items()}
        return self._support

    def logprob(self, y: str) -> float:
        """log p*(y) (−inf outside the support)."""
        p = self.support().get(y, 0.0)
        return math.log(p) if p > 0 else -math.inf

    def sample(self, n: int, seed: int = 0) -> list[str]:
        """n strings from p*, by running the grammar and rejecting strings longer than `max_len`."""
        rng = random.Random(seed)
        out = []
        while len(out) < n:
            prefix, state = "", 0
            while len(prefix) <= self.max_len:
                opts = self._options(state)
                sym, nxt, _ = rng.choices(opts, weights=[w for *_, w in opts])[0]
                if sym == EOS:
                    out.append(prefix)
                    break
                prefix, state = prefix + sym, nxt
        return out


def default_grammar(max_len: int = 8) -> Grammar:
    """A small grammar with branching, long-range structure (a bracket must be closed) and uneven probabilities.

    1,887 valid strings of up to 8 symbols over the letters a–f (with the default `max_len`).
    """
    return Grammar(
        transitions={
            0: [("a", 1, 0.5), ("b", 2, 0.3), ("c", 3, 0.2)],
            1: [("a", 1, 0.3), ("d", 2, 0.3), ("e", 4, 0.2), (EOS, 0, 0.2)],
            2: [("b", 1, 0.4), ("c", 3, 0.4), (EOS, 0, 0.2)],
            3: [("f", 4, 0.6), ("a", 2, 0.4)],  # an "open bracket": must reach 4 before stopping
            4: [("e", 5, 0.5), ("d", 1, 0.3), (EOS, 0, 0.2)],
            5: [("a", 1, 0.4), ("b", 2, 0.4), (EOS, 0, 0.2)],
        },
        max_len=max_len,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Exact imitation metrics


def forward_kl(p_logprobs: Sequence[float], q_logprobs: Sequence[float]) -> float:
    """KL(p* ‖ q) = Σ p*(y)(log p*(y) − log q(y)) over the support of p* (both given as log-probabilities)."""
    return sum(math.exp(lp) * (lp - lq) for lp, lq in zip(p_logprobs, q_logprobs, strict=True))


def validity_mass(q_logprobs: Sequence[float]) -> float:
    """Σ_{y ∈ supp p*} q(y): the probability that q generates a valid string."""
    return sum(math.exp(lq) for lq in q_logprobs)


def reverse_kl_on_support(p_logprobs: Sequence[float], q_logprobs: Sequence[float]) -> float:
    """KL(q̃ ‖ p*) with q̃ = q restricted to the support of p* and renormalised."""
    log_mass = math.log(validity_mass(q_logprobs))
    return sum(math.exp(lq - log_mass) * (lq - log_mass - lp) for lp, lq in zip(p_logprobs, q_logprobs, strict=True))


def survival_by_length(grammar: Grammar, samples: Sequence[str], max_len: int | None = None) -> list[float]:
    """For t = 1..max_len: among samples with at least t symbols, the fraction whose first t symbols are still a
    prefix of some valid string (compounding error shows as a curve that falls with t)."""
    max_len = max_len or grammar.max_len
    prefixes = {s[:k] for s in grammar.support() for k in range(len(s) + 1)}
    out = []
    for t in range(1, max_len + 1):
        long_enough = [s for s in samples if len(s) >= t]
        out.append(sum(s[:t] in prefixes for s in long_enough) / len(long_enough) if long_enough else math.nan)
    return out
