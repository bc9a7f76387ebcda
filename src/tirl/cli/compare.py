"""`tirl compare`: task score against Self-BLEU for several evaluations (PNG) and a markdown table."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import errors

EPILOG = """
Each RUN_DIR is a `tirl eval` output directory (it holds metrics.json) or a `tirl train` run directory with
evaluations under eval/ (as `tirl eval --model RUN_DIR` writes them; several there give several points).
Evaluations that share a label form one frontier: a line through their temperatures, with the greedy pass at
Self-BLEU 100. Runs that share a label are averaged (mean ± s.e.m.), so seeds of one method make one frontier.
Labels come from each run's run.json (method, λ, value form, entropy β), or --labels: one per RUN_DIR or one
per evaluation found.

Sampling hotter also lowers Self-BLEU, so compare methods along their frontiers, not at one temperature.
On a many-answer task (pick-two, between, sum-pairs, countdown) a second picture, OUTPUT_valid_set.png, draws
precision against coverage along the temperatures and pass@k against k; the table adds coverage and pass@K. Every
file goes beside OUTPUT, and every percentage is written alike (12.5%).

Examples:
  tirl eval --model runs/mle-a --dataset gsm8k && tirl eval --model runs/iq-b --dataset gsm8k
  tirl compare runs/mle-a runs/iq-b --output compare.png       # also writes compare.md
  tirl compare evals/* --score accuracy_strict --labels "T=0.7,T=1.0"
  for T in 0.5 0.7 1.0; do tirl eval --model runs/mle-s0 --temperature $T; done   # ... for each run and seed
  tirl compare runs/mle-s0 runs/mle-s1 runs/iq-s0 runs/iq-s1 --labels MLE,MLE,IQLearn,IQLearn
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help, and the epilog kept as written."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tirl compare",
        description="Plot task score (up = better) against Self-BLEU (left = more diverse) for several evaluations, "
        "e.g. MLE vs IQLearn at several λ, and write the same numbers as a markdown table.",
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="Evaluation or training-run directories.")
    p.add_argument("--output", "-o", default="compare.png", help="The PNG to write; the table goes beside it with "
                   "the suffix .md, and every other file compare writes goes beside it too. A directory (an existing "
                   "one, or a path ending in /) gets compare.png in it; a name without a suffix gets .png.")
    p.add_argument("--score", default=None, help="Task score on the y axis, e.g. accuracy_strict, "
                   "accuracy_flexible, rouge1, rouge2, rougeLsum, bleu, chrf. Default: the task's primary score "
                   "(GSM8k: accuracy_flexible; ROUGE tasks: rouge1; translation: bleu).")
    p.add_argument("--labels", default=None, help="Comma-separated labels, one per RUN_DIR or one per evaluation "
                   "found, in order; evaluations with the same label are one frontier (seeds averaged).")
    p.add_argument("--title", default=None, help="Plot title (default: dataset, split, prompts, K).")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)

    from tirl.data import DataError
    from tirl.jobs.rundir import output_lock, refuse_links

    outputs = output_paths(args.output)
    png_path = outputs[0]
    try:
        refuse_links(outputs, "--output")
        with output_lock(png_path.parent, "compare", name=f".{png_path.name}.tirl.lock"):
            return _compare(args, outputs)
    except (DataError, ValueError, OSError) as e:  # RunDirError is a ValueError
        return errors.fail("compare", e if not isinstance(e, OSError) else f"{e.filename or args.output}: "
                           f"{e.strerror or e}")
    except KeyboardInterrupt:
        return errors.interrupted("compare", "its files may be incomplete; run it again")


def output_paths(output: str) -> list[Path]:
    """The plot, the table and the many-answer plot that `--output` names, all in one directory.

    A directory given as --output would otherwise be taken for a file name: its name became the files' stem one
    level up (`--output runs/` wrote runs.md and runs_valid_set.png into the working directory), and a name without
    a suffix had matplotlib add .png to the picture behind the table's back (its link then pointed at nothing)."""
    png = Path(output)
    if output.endswith(("/", os.sep)) or png.is_dir():
        png = png / "compare.png"
    elif not png.suffix:
        png = png.with_name(png.name + ".png")
    return [png, png.with_suffix(".md"), png.with_name(png.stem + "_valid_set.png")]


def _compare(args, outputs: list[Path]) -> int:
    from tirl.evaluation.report import (
        compare_table,
        evaluations_family,
        find_evaluations,
        label_evaluations,
        plot_compare,
        plot_valid_set,
        resolve_score,
    )
    from tirl.files import write_text_atomic

    png_path, md, extra_path = outputs
    found = [(i, e) for i, d in enumerate(args.run_dirs) for e in find_evaluations(d)]
    evals = [e for _, e in found]
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    label_evaluations(evals, labels, groups=[i for i, _ in found])
    score = resolve_score(evals, args.score)
    datasets = {e.metrics["dataset"] for e in evals}
    if len(datasets) > 1:
        print(f"tirl compare: warning: the evaluations are on different datasets ({', '.join(sorted(datasets))})",
              file=sys.stderr)
    png = plot_compare(evals, score, png_path, title=args.title)
    pictures = [f"![task score vs Self-BLEU]({png.name})"]
    if evaluations_family(evals).many_answer:
        extra = plot_valid_set(evals, extra_path, title=args.title)
        pictures.append(f"![precision vs coverage, pass@k]({extra.name})")
    table = compare_table(evals, score)
    write_text_atomic(md, "# tirl compare\n\n" + "\n".join(pictures) + f"\n\n{table}")
    print(table)
    print(f"plot:  {png}" + (f" and {extra_path}" if len(pictures) > 1 else "") + f"\ntable: {md}")
    return 0
