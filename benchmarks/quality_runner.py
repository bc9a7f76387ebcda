"""What every section of the quality benchmark shares: running `tirl` commands (their threads and precision),
caching trainings and evaluations on disk, where results go, what a run's time means, and mean ± s.e.m.

The settings below are lists so that `quality.py` sets them once from its options and every module reads the same
ones (they are module state shared by the sections, not arguments threaded through every call)."""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

MANY_KS = (1, 2, 4, 8, 16, 32)  # the k of pass@k every many-answer table reports

CACHED_ONLY: list[bool] = []  # --cached_only
THREADS: list[str] = []  # --threads
PRECISION: list[str] = []  # --bf16 true/false (empty: tirl's default)
SKIP_REWARDS: list[bool] = []  # --skip_rewards
PRESET: list[str] = ["cpu"]  # --preset

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = HERE / "runs" / "quality"


def result_path(name: str) -> Path:
    """benchmarks/results/<name>, with the preset in the name for presets other than "cpu" (the committed one)."""
    preset = PRESET[0]
    if preset == "cpu":
        return RESULTS / name
    stem, dot, ext = name.rpartition(".")
    return RESULTS / f"{stem}_{preset}{dot}{ext}"


def _with_precision(args: tuple[str, ...] | list[str]) -> list[str]:
    """The same precision for every command (--bf16): `train` takes a value, `eval` and `rewards` a flag."""
    if not PRECISION:
        return list(args)
    return [*args, *(["--bf16", PRECISION[0]] if args[0] == "train" else
                     ["--bf16" if PRECISION[0] == "true" else "--no-bf16"])]


def _run(cmd: list[str], what: str) -> None:
    threads = {"OMP_NUM_THREADS": THREADS[0]} if THREADS else {}
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1", **threads})
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def tirl(*args: str) -> None:
    args = _with_precision(args)
    print("$ tirl " + " ".join(args), flush=True)
    _run([sys.executable, "-m", "tirl.cli", *args], f"tirl {' '.join(args)}")


# Several `tirl` commands in one interpreter, `tirl.cli.main` on each in turn
_RUN_COMMANDS = """import json, sys
from tirl.cli import main
for argv in json.loads(sys.argv[1]):
    code = main(argv)
    if code:
        sys.exit(f"tirl {' '.join(argv)} exited with {code}")
"""


def tirl_commands(commands: list[list[str]]) -> None:
    """`tirl` commands run one after another in one process: the same results as a process each (side by side on
    pick-two, every metric identical), without each paying its imports again (~9 s of a 75 s evaluation)."""
    if not commands:
        return
    commands = [_with_precision(c) for c in commands]
    for c in commands:
        print("$ tirl " + " ".join(c), flush=True)
    _run([sys.executable, "-c", _RUN_COMMANDS, json.dumps(commands)], f"{len(commands)} tirl commands")


def run_timing(run_dir: Path) -> dict:
    """What a run's `seconds` measure: `resumed` when its training was already in the cache (an interrupted run's
    time is not a run's cost; an unfinished training starts again from scratch), `threads` the torch threads of its
    commands (OMP_NUM_THREADS; None = one per core), `bf16` their precision (auto = tirl's default for the machine),
    and the machine's `cpu`: what auto meant there, and what its times compare with."""
    threads = THREADS[0] if THREADS else os.environ.get("OMP_NUM_THREADS")
    return {"resumed": (run_dir / "metrics.json").is_file(), "threads": threads,
            "bf16": PRECISION[0] if PRECISION else "auto", "cpu": dict(machine())}


@functools.cache
def machine() -> dict:
    """The CPU the runs compute on (`tirl.hardware.cpu_info`: model, torch's capability level, bf16 instructions)."""
    from tirl.hardware import cpu_info

    return cpu_info()


def fmt_mean_sem(s: dict | None, d: int = 1, signed: bool = False) -> str:
    """`mean_sem`'s result as "m ± s" with `d` decimals (an en dash when there is no value)."""
    if not s or s.get("mean") is None:
        return "–"
    fmt = f"{{:{'+' if signed else ''}.{d}f}}"
    return fmt.format(s["mean"]) + (f" ± {s['sem']:.{d}f}" if s.get("sem") is not None else "")


def fmt_value(x) -> str:
    """A figure with 3 decimals (an en dash when there is none, or it is NaN)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def mean_sem(values: list[float]) -> dict:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return {"mean": None, "sem": None, "n": 0}
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": mean, "sem": sem, "n": len(values)}


# ---------------------------------------------------------------------------------------------------------------------
# Training and evaluation runs (through the `tirl` CLI, cached on disk)


def train(cfg: dict, variant: list[str], seed: int, run_dir: Path, per_epoch: bool) -> Path:
    """`tirl train` one variant; with `per_epoch`, a checkpoint and a held-out evaluation after every epoch."""
    if (run_dir / "metrics.json").is_file():
        return run_dir
    if run_dir.exists():  # an interrupted run: start it again (the benchmark's unit of caching is a finished run)
        shutil.rmtree(run_dir)
    length = ["--max_steps", str(cfg["max_steps"])] if cfg.get("max_steps") else ["--num_train_epochs", str(cfg["epochs"])]
    subset = ["--num_train_examples", str(cfg["train_examples"])] if cfg.get("train_examples") else []
    # held-out −log π after every epoch (and before training); per-epoch checkpoints only for the epoch curves
    schedule = ["--eval_strategy", "epoch", *(["--save_strategy", "epoch", "--save_only_model", "true",
                                               "--save_total_limit", "1000"] if per_epoch else ["--save_strategy", "no"])]
    tirl("train", *variant, "--model", cfg["model"], "--dataset", cfg["dataset"], *subset, *length,
         "--num_eval_examples", str(cfg["eval_rows"]), "--per_device_train_batch_size", str(cfg["batch"]),
         "--per_device_eval_batch_size", "16", "--learning_rate", str(cfg["lr"]), "--lr_scheduler_type", "cosine",
         "--warmup_steps", "0.1", "--max_length", "512" if "xsum" in cfg["dataset"] else "384",
         "--gradient_checkpointing", "false", *schedule, "--report_to", "none", "--logging_steps", "5",
         "--seed", str(seed), "--disable_tqdm", "true", "--output_dir", str(run_dir))
    return run_dir


def evaluate(cfg: dict, model: str, out: Path, temperature: float | None, samples: int | None = None,
             prompts: int | None = None, dataset: str | None = None, expert_nll: bool = False) -> dict:
    """`tirl eval`: greedy only (`temperature=None`), or K samples at `temperature` without a greedy pass;
    `expert_nll`: also the held-out expert NLL of a many-answer task. Locked per directory: processes sharing the
    cache (one per core) evaluate the untrained model once."""
    return evaluate_passes(cfg, model, out.parent, {out.name: temperature}, samples, prompts, dataset,
                           expert_nll=expert_nll)[out.name]


def evaluate_passes(cfg: dict, model: str, root: Path, passes: dict[str, float | None], samples: int | None = None,
                    prompts: int | None = None, dataset: str | None = None, expert_nll: bool = False) -> dict:
    """`evaluate` for several passes of one model ({directory name under `root`: temperature, None = greedy}), in one
    process; `expert_nll` on the greedy pass. Returns {name: metrics}."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{'+'.join(passes)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tirl_commands([eval_command(cfg, model, root / name, t, samples, prompts, dataset, expert_nll and t is None)
                       for name, t in passes.items() if not (root / name / "metrics.json").is_file()])
    return {name: json.loads((root / name / "metrics.json").read_text()) for name in passes}


def eval_command(cfg: dict, model: str, out: Path, temperature: float | None, samples: int | None, prompts: int | None,
                 dataset: str | None, expert_nll: bool) -> list[str]:
    passes = ["--samples", "0"] if temperature is None else [
        "--samples", str(samples or cfg["samples"]), "--temperature", str(temperature), "--no-greedy"]
    n = prompts if prompts is not None else cfg["prompts"]
    return ["eval", "--model", model, "--dataset", dataset or cfg["dataset"], "--split", "test", "--num_examples",
            str(n or 0), *passes, "--max_new_tokens", str(cfg["max_new_tokens"]), "--batch_size",
            str(cfg["eval_batch"]), "--seed", "0", "--no_progress", "--output_dir", str(out),
            "--expert_nll" if expert_nll else "--no-expert_nll", *SAMPLER]


# Every recorded evaluation sampled through `generate`; a new run paired with them must draw from the same random
# stream's kind, so the benchmark keeps that loop whatever `tirl eval`'s default is (never two samplers in one table).
SAMPLER = ["--sampler", "generate"]


def log_history(run_dir: Path) -> list[dict]:
    """The trainer's log history: from the last checkpoint's trainer_state.json (it holds every epoch's eval)."""
    checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if checkpoints:
        return json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
    return []


def upper_envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (x, y) points no other point beats in both (the Pareto front, higher x and higher y better), by x.

    A temperature sweep is not monotone: past some T coverage falls again while precision collapses, and a line
    drawn through every point in coverage order would zigzag down through that point and credit anything above it."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):  # highest x first; keep a point only if it adds y
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front[::-1]


def frontier_points(pts: dict, temperatures: list[float]) -> list[tuple[float, float]]:
    """A run's (coverage, precision) at each temperature of the grid, in grid order."""
    return [(pts[f"T={t:g}"]["coverage"], pts[f"T={t:g}"]["precision"]) for t in temperatures]


def frontier_dominates(ref: dict, other: dict, temperatures: list[float]) -> bool:
    """Whether `other`'s frontier dominates the reference's: every point of the reference's upper envelope is matched
    or beaten in both coverage and precision by one of `other`'s temperatures, and some point strictly. It answers
    where `envelope_delta` cannot: a frontier that lies wholly beyond the reference's coverage has no point inside
    its range to compare at equal coverage."""
    mine, theirs = frontier_points(other, temperatures), upper_envelope(frontier_points(ref, temperatures))
    return all(any(x >= a and y >= b for x, y in mine) for a, b in theirs) and any(
        x > a or y > b for a, b in theirs for x, y in mine if x >= a and y >= b)


def frontier_delta(ref: dict, other: dict, temperatures: list[float]) -> dict:
    """Precision of `other` minus the reference's precision at the same coverage, along the upper envelope of the
    reference's temperature points (`upper_envelope`; piecewise linear in coverage; the nearest end outside its
    range, flagged `extrapolated`)."""
    curve = upper_envelope(frontier_points(ref, temperatures))
    out = {}
    for t in temperatures:
        x, y = other[f"T={t:g}"]["coverage"], other[f"T={t:g}"]["precision"]
        if x <= curve[0][0]:
            y_ref, extra = curve[0][1], x < curve[0][0]
        elif x >= curve[-1][0]:
            y_ref, extra = curve[-1][1], x > curve[-1][0]
        else:
            (x0, y0), (x1, y1) = next((a, b) for a, b in zip(curve, curve[1:], strict=False) if a[0] <= x <= b[0])
            y_ref, extra = y0 + (y1 - y0) * (x - x0) / max(x1 - x0, 1e-9), False
        out[f"T={t:g}"] = {"delta": y - y_ref, "extrapolated": extra}
    return out


def envelope_delta(ref: dict, other: dict, temperatures: list[float]) -> float | None:
    """How far `other`'s frontier lies above the reference's, envelope against envelope: the mean, over the points of
    `other`'s upper envelope inside the reference's coverage range, of its precision minus the reference's envelope
    there. A point that another temperature of the same model beats in both coverage and precision is never a
    temperature a user would sample at, so neither frontier is judged by it. None when no point lies in the range."""
    curve = upper_envelope(frontier_points(ref, temperatures))
    mine = upper_envelope(frontier_points(other, temperatures))
    deltas = []
    for x, y in mine:
        if not curve[0][0] <= x <= curve[-1][0]:
            continue
        (x0, y0), (x1, y1) = next(((a, b) for a, b in zip(curve, curve[1:], strict=False) if a[0] <= x <= b[0]),
                                  (curve[0], curve[0]))
        deltas.append(y - (y0 + (y1 - y0) * (x - x0) / max(x1 - x0, 1e-9)))
    return sum(deltas) / len(deltas) if deltas else None

