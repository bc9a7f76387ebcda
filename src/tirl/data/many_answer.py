"""Tasks with many right answers and a known expert, generated in code (docs/evaluation.md, many-answer tasks).

Each prompt has a valid set of answers that can be enumerated, and each training completion is drawn uniformly from
that set (`completions_per_prompt` draws per prompt, with replacement), so the expert is exactly uniform over the valid
answers. That is what lets an evaluation measure diversity where it has a right answer: the fraction of samples that
are valid (precision), how much of the valid set K samples reach (coverage), pass@k, and the held-out expert NLL,
which equals the forward KL to the expert plus log|valid| exactly (`tirl.evaluation.metrics`).

    sum-pairs   "Write two numbers from 1 to M that add up to N, as a + b."             answers "a + b"
                valid: every (a, b) with 1 ≤ a, b ≤ M and a + b = N (a + b and b + a are two answers); 2 to 25
    countdown   "Make N from a, b and c, each used once, with + and -, as x + y - z."   answers "x + y - z"
                valid: every order of a, b, c with + or − between them (left to right) that equals N; 2 to 6

A row's `reference` is its prompt's specification as JSON (`{"task": ..., ...}`): `valid_answers(reference)` lists the
valid set and `canonical_answer(text, reference)` reads a generation (None when it is not a valid answer). Train and
test prompts are disjoint (a hash of the specification assigns each to a split).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections.abc import Callable

MANY_ANSWER_TASKS = ("sum-pairs", "countdown", "pick-two", "between")
COMPLETIONS_PER_PROMPT = 4


def _in_split(spec: dict, split: str) -> bool:
    """A stable split of prompt specifications: one in five is a test prompt."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).digest()
    return (digest[0] % 5 == 0) == (split == "test")


# --------------------------------------------------------------------------------------------------------------------
# sum-pairs


def _sum_pairs_spec(rng: random.Random) -> dict:
    n = rng.randint(6, 45)
    # M between ⌊n/2⌋ + 1 and n − 1: 2M − N + 1 valid pairs, from 2 to 25
    m = rng.randint(n // 2 + 1, min(n - 1, n // 2 + 12))
    return {"task": "sum-pairs", "n": n, "max": m}


def _sum_pairs_valid(spec: dict) -> list[str]:
    n, m = spec["n"], spec["max"]
    return [f"{a} + {n - a}" for a in range(max(1, n - m), min(m, n - 1) + 1)]


def _sum_pairs_prompt(spec: dict) -> str:
    return f"Write two numbers from 1 to {spec['max']} that add up to {spec['n']}, as a + b."


_PAIR = re.compile(r"^([0-9]+)\s*\+\s*([0-9]+)$")


def _sum_pairs_read(text: str, spec: dict) -> str | None:
    m = _PAIR.match(text)
    if not m:
        return None
    a, b = int(m.group(1)), int(m.group(2))
    ok = 1 <= a <= spec["max"] and 1 <= b <= spec["max"] and a + b == spec["n"]
    return f"{a} + {b}" if ok else None


# --------------------------------------------------------------------------------------------------------------------
# countdown


def _countdown_expressions(numbers: list[int]) -> dict[str, int]:
    """Every expression "x o y o z" over the orders of `numbers`, o ∈ {+, −}, and its value (left to right)."""
    out = {}
    for x, y, z in itertools.permutations(numbers):
        for o1, o2 in itertools.product("+-", repeat=2):
            value = x + y if o1 == "+" else x - y
            value = value + z if o2 == "+" else value - z
            out[f"{x} {o1} {y} {o2} {z}"] = value
    return out


def _countdown_spec(rng: random.Random) -> dict:
    while True:
        numbers = rng.sample(range(1, 30), 3)
        target = rng.choice(list(_countdown_expressions(numbers).values()))
        spec = {"task": "countdown", "numbers": numbers, "n": target}
        if target > 0 and len(_countdown_valid(spec)) >= 2:
            return spec


def _countdown_valid(spec: dict) -> list[str]:
    return sorted(e for e, v in _countdown_expressions(spec["numbers"]).items() if v == spec["n"])


def _countdown_prompt(spec: dict) -> str:
    a, b, c = spec["numbers"]
    return f"Make {spec['n']} from {a}, {b} and {c}, each used once, with + and -, as x + y - z."


_TRIPLE = re.compile(r"^([0-9]+)\s*([+-])\s*([0-9]+)\s*([+-])\s*([0-9]+)$")


def _countdown_read(text: str, spec: dict) -> str | None:
    m = _TRIPLE.match(text)
    if not m:
        return None
    answer = f"{m.group(1)} {m.group(2)} {m.group(3)} {m.group(4)} {m.group(5)}"
    return answer if answer in set(_countdown_valid(spec)) else None


# --------------------------------------------------------------------------------------------------------------------
# pick-two

WORDS = ("apple", "river", "stone", "cloud", "lamp", "horse", "bread", "chair", "glass", "paper", "train", "music",
         "ocean", "tiger", "candle", "garden", "mirror", "pencil", "rocket", "window", "forest", "bottle", "castle",
         "dragon", "planet", "silver", "winter", "yellow", "ladder", "basket", "button", "carpet", "dinner", "engine",
         "finger", "guitar", "hammer", "island", "jacket", "kitten", "letter", "market", "needle", "orange", "pillow",
         "rabbit", "saddle", "ticket", "violin", "wallet")


def _pick_two_spec(rng: random.Random) -> dict:
    return {"task": "pick-two", "words": rng.sample(WORDS, rng.randint(3, 6))}


def _pick_two_valid(spec: dict) -> list[str]:
    return [f"{a}, {b}" for a, b in itertools.permutations(spec["words"], 2)]


def _pick_two_prompt(spec: dict) -> str:
    return f"Name two different words from this list, as a, b: {', '.join(spec['words'])}."


_TWO_WORDS = re.compile(r"^([a-z]+)\s*,\s*([a-z]+)$")


def _pick_two_read(text: str, spec: dict) -> str | None:
    m = _TWO_WORDS.match(text.lower())
    if not m or m.group(1) == m.group(2) or not {m.group(1), m.group(2)} <= set(spec["words"]):
        return None
    return f"{m.group(1)}, {m.group(2)}"


# --------------------------------------------------------------------------------------------------------------------
# between


def _between_spec(rng: random.Random) -> dict:
    low = rng.randint(1, 80)
    return {"task": "between", "low": low, "high": low + rng.randint(3, 21)}


def _between_valid(spec: dict) -> list[str]:
    return [str(x) for x in range(spec["low"] + 1, spec["high"])]


def _between_prompt(spec: dict) -> str:
    return f"Write a whole number greater than {spec['low']} and less than {spec['high']}."


_NUMBER = re.compile(r"^[0-9]+$")  # ASCII digits only: str.isdigit() also accepts "²", which int() refuses


def _between_read(text: str, spec: dict) -> str | None:
    if not _NUMBER.match(text):
        return None
    return text if spec["low"] < int(text) < spec["high"] and text == str(int(text)) else None


# --------------------------------------------------------------------------------------------------------------------
# The tasks


_TASKS: dict[str, tuple[Callable, Callable, Callable, Callable]] = {
    # name: (draw a specification, its valid answers, its prompt, read a generation)
    "sum-pairs": (_sum_pairs_spec, _sum_pairs_valid, _sum_pairs_prompt, _sum_pairs_read),
    "countdown": (_countdown_spec, _countdown_valid, _countdown_prompt, _countdown_read),
    "pick-two": (_pick_two_spec, _pick_two_valid, _pick_two_prompt, _pick_two_read),
    "between": (_between_spec, _between_valid, _between_prompt, _between_read),
}


def _spec(reference: str | dict) -> dict:
    spec = json.loads(reference) if isinstance(reference, str) else reference
    if not isinstance(spec, dict) or spec.get("task") not in _TASKS:
        raise ValueError(f"not a many-answer task specification: {reference!r}")
    return spec


def valid_answers(reference: str | dict) -> list[str]:
    """The valid set of a prompt, from its row's `reference` (the JSON specification), in a fixed order."""
    spec = _spec(reference)
    return _TASKS[spec["task"]][1](spec)


def canonical_answer(text: str, reference: str | dict) -> str | None:
    """The valid answer a generation gives, written as `valid_answers` writes it, or None when the generation is not
    a valid answer. Surrounding whitespace and one final full stop are ignored; anything else is read as written."""
    spec = _spec(reference)
    text = text.strip()
    text = text[:-1].rstrip() if text.endswith(".") else text
    return _TASKS[spec["task"]][3](text, spec)


SPLITS = ("train", "validation", "test")
# A validation prompt is a training-distribution prompt outside the first TRAIN_PROMPTS training prompts of the same
# seed: a run on up to TRAIN_PROMPTS × COMPLETIONS_PER_PROMPT rows (the default train split) never trains on one, so
# it can choose a checkpoint by them without looking at the test prompts.
TRAIN_PROMPTS = 200


def _specs(task: str, split: str, n: int, seed: int, exclude: frozenset[str] = frozenset(),
           ) -> tuple[list[dict], random.Random]:
    """`n` distinct prompt specifications of `split`, and the generator that drew them (the completions' draws
    continue its stream)."""
    draw_spec = _TASKS[task][0]
    rng = random.Random(f"{task}:{split}:{seed}")
    region = "test" if split == "test" else "train"  # validation prompts come from the training half of the hash
    specs, seen = [], set(exclude)
    attempts = 0
    while len(specs) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"the {task!r} task has fewer than {n} distinct {split} prompts")
        spec = draw_spec(rng)
        key = json.dumps(spec, sort_keys=True)
        if key in seen or not _in_split(spec, region):
            continue
        seen.add(key)
        specs.append(spec)
    return specs, rng


def generate(task: str, split: str = "train", n: int | None = None, seed: int = 0,
             completions_per_prompt: int = COMPLETIONS_PER_PROMPT) -> list[dict]:
    """Rows of a many-answer task: `n` distinct prompts of `split` (default 200 train, 50 validation and test), and
    for the train split `completions_per_prompt` rows per prompt whose completions are drawn uniformly from its valid
    set (with replacement); validation and test rows carry one valid answer as their completion. Validation prompts
    are drawn like training prompts but never among the first `TRAIN_PROMPTS` training prompts of the same seed.
    Deterministic for a seed."""
    if task not in _TASKS:
        raise ValueError(f"unknown many-answer task {task!r}; choose from {', '.join(_TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    _, valid_of, prompt_of, _ = _TASKS[task]
    n = n if n is not None else (TRAIN_PROMPTS if split == "train" else 50)
    exclude: frozenset[str] = frozenset()
    if split == "validation":
        exclude = frozenset(json.dumps(s, sort_keys=True) for s in _specs(task, "train", TRAIN_PROMPTS, seed)[0])
    specs, rng = _specs(task, split, n, seed, exclude)
    draws = completions_per_prompt if split == "train" else 1
    rows = []
    for i, spec in enumerate(specs):
        valid = valid_of(spec)
        reference = json.dumps(spec, sort_keys=True)
        for j in range(draws):
            rows.append({"id": f"{task}-{split}-{i}-{j}", "prompt": prompt_of(spec), "completion": rng.choice(valid),
                         "reference": reference})
    return rows


__all__ = ["COMPLETIONS_PER_PROMPT", "MANY_ANSWER_TASKS", "SPLITS", "TRAIN_PROMPTS", "canonical_answer", "generate", "valid_answers"]
