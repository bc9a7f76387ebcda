"""Metric families: how `tirl eval` scores a task, the one place that knows each family (`METRIC_FAMILIES`, looked up
by `metric_family`). A task names its family (`tirl.data.tasks.TASK_INFO`); every job, report and command asks the
family what it needs, so a new family is one entry here plus its score functions.

    gsm8k      answer accuracy with lm-evaluation-harness's two filters, any of K correct, pass@k
    rouge      ROUGE F1 of each sample against the reference
    bleu       corpus BLEU and chrF
    valid_set  many-answer tasks (`tirl.data.many_answer`): precision, coverage, pass@k against the valid set
    none       no task score

The score functions themselves are the pure functions of `tirl.evaluation.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .metrics import (
    bleu,
    chrf,
    gsm8k_accuracy,
    gsm8k_correct,
    gsm8k_pass_at_k,
    pass_at_k,
    rouge,
    sentence_bleu,
    sentence_chrf,
    sentence_rouge,
    valid_set_scores,
)


def _no_columns(score: str) -> list[tuple[str, str]]:
    return []


# eq=False: each family is one object, compared by identity (its fields hold functions and a dict)
@dataclass(frozen=True, eq=False)
class MetricFamily:
    """One way of scoring a task's generations against its references.

    `scores(samples_per_prompt, refs)` scores one decoding pass (K texts per prompt, one reference per prompt) and
    `sample_scores(text, reference)` one generation; the module's `task_scores` and `sample_scores` call them for a
    family or its name. `labels` are the pass scores the reports show, each with its column heading, and `fractions`
    those of them that are shares in [0, 1] (written as percentages). `compare_columns(score)` gives the further
    columns of the sampled pass that `tirl compare`'s table shows beside `score`, as (key, heading).
    """

    name: str
    scores: Callable[[Sequence[Sequence[str]], Sequence[str]], dict]
    sample_scores: Callable[[str, str], dict]
    labels: dict[str, str] = field(default_factory=dict)
    fractions: frozenset[str] = frozenset()
    primary_score: str | None = None  # the pass score `tirl compare` plots by default (higher is better)
    sample_score: str | None = None  # the per-sample score `tirl rewards analyse` correlates rewards with
    right_or_wrong: bool = False  # `sample_score` is 1 for a right sample and 0 for a wrong one
    compare_columns: Callable[[str], list[tuple[str, str]]] = _no_columns
    # the reference is the prompt's valid-set specification: `tirl eval` scores each prompt once and adds the
    # held-out expert NLL and memorisation; `tirl compare` draws precision against coverage and pass@k
    many_answer: bool = False
    help: str = ""  # what it scores, in a few words: `tirl eval --help` lists each family with it


# --------------------------------------------------------------------------------------------------------------------
# The families' scores
# --------------------------------------------------------------------------------------------------------------------


def _flat(samples_per_prompt: Sequence[Sequence[str]], refs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Every sample, and its prompt's reference beside each."""
    preds = [s for samples in samples_per_prompt for s in samples]
    return preds, [r for samples, r in zip(samples_per_prompt, refs, strict=True) for _ in samples]


def _k(samples_per_prompt: Sequence[Sequence[str]]) -> int:
    """K of a pass: the fewest samples of any prompt."""
    return min((len(s) for s in samples_per_prompt), default=0)


def _gsm8k_scores(samples_per_prompt: Sequence[Sequence[str]], refs: Sequence[str]) -> dict:
    """`gsm8k_accuracy` over all prompt×sample pairs (the mean over samples); when K > 1 also `gsm8k_pass_at_k` and
    `pass_at_k`, the unbiased pass@k (flexible filter) for k = 1…K."""
    out = gsm8k_accuracy(*_flat(samples_per_prompt, refs))
    out.pop("n")
    k = _k(samples_per_prompt)
    if k > 1:
        out.update(gsm8k_pass_at_k(samples_per_prompt, refs))
        correct = [[gsm8k_correct(t, r)[1] for t in samples] for samples, r in zip(samples_per_prompt, refs, strict=True)]
        out["pass_at_k"] = [sum(pass_at_k(len(c), sum(c), j) for c in correct) / len(correct) for j in range(1, k + 1)]
    return out


def _gsm8k_sample(text: str, reference: str) -> dict:
    strict, flexible = gsm8k_correct(text, reference)
    return {"correct_strict": strict, "correct_flexible": flexible}


def _gsm8k_any_of_k(score: str) -> list[tuple[str, str]]:
    """Any of K correct, under the filter of `score` (accuracy_strict → pass_at_k_strict)."""
    return [(score.replace("accuracy", "pass_at_k"), "any of K correct")]


def _rouge_scores(samples_per_prompt: Sequence[Sequence[str]], refs: Sequence[str]) -> dict:
    """`rouge` over all prompt×sample pairs (the mean over samples)."""
    return rouge(*_flat(samples_per_prompt, refs))


def _bleu_scores(samples_per_prompt: Sequence[Sequence[str]], refs: Sequence[str]) -> dict:
    """Corpus `bleu` and `chrf` of the j-th samples of all prompts, averaged over j = 1…K: BLEU is a corpus statistic,
    so each sample index forms one corpus, as if K systems were scored."""
    k = _k(samples_per_prompt)
    corpora = [[samples[j] for samples in samples_per_prompt] for j in range(k)]
    return {"bleu": sum(bleu(c, refs) for c in corpora) / k, "chrf": sum(chrf(c, refs) for c in corpora) / k}


def _bleu_sample(text: str, reference: str) -> dict:
    return {"bleu": sentence_bleu(text, reference), "chrf": sentence_chrf(text, reference)}


def _valid_set_scores(samples_per_prompt: Sequence[Sequence[str]], refs: Sequence[str]) -> dict:
    """`valid_set_scores`, each reference being its prompt's many-answer task specification; pass@k when K > 1."""
    from ..data.many_answer import canonical_answer, valid_answers

    answers = [[canonical_answer(t, r) for t in samples] for samples, r in zip(samples_per_prompt, refs, strict=True)]
    out = valid_set_scores(answers, [len(valid_answers(r)) for r in refs])
    return out if _k(samples_per_prompt) > 1 else {key: v for key, v in out.items() if key != "pass_at_k"}


def _valid_set_sample(text: str, reference: str) -> dict:
    """`valid` and `answer`: the valid answer written canonically, or None."""
    from ..data.many_answer import canonical_answer

    answer = canonical_answer(text, reference)
    return {"valid": answer is not None, "answer": answer}


def _coverage_and_pass_at_k(score: str) -> list[tuple[str, str]]:
    return [("coverage", "coverage"), ("pass_at_K", "pass@K")]


def _nothing(*_) -> dict:
    return {}


# --------------------------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------------------------

GSM8K = MetricFamily(
    "gsm8k", _gsm8k_scores, _gsm8k_sample,
    labels={"accuracy_strict": "accuracy (strict `#### n`)", "accuracy_flexible": "accuracy (flexible, last number)",
            "pass_at_k_strict": "any of K correct (strict)", "pass_at_k_flexible": "any of K correct (flexible)",
            "answer_rate_strict": "has a `#### n` line"},
    fractions=frozenset({"accuracy_strict", "accuracy_flexible", "pass_at_k_strict", "pass_at_k_flexible",
                         "answer_rate_strict"}),
    primary_score="accuracy_flexible", sample_score="correct_flexible", right_or_wrong=True,
    compare_columns=_gsm8k_any_of_k,
    help="accuracy (lm-eval's strict `#### n` and flexible last-number filters) and, for K > 1, \"any of K correct\"",
)
ROUGE = MetricFamily(
    "rouge", _rouge_scores, sentence_rouge,
    labels={"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"},
    primary_score="rouge1", sample_score="rouge1", help="ROUGE-1/2/L/Lsum F1 (rouge-score, stemmed)",
)
BLEU = MetricFamily("bleu", _bleu_scores, _bleu_sample, labels={"bleu": "BLEU", "chrf": "chrF"},
                    primary_score="bleu", sample_score="bleu", help="sacreBLEU BLEU and chrF")
VALID_SET = MetricFamily(
    "valid_set", _valid_set_scores, _valid_set_sample,
    labels={"precision": "precision (valid samples)", "coverage": "coverage (distinct valid ÷ min(K, #valid))"},
    fractions=frozenset({"precision", "coverage"}),
    primary_score="precision", sample_score="valid", right_or_wrong=True,
    compare_columns=_coverage_and_pass_at_k,
    many_answer=True,
    help="many-answer tasks: precision (valid samples), coverage (distinct valid answers / min(K, |valid|)), "
    "pass@k for k = 1..K (unbiased estimator) and the held-out expert NLL",
)
NO_SCORE = MetricFamily("none", _nothing, _nothing, help="no task score: diversity only")
METRIC_FAMILIES: dict[str, MetricFamily] = {f.name: f for f in (GSM8K, ROUGE, BLEU, VALID_SET, NO_SCORE)}

# every family's pass scores with their headings, and those that are shares (a score name means one thing everywhere)
SCORE_LABELS: dict[str, str] = {k: v for f in METRIC_FAMILIES.values() for k, v in f.labels.items()}
FRACTION_SCORES: frozenset[str] = frozenset().union(*(f.fractions for f in METRIC_FAMILIES.values()))


def metric_family(family: str | MetricFamily) -> MetricFamily:
    """The `MetricFamily` named `family` (a family passes through); a one-line ValueError for an unknown name."""
    if isinstance(family, MetricFamily):
        return family
    if family not in METRIC_FAMILIES:
        raise ValueError(f"unknown metric family {family!r}; choose from {', '.join(METRIC_FAMILIES)}")
    return METRIC_FAMILIES[family]


def recorded_family(metrics: dict) -> MetricFamily:
    """The family a metrics.json was scored with; one that names none, or one unknown here, scores nothing."""
    return METRIC_FAMILIES.get(metrics.get("metric_family"), NO_SCORE)


def task_scores(family: str | MetricFamily, samples_per_prompt: Sequence[Sequence[str]],
                refs: Sequence[str]) -> dict:
    """The task scores of one decoding pass: K texts per prompt (K = 1 for greedy) against one reference per prompt,
    as `family` scores them (`MetricFamily.scores`)."""
    family = metric_family(family)
    if len(samples_per_prompt) != len(refs):
        raise ValueError(f"got {len(samples_per_prompt)} predictions but {len(refs)} references")
    return family.scores(samples_per_prompt, refs)


def sample_scores(family: str | MetricFamily, text: str, reference: str) -> dict:
    """The scores of ONE generation, stored beside it in generations.jsonl (e.g. to correlate rewards with task
    scores), as `family` scores it (`MetricFamily.sample_scores`)."""
    return metric_family(family).sample_scores(text, reference)
