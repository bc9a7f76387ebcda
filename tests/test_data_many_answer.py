"""tirl.data.many_answer: enumerable valid sets, an exactly uniform expert, canonical answers, disjoint splits."""

import collections
import json

import pytest

from tirl.data import load_rows
from tirl.data import many_answer as M


@pytest.mark.parametrize("task", M.MANY_ANSWER_TASKS)
def test_every_completion_is_valid_and_splits_are_disjoint(task):
    train, test = M.generate(task, "train", n=60), M.generate(task, "test", n=20)
    assert len(train) == 60 * M.COMPLETIONS_PER_PROMPT and len(test) == 20
    for r in train + test:
        assert r["completion"] in M.valid_answers(r["reference"])
        assert M.canonical_answer(r["completion"], r["reference"]) == r["completion"]
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert M.generate(task, "train", n=60) == train  # deterministic for a seed
    assert M.generate(task, "train", n=60, seed=1) != train


def test_valid_sets_by_hand():
    assert M.valid_answers({"task": "sum-pairs", "n": 7, "max": 5}) == ["2 + 5", "3 + 4", "4 + 3", "5 + 2"]
    assert M.valid_answers({"task": "between", "low": 3, "high": 7}) == ["4", "5", "6"]
    assert M.valid_answers({"task": "pick-two", "words": ["a", "b", "c"]}) == ["a, b", "a, c", "b, a", "b, c", "c, a",
                                                                              "c, b"]
    # left to right: 1 − 3 + 2 = 0 as well
    assert M.valid_answers({"task": "countdown", "numbers": [1, 2, 3], "n": 0}) == [
        "1 + 2 - 3", "1 - 3 + 2", "2 + 1 - 3", "2 - 3 + 1", "3 - 1 - 2", "3 - 2 - 1"]


@pytest.mark.parametrize("text,answer", [
    ("river, lamp", "river, lamp"), (" River,lamp. ", "river, lamp"), ("lamp, lamp", None), ("lamp, stone", None),
    ("river lamp", None), ("river, lamp, stone", None)])
def test_reading_a_generation(text, answer):
    spec = json.dumps({"task": "pick-two", "words": ["river", "lamp", "cloud"]})
    assert M.canonical_answer(text, spec) == answer


@pytest.mark.parametrize("text,answer", [("5", "5"), ("05", None), ("7", None), ("3", None), ("five", None)])
def test_reading_a_number(text, answer):
    assert M.canonical_answer(text, {"task": "between", "low": 3, "high": 7}) == answer


def test_the_expert_is_uniform_over_the_valid_set():
    """Completions are i.i.d. uniform draws: over many draws of one prompt every valid answer is about equally likely
    (a chi-square test at 0.1% would fail a biased sampler)."""
    spec = {"task": "pick-two", "words": ["a", "b", "c", "d"]}
    rng = __import__("random").Random(0)
    valid = M.valid_answers(spec)
    counts = collections.Counter(rng.choice(valid) for _ in range(12000))
    expected = 12000 / len(valid)
    chi2 = sum((counts[v] - expected) ** 2 / expected for v in valid)
    assert set(counts) == set(valid) and chi2 < 32.9  # 11 degrees of freedom, p = 0.001


def test_load_rows_keeps_whole_prompts():
    rows = load_rows("pick-two", split="train", limit=10)
    prompts = collections.Counter(r["prompt"] for r in rows)
    assert len(rows) == 10 and sorted(prompts.values()) == [2, 4, 4]  # two whole prompts, then the third's first two


def test_unknown_task_and_split():
    with pytest.raises(ValueError, match="unknown many-answer task 'x'"):
        M.generate("x")
    with pytest.raises(ValueError, match="split must be one of train, validation, test"):
        M.generate("between", "dev")


@pytest.mark.parametrize("task", M.MANY_ANSWER_TASKS)
@pytest.mark.parametrize("text", ["5²", "²", "٣", "1² + 3", "3 + ٤", "7 - 2 + ³", "¹⁰", "½", "Ⅻ"])
def test_a_generation_with_digits_int_cannot_read_is_invalid_not_an_error(task, text):
    """str.isdigit() and regex \\d accept characters int() refuses ("²") or reads as other digits ("٣"): a model's
    output never stops an evaluation, and only ASCII digits count."""
    spec = M.generate(task, "test", n=1)[0]["reference"]
    assert M.canonical_answer(text, spec) is None


@pytest.mark.parametrize("task", M.MANY_ANSWER_TASKS)
def test_validation_prompts_are_training_distribution_prompts_no_training_run_saw(task):
    """The validation split chooses a checkpoint without the test prompts and without the run's own training prompts:
    drawn from the training half, never among the first TRAIN_PROMPTS training prompts of the same seed."""
    for seed in (0, 3):
        validation = M.generate(task, "validation", n=40, seed=seed)
        assert len(validation) == 40 and len({r["reference"] for r in validation}) == 40
        train = {r["reference"] for r in M.generate(task, "train", n=M.TRAIN_PROMPTS, seed=seed)}
        test = {r["reference"] for r in M.generate(task, "test", seed=seed)}
        assert not {r["reference"] for r in validation} & (train | test)
        assert all(M._in_split(json.loads(r["reference"]), "train") for r in validation)
        assert all(r["completion"] in M.valid_answers(r["reference"]) for r in validation)
    assert M.generate(task, "validation", n=10, seed=1) == M.generate(task, "validation", n=10, seed=1)
