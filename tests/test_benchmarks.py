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


def quality_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality", BENCH / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_cost_counts_the_presets_runs_from_timed_runs_only():
    quality = quality_module()
    cfg = quality.PRESETS["cpu"]["many"]
    task = next(iter(cfg["tasks"]))
    timed = {"threads": "1", "resumed": False}
    runs = {"mle-s1": {"variant": "mle", "seconds": 600, **timed}, "mle-s3": {"variant": "mle", "seconds": 1200, **timed},
            # none of these is a timing of the preset: read back from the cache, resumed, run with every core's threads
            "gem-s1": {"variant": "gem", "seconds": 0.01, **timed},
            "gem-s2": {"variant": "gem", "seconds": 6000, "threads": "1", "resumed": True},
            "dft-s1": {"variant": "dft", "seconds": 6000, "threads": None, "resumed": False}}
    lines = quality.cost_table({"preset": "cpu", "many": {task: {"runs": runs}}})
    row = next(line for line in lines if line.startswith(f"| many / {task} "))
    # every variant without a timed run takes the median of the timed ones (15 min), marked as an estimate
    hours = 15 * len(cfg["variants"]) * len(cfg["seeds"]) / 60
    assert row.endswith(f"| 2 | 15 (10–20) | ~{hours:.1f} |")
    assert "many / between" in lines[-1]  # no run of it: named as not timed


def test_quality_records_the_machine_each_run_was_timed_on(tmp_path):
    """A run's time and precision mean little without the CPU (bf16 autocast is 28x slower on one without bf16
    instructions, so an unset --bf16 trains in float32 there): each run records torch's capability level and tirl's
    answer to whether the CPU has bf16."""
    import torch

    from tirl.hardware import cpu_has_native_bf16

    timing = quality_module().run_timing(tmp_path)
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
