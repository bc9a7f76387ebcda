"""Do rewards track quality? Rank correlations, preference accuracy, demonstration pairs, the analysis table.

The statistics of `tirl rewards analyse` (docs/method.md §4; the job that samples, scores and writes is
`tirl.jobs.analyse`): Spearman and Pearson correlation of R with a task score, overall and within each prompt (which
removes prompt difficulty), preference accuracy on chosen/rejected pairs (R_chosen > R_rejected, ties one half), and
the same for the sequence log-likelihood Σ log π, the reference a reward must beat.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence

from ..data.rows import load_rows, to_trl
from ..evaluation.families import MetricFamily, metric_family
from .extraction import RewardModel, ScoreSettings, score


def preference_accuracy(reward: RewardModel, rows: Sequence[dict], settings: ScoreSettings | None = None) -> dict:
    """How often R(prompt, chosen) > R(prompt, rejected) under `reward` over rows in TRL's preference format.

    Rows have `prompt`, `chosen` and `rejected` (strings or message lists). Ties count as half, as is usual for
    pairwise accuracy. The same figure for the sequence log-likelihood Σ log π is reported alongside, as the
    reference a reward must beat to be more than a likelihood.
    """
    pairs = [(r["prompt"], r["chosen"]) for r in rows] + [(r["prompt"], r["rejected"]) for r in rows]
    scored = score(reward, pairs, settings)
    n = len(rows)
    chosen, rejected = scored[:n], scored[n:]
    return {
        "n": n,
        "gamma": reward.objective.iq_gamma,
        "accuracy": pairwise_accuracy([c.reward for c in chosen], [r.reward for r in rejected]),
        "accuracy_logprob": pairwise_accuracy([c.logprob for c in chosen], [r.logprob for r in rejected]),
        "mean_margin": sum(c.reward - r.reward for c, r in zip(chosen, rejected, strict=True)) / max(n, 1),
    }


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Fraction of pairs with chosen > rejected; a tie counts one half."""
    if len(chosen) != len(rejected):
        raise ValueError("chosen and rejected must have the same length")
    if not chosen:
        return math.nan
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True))
    return wins / len(chosen)


def _ranks(x: Sequence[float]) -> list[float]:
    """Ranks starting at 1, ties given their average rank (as Spearman's coefficient requires)."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; NaN when either variable is constant (no correlation can be measured)."""
    if len(x) != len(y):
        raise ValueError("x and y must have the same length")
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson's r of the (tie-averaged) ranks."""
    return pearson(_ranks(x), _ranks(y))


def within_prompt_spearman(groups: dict[int, list[tuple[float, float]]]) -> tuple[float, int]:
    """Mean Spearman ρ over prompts whose samples vary in both variables, and how many prompts that was."""
    values = []
    for pairs in groups.values():
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        if len(pairs) > 1 and len(set(xs)) > 1 and len(set(ys)) > 1:
            values.append(spearman(xs, ys))
    return (statistics.fmean(values) if values else math.nan), len(values)


def correlations(records: list[dict], score: list[float], values: list[float]) -> dict:
    """Spearman and Pearson correlation of `values` with `score` over all records, and Spearman within each prompt
    (records grouped by `prompt_index`)."""
    groups: dict[int, list[tuple[float, float]]] = {}
    for rec, v, y in zip(records, values, score, strict=True):
        groups.setdefault(rec.get("prompt_index", 0), []).append((v, y))
    within, n_prompts = within_prompt_spearman(groups)
    return {"spearman": spearman(values, score), "pearson": pearson(values, score),
            "spearman_within_prompt": within, "prompts_with_variation": n_prompts}


def demonstration_pairs(records: list[dict], score: list[float], family: str | MetricFamily, dataset: str, split: str,
                        tokenizer) -> list[dict]:
    """Preference rows from the task itself: chosen = the dataset's reference completion of a prompt, rejected = one
    of the model's samples for it (a family whose samples are right or wrong, such as GSM8k's: only wrong ones; other
    families: every sample). Rendered as training renders them (`to_trl`), so prompt and completion templates match
    what the model was trained on."""
    only_wrong = metric_family(family).right_or_wrong
    key = lambda prompt: prompt if isinstance(prompt, str) else json.dumps(prompt)  # noqa: E731
    references = {key(r["prompt"]): r for r in load_rows(dataset, split=split)}
    rows, missing = [], 0
    for rec, y in zip(records, score, strict=True):
        ref = references.get(key(rec["prompt"]))
        if ref is None:
            missing += 1
            continue
        if only_wrong and y > 0.5:
            continue
        chosen = to_trl([{"prompt": ref["prompt"], "completion": ref["completion"]}], tokenizer)[0]
        rejected = to_trl([{"prompt": ref["prompt"], "completion": rec["text"]}], tokenizer)[0]
        rows.append({"id": rec.get("id"), "prompt": chosen["prompt"], "chosen": chosen["completion"],
                     "rejected": rejected["completion"]})
    if not rows:
        raise ValueError(f"no demonstration pairs: {missing} completions had no reference in {dataset}/{split}, "
                         "the rest were correct")
    return rows


def _f(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _known(value) -> str:
    return "unknown" if value is None else str(value)


def analysis_markdown(result: dict) -> str:
    st = result["settings"]
    lines = [
        "# Reward analysis",
        "",
        f"{result['num_completions']} sampled completions of {result['num_prompts']} {st['dataset']} prompts "
        + (f"({result['skipped_without_tokens']} without a token skipped) " if result.get("skipped_without_tokens")
           else "")
        + f"(K = {_known(st['samples'])}, T = {_known(st['temperature'])}, at most "
        f"{_known(st.get('max_new_tokens'))} new tokens"
        + (f"; sampling settings read from {result['sampling_read_from']}" if st.get("generations") else "")
        + f"); per-completion score: {result['sample_score']} "
        f"(mean {result['mean_sample_score']:.3f}); γ = "
        + (str(st["gamma"]) if st["gamma"] is not None else "each run's own") + "; V in each run's own form.",
        "",
        "| model | V | Spearman(R, score) | Pearson(R, score) | Spearman within prompt | Spearman(R/len) | "
        "Spearman(Σ log π) | within prompt (Σ log π) | Spearman(mean log π) | preference acc. (R) | "
        "preference acc. (Σ log π) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, e in result["models"].items():
        pref = e.get("preference", {})
        lines.append(
            f"| {label} | {e.get('iq_value', 'logits')} | {_f(e['reward']['spearman'])} | {_f(e['reward']['pearson'])} | "
            f"{_f(e['reward']['spearman_within_prompt'])} ({e['reward']['prompts_with_variation']} prompts) | "
            f"{_f(e['reward_per_token']['spearman'])} | {_f(e['logprob']['spearman'])} | "
            f"{_f(e['logprob']['spearman_within_prompt'])} | "
            f"{_f(e['logprob_per_token']['spearman'])} | {_f(pref.get('accuracy'))} | {_f(pref.get('accuracy_logprob'))} |"
        )
    if any("mean_R_correct" in e for e in result["models"].values()):
        lines += ["", "| model | mean R, correct | mean R, wrong |", "|---|---|---|"]
        lines += [f"| {label} | {_f(e.get('mean_R_correct'))} | {_f(e.get('mean_R_wrong'))} |"
                  for label, e in result["models"].items()]
    if st.get("preference"):
        n = next((e["preference"]["n"] for e in result["models"].values() if "preference" in e), 0)
        source = ("demonstrations: the reference completion (chosen) vs a wrong sample of the same prompt (rejected)"
                  if st["preference"] == "demonstrations" else st["preference"])
        lines += ["", f"Preference pairs: {n} from {source} (ties count one half)."]
    correctness = any("mean_R_correct" in e for e in result["models"].values())
    plot = "`reward_hist_*.png` (R of correct vs wrong)" if correctness else "`reward_scatter_*.png` (R vs score)"
    lines += ["", f"Pictures: {plot}, `rewards_*.html` (tokens coloured by r_t)."]
    return "\n".join(lines) + "\n"


__all__ = ["analysis_markdown", "correlations", "demonstration_pairs", "pairwise_accuracy", "pearson",
           "preference_accuracy", "spearman", "within_prompt_spearman"]
