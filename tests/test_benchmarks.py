"""The benchmark scripts run end to end on a tiny model with the library's current defaults.

Timings are not asserted (they belong to the recorded runs in benchmarks/results); what is asserted is that every
variant ran and that variants computing the same loss report the same value. A default change that breaks a
hand-built benchmark batch (iq_value="reference" needs the starting model's logsumexp in it) fails here, not in the
middle of a 10-minute run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def test_loss_cost_step_runs_every_default_variant(tmp_path):
    path = tmp_path / "loss_cost.json"
    run("loss_cost.py", "--model", "tiny-llama", "--batch", "2", "--seq", "32", "--rounds", "1", "--steps", "1",
        "--output", str(path))
    summary = json.loads(path.read_text())["summary"]
    assert set(summary) == {"trl_sft", "iq_naive", "iq_chunked"}
    assert summary["trl_sft"]["step_time_vs_trl_sft"] == 1.0
    assert all(s["median_step_s"] > 0 and s["peak_rss_gb"] > 0 for s in summary.values())


def test_loss_cost_head_only_losses_agree(tmp_path):
    path = tmp_path / "loss_cost.json"
    run("loss_cost.py", "--head-only", "--hidden", "16", "--vocab", "300", "--batch", "2", "--seq", "40", "--chunk",
        "16", "--rounds", "1", "--output", str(path))
    result = json.loads(path.read_text())
    summary = result["head_only"]["threads_1"]["summary"]
    ce = summary["ce_fused"]["loss"]
    for variant in ("ce_full", "ce_fused_stats", "ce_trl", "iq_single_pass_l0"):  # the same cross-entropy
        assert summary[variant]["loss"] == pytest.approx(ce, rel=1e-2), variant
    assert summary["iq_single_pass"]["loss"] == pytest.approx(summary["iq_two_pass"]["loss"], rel=1e-3)
    assert result["single_pass_vs_ce_head"] > 0


def test_cost_grid_runs(tmp_path):
    path = tmp_path / "cost.json"
    run("cost.py", "--part", "grid", "--model", "tiny-llama", "--seqs", "32", "--batches", "2", "--rounds", "1",
        "--steps", "1", "--output", str(path))
    grid = json.loads(path.read_text())["grid"]
    assert {"trl_sft", "tirl_mle", "iq_naive", "iq_chunked"} <= set(grid[0]["variants"])


def quality_module(name: str = "quality"):
    """benchmarks/quality.py (the presets and the command line), or one of the modules beside it (a section, the tables,
    the runner they share)."""
    import importlib.util

    if str(BENCH) not in sys.path:  # the sections import their shared module by name, as `python quality.py` does
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_cost_counts_the_presets_runs_from_timed_runs_only():
    preset = quality_module().PRESETS["cpu"]
    cfg = preset["many"]
    task = next(iter(cfg["tasks"]))
    timed = {"threads": "1", "resumed": False}
    runs = {"mle-s1": {"variant": "mle", "seconds": 600, **timed}, "mle-s3": {"variant": "mle", "seconds": 1200, **timed},
            # none of these is a timing of the preset: read back from the cache, resumed, run with every core's threads
            "gem-s1": {"variant": "gem", "seconds": 0.01, **timed},
            "gem-s2": {"variant": "gem", "seconds": 6000, "threads": "1", "resumed": True},
            "dft-s1": {"variant": "dft", "seconds": 6000, "threads": None, "resumed": False}}
    lines = quality_module("quality_tables").cost_table({"preset": "cpu", "many": {task: {"runs": runs}}}, preset)
    row = next(line for line in lines if line.startswith(f"| many / {task} "))
    # every variant without a timed run takes the median of the timed ones (15 min), marked as an estimate
    hours = 15 * len(cfg["variants"]) * len(cfg["seeds"]) / 60
    assert row.endswith(f"| 2 | 15 (10–20) | ~{hours:.1f} |")
    assert "many / pick-two" not in lines[-1]
    # an extra task (its own command) is not part of the preset's cost
    assert not any(line.startswith("| many / between ") for line in lines) and "between" not in lines[-1]


def test_quality_records_the_machine_each_run_was_timed_on(tmp_path):
    """A run's time and precision mean little without the CPU (bf16 autocast is 28x slower on one without bf16
    instructions, so an unset --bf16 trains in float32 there): each run records torch's capability level and tirl's
    answer to whether the CPU has bf16."""
    import torch

    from tirl.hardware import cpu_has_native_bf16

    timing = quality_module("quality_runner").run_timing(tmp_path)
    assert timing["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert timing["cpu"]["native_bf16"] == cpu_has_native_bf16()
    assert timing["cpu"]["name"]
    assert timing["resumed"] is False and timing["bf16"] == "auto"


def test_quality_rejects_an_unknown_task(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH / "quality.py"), "--section", "many", "--tasks", "pick-two,nope",
                          "--output", str(tmp_path / "q.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "--tasks: nope not in the many section" in out.stderr


@pytest.mark.parametrize("args, message", [(["--threads", "0"], "--threads: 0 is not a number of threads"),
                                           (["--section", "xsum", "--tasks", "pick-two"], "--section xsum has none")])
def test_quality_refuses_an_option_it_would_ignore(tmp_path, args, message):
    out = subprocess.run([sys.executable, str(BENCH / "quality.py"), *args, "--output", str(tmp_path / "q.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert message in out.stderr


def test_frontier_delta_measures_against_the_upper_envelope_of_the_reference():
    """Coverage falls again at T = 1.3 while precision collapses: MLE seed 2's points (26.5, 91.6) at T = 0.7,
    (35.4, 84.0) at T = 1 and (30.0, 22.9) at T = 1.3. The reference frontier is their upper envelope, so a point at
    coverage 31 is measured against the line from (26.5, 91.6) to (35.4, 84.0), not against the collapsed point."""
    quality = quality_module("quality_runner")
    ref = {"T=0.7": {"coverage": 26.5, "precision": 91.6}, "T=1": {"coverage": 35.4, "precision": 84.0},
           "T=1.3": {"coverage": 30.0, "precision": 22.9}}
    assert quality.upper_envelope([(p["coverage"], p["precision"]) for p in ref.values()]) == [(26.5, 91.6),
                                                                                             (35.4, 84.0)]
    other = {"T=0.7": {"coverage": 31.0, "precision": 85.0}, "T=1": {"coverage": 40.0, "precision": 80.0},
             "T=1.3": {"coverage": 20.0, "precision": 95.0}}
    d = quality.frontier_delta(ref, other, [0.7, 1.0, 1.3])
    on_line = 91.6 + (84.0 - 91.6) * (31.0 - 26.5) / (35.4 - 26.5)
    assert d["T=0.7"]["delta"] == pytest.approx(85.0 - on_line) and not d["T=0.7"]["extrapolated"]
    assert d["T=1"] == {"delta": pytest.approx(-4.0), "extrapolated": True}
    assert d["T=1.3"] == {"delta": pytest.approx(95.0 - 91.6), "extrapolated": True}


def test_the_cpu_preset_costs_only_its_own_runs():
    """The cpu preset: arithmetic trains MLE, entropy-MLE, GEM, DFT and the default IQLearn; the other value forms,
    online IQLearn, `between` and GSM8k are their own commands (their records are kept and summarised)."""
    preset = quality_module().PRESETS["cpu"]
    timed = {"threads": "1", "resumed": False, "seconds": 600}
    runs = {f"{v}-s1": {"variant": v, **timed} for v in preset["arithmetic"]["variants"]}
    lines = quality_module("quality_tables").cost_table({"preset": "cpu", "arithmetic": {"runs": runs},
                                                         "gsm8k": {"runs": {}}}, preset)
    row = next(line for line in lines if line.startswith("| arithmetic "))
    assert "| 5 variants × 2 seeds | 5 |" in row and row.endswith("| 1.7 |")  # 5 × 2 × 10 min
    assert not any(line.startswith("| gsm8k ") for line in lines) and "gsm8k" not in lines[-1]


def test_the_overtraining_cost_counts_each_tasks_own_variants_and_budgets():
    """A task with its own variants and shorter budgets is costed by those, and a task without shorter budgets has
    no row for them."""
    preset = quality_module().PRESETS["cpu"]
    cfg = preset["overtraining"]
    preset = {**preset, "overtraining": {**cfg, "tasks": {**cfg["tasks"], "between": {
        "variants": ["mle", "iq-best"], "short_budgets": []}}}}
    timed = {"threads": "1", "resumed": False, "seconds": 1200}
    runs = {f"{v}-s1": {"variant": v, "seed": 1, **timed} for v in ("mle", "iq-best")}
    lines = quality_module("quality_tables").cost_table(
        {"preset": "cpu", "overtraining": {"between": {"runs": runs}}}, preset)
    row = next(line for line in lines if line.startswith("| overtraining / between |"))
    assert "| 2 variants × 3 seeds | 2 |" in row and row.endswith("| 2.0 |")  # 2 × 3 × 20 min
    assert not any(line.startswith("| overtraining / between, MLE's shorter budgets") for line in lines)
    assert "pick-two, MLE's shorter budgets" in lines[-1]  # pick-two has them: not timed in this record


def overtraining_point(validation_nll, cov_prec):
    return {"validation_nll": validation_nll, **{f"T={t:g}": {"coverage": c, "precision": p, "pass_at_k": []}
                                                 for t, (c, p) in cov_prec.items()}}


def test_a_frontier_beyond_the_references_coverage_is_judged_by_dominance():
    """Long MLE on `between` stops at 66% coverage; a method whose every temperature covers more, and more precisely,
    has no point at equal coverage (no envelope Δ), but its frontier dominates; a crossing frontier dominates neither."""
    runner = quality_module("quality_runner")
    grid = [0.5, 1.0, 1.3]
    mle = overtraining_point(3.5, {0.5: (37, 88), 1.0: (60, 89), 1.3: (66, 88)})
    beyond = overtraining_point(2.8, {0.5: (67, 96), 1.0: (79, 90), 1.3: (81, 80)})
    crossing = overtraining_point(2.8, {0.5: (30, 95), 1.0: (70, 70), 1.3: (75, 60)})
    assert runner.envelope_delta(mle, beyond, grid) is None
    assert runner.frontier_dominates(mle, beyond, grid) and not runner.frontier_dominates(beyond, mle, grid)
    assert not runner.frontier_dominates(mle, crossing, grid) and not runner.frontier_dominates(crossing, mle, grid)
    assert not runner.frontier_dominates(mle, mle, grid)  # equal frontiers: neither beats the other
    paired = quality_module("quality_overtraining").paired({1: beyond, 2: crossing}, {1: mle, 2: mle}, grid)
    assert (paired["dominates"], paired["dominated"]) == (1, 0)


def test_the_lambda_screen_takes_the_closest_to_the_expert_that_keeps_mles_precision():
    ot = quality_module("quality_overtraining")
    grid = [0.7, 1.0]
    mle = overtraining_point(5.0, {0.7: (30, 90), 1.0: (40, 70)})
    screen = {"lambdas": [0.01, 0.1, 1.0], "runs": {
        "mle": {"grid": {"final": mle}},
        "iq-reference-0.01": {"grid": {"final": overtraining_point(4.9, {0.7: (30, 90), 1.0: (40, 70)})}},
        "iq-reference-0.1": {"grid": {"final": overtraining_point(4.7, {0.7: (31, 89), 1.0: (41, 69)})}},
        # closest to the expert, but 10 points of precision below MLE at equal coverage: not admissible
        "iq-reference-1": {"grid": {"final": overtraining_point(4.5, {0.7: (30, 80), 1.0: (40, 60)})}}}}
    assert ot.choose_lambda(screen, grid) == 0.1
    # judged envelope against envelope: a hot temperature that another of its own beats in coverage and precision is
    # never one a user samples at, so its collapse does not count against the λ
    runner = quality_module("quality_runner")
    mle3 = overtraining_point(5.0, {0.7: (30, 90), 1.0: (40, 70), 1.3: (35, 40)})
    hot = overtraining_point(4.6, {0.7: (31, 89), 1.0: (41, 69), 1.3: (20, 5)})
    assert runner.envelope_delta(mle3, hot, [0.7, 1.0, 1.3]) == pytest.approx(89 - 88)
    del screen["runs"]["iq-reference-1"]
    assert ot.choose_lambda(screen, grid) is None  # not every λ has finished


def test_tuned_mle_is_the_best_of_its_long_run_and_shorter_budgets_by_validation_nll():
    ot = quality_module("quality_overtraining")
    long = {"best_epoch": 6, "grid": {"best": {"validation_nll": 5.2}}}
    shorts = {2: {"point": {"validation_nll": 5.4}}, 3: {"point": {"validation_nll": 5.1}}}
    assert ot.tuned_mle(long, shorts) == {"label": "3 epochs", "epoch": 3, "point": {"validation_nll": 5.1}}
    assert ot.tuned_mle(long, {2: shorts[2]})["label"] == "long"
