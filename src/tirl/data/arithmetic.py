"""A GSM8k-style task generated in code: multi-step arithmetic word problems with worked answers ending `#### n`.

It needs no files, is deterministic for a seed, and its answers are checkable, so it is the task of last resort for
the embedded default and the task the tests train on. Train and test splits come from disjoint problem sets.
"""

from __future__ import annotations

import random

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira", "Liam", "Mona", "Noah"]
ITEMS = ["apples", "books", "stickers", "marbles", "coins", "pencils", "cards", "shells", "stamps", "cookies"]


def _problem(rng: random.Random) -> tuple[str, str, int]:
    """One (question, worked answer, final number); five templates of one to three steps."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        q = f"{name} has {a} {item}. {other} gives {name} {b} more. How many {item} does {name} have now?"
        steps = [f"{name} has {a} + {b} = {a + b} {item}."]
        ans = a + b
    elif kind == 1:
        a = rng.randint(20, 99)
        b = rng.randint(1, a - 1)
        q = f"{name} had {a} {item} and gave {b} of them to {other}. How many {item} does {name} have left?"
        steps = [f"{name} has {a} - {b} = {a - b} {item} left."]
        ans = a - b
    elif kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        q = f"{name} buys {a} boxes of {item}. Each box holds {b} {item}. How many {item} does {name} buy?"
        steps = [f"{name} buys {a} * {b} = {a * b} {item}."]
        ans = a * b
    elif kind == 3:
        a, b, c = rng.randint(5, 40), rng.randint(2, 9), rng.randint(1, 20)
        q = (
            f"{name} has {a} {item}. {other} has {b} times as many {item} as {name}, then loses {c} of them. "
            f"How many {item} does {other} have now?"
        )
        steps = [f"{other} has {a} * {b} = {a * b} {item}.", f"After losing {c}, {other} has {a * b} - {c} = {a * b - c} {item}."]
        ans = a * b - c
    else:
        per, k, extra = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 30)
        total = per * k
        q = (
            f"{name} shares {total} {item} equally among {k} friends and then finds {extra} more {item} for each "
            f"friend. How many {item} does each friend get?"
        )
        steps = [f"Each friend first gets {total} / {k} = {per} {item}.", f"Then each gets {per} + {extra} = {per + extra} {item}."]
        ans = per + extra
    return q, "\n".join(steps) + f"\n#### {ans}", ans


def generate(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """`n` distinct problems for `split` ("train" or "test"); the two splits never share a question."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set[str] = set()
    want_test = split == "test"
    while len(rows) < n:
        q, a, ans = _problem(rng)
        if q in seen:
            continue
        seen.add(q)
        # a hash of the question assigns it to a split, so the splits stay disjoint whatever n and seed are
        if (sum(map(ord, q)) % 5 == 0) != want_test:
            continue
        rows.append({"id": f"arith-{split}-{len(rows)}", "prompt": q, "completion": a, "reference": str(ans)})
    return rows
