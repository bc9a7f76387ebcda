"""Evaluation: sampling K completions per prompt, task scores, diversity, and reading and comparing evaluations.

Public API (stable; other parts of `tirl` build on it):

- sampling (`tirl.evaluation.sampling`, on `tirl.generation`): `sample`, `iter_samples`, `SamplingSettings`, `Sample`,
  `encode_prompt`
- metrics (`tirl.evaluation.metrics`, pure functions): `gsm8k_extract`, `gsm8k_correct`, `gsm8k_accuracy`,
  `gsm8k_pass_at_k`, `rouge`, `bleu`, `chrf`, `self_bleu`, `distinct_n`, `token_entropy`, `mean_token_entropy`,
  `diversity_scores`
- metric families (`tirl.evaluation.families`): `MetricFamily`, `METRIC_FAMILIES`, `metric_family`, `task_scores`,
  `sample_scores`
- reports (`tirl.evaluation.report`): `report_markdown`, `find_evaluations`, `compare_table`, `plot_compare`

The job that runs an evaluation and writes its files (`EvalSettings`, `run_eval`, `read_generations`) is
`tirl.jobs.eval`. The sampling module imports torch/transformers; it loads on first use so `import tirl.evaluation`
and the metrics stay light.
"""

from .families import METRIC_FAMILIES, MetricFamily, metric_family, sample_scores, task_scores
from .metrics import (
    bleu,
    chrf,
    distinct_n,
    diversity_scores,
    gsm8k_accuracy,
    gsm8k_correct,
    gsm8k_extract,
    gsm8k_normalize,
    gsm8k_pass_at_k,
    mean_token_entropy,
    rouge,
    self_bleu,
    token_entropy,
)

_LAZY = {
    "sample": "sampling",
    "iter_samples": "sampling",
    "SamplingSettings": "sampling",
    "Sample": "sampling",
    "encode_prompt": "sampling",
    "find_evaluations": "report",
    "compare_table": "report",
    "plot_compare": "report",
    "report_markdown": "report",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = [
    "METRIC_FAMILIES",
    "MetricFamily",
    "bleu",
    "chrf",
    "distinct_n",
    "diversity_scores",
    "gsm8k_accuracy",
    "gsm8k_correct",
    "gsm8k_extract",
    "gsm8k_normalize",
    "gsm8k_pass_at_k",
    "mean_token_entropy",
    "metric_family",
    "rouge",
    "sample_scores",
    "self_bleu",
    "task_scores",
    "token_entropy",
    *_LAZY,
]
