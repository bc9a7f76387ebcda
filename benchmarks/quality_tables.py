"""quality.md: every section's tables, in a fixed order, then what the preset costs."""

from __future__ import annotations

import statistics

import quality_grammar
import quality_many
import quality_overtraining
import quality_tasks


def tables(result: dict, preset: dict) -> str:
    """The markdown of a results file (`result`) of `preset` (its sizes and variants, for the cost)."""
    lines: list[str] = []
    for name in ("arithmetic", "xsum", "gsm8k"):
        if name in result:
            lines += quality_tasks.tables(name, result[name])
    if "many" in result:
        lines += quality_many.tables(result["many"])
    if "overtraining" in result:
        lines += quality_overtraining.tables(result["overtraining"])
    if "grammar" in result:
        lines += quality_grammar.tables(result["grammar"])
    lines += cost_table(result, preset)
    return "\n".join(lines) + "\n"


def cost_table(result: dict, preset: dict) -> list[str]:
    """What the preset's own runs (its seeds and variants, not the extra seeds) cost, from the recorded runs' wall time
    (training and every evaluation), one process per core with one thread each (`--threads 1`) as the preset is meant
    to run. Runs timed with more threads than that (older records), resumed ones and ones read back from the cache
    are not timings of that; a variant without a timed run takes its task's median (marked ~).
    The grammar section trains in process and has no cache, so its own time is its cost. `preset`: the sizes and
    variants of the preset that `result` ran."""
    groups: list[tuple[str, list[str], list[int], dict]] = []  # (label, variants, seeds, runs)
    # the preset's own runs: not its extra sections, tasks or variants (each its own documented command)
    for name in ("arithmetic", "xsum", "gsm8k"):
        if name in preset and name in result and not preset[name].get("extra_section"):
            cfg = preset[name]
            groups.append((name, [v for v in cfg["variants"] if v not in cfg.get("extra", ())], cfg["seeds"],
                           result[name].get("runs", {})))
    if "many" in preset and "many" in result:
        cfg = preset["many"]
        for task, o in cfg["tasks"].items():
            if not o.get("extra_task"):
                groups.append((f"many / {task}", o.get("variants", cfg["variants"]), o.get("seeds", cfg["seeds"]),
                               (result["many"].get(task) or {}).get("runs", {})))
    over: list[tuple[str, list[str], list[int], dict]] = []  # the over-training section: its own budget
    if "overtraining" in preset and "overtraining" in result:
        cfg, sec = preset["overtraining"], result["overtraining"]
        screen = cfg["screen"]
        over.append((f"overtraining / λ screen ({screen['task']})",
                       ["mle", *[quality_overtraining.screen_variant(lam) for lam in screen["lambdas"]]], [screen["seed"]],
                       {k: {"variant": k, **v} for k, v in (sec.get("screen") or {}).get("runs", {}).items()}))
        for task, o in cfg["tasks"].items():
            tsec = sec.get(task) or {}
            seeds = o.get("seeds", cfg["seeds"])
            over.append((f"overtraining / {task}", o.get("variants", cfg["variants"]), seeds, tsec.get("runs", {})))
            budgets = o.get("short_budgets", cfg["short_budgets"])
            if budgets:
                over.append((f"overtraining / {task}, MLE's shorter budgets", [f"mle-{b}ep" for b in budgets], seeds,
                             {k: {"variant": f"mle-{v['budget']}ep", **v} for k, v in tsec.get("short_runs", {}).items()}))
    lines = ["\n### What the preset costs (a process per core, one thread each; from the recorded runs' wall time)\n",
             *COST_HEADER]
    rows, total, untimed = _cost_rows(groups)
    lines += rows
    if "grammar" in preset and "grammar" in result:  # in process, no cache: the section's own time
        secs = (result.get("seconds") or {}).get("grammar", 0)
        total += secs / 3600
        lines.append(f"| grammar | the whole section | – | – | {secs / 3600:.1f} |")
    lines.append(f"| **timed sections** | | | | **{total:.1f}** |")
    if untimed:
        lines.append(f"\nNo run timed with one thread per process in this record: {', '.join(untimed)}.")
    if over:
        rows, total, untimed = _cost_rows(over)
        lines += ["\n### What the over-training section costs (its own command; a process per core, one thread each)\n",
                  *COST_HEADER, *rows, f"| **timed parts** | | | | **{total:.1f}** |"]
        if untimed:
            lines.append(f"\nNot timed yet: {'; '.join(untimed)}.")
    return lines


COST_HEADER = ["| section | runs in the preset | timed runs | minutes per run, median (range) | core-hours |",
               "|---|---|---|---|---|"]


def _cost_rows(groups: list[tuple[str, list[str], list[int], dict]]) -> tuple[list[str], float, list[str]]:
    """A row per group (label, variants, seeds, recorded runs) from its runs timed with one thread, not resumed; a
    variant without one takes the group's median (marked ~). Returns the rows, their core-hours and the untimed groups."""
    lines, total, untimed = [], 0.0, []
    for label, names, seeds, runs in groups:
        minutes = {v: [r["seconds"] / 60 for r in runs.values() if r.get("variant") == v and r.get("threads") == "1"
                       and not r.get("resumed", True) and r.get("seconds", 0) > 60] for v in names}
        timed = [m for ms in minutes.values() for m in ms]
        if not timed:
            untimed.append(label)
            continue
        fallback = statistics.median(timed)
        estimated = any(not ms for ms in minutes.values())
        hours = sum(statistics.median(ms) if ms else fallback for ms in minutes.values()) * len(seeds) / 60
        total += hours
        lines.append(f"| {label} | {len(names)} variants × {len(seeds)} seeds | {len(timed)} | {fallback:.0f} "
                     f"({min(timed):.0f}–{max(timed):.0f}) | {'~' if estimated else ''}{hours:.1f} |")
    return lines, total, untimed
