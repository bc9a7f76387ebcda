"""The known-expert grammar and its exact imitation metrics."""

import math
from collections import Counter

import pytest

from tirl.data.grammar import (
    default_grammar,
    forward_kl,
    reverse_kl_on_support,
    survival_by_length,
    validity_mass,
)


def test_support_is_a_distribution_and_sampling_follows_it():
    g = default_grammar()
    sup = g.support()
    assert len(sup) == 1887 and abs(sum(sup.values()) - 1) < 1e-12
    assert max(map(len, sup)) == g.max_len and all(set(y) <= set("abcdef") for y in sup)
    n = 20000
    counts = Counter(g.sample(n, seed=3))
    for y, p in sorted(sup.items(), key=lambda kv: -kv[1])[:5]:
        assert abs(counts[y] / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert g.logprob("c") == -math.inf  # "c" opens a bracket that must be closed


def test_exact_metrics_by_hand():
    p = [math.log(0.5), math.log(0.25), math.log(0.25)]
    assert forward_kl(p, p) == pytest.approx(0.0) and validity_mass(p) == pytest.approx(1.0)
    assert reverse_kl_on_support(p, p) == pytest.approx(0.0, abs=1e-12)
    q = [math.log(0.25), math.log(0.25), math.log(0.25)]  # a quarter of q's mass is outside the support
    assert validity_mass(q) == pytest.approx(0.75)
    assert forward_kl(p, q) == pytest.approx(0.5 * math.log(2))
    # q restricted to the support is uniform (1/3 each): (1/3)·log((1/3)/(1/2)) + 2·(1/3)·log((1/3)/(1/4))
    assert reverse_kl_on_support(p, q) == pytest.approx(math.log(2 / 3) / 3 + 2 * math.log(4 / 3) / 3, abs=1e-12)


def test_survival_by_length():
    g = default_grammar()
    assert survival_by_length(g, g.sample(200, seed=1))[:3] == [1.0, 1.0, 1.0]
    curve = survival_by_length(g, ["ad", "cc", "a"], max_len=3)  # "cc" leaves the grammar at its 2nd symbol
    assert curve[0] == 1.0 and curve[1] == 0.5 and math.isnan(curve[2])
