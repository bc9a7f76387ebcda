"""The metric families: each scores what it says, is found by name, and tells every job what it needs."""

import json

import pytest

from tirl.data import TASK_INFO, task_metric
from tirl.evaluation.families import (
    FRACTION_SCORES,
    GSM8K,
    METRIC_FAMILIES,
    NO_SCORE,
    SCORE_LABELS,
    VALID_SET,
    metric_family,
    recorded_family,
    sample_scores,
    task_scores,
)

# one pass of two prompts, K = 2, that every family can score
SPEC = json.dumps({"task": "between", "low": 1, "high": 5})
PASSES = {
    "gsm8k": ([["#### 1", "#### 2"], ["#### 3", "3"]], ["1", "3"]),
    "rouge": ([["a b c", "a d"], ["x y", "x y z"]], ["a b c", "x y"]),
    "bleu": ([["a b c d", "w x y z"], ["the cat sat", "a cat"]], ["a b c d", "the cat sat"]),
    "valid_set": ([["2", "3"], ["9", "4"]], [SPEC, SPEC]),
    "none": ([["a", "b"], ["c", "d"]], ["a", "c"]),
}


def test_task_scores_per_family():
    g = task_scores("gsm8k", [["#### 1", "#### 2"], ["#### 3", "3"]], ["1", "3"])
    assert g["accuracy_strict"] == 0.5 and g["accuracy_flexible"] == 0.75 and g["pass_at_k_strict"] == 1.0
    assert "pass_at_k_strict" not in task_scores("gsm8k", [["#### 1"]], ["1"])
    b = task_scores("bleu", [["a b c d", "w x y z"]], ["a b c d"])
    assert b["bleu"] == pytest.approx(50.0)  # mean of the corpus BLEU of sample 1 (100) and sample 2 (0)
    assert set(task_scores("rouge", [["a"]], ["a"])) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert task_scores("none", [["a"]], ["a"]) == {}
    with pytest.raises(ValueError, match="unknown metric family"):
        task_scores("accuracy", [["a"]], ["a"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        task_scores("none", [["a"], ["b"]], ["a"])
    assert sample_scores("gsm8k", "#### 4", "4") == {"correct_strict": True, "correct_flexible": True}
    assert sample_scores("bleu", "a b c d", "a b c d")["bleu"] == pytest.approx(100.0)
    assert sample_scores("rouge", "a b", "a b")["rouge1"] == pytest.approx(100.0)


def test_a_family_is_found_by_its_name_and_only_there():
    assert set(METRIC_FAMILIES) == set(PASSES)
    assert all(metric_family(name).name == name for name in METRIC_FAMILIES)
    assert metric_family(GSM8K) is GSM8K
    with pytest.raises(ValueError, match="choose from gsm8k, rouge, bleu, valid_set, none"):
        metric_family("accuracy")
    # a metrics.json that names no family, or one unknown here, adds no column or picture
    assert recorded_family({"metric_family": "valid_set"}) is VALID_SET
    assert recorded_family({}) is NO_SCORE and recorded_family({"metric_family": "old"}) is NO_SCORE


@pytest.mark.parametrize("name", sorted(PASSES))
def test_each_family_scores_what_it_names(name):
    """Its primary score is among the scores of a pass and has a report column; its per-sample score is among the
    scores of a sample, 0 or 1 where it says samples are right or wrong."""
    family = METRIC_FAMILIES[name]
    texts, refs = PASSES[name]
    scores = task_scores(family, texts, refs)
    assert set(family.labels) <= set(scores) | {"pass_at_k_strict", "pass_at_k_flexible"}
    assert family.fractions <= set(family.labels)
    assert (family.primary_score is None) == (not scores)
    if family.primary_score:
        assert family.primary_score in scores and family.primary_score in family.labels
    for samples, ref in zip(texts, refs, strict=True):
        one = sample_scores(family, samples[0], ref)
        if family.sample_score is None:
            assert one == {}
            continue
        assert family.sample_score in one
        if family.right_or_wrong:
            assert isinstance(one[family.sample_score], bool)


def test_a_score_name_means_one_thing_in_every_family():
    """The reports look a score's heading and its scale up by its name alone."""
    for family in METRIC_FAMILIES.values():
        for score, label in family.labels.items():
            assert SCORE_LABELS[score] == label
            assert (score in family.fractions) == (score in FRACTION_SCORES)


def test_the_compare_table_columns_of_each_family():
    assert GSM8K.compare_columns("accuracy_strict") == [("pass_at_k_strict", "any of K correct")]
    assert VALID_SET.compare_columns("precision") == [("coverage", "coverage"), ("pass_at_K", "pass@K")]
    assert METRIC_FAMILIES["rouge"].compare_columns("rouge1") == []


def test_every_task_names_a_family():
    assert {info.metric for info in TASK_INFO.values()} <= set(METRIC_FAMILIES)
    assert task_metric("my_file.jsonl") in METRIC_FAMILIES


def test_tirl_eval_help_lists_every_family_with_its_help_line():
    from tirl.cli.eval import build_parser
    from tirl.evaluation.families import METRIC_FAMILIES

    text = " ".join(build_parser().format_help().split())
    for name, family in METRIC_FAMILIES.items():
        assert family.help, f"the {name} family has no help line"
        assert f"{name} {' '.join(family.help.split())}" in text
