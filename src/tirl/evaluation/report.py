"""What a person reads after `tirl eval` and `tirl compare`: the markdown report, the comparison table and plot.

`report_markdown` renders one evaluation (metrics.json + generations) as markdown; `find_evaluations` collects the
metrics.json of several evaluation or training-run directories; `compare_table` and `plot_compare` draw task score
against Self-BLEU for them, the paper's picture (better = up, more diverse = left), and `plot_valid_set` draws a
many-answer task's precision against coverage and its pass@k against k.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..data import DataError
from .families import FRACTION_SCORES, SCORE_LABELS, MetricFamily, recorded_family

# shares of samples or prompts that are not task scores, also written as percentages
PERCENT_SHARES = {"pass_at_K", "eos_rate"}


def fmt_percent(value: float) -> str:
    """A percentage (already × 100), written the one way tables and plot axes write every percentage."""
    return f"{value:.1f}%"


def fmt_score(name: str, value) -> str:
    """Accuracies and other shares as percentages, 0–100 scores with one decimal, missing values as an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if name in FRACTION_SCORES or name in PERCENT_SHARES:
        return fmt_percent(100 * value)
    if name in ("distinct_1", "distinct_2"):
        return f"{value:.3f}"
    if name == "mean_tokens":
        return f"{value:.0f}"
    return f"{value:.2f}" if name == "entropy" else f"{value:.1f}"


def _task_keys(metrics: dict) -> list[str]:
    keys: list[str] = []
    for pass_name in ("greedy", "sampled"):
        for k in metrics.get(pass_name, {}):
            if k in SCORE_LABELS and k not in keys:
                keys.append(k)
    return keys


# --------------------------------------------------------------------------------------------------------------------
# One evaluation
# --------------------------------------------------------------------------------------------------------------------


def _quote(text: str, limit: int) -> str:
    text = text if len(text) <= limit else text[:limit].rstrip() + " […]"
    return "\n".join("> " + line if line else ">" for line in text.splitlines() or [""])


def report_markdown(metrics: dict, records: list[dict], rows: list[dict], num_examples: int = 3) -> str:
    """The report.md of one evaluation: settings, a table per pass, and the first `num_examples` prompts' outputs."""
    s = metrics["settings"]
    run = metrics.get("run") or {}
    title = f"# tirl eval: `{metrics['model']}` on {metrics['dataset']} ({metrics['split']}, {metrics['num_prompts']} prompts)"
    lines = [title, ""]
    if run.get("method"):
        lines += [f"Trained model: method **{run['method']}**, λ = {run.get('iq_lambda')}, γ = {run.get('iq_gamma')} "
                  f"(run `{run.get('run_dir')}`).", ""]
    lines += [
        f"Decoding: greedy pass {'on' if s['greedy'] else 'off'}; sampled pass K = {s['samples']} at temperature "
        f"{s['temperature']:g}, top-p {s['top_p']:g}, no top-k; max {s['max_new_tokens']} new tokens, stop at EOS; "
        f"seed {s['seed']}; bf16 autocast {'on' if s['bf16'] else 'off'}. Metric family: `{metrics['metric_family']}`.",
        "",
    ]
    task_keys = _task_keys(metrics)
    cols = task_keys + ["self_bleu", "distinct_1", "distinct_2", "entropy", "mean_tokens", "eos_rate"]
    heads = [SCORE_LABELS.get(c, c) for c in task_keys] + [
        "Self-BLEU ↓", "distinct-1", "distinct-2", "entropy (nats)", "mean tokens", "EOS reached"]
    lines += ["| pass | " + " | ".join(heads) + " |", "|---|" + "---|" * len(cols)]
    for pass_name in ("greedy", "sampled"):
        if pass_name in metrics:
            m = metrics[pass_name]
            label = "greedy" if pass_name == "greedy" else f"sampled (K={m['k']}, T={s['temperature']:g})"
            lines.append(f"| {label} | " + " | ".join(fmt_score(c, m.get(c)) for c in cols) + " |")
    sampled = metrics.get("sampled") or {}
    if sampled.get("pass_at_k"):
        curve = sampled["pass_at_k"]
        shown = sorted({1, 2, 4, 8, 16, 32, len(curve)} & set(range(1, len(curve) + 1)))
        lines += ["", "pass@k of the sampled pass (unbiased estimator, k of the K samples):", "",
                  "| " + " | ".join(f"k={k}" for k in shown) + " |", "|" + "---|" * len(shown),
                  "| " + " | ".join(fmt_score("precision", curve[k - 1]) for k in shown) + " |"]
    memorised = [(p, metrics[p]["memorisation"]) for p in ("greedy", "sampled")
                 if (metrics.get(p) or {}).get("memorisation", {}).get("prompts")]
    if memorised:
        lines += ["", "On the prompts the model trained on (its run's own demonstrations): the share of samples that "
                  "repeat one of the prompt's demonstrations, and the share that are valid answers never demonstrated "
                  "for it.", "", "| pass | prompts | repeat a demonstration | valid, never demonstrated |",
                  "|---|---|---|---|"]
        lines += [f"| {p} | {m['prompts']} | {fmt_score('precision', m['demonstrated'])} | "
                  f"{fmt_score('precision', m['novel_valid'])} |" for p, m in memorised]
    if metrics.get("expert"):
        e = metrics["expert"]
        lines += ["", f"Held-out expert NLL {e['expert_nll']:.3f} nats per answer = forward KL to the uniform expert "
                  f"{e['forward_kl']:.3f} + mean log|valid| {e['mean_log_valid']:.3f} ({e['answers_scored']} valid "
                  "answers scored)."]
    lines += [
        "",
        "Sampled task scores are means over all K samples; \"any of K correct\" counts a prompt when one of its K "
        "samples is right. Self-BLEU is the mean over prompts of each sample's BLEU against the prompt's other K−1 "
        "samples (lower = more diverse); distinct-n pools all texts of the pass; entropy is the model's per-token "
        "entropy along its own samples.",
        "",
    ]
    timing = metrics.get("timing") or {}
    for pass_name in ("greedy", "sampled"):
        t = timing.get(pass_name)
        if t:
            tps = t.get("tokens_per_second")
            lines.append(f"- {pass_name}: {t['prompts']} prompts generated in {t['seconds']:.0f} s"
                         + (f" ({tps:.0f} tokens/s)" if tps else ""))
    resumed = {k: v for k, v in (timing.get("resumed_prompts") or {}).items() if v}
    if resumed:
        lines.append("- resumed from earlier runs: " + ", ".join(f"{v} {k} prompts" for k, v in resumed.items()))
    lines += ["", f"## Examples (first {min(num_examples, len(rows))} prompts)", ""]
    by_prompt: dict[int, list[dict]] = {}
    for r in records:
        by_prompt.setdefault(r["prompt_index"], []).append(r)
    for i, row in enumerate(rows[:num_examples]):
        prompt = row["prompt"] if isinstance(row["prompt"], str) else json.dumps(row["prompt"], ensure_ascii=False)
        lines += [f"### {row['id']}", "", "**Prompt**", "", _quote(prompt, 600), "", f"**Reference**: {_inline(row['reference'], 300)}", ""]
        for r in sorted(by_prompt.get(i, []), key=lambda r: (r["pass"] != "greedy", r["sample_index"]))[:3]:
            score = ", ".join(f"{k} {_sample_score(v)}" for k, v in r["scores"].items() if v is not None)
            tag = "greedy" if r["pass"] == "greedy" else f"sample {r['sample_index'] + 1}"
            end = "" if r["finished"] else f", stopped at {r['num_tokens']} tokens without EOS"
            lines += [f"**{tag}** ({score}{end})", "", _quote(r["text"], 800), ""]
    lines += ["## Files", "", "- `metrics.json`: every score above, the settings, versions and timing",
              "- `generations.jsonl`: one line per prompt × sample (text, token ids, EOS flag, entropy, own scores)",
              "- `eval_config.json`: the settings a resumed run must match", ""]
    return "\n".join(lines)


def _sample_score(value) -> str:
    if isinstance(value, bool):
        return "✓" if value else "✗"
    return f"{value:.1f}" if isinstance(value, (int, float)) else f"`{value}`"


def _inline(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " […]"


# --------------------------------------------------------------------------------------------------------------------
# Several evaluations
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """One evaluation found for `tirl compare`: where it is, its metrics.json, and its label in the plot/table."""

    path: Path
    metrics: dict
    label: str = ""


def find_evaluations(directory: str | Path) -> list[Evaluation]:
    """The evaluations in a directory: its own metrics.json if `tirl eval` wrote it, else those under `eval/`
    (`eval/metrics.json` and `eval/*/metrics.json`, as `tirl eval --model RUN_DIR` writes them)."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: no such directory")
    candidates = [d / "metrics.json", d / "eval" / "metrics.json", *sorted((d / "eval").glob("*/metrics.json"))]
    found = []
    for path in candidates:
        if path.is_file():
            try:
                m = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: invalid JSON ({e.msg})") from e
            if m.get("kind") == "tirl.eval":
                found.append(Evaluation(path.parent, m))
        if found and path == d / "metrics.json":
            break
    if not found:
        raise DataError(f"{d}: no evaluation found (no metrics.json written by `tirl eval` here or under eval/); "
                        f"run `tirl eval --model {d}` first")
    return found


def default_label(e: Evaluation) -> str:
    """What the run trained with: 'mle', 'mle β=0.1', 'iqlearn λ=0.1', 'iqlearn λ=0.1 (reference V)', ..., or the
    model name for a model that is not a tirl run."""
    run = e.metrics.get("run") or {}
    method = run.get("method")
    if not method:
        return Path(str(e.metrics.get("model", e.path.name))).name or e.path.name
    label = str(method)
    if method != "mle" and isinstance(run.get("iq_lambda"), (int, float)):
        label += f" λ={run['iq_lambda']:g}"
    if run.get("iq_value") not in (None, "logits") and method != "mle":
        label += f" ({run['iq_value']} V)"
    if run.get("entropy_coef"):
        label += f" β={run['entropy_coef']:g}"
    return label


def label_evaluations(evals: list[Evaluation], labels: list[str] | None = None,
                      groups: list[int] | None = None) -> list[Evaluation]:
    """Label each evaluation: the user's labels (one per evaluation, or one per RUN_DIR when `groups` says which
    RUN_DIR each evaluation came from), else what its run trained with (`default_label`).

    Evaluations that share a label form one series of `frontier`: its points are the temperatures, and runs that
    differ only in their seed are averaged (mean ± s.e.m.)."""
    if labels:
        if groups is not None and len(labels) == len(set(groups)) != len(evals):
            labels = [labels[g] for g in groups]
        if len(labels) != len(evals):
            raise ValueError(f"got {len(labels)} labels for {len(evals)} evaluations"
                             + (f" from {len(set(groups))} directories" if groups is not None else ""))
        for e, lab in zip(evals, labels, strict=True):
            e.label = lab
        return evals
    for e in evals:
        e.label = default_label(e)
    return evals


# --------------------------------------------------------------------------------------------------------------------
# Frontiers: task score against diversity along the temperature, one series per label, seeds averaged
# --------------------------------------------------------------------------------------------------------------------

GREEDY_SELF_BLEU = 100.0  # K greedy completions are identical, so the greedy pass sits at Self-BLEU 100


@dataclass
class FrontierPoint:
    """One temperature of one series: means and standard errors over the runs (seeds) that share it."""

    label: str
    temperature: float | None  # None: the greedy pass
    self_bleu: float
    self_bleu_sem: float | None
    score: float
    score_sem: float | None
    n: int


def _mean_sem(values: list[float]) -> tuple[float, float | None]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


def frontier(evals: list[Evaluation], score: str, x: str = "self_bleu") -> dict[str, list[FrontierPoint]]:
    """Per label, the sampled pass of each temperature and the greedy pass (once per model), averaged over runs.

    Sampled points are (x, score) at temperature T, x = Self-BLEU (or another metric of the pass, such as coverage);
    the greedy point is (100, greedy score) for Self-BLEU, else the greedy pass's own x. Points are sorted from the
    greedy end (low temperature) to the hottest. (`FrontierPoint.self_bleu` holds x.)"""
    cells: dict[tuple[str, float | None], dict[str, list[float]]] = {}
    greedy_seen: set[tuple[str, str]] = set()
    scale = 100.0 if score in FRACTION_SCORES else 1.0
    x_scale = 100.0 if x in FRACTION_SCORES else 1.0
    for e in evals:
        sampled, greedy = e.metrics.get("sampled") or {}, e.metrics.get("greedy") or {}
        if sampled.get(x) is not None and sampled.get(score) is not None:
            c = cells.setdefault((e.label, float(e.metrics["settings"]["temperature"])), {"x": [], "y": []})
            c["x"].append(x_scale * sampled[x])
            c["y"].append(scale * sampled[score])
        model = str(e.metrics.get("model"))
        greedy_x = GREEDY_SELF_BLEU if x == "self_bleu" else greedy.get(x)
        if greedy.get(score) is not None and greedy_x is not None and (e.label, model) not in greedy_seen:
            greedy_seen.add((e.label, model))
            c = cells.setdefault((e.label, None), {"x": [], "y": []})
            c["x"].append(greedy_x if x == "self_bleu" else x_scale * greedy_x)
            c["y"].append(scale * greedy[score])
    out: dict[str, list[FrontierPoint]] = {}
    for (label, temp), c in cells.items():
        (x, xs), (y, ys) = _mean_sem(c["x"]), _mean_sem(c["y"])
        out.setdefault(label, []).append(FrontierPoint(label, temp, x, xs, y, ys, len(c["y"])))
    for pts in out.values():
        pts.sort(key=lambda p: -1.0 if p.temperature is None else p.temperature)
    return out


def frontier_table(series: dict[str, list[FrontierPoint]], score: str) -> str:
    """Markdown: one row per series and temperature, mean ± s.e.m. over runs (n)."""
    pct = score in FRACTION_SCORES
    lines = [f"| series | T | n | {SCORE_LABELS.get(score, score)} | Self-BLEU ↓ |", "|---|---|---|---|---|"]
    for label, pts in series.items():
        for p in pts:
            t = "greedy" if p.temperature is None else f"{p.temperature:g}"
            sb = "–" if p.temperature is None else _pm(p.self_bleu, p.self_bleu_sem)
            lines.append(f"| {label} | {t} | {p.n} | {_pm(p.score, p.score_sem, pct)} | {sb} |")
    return "\n".join(lines) + "\n"


def _pm(mean: float, sem: float | None, pct: bool = False) -> str:
    write = fmt_percent if pct else (lambda v: f"{v:.1f}")
    return write(mean) + (f" ± {write(sem)}" if sem is not None else "")


def evaluations_family(evals: list[Evaluation]) -> MetricFamily:
    """The metric family of a comparison: the first evaluation's, which decides its columns and pictures."""
    return recorded_family(evals[0].metrics)


def resolve_score(evals: list[Evaluation], score: str | None) -> str:
    """The task score to compare: the one asked for, else the first evaluation's family's primary score."""
    name = score or evals[0].metrics.get("primary_score")
    if not name:
        raise DataError(f"these evaluations have no task score (metric family {evaluations_family(evals).name!r}); "
                        "pass --score")
    missing = [str(e.path) for e in evals if name not in (e.metrics.get("sampled") or e.metrics.get("greedy") or {})]
    if missing:
        raise DataError(f"score {name!r} is missing from: {', '.join(missing)}")
    return name


def compare_table(evals: list[Evaluation], score: str) -> str:
    """A markdown table, one row per evaluation: task score (sampled and greedy), Self-BLEU, distinct-n, entropy."""
    extra = evaluations_family(evals).compare_columns(score)
    cols = [("sampled", score), ("greedy", score)] + [("sampled", key) for key, _ in extra]
    cols += [("sampled", "self_bleu"), ("sampled", "distinct_2"), ("sampled", "entropy"), ("sampled", "mean_tokens"),
             ("sampled", "eos_rate")]
    head = ["run", "dataset", "n", "K", "T", SCORE_LABELS.get(score, score) + " (sampled)",
            SCORE_LABELS.get(score, score) + " (greedy)"]
    head += [heading for _, heading in extra]
    head += ["Self-BLEU ↓", "distinct-2", "entropy", "mean tokens", "EOS reached"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in evals:
        m, st = e.metrics, e.metrics["settings"]
        cells = [e.label, m["dataset"], str(m["num_prompts"]), str(st["samples"]), f"{st['temperature']:g}"]
        cells += [fmt_score(key, _pass_value(m.get(p) or {}, key)) for p, key in cols]
        lines.append("| " + " | ".join(cells) + " |")
    paths = "\n".join(f"- {e.label}: `{e.path}`" for e in evals)
    table = "\n".join(lines) + "\n\n" + paths + "\n"
    series = frontier(evals, score)
    if any(len(pts) > 1 or pts[0].n > 1 for pts in series.values()):
        table += ("\n## Frontiers (mean ± s.e.m. over runs that share a label)\n\n" + frontier_table(series, score))
    return table


def _pass_value(stats: dict, key: str):
    """A score of one pass; `pass_at_K` is the last point of its pass@k curve."""
    if key == "pass_at_K":
        curve = stats.get("pass_at_k") or []
        return curve[-1] if curve else None
    return stats.get(key)


def pass_at_k_curves(evals: list[Evaluation]) -> dict[tuple[str, float], tuple[list[float], list[float | None], int]]:
    """Per (label, temperature) of the sampled passes: pass@k for k = 1…K, mean and s.e.m. over runs, and runs."""
    groups: dict[tuple[str, float], list[list[float]]] = {}
    for e in evals:
        curve = (e.metrics.get("sampled") or {}).get("pass_at_k")
        if curve:
            groups.setdefault((e.label, float(e.metrics["settings"]["temperature"])), []).append(curve)
    out = {}
    for key, curves in sorted(groups.items()):
        k = min(len(c) for c in curves)
        stats = [_mean_sem([100.0 * c[j] for c in curves]) for j in range(k)]
        out[key] = ([m for m, _ in stats], [s for _, s in stats], len(curves))
    return out


def plot_valid_set(evals: list[Evaluation], path: str | Path, title: str | None = None) -> Path:
    """Many-answer tasks: precision against coverage along the temperatures (one frontier per label, greedy hollow),
    and pass@k against k for each label and temperature (mean ± s.e.m. over runs). PNG at `path`."""
    return _save(valid_set_figure(evals, title), path)


def valid_set_figure(evals: list[Evaluation], title: str | None = None):
    """The figure `plot_valid_set` saves (the caller closes it)."""
    from ..plots import pyplot

    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    series = frontier(evals, "precision", x="coverage")
    color_of = {label: colors[i % len(colors)] for i, label in enumerate(series)}
    points = [p for pts in series.values() for p in pts]
    _pad_limits(ax, [p.self_bleu for p in points], [p.score for p in points], [p.self_bleu_sem for p in points],
                [p.score_sem for p in points], percent=(True, True))
    tags = []
    for label, pts in series.items():
        color = color_of[label]
        ax.plot([p.self_bleu for p in pts], [p.score for p in pts], color=color, alpha=0.6, lw=1.5, label=label)
        for p in pts:
            ax.errorbar([p.self_bleu], [p.score], xerr=p.self_bleu_sem, yerr=p.score_sem, fmt="o", ms=6, color=color,
                        mfc="white" if p.temperature is None else color, mec="black", mew=0.6, elinewidth=1,
                        capsize=2, zorder=3, clip_on=False)
            tags.append((p.self_bleu, p.score, "greedy" if p.temperature is None else f"T={p.temperature:g}", color))
    ax.set_xlabel("coverage: distinct valid answers ÷ min(K, #valid)  (→ more diverse)")
    ax.set_ylabel("precision: valid samples  (↑ better)")
    _note_all_zero(ax, [p.score for p in points], "precision")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    curves = pass_at_k_curves(evals)
    temps = sorted({t for _, t in curves})
    styles = ["-", "--", ":", "-."]
    for (label, t), (mean, sem, _) in curves.items():
        ks = list(range(1, len(mean) + 1))
        style = styles[temps.index(t) % len(styles)]
        bx.plot(ks, mean, style, color=color_of.get(label, "k"), lw=1.4, label=f"{label}, T={t:g}", clip_on=False)
        if any(s is not None for s in sem):
            lo = [m - (s or 0) for m, s in zip(mean, sem, strict=True)]
            hi = [m + (s or 0) for m, s in zip(mean, sem, strict=True)]
            bx.fill_between(ks, lo, hi, color=color_of.get(label, "k"), alpha=0.12)
    bx.set_xscale("log", base=2)
    ks_all = sorted({k for mean, _, _ in curves.values() for k in range(1, len(mean) + 1) if k & (k - 1) == 0})
    bx.set_xticks(ks_all, [str(k) for k in ks_all])
    tops = [m + (s or 0) for mean, sem, _ in curves.values() for m, s in zip(mean, sem, strict=True)]
    _pad_limits(bx, None, tops or [0.0], percent=(False, True))
    bx.set_xlabel("k (samples drawn)")
    bx.set_ylabel("pass@k: a valid answer among k samples")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7, ncol=2)
    first = evals[0].metrics
    fig.suptitle(title or f"Many-answer task {first['dataset']} ({first['split']}, {first['num_prompts']} prompts): "
                 "precision vs coverage, and pass@k (mean ± s.e.m. over runs)", fontsize=10)
    fig.tight_layout()
    _label_points(ax, tags)
    return fig


def plot_compare(evals: list[Evaluation], score: str, path: str | Path, title: str | None = None) -> Path:
    """Task score (y, up = better) against Self-BLEU (x, left = more diverse): one frontier per label, through its
    temperatures, with the greedy pass at Self-BLEU 100 (hollow marker); runs sharing a label (seeds) are averaged,
    with s.e.m. error bars. PNG at `path`."""
    return _save(compare_figure(evals, score, title), path)


def compare_figure(evals: list[Evaluation], score: str, title: str | None = None):
    """The figure `plot_compare` saves (the caller closes it)."""
    from ..plots import pyplot

    pct = score in FRACTION_SCORES
    series = frontier(evals, score)
    if not any(p.temperature is not None for pts in series.values() for p in pts):
        raise DataError("no evaluation has a sampled pass with K ≥ 2 (needed for Self-BLEU); rerun with --samples 4")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 5.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    points = [p for pts in series.values() for p in pts]
    _pad_limits(ax, [p.self_bleu for p in points], [p.score for p in points], [p.self_bleu_sem for p in points],
                [p.score_sem for p in points], percent=(False, pct))
    tags = []
    for gi, (label, pts) in enumerate(series.items()):
        color = colors[gi % len(colors)]
        ax.plot([p.self_bleu for p in pts], [p.score for p in pts], color=color, alpha=0.6, lw=1.5, label=label)
        for p in pts:
            ax.errorbar([p.self_bleu], [p.score], xerr=p.self_bleu_sem, yerr=p.score_sem, fmt="o", ms=7,
                        color=color, mfc="white" if p.temperature is None else color, mec="black", mew=0.6,
                        elinewidth=1, capsize=2, zorder=3, clip_on=False)
            tags.append((p.self_bleu, p.score, "greedy" if p.temperature is None else f"T={p.temperature:g}", color))
    label = SCORE_LABELS.get(score, score)
    ax.set_ylabel(f"{label}  (↑ better)", fontsize=10)
    ax.set_xlabel("Self-BLEU of the K samples per prompt  (← more diverse; greedy = 100)", fontsize=10)
    _note_all_zero(ax, [p.score for p in points], label)
    first = evals[0].metrics
    datasets = sorted({e.metrics["dataset"] for e in evals})
    n_runs = max((p.n for p in points), default=1)
    k = max(e.metrics["settings"]["samples"] for e in evals)
    ax.set_title(title or f"Task score vs diversity — {', '.join(datasets)} ({first['split']}, "
                 f"{first['num_prompts']} prompts, K={k}"
                 + (f", mean ± s.e.m. of up to {n_runs} runs" if n_runs > 1 else "") + ")", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _label_points(ax, tags)
    return fig


def _save(fig, path: str | Path) -> Path:
    from ..plots import pyplot

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=120)
    finally:
        pyplot().close(fig)
    return path


def _pad_limits(ax, xs: list[float] | None, ys: list[float], x_err: list[float | None] | None = None,
                y_err: list[float | None] | None = None, percent: tuple[bool, bool] = (False, False),
                ) -> tuple[tuple[float, float] | None, tuple[float, float]]:
    """Fit each axis to its points and error bars: from 0 (every score, share and Self-BLEU is >= 0, so small
    differences are not blown up) to a little past the largest, at least 0–5, with room above and to the right for
    the tags; a percentage axis stops near 100% and writes its ticks as every percentage is written (`fmt_percent`).
    The axis starts a little below 0, so that points at 0 (nothing valid yet) sit clear of the axis line instead of
    vanishing into it. `xs` None leaves the x axis as it is. Returns the limits."""
    from matplotlib.ticker import FuncFormatter

    limits: list[tuple[float, float] | None] = []
    for values, errs, axis, setter, room, pct in ((xs, x_err, ax.xaxis, ax.set_xlim, 0.08, percent[0]),
                                                  (ys, y_err, ax.yaxis, ax.set_ylim, 0.15, percent[1])):
        if values is None:
            limits.append(None)
            continue
        top = max(v + (e or 0.0) for v, e in zip(values, errs or [None] * len(values), strict=True))
        upper = max(top * (1 + room), 5.0)
        if pct:
            upper = min(upper, 100.0 * (1 + room / 2))
            # no tick below 0: the margin under 0 is there for the points, not a share that could be negative
            axis.set_major_formatter(FuncFormatter(lambda v, _: fmt_percent(abs(v)) if v > -1e-9 else ""))
        lower = -0.03 * upper
        setter(lower, upper)
        limits.append((lower, upper))
    return limits[0], limits[1]  # type: ignore[return-value]


def _note_all_zero(ax, scores: list[float], label: str) -> None:
    """Say so in the picture when every point scores 0, rather than leave a row of points on the axis to look
    like an empty plot."""
    if scores and not any(scores):
        ax.text(0.5, 0.5, f"every point scores 0 ({label})", transform=ax.transAxes, ha="center",
                va="center", fontsize=9, color="0.4")


# where a point's tag may go, in points from the point, tried in turn: right, then left, below then above, then further
# down and up the right-hand side
_TAG_PLACES = ([((6, -12), "left"), ((6, 4), "left"), ((-6, -12), "right"), ((-6, 4), "right")]
               + [((6, -12 - 10 * i), "left") for i in range(1, 10)] + [((6, 4 + 10 * i), "left") for i in range(1, 10)])


def _label_points(ax, items: list[tuple[float, float, str, str]]) -> list:
    """Tag each point (x, y, text, colour) at the first place beside it where the tag covers no other tag, no point
    and not the legend (else where it covers the fewest). Points often coincide (every evaluation at 0 before the
    models learned anything, or two methods alike), and tags at one fixed offset then lie on each other, unreadable.
    Call it once the limits and the layout are final: a place is measured on the figure as drawn. Returns the tags."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    r = 4 * ax.figure.dpi / 72  # a marker's radius (ms 6-7 points) in pixels
    taken = [Bbox.from_bounds(px - r, py - r, 2 * r, 2 * r)
             for px, py in (ax.transData.transform((x, y)) for x, y, _, _ in items)]
    if ax.get_legend() is not None:
        taken.append(ax.get_legend().get_window_extent(renderer))
    frame = ax.get_window_extent(renderer)
    tags = []
    for x, y, text, color in items:
        best = None
        for offset, ha in _TAG_PLACES:
            tag = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=7, color=color, ha=ha,
                              annotation_clip=False)
            box = tag.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            cost = sum(box.overlaps(t) for t in taken) + (0 if inside else 0.5)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, tag, box)
            else:
                tag.remove()
            if cost == 0:
                break
        taken.append(best[2])
        tags.append(best[1])
    return tags
