"""Pictures of rewards: tokens coloured by r_t (self-contained HTML and PNG) and histograms of R.

Colour scale: r_t minus the median r_t of the page, on a diverging scale clipped at the 95th percentile of its
absolute value: red tokens earned less reward than usual (where the model thinks the text went wrong), blue more.
Each HTML token shows r_t, V(s_t) and log π(a_t|s_t) on hover.
"""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from ..plots import pyplot
from .extraction import SequenceRewards


def _scale(seqs: Sequence[SequenceRewards]) -> tuple[float, float]:
    values = [r for s in seqs for r in s.rewards if not math.isnan(r)]
    if not values:
        return 0.0, 1.0
    centre = statistics.median(values)
    dev = sorted(abs(v - centre) for v in values)
    spread = dev[min(len(dev) - 1, int(0.95 * len(dev)))] or 1.0
    return centre, spread


def _rgba(r: float, centre: float, spread: float) -> tuple[float, float, float, float]:
    if math.isnan(r):
        return (0.85, 0.85, 0.85, 0.6)
    x = max(-1.0, min(1.0, (r - centre) / spread))
    return (0.84, 0.19, 0.15, abs(x)) if x < 0 else (0.13, 0.4, 0.75, abs(x))


def render_html(seqs: Sequence[SequenceRewards], path: str | Path, title: str = "tirl rewards",
                labels: Sequence[dict] | None = None) -> Path:
    """A self-contained HTML page (no scripts, no external files) with one block per completion.

    `labels` optionally gives, per sequence, a dict shown in its header (e.g. {"prompt": ..., "correct": True}).
    """
    centre, spread = _scale(seqs)
    blocks = []
    for i, s in enumerate(seqs):
        info = dict(labels[i]) if labels else {}
        prompt = info.pop("prompt", None)
        head = f"R = {s.reward:.3f} · Σ log π = {s.logprob:.3f} · V(s₀) = {s.value0:.3f} · {s.num_tokens} tokens"
        head += "".join(f" · {html.escape(str(k))}: {html.escape(str(v))}" for k, v in info.items())
        spans = []
        for tok, r, v, lp in zip(s.tokens, s.rewards, s.values, s.logprobs, strict=True):
            red, green, blue, a = _rgba(r, centre, spread)
            tip = f"r = {r:.3f}  V = {v:.3f}  log π = {lp:.3f}" if not math.isnan(r) else f"r undefined  V = {v:.3f}  log π = {lp:.3f}"
            text = html.escape(tok).replace("\n", "↵<br>") or "&nbsp;"
            spans.append(f'<span class="t" style="background: rgba({red * 255:.0f},{green * 255:.0f},{blue * 255:.0f},{a:.2f})" '
                         f'title="{html.escape(tip)}">{text}</span>')
        prompt_html = f'<div class="p">{html.escape(str(prompt))}</div>' if prompt else ""
        blocks.append(f'<section><h2>#{i} <small>{head}</small></h2>{prompt_html}<div class="c">{"".join(spans)}</div></section>')
    legend = (f"colour = r<sub>t</sub> − {centre:.3f} (the median r<sub>t</sub> of this page), clipped at ±{spread:.3f}: "
              '<span class="t" style="background: rgba(214,48,38,0.9)">lower reward</span> '
              '<span class="t" style="background: rgba(33,102,191,0.9)">higher reward</span> '
              '<span class="t" style="background: rgba(217,217,217,0.6)">undefined</span>; hover a token for r, V, log π')
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }}
h1 {{ font-size: 1.3em; }} h2 {{ font-size: 1em; margin-bottom: .3em; }} small {{ font-weight: normal; color: #555; }}
.p {{ color: #666; font-size: .9em; margin-bottom: .4em; white-space: pre-wrap; }}
.c {{ font-family: ui-monospace, monospace; line-height: 1.7; white-space: pre-wrap; }}
.t {{ border-radius: 2px; padding: 0 1px; }}
section {{ border-top: 1px solid #ddd; padding: .6em 0; }}
</style></head>
<body><h1>{html.escape(title)}</h1><p>{legend}</p>
{"".join(blocks)}
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


def render_png(seqs: Sequence[SequenceRewards], path: str | Path, title: str = "", width_chars: int = 100,
               max_lines: int = 60) -> Path:
    """The same colouring as `render_html`, drawn with matplotlib in a monospace font (one panel per completion)."""
    plt = pyplot()
    centre, spread = _scale(seqs)
    layouts = []
    for s in seqs:
        lines, line, col = [], [], 0
        for tok, r in zip(s.tokens, s.rewards, strict=True):
            for k, piece in enumerate(tok.split("\n")):
                if k > 0:
                    lines.append(line)
                    line, col = [], 0
                if col + len(piece) > width_chars and line:
                    lines.append(line)
                    line, col = [], 0
                if piece:
                    line.append((col, piece, r))
                    col += len(piece)
        lines.append(line)
        layouts.append((s, lines[:max_lines]))
    total = sum(len(lines) + 2 for _, lines in layouts)
    char_w, line_h = 0.0082, 1.0 / max(total, 1)
    fig = plt.figure(figsize=(width_chars * 0.095, max(2.0, 0.22 * total)))
    y = 1.0
    for i, (s, lines) in enumerate(layouts):
        y -= line_h
        fig.text(0.005, y, f"#{i}  R = {s.reward:.2f}   Σ log π = {s.logprob:.2f}", fontsize=8, weight="bold",
                 va="bottom", family="monospace")
        for line in lines:
            y -= line_h
            for col, piece, r in line:
                fig.text(0.005 + col * char_w, y, piece, fontsize=8, family="monospace", va="bottom",
                         bbox={"facecolor": _rgba(r, centre, spread), "edgecolor": "none", "pad": 0.6})
        y -= line_h
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reward_histogram(groups: dict[str, Sequence[float]], path: str | Path, title: str = "sequence reward R",
                     xlabel: str = "R = Σ r_t") -> Path:
    """Overlaid histograms of sequence rewards per group (e.g. {"correct": [...], "wrong": [...]}), each normalised."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    values = [v for vs in groups.values() for v in vs if not math.isnan(v)]
    bins = 30 if values else 1
    lo, hi = (min(values), max(values)) if values else (0, 1)
    for name, vs in groups.items():
        vs = [v for v in vs if not math.isnan(v)]
        if vs:
            # each group's bars sum to 1: correct answers are often a few percent of the samples, and raw counts
            # would hide them under the wrong ones
            ax.hist(vs, bins=bins, range=(lo, hi), weights=[1 / len(vs)] * len(vs), alpha=0.55,
                    label=f"{name} (n={len(vs)}, mean {statistics.fmean(vs):.2f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of the group")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reward_scatter(rewards: Sequence[float], scores: Sequence[float], path: str | Path, ylabel: str = "score",
                   title: str = "") -> Path:
    """Sequence reward R against a per-completion task score (e.g. sentence ROUGE-1)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(rewards, scores, s=12, alpha=0.6)
    ax.set_xlabel("R = Σ r_t")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
