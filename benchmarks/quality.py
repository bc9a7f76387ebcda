"""Quality: does IQLearn give something MLE does not? One section per claim of the paper, each judged against MLE
and against entropy-regularised MLE (the paper's other baseline), mean ± s.e.m. over seeds.

Variants (every section trains the same ones; the preset fixes λ, β and the value forms):
    mle            --method mle                        plain SFT
    ent-mle        --method mle --entropy_coef β        entropy-regularised MLE
    gem            --method gem (β = 0.7, logsigmoid)   GEM (Li et al. 2025), the authors' defaults
    dft            --method dft                        DFT (Wu et al. 2025), TRL's loss_type="dft"
    iq-logits      --iq_value logits    --iq_lambda λ   V = logsumexp(logits) (the first implementation)
    iq-reference   --iq_value reference --iq_lambda λ   V = LSE_θ − LSE_θ0 (V ≡ 0 at the start)
    iq-head        --iq_value head      --iq_lambda λ   V = a zero-initialised value head
    iq-online      --method iqlearn-online, α = 0.1     (arithmetic and many-answer: online IQLearn on real tasks)

Sections:
    arithmetic   SmolLM2-135M on the generated GSM8k-style task, where a 135M model's accuracy moves. A small
                 subset, several epochs, a checkpoint per epoch: held-out −log π and greedy accuracy per epoch
                 (overfitting / data efficiency, paper Fig. 7). The checkpoint with the best held-out −log π (early
                 stopping, as a user would) is then sampled at T ∈ {0.5, 0.7, 1.0} with K samples, plus greedy:
                 accuracy against Self-BLEU along each method's temperature frontier (paper Fig. 4).
    xsum         SmolLM2 on XSum (articles cut to their lead, `xsum-lead`, so it fits a CPU): the same frontier with
                 ROUGE-1, then reward quality on a continuous metric: Spearman of each model's R = Σ r_t against
                 sentence ROUGE-1 over one shared pool of samples, within prompt and overall, with Σ log π as the bar
                 a reward must clear (paper: TL;DR ρ(R, ROUGE-1) 0.64 for IQLearn vs −0.05 for MLE).
    gsm8k        the paper-comparable row. Floor-bound at 135M: every method, untrained included, scores 2–10%.
    many         many-answer tasks with a known, uniform expert (`tirl.data.many_answer`: pick-two, between): per
                 epoch, precision and coverage of K = 32 samples along T, pass@k for k up to 32, the held-out expert NLL
                 (= forward KL + log|valid|); paired Δ against MLE, entropy-MLE, GEM and DFT; and the paper's reward
                 protocol on pick-two: Spearman of R with validity across prompts, online IQLearn (α = 0.1) included.
    grammar      a known expert (`tirl.data.grammar`): small Llama from scratch, offline variants plus online
                 IQLearn and GAIL; exact forward KL, P(valid), and compounding error (validity after t symbols).

    python benchmarks/quality.py                          # CPU preset, every section (see README for its time)
    python benchmarks/quality.py --section grammar        # one section
    python benchmarks/quality.py --preset screen          # the λ / β screen that chose the CPU preset's values
    python benchmarks/quality.py --preset smoke           # tiny models, a few minutes (checks the script)
    bash benchmarks/gpu.sh quality                        # full scale on a GPU (preset "gpu")

Writes benchmarks/results/quality.json (or quality_<preset>.json), quality_*.png and quality.md (the tables).
Runs are cached under benchmarks/runs/quality/<preset>/ (git-ignored): an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sections' shared modules beside this file
import quality_overtraining  # noqa: E402
from quality_runner import (  # noqa: E402
    CACHED_ONLY,
    MANY_KS,
    PRECISION,
    SKIP_REWARDS,
    THREADS,
    evaluate,
    evaluate_passes,
    fmt_mean_sem,
    frontier_delta,
    log_history,
    mean_sem,
    run_timing,
    tirl,
    train,
)

_ms = fmt_mean_sem

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = HERE / "runs" / "quality"


def variants(lam_logits: float, lam_reference: float, lam_head: float, beta: float, online_alpha: float = 0.1,
             online_form: str = "reference", online_lambda: float | None = None, extra: dict | None = None) -> dict:
    """The variants every section trains: name -> `tirl train` arguments (plus `extra` ones, for screens)."""
    out = {
        "mle": ["--method", "mle"],
        "ent-mle": ["--method", "mle", "--entropy_coef", f"{beta:g}"],
        "gem": ["--method", "gem", "--gem_beta", "0.7", "--gem_h", "logsigmoid"],
        "dft": ["--method", "dft"],
        "iq-logits": ["--method", "iqlearn", "--iq_value", "logits", "--iq_lambda", f"{lam_logits:g}"],
        "iq-reference": ["--method", "iqlearn", "--iq_value", "reference", "--iq_lambda", f"{lam_reference:g}"],
        "iq-head": ["--method", "iqlearn", "--iq_value", "head", "--iq_lambda", f"{lam_head:g}"],
        "iq-online": ["--method", "iqlearn-online", "--iq_alpha", f"{online_alpha:g}", "--iq_value", online_form,
                      "--iq_lambda", f"{online_lambda if online_lambda is not None else lam_reference:g}",
                      "--max_new_tokens", "64"],
    }
    out.update(extra or {})
    return out


# λ per value form and β from the screen below (seed 0, arithmetic): the largest value whose held-out −log π did not
# rise above MLE's. λ = 0.1 already costs accuracy there for both logits and reference (see README, "Does IQLearn beat
# MLE?"); the head form starts from the same r_t = log π_θ0 as reference, so it takes reference's λ.
CPU_VARIANTS = variants(lam_logits=0.01, lam_reference=0.01, lam_head=0.01, beta=0.1)

# The many-answer section: SmolLM2-135M on generated tasks with a known, uniform expert (`tirl.data.many_answer`),
# 32 prompts x 4 uniform draws, 3 epochs, every epoch evaluated on 16 test prompts: greedy, K = 32 samples at each
# temperature, the held-out expert NLL. pick-two (copying two different words of a list) is the main task; between
# (a number between two bounds) repeats the comparison for a few variants. Arithmetic-constrained tasks (sum-pairs,
# countdown) stay at the floor at this size (3% valid samples at T = 1 after 48 MLE steps), like GSM8k.
# λ per value form from the screen's many section (pick-two, seed 0): the λ with the lowest held-out expert NLL,
# logits 0.001, reference 0.01, head 0.1 (results/quality_screen.md).
MANY_CPU = {"model": "smollm2-135m", "seeds": [1, 2], "train_examples": 128, "epochs": 3, "batch": 8, "lr": 5e-5,
            "eval_rows": 32, "prompts": 16, "samples": 32, "temperatures": [0.5, 0.7, 1.0, 1.3], "max_new_tokens": 16,
            "eval_batch": 128, "references": ["mle", "ent-mle", "gem", "dft"],
            "variants": ["mle", "ent-mle", "gem", "dft", "iq-reference", "iq-logits", "iq-head", "iq-online"],
            "variant_args": variants(lam_logits=0.001, lam_reference=0.01, lam_head=0.1, beta=0.1),
            "tasks": {"pick-two": {"rewards": True},
                      "between": {"variants": ["mle", "gem", "iq-reference"], "extra_task": True}}}

PRESETS: dict[str, dict] = {
    "cpu": {
        "variants": CPU_VARIANTS,
        "arithmetic": {"model": "smollm2-135m", "dataset": "arithmetic", "seeds": [1, 2], "train_examples": 64,
                       "epochs": 5, "batch": 8, "lr": 5e-5, "eval_rows": 64, "prompts": 32, "samples": 4,
                       "temperatures": [0.5, 0.7, 1.0, 1.5], "max_new_tokens": 64, "eval_batch": 128,
                       "variants": ["mle", "ent-mle", "gem", "dft", "iq-logits", "iq-reference", "iq-head",
                                    "iq-online"],
                       "extra": ["iq-logits", "iq-head", "iq-online"]},
        "xsum": {"model": "smollm2-135m", "dataset": "xsum-lead", "seeds": [1], "train_examples": 160, "epochs": 1,
                 "batch": 4, "lr": 5e-5, "eval_rows": 32, "prompts": 32, "samples": 4, "temperatures": [0.5, 0.7, 1.0],
                 "max_new_tokens": 64, "eval_batch": 64, "reward_prompts": 48, "reward_samples": 4,
                 "variants": ["mle", "ent-mle", "iq-logits", "iq-reference", "iq-head", "iq-online"],
                 "extra": ["ent-mle", "iq-logits", "iq-head"]},
        "gsm8k": {"model": "smollm2-135m", "dataset": "gsm8k", "seeds": [1], "train_examples": 320, "max_steps": 40,
                  "batch": 4, "lr": 5e-5, "eval_rows": 16, "prompts": 40, "samples": 4, "temperatures": [1.0],
                  "max_new_tokens": 160, "eval_batch": 64,
                  "variants": ["mle", "ent-mle", "iq-logits", "iq-reference", "iq-head"], "extra_section": True},
        "grammar": {"model": "small-llama", "seeds": [0, 1, 2], "train_examples": 2000, "max_steps": 200, "batch": 32,
                    "lr": 2e-3, "num_samples": 400, "online_alpha": 0.1, "gail_steps": 200,
                    "variants": ["mle", "ent-mle", "iq-logits", "iq-reference", "iq-head", "iq-online", "gail"]},
        "many": MANY_CPU,
        "overtraining": {**quality_overtraining.OVERTRAINING_CPU, "extra_section": True},
    },
    # the λ / β screen behind the CPU preset's choice: one seed, a grid per value form, arithmetic only
    "screen": {
        "variants": variants(lam_logits=0.01, lam_reference=0.1, lam_head=0.1, beta=0.1, extra={
            "ent-mle-0.03": ["--method", "mle", "--entropy_coef", "0.03"],
            "ent-mle-0.3": ["--method", "mle", "--entropy_coef", "0.3"],
            "iq-logits-0.1": ["--method", "iqlearn", "--iq_value", "logits", "--iq_lambda", "0.1"],
            "iq-reference-1": ["--method", "iqlearn", "--iq_value", "reference", "--iq_lambda", "1"],
            "iq-reference-0.01": ["--method", "iqlearn", "--iq_value", "reference", "--iq_lambda", "0.01"],
            "iq-head-1": ["--method", "iqlearn", "--iq_value", "head", "--iq_lambda", "1"],
            "iq-reference-1-warmup": ["--method", "iqlearn", "--iq_value", "reference", "--iq_lambda", "1",
                                      "--iq_lambda_warmup_steps", "16"],
            "iq-logits-0.001": ["--method", "iqlearn", "--iq_value", "logits", "--iq_lambda", "0.001"],
            "iq-head-0.01": ["--method", "iqlearn", "--iq_value", "head", "--iq_lambda", "0.01"],
        }),
        "arithmetic": {"model": "smollm2-135m", "dataset": "arithmetic", "seeds": [0], "train_examples": 64,
                       "epochs": 5, "batch": 8, "lr": 5e-5, "eval_rows": 64, "prompts": 32, "samples": 4,
                       "temperatures": [0.7, 1.0], "max_new_tokens": 64, "eval_batch": 128,
                       "variants": ["mle", "ent-mle-0.03", "ent-mle", "ent-mle-0.3", "iq-logits", "iq-logits-0.1",
                                    "iq-reference-0.01", "iq-reference", "iq-reference-1", "iq-reference-1-warmup",
                                    "iq-head", "iq-head-1"]},
        # λ per value form on the many-answer task, seed 0 (the reported seeds are 1-5), the final epoch at T = 1 and
        # the held-out expert NLL; the screen's λ are 0.01 (logits), 0.1 (reference, head) unless named
        "many": {**MANY_CPU, "seeds": [0], "temperatures": [1.0], "tasks": {"pick-two": {}}, "variant_args": {},
                 "variants": ["mle", "iq-reference-0.01", "iq-reference", "iq-reference-1", "iq-logits-0.001",
                              "iq-logits", "iq-logits-0.1", "iq-head-0.01", "iq-head", "iq-head-1"]},
    },
    # full scale, for one GPU (`benchmarks/gpu.sh quality`)
    "gpu": {
        "variants": CPU_VARIANTS,
        "arithmetic": {"model": "smollm2-135m", "dataset": "arithmetic", "seeds": [0, 1, 2], "train_examples": 256,
                       "epochs": 8, "batch": 16, "lr": 5e-5, "eval_rows": 256, "prompts": 200, "samples": 4,
                       "temperatures": [0.5, 0.7, 1.0], "max_new_tokens": 64, "eval_batch": 256,
                       "variants": ["mle", "ent-mle", "gem", "dft", "iq-logits", "iq-reference", "iq-head",
                                    "iq-online"]},
        "xsum": {"model": "smollm2-135m", "dataset": "xsum", "seeds": [0, 1, 2], "train_examples": 800, "epochs": 2,
                 "batch": 16, "lr": 5e-5, "eval_rows": 200, "prompts": 200, "samples": 4,
                 "temperatures": [0.5, 0.7, 1.0], "max_new_tokens": 64, "eval_batch": 128, "reward_prompts": 200,
                 "reward_samples": 8, "variants": ["mle", "ent-mle", "iq-logits", "iq-reference", "iq-head"]},
        "gsm8k": {"model": "smollm2-135m", "dataset": "gsm8k", "seeds": [0, 1, 2], "train_examples": None,
                  "epochs": 1, "batch": 16, "lr": 5e-5, "eval_rows": 256, "prompts": None, "samples": 4,
                  "temperatures": [1.0], "max_new_tokens": 256, "eval_batch": 256,
                  "variants": ["mle", "ent-mle", "iq-logits", "iq-reference", "iq-head"]},
        "grammar": {"model": "llama-10m", "seeds": [0, 1, 2], "train_examples": 5000, "max_steps": 500, "batch": 64,
                    "lr": 1e-3, "num_samples": 1000, "online_alpha": 0.1, "gail_steps": 500,
                    "variants": ["mle", "ent-mle", "iq-logits", "iq-reference", "iq-head", "iq-online", "gail"]},
        # SmolLM2-360M (a hub id, or a local directory with --model), 5 seeds of every variant, both tasks
        "many": {**MANY_CPU, "model": "HuggingFaceTB/SmolLM2-360M-Instruct", "seeds": [1, 2, 3, 4, 5],
                 "train_examples": 256, "prompts": 50, "eval_batch": 256,
                 "tasks": {"pick-two": {}, "between": {}, "sum-pairs": {}}},
    },
    "smoke": {
        "variants": variants(lam_logits=0.01, lam_reference=0.1, lam_head=0.1, beta=0.1),
        "arithmetic": {"model": "tiny-llama", "dataset": "arithmetic", "seeds": [0, 1], "train_examples": 16,
                       "epochs": 2, "batch": 8, "lr": 3e-3, "eval_rows": 8, "prompts": 4, "samples": 2,
                       "temperatures": [0.7, 1.0], "max_new_tokens": 8, "eval_batch": 16,
                       "variants": ["mle", "ent-mle", "iq-reference", "iq-head", "iq-online"]},
        "xsum": {"model": "tiny-llama", "dataset": "arithmetic", "seeds": [0], "train_examples": 16, "epochs": 1,
                 "batch": 8, "lr": 3e-3, "eval_rows": 8, "prompts": 4, "samples": 2, "temperatures": [1.0],
                 "max_new_tokens": 8, "eval_batch": 16, "reward_prompts": 4, "reward_samples": 2,
                 "variants": ["mle", "iq-reference", "iq-head"]},
        "grammar": {"model": "tiny-llama", "seeds": [0], "train_examples": 200, "max_steps": 6, "batch": 16,
                    "lr": 3e-3, "num_samples": 40, "online_alpha": 0.25, "gail_steps": 3,
                    "variants": ["mle", "ent-mle", "iq-reference", "iq-head", "iq-online", "gail"]},
        "many": {**MANY_CPU, "model": "tiny-llama", "seeds": [0, 1], "train_examples": 16, "epochs": 2, "lr": 3e-3,
                 "eval_rows": 8, "prompts": 3, "samples": 4, "temperatures": [0.7, 1.0], "max_new_tokens": 8,
                 "eval_batch": 16, "variants": ["mle", "gem", "dft", "iq-reference"],
                 "tasks": {"pick-two": {}, "between": {"variants": ["mle", "iq-reference"], "seeds": [0]}}},
        "overtraining": quality_overtraining.OVERTRAINING_SMOKE,
    },
}
SECTIONS = ("arithmetic", "xsum", "gsm8k", "grammar", "many", "overtraining")


def frontier_evals(cfg: dict, model: str, eval_root: Path, expert_nll: bool = False) -> dict:
    """Greedy plus K samples at each temperature of `cfg`: {"greedy": metrics, "T=0.5": metrics, ...}, in one
    process; `expert_nll` on the greedy pass (many-answer tasks)."""
    evals = evaluate_passes(cfg, model, eval_root, {"greedy": None, **{f"t{t:g}": t for t in cfg["temperatures"]}},
                            expert_nll=expert_nll)
    return {"greedy": evals["greedy"], **{f"T={t:g}": evals[f"t{t:g}"] for t in cfg["temperatures"]}}


def points(evals: dict, score: str) -> dict:
    """Per pass: task score (×100 for accuracies), Self-BLEU (100 for greedy), entropy and distinct-2."""
    scale = 100.0 if score.startswith(("accuracy", "pass_at_k")) else 1.0
    out = {}
    for name, m in evals.items():
        p = m["greedy"] if name == "greedy" else m["sampled"]
        out[name] = {"score": scale * p[score], "self_bleu": 100.0 if name == "greedy" else p.get("self_bleu"),
                     "entropy": p.get("entropy"), "distinct_2": p.get("distinct_2"), "mean_tokens": p.get("mean_tokens")}
        if p.get("pass_at_k"):
            out[name]["pass_at_k"] = [100.0 * x for x in p["pass_at_k"]]
    return out


def along_frontier(ref: dict, other: dict) -> dict:
    """Score of `other`'s sampled points minus the reference frontier's score at the same Self-BLEU.

    The reference frontier is piecewise linear through its points sorted by Self-BLEU (greedy at 100); outside its
    range the nearest end is used (flagged `extrapolated`). Positive = better at equal diversity."""
    curve = sorted((p["self_bleu"], p["score"]) for p in ref.values() if p["self_bleu"] is not None)
    out = {}
    for name, p in other.items():
        if name == "greedy" or p["self_bleu"] is None:
            continue
        x = p["self_bleu"]
        if x <= curve[0][0]:
            y, extra = curve[0][1], x < curve[0][0]
        elif x >= curve[-1][0]:
            y, extra = curve[-1][1], x > curve[-1][0]
        else:
            (x0, y0), (x1, y1) = next(((a, b) for a, b in zip(curve, curve[1:], strict=False) if a[0] <= x <= b[0]))
            y, extra = y0 + (y1 - y0) * (x - x0) / max(x1 - x0, 1e-9), False
        out[name] = {"delta": p["score"] - y, "extrapolated": extra}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Sections on real tasks: arithmetic (overfitting + frontier), xsum (frontier + rewards), gsm8k (floor row)


def task_section(name: str, cfg: dict, all_variants: dict, runs: Path, score: str, per_epoch: bool,
                 rewards: bool = False, recorded: dict | None = None, recorded_rewards: dict | None = None) -> dict:
    """One task: every variant and seed trained and evaluated (cached under `runs`). `recorded`: the section's runs
    in an earlier results file; a run whose directory is gone (runs are not committed) is taken from there instead of
    trained again, so a section can gain variants without rerunning the others."""
    recorded = recorded or {}
    section: dict = {"config": cfg, "score": score, "runs": {}}
    base_evals = frontier_evals(cfg, cfg["model"], runs / "untrained" / "eval")
    section["untrained"] = points(base_evals, score)
    for vname in cfg["variants"]:
        for seed in seeds_of(cfg, vname, runs, recorded):
            key = f"{vname}-s{seed}"
            if key in recorded and not (runs / key / "metrics.json").is_file():
                section["runs"][key] = recorded[key]
                continue
            last = runs / key / "eval" / "frontier" / f"t{cfg['temperatures'][-1]:g}" / "metrics.json"
            if (CACHED_ONLY or vname in cfg.get("extra", ())) and not last.is_file():  # not finished, or not asked for
                continue
            t0, timing = time.time(), run_timing(runs / key)
            run_dir = train(cfg, all_variants[vname], seed, runs / key, per_epoch)
            entry: dict = {"variant": vname, "seed": seed}
            model = str(run_dir)
            if per_epoch:
                entry["epochs"] = epoch_curve(cfg, run_dir, runs / key / "eval", score, section["untrained"])
                best = min(entry["epochs"], key=lambda e: e["heldout_nll"] if e["epoch"] > 0 else math.inf)
                entry["best_epoch"] = best["epoch"]
                model = best["checkpoint"]
            evals = frontier_evals(cfg, model, runs / key / "eval" / "frontier")
            entry["frontier"] = points(evals, score)
            entry["train"] = json.loads((run_dir / "metrics.json").read_text()).get("eval_after", {})
            entry.update(seconds=time.time() - t0, **timing)
            timed = runs / key / "timing.json"  # the first, whole run's time outlives later summaries from the cache
            if timing["resumed"] and timed.is_file():
                entry.update(json.loads(timed.read_text()))
            elif not timing["resumed"]:
                timed.write_text(json.dumps({k: entry[k] for k in ("seconds", "resumed", "threads", "cpu")}) + "\n")
            section["runs"][key] = entry
            if per_epoch:  # keep the chosen checkpoint and the final model; the others were only for the curves
                for ck in run_dir.glob("checkpoint-*"):
                    if str(ck) != model:
                        shutil.rmtree(ck, ignore_errors=True)
    section["summary"] = summarise(section, cfg)
    plot_frontiers(section, cfg, result_path(f"quality_{name}_frontier.png"), score)
    if per_epoch:
        plot_epochs(section, cfg, result_path(f"quality_{name}_epochs.png"), score)
    if rewards:
        section["rewards"] = reward_section(cfg, section, runs, recorded_rewards)
    return section


def seeds_of(cfg: dict, vname: str, runs: Path, recorded: dict | None = None) -> list[int]:
    """The seeds to run and summarise for a variant: the preset's (or `--seeds`), plus, unless `--seeds` restricts
    them, every other seed whose training run is in the cache or in the recorded results (more seeds for some
    variants, run with `--seeds` and `--variants`, enter the summary without training the others' too)."""
    seeds = list(cfg["seeds"])
    if not cfg.get("seeds_given"):
        suffixes = [d.name[len(vname) + 2:] for d in runs.glob(f"{vname}-s*") if (d / "metrics.json").is_file()]
        suffixes += [k[len(vname) + 2:] for k in (recorded or {}) if k.startswith(f"{vname}-s")]
        seeds += sorted({int(x) for x in suffixes if x.isdigit() and int(x) not in seeds})
    return seeds


def plot_frontiers(section: dict, cfg: dict, png: Path, score: str) -> None:
    """Each variant's temperature frontier (score against Self-BLEU, greedy at 100), mean ± s.e.m. over its seeds,
    drawn from the section's summary (so recorded runs without their directories are drawn too)."""
    from tirl.plots import pyplot as _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 5.6))
    passes = ["greedy", *[f"T={t:g}" for t in cfg["temperatures"]]]
    series = {"untrained": {p: {"score": {"mean": v["score"]}, "self_bleu": {"mean": v["self_bleu"]}}
                            for p, v in section["untrained"].items()}}
    series.update({v: s["frontier"] for v, s in section["summary"].items()})
    for vname, frontier in series.items():
        pts = [(frontier[p]["self_bleu"], frontier[p]["score"], p) for p in passes if p in frontier]
        xs, ys = [x["mean"] for x, _, _ in pts], [y["mean"] for _, y, _ in pts]
        line = ax.plot(xs, ys, marker="o", ms=5, lw=1.3, label=vname)[0]
        ax.errorbar(xs, ys, xerr=[x.get("sem") or 0 for x, _, _ in pts], yerr=[y.get("sem") or 0 for _, y, _ in pts],
                    fmt="none", ecolor=line.get_color(), elinewidth=0.8, capsize=2)
    ax.set_xlabel("Self-BLEU of the K samples per prompt (← more diverse; greedy = 100)")
    ax.set_ylabel(f"{score} (↑ better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{cfg['dataset']}: {score} along each method's temperature frontier "
                 f"(T = {', '.join(f'{t:g}' for t in cfg['temperatures'])}; mean ± s.e.m. over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def epoch_curve(cfg: dict, run_dir: Path, eval_root: Path, score: str, untrained: dict) -> list[dict]:
    """Per epoch: held-out −log π (the trainer's eval on held-out rows) and the greedy task score of the checkpoint.

    Kept in `epoch_curve.json` beside the run: after it, only the chosen checkpoint is kept (a resumed benchmark
    reads the curve from there)."""
    cached = run_dir / "epoch_curve.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    history = log_history(run_dir)
    before = json.loads((run_dir / "metrics.json").read_text()).get("eval_before", {})
    scale = 100.0 if score.startswith("accuracy") else 1.0
    curve = [{"epoch": 0, "heldout_nll": before.get("eval_mle_loss"), "greedy_score": untrained["greedy"]["score"],
              "checkpoint": None}]
    evals = {round(h["epoch"]): h for h in history if "eval_mle_loss" in h}
    for ck in sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        state = json.loads((ck / "trainer_state.json").read_text())
        epoch = round(state["epoch"])
        m = evaluate(cfg, str(ck), eval_root / f"epoch{epoch}", None)
        curve.append({"epoch": epoch, "heldout_nll": evals.get(epoch, {}).get("eval_mle_loss"),
                      "heldout_td": evals.get(epoch, {}).get("eval_td_loss"),
                      "greedy_score": scale * m["greedy"][score], "checkpoint": str(ck)})
    cached.write_text(json.dumps(curve, indent=1) + "\n")
    return curve


def summarise(section: dict, cfg: dict) -> dict:
    """Mean ± s.e.m. over seeds per variant, and paired differences to MLE and to entropy-MLE along their frontiers."""
    out: dict = {}
    by_variant: dict[str, list[dict]] = {}
    for entry in section["runs"].values():
        by_variant.setdefault(entry["variant"], []).append(entry)
    for vname, entries in by_variant.items():
        s: dict = {"seeds": len(entries), "frontier": {}}
        for pname in entries[0]["frontier"]:
            s["frontier"][pname] = {k: mean_sem([e["frontier"][pname][k] for e in entries])
                                    for k in ("score", "self_bleu", "entropy", "distinct_2")}
            curves = [e["frontier"][pname]["pass_at_k"] for e in entries if e["frontier"][pname].get("pass_at_k")]
            if curves:
                s["frontier"][pname]["pass_at_k"] = [mean_sem(list(c)) for c in zip(*curves, strict=False)]
        if "epochs" in entries[0]:
            n_epochs = min(len(e["epochs"]) for e in entries)
            s["epochs"] = [{"epoch": entries[0]["epochs"][i]["epoch"],
                            "heldout_nll": mean_sem([e["epochs"][i]["heldout_nll"] for e in entries]),
                            "greedy_score": mean_sem([e["epochs"][i]["greedy_score"] for e in entries])}
                           for i in range(n_epochs)]
            s["best_epoch"] = mean_sem([e["best_epoch"] for e in entries])
            s["min_heldout_nll"] = mean_sem([min(x["heldout_nll"] for x in e["epochs"][1:]) for e in entries])
            s["final_heldout_nll"] = mean_sem([e["epochs"][-1]["heldout_nll"] for e in entries])
            s["final_greedy_score"] = mean_sem([e["epochs"][-1]["greedy_score"] for e in entries])
            s["best_greedy_score"] = mean_sem([max(x["greedy_score"] for x in e["epochs"][1:]) for e in entries])
        for ref in ("mle", "ent-mle"):
            if ref not in by_variant or ref == vname:
                continue
            refs = {e["seed"]: e for e in by_variant[ref]}
            paired = [(e, refs[e["seed"]]) for e in entries if e["seed"] in refs]
            deltas: dict[str, list[float]] = {}
            extrapolated: dict[str, bool] = {}
            for e, r in paired:
                for pname, d in along_frontier(r["frontier"], e["frontier"]).items():
                    deltas.setdefault(pname, []).append(d["delta"])
                    extrapolated[pname] = extrapolated.get(pname, False) or d["extrapolated"]
            s[f"vs_{ref}"] = {p: {**mean_sem(v), "extrapolated": extrapolated[p]} for p, v in deltas.items()}
            s[f"vs_{ref}"]["greedy"] = mean_sem([e["frontier"]["greedy"]["score"] - r["frontier"]["greedy"]["score"]
                                                 for e, r in paired])
            if "epochs" in entries[0]:
                s[f"vs_{ref}"]["final_heldout_nll"] = mean_sem([e["epochs"][-1]["heldout_nll"] - r["epochs"][-1]["heldout_nll"]
                                                                for e, r in paired])
                s[f"vs_{ref}"]["final_greedy_score"] = mean_sem([e["epochs"][-1]["greedy_score"] - r["epochs"][-1]["greedy_score"]
                                                                 for e, r in paired])
        out[vname] = s
    return out


def plot_epochs(section: dict, cfg: dict, png: Path, score: str) -> None:
    from tirl.plots import pyplot as _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for vname, s in section["summary"].items():
        if "epochs" not in s:
            continue
        ep = [x["epoch"] for x in s["epochs"]]
        for ax, key in zip(axes, ("heldout_nll", "greedy_score"), strict=True):
            m = [x[key]["mean"] for x in s["epochs"]]
            e = [x[key]["sem"] or 0.0 for x in s["epochs"]]
            ax.errorbar(ep, m, yerr=e, marker="o", ms=4, capsize=2, label=vname)
    axes[0].set_title("held-out −log π per token (lower is better; log scale)", fontsize=10)
    axes[0].set_yscale("log")  # the epochs after the first differ by hundredths of a nat
    axes[1].set_title(f"greedy {score} (%) on held-out problems", fontsize=10)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    counts = sorted({s["seeds"] for s in section["summary"].values()})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    fig.suptitle(f"{cfg['dataset']}: {cfg['train_examples']} training rows, {cfg['epochs']} epochs "
                 f"(mean ± s.e.m. over {n} seed(s) per variant; each seed draws its own subset)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def reward_section(cfg: dict, section: dict, runs: Path, recorded: dict | None = None) -> dict:
    """Spearman of each model's R with sentence ROUGE-1 over one pool of MLE samples (the first seed's models).
    `recorded`: the section's earlier reward results. A variant whose model is no longer in the cache keeps its row if
    the pool is the same: the pool is MLE's samples, so it is when MLE's row, scored again, is unchanged. Otherwise
    the recorded rows move, MLE's with them, to `earlier_pool`: rows on different pools are not comparable."""
    from tirl.rewards.analysis import analysis_markdown

    kept = (recorded or {}).get("models", {})
    if CACHED_ONLY and not (runs / "reward-pool" / "metrics.json").is_file():
        return recorded or {}
    seed = cfg["seeds"][0]
    mle_model = _chosen_model(section, f"mle-s{seed}", runs)
    evaluate(cfg, mle_model, runs / "reward-pool", 1.0, samples=cfg["reward_samples"], prompts=cfg["reward_prompts"])
    # one `tirl rewards analyse` per model, each in its own directory: the unit of caching is a finished model (about
    # 10 min each on a core), and processes with different --variants share the work (benchmarks/README.md)
    analysis: dict = {}
    for vname in cfg["variants"]:
        out_dir = runs / "reward-analysis" / vname
        model = _chosen_model(section, f"{vname}-s{seed}", runs)
        if not (out_dir / "analysis.json").is_file() and (CACHED_ONLY or not Path(model).is_dir()):
            continue  # a recorded run (its model is gone), or --cached_only: its recorded row, if any, is kept below
        if not (out_dir / "analysis.json").is_file():
            if out_dir.exists():  # an interrupted analysis: start it again
                shutil.rmtree(out_dir)
            tirl("rewards", "analyse", "--models", model, "--labels", vname,
                 "--generations", str(runs / "reward-pool" / "generations.jsonl"), "--preference", "demonstrations",
                 "--num_pairs", "200", "--output_dir", str(out_dir))
        one = json.loads((out_dir / "analysis.json").read_text())
        for png in out_dir.glob("reward_*.png"):  # R against the sample score (XSum) or for right/wrong (GSM8k)
            shutil.copy(png, result_path(f"quality_{png.stem}.png"))
        analysis = {**one, "models": {**analysis.get("models", {}), **one["models"]}}
    if analysis:
        analysis["settings"]["models"] = [m["model"] for m in analysis["models"].values()]
        analysis["settings"]["labels"] = list(analysis["models"])
        result_path("quality_rewards_analysis.md").write_text(analysis_markdown(analysis))
    fresh = {k: {x: v.get(x) for x in ("iq_value", "gamma", "reward", "logprob", "reward_per_token", "preference",
                                       "mean_R")} for k, v in analysis.get("models", {}).items()}
    same_pool = "mle" not in fresh or (kept.get("mle") or {}).get("reward") == fresh["mle"]["reward"]
    out: dict = {"pool": f"{cfg['reward_prompts']} prompts × {cfg['reward_samples']} samples of mle-s{seed} at T = 1",
                 "models": {v: fresh.get(v) or kept[v] for v in cfg["variants"]
                            if v in fresh or (same_pool and v in kept)}}
    if not same_pool and kept:
        out["earlier_pool"] = {"pool": f"{recorded['pool']}, from an earlier training of mle-s{seed}", "models": kept}
    elif (recorded or {}).get("earlier_pool"):
        out["earlier_pool"] = recorded["earlier_pool"]
    return out


def _chosen_model(section: dict, key: str, runs: Path) -> str:
    entry = section["runs"].get(key, {})  # a run outside this process's --variants: its final model
    if "epochs" in entry:
        best = next(e for e in entry["epochs"] if e["epoch"] == entry["best_epoch"])
        return best["checkpoint"]
    return str(runs / key)



# ---------------------------------------------------------------------------------------------------------------------
# Many-answer tasks (`tirl.data.many_answer`): diversity where it has a right answer




def many_evals(cfg: dict, model: str, root: Path) -> dict:
    """One checkpoint on the task's test prompts: greedy (with the held-out expert NLL) and K samples at each
    temperature. Returns {"greedy": {...}, "expert": {...}, "T=0.5": {precision, coverage, pass_at_k, self_bleu}}."""
    out: dict = {}
    evals = frontier_evals(cfg, model, root, expert_nll=True)
    greedy = evals["greedy"]
    out["greedy"] = {"precision": 100.0 * greedy["greedy"]["precision"]}
    out["expert"] = greedy.get("expert")
    for t in cfg["temperatures"]:
        m = evals[f"T={t:g}"]["sampled"]
        out[f"T={t:g}"] = {"precision": 100.0 * m["precision"], "coverage": 100.0 * m["coverage"],
                           "pass_at_k": [100.0 * x for x in m["pass_at_k"]], "self_bleu": m.get("self_bleu"),
                           "entropy": m.get("entropy")}
    return out


def many_run(cfg: dict, variant: list[str], seed: int, run_dir: Path, base: dict) -> dict:
    """Train one variant (a checkpoint per epoch), evaluate every checkpoint; the epoch curve ends at the final model.
    Epoch 0 is the untrained model (`base`, shared). Only the final model is kept."""
    cached = run_dir / "many_curve.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    t0, timing = time.time(), run_timing(run_dir)
    train(cfg, variant, seed, run_dir, per_epoch=True)
    curve = [{"epoch": 0, **base}]
    history = {round(h["epoch"]): h for h in log_history(run_dir) if "eval_mle_loss" in h}
    for ck in sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        epoch = round(json.loads((ck / "trainer_state.json").read_text())["epoch"])
        evals = many_evals(cfg, str(ck), run_dir / "eval" / f"epoch{epoch}")
        curve.append({"epoch": epoch, "heldout_mle": history.get(epoch, {}).get("eval_mle_loss"), **evals})
    entry = {"curve": curve, "seconds": time.time() - t0, **timing}
    cached.write_text(json.dumps(entry, indent=1) + "\n")
    for ck in run_dir.glob("checkpoint-*"):  # the final model stays (run_dir itself)
        shutil.rmtree(ck, ignore_errors=True)
    return entry


def many_summary(runs: dict, cfg: dict, references: tuple[str, ...]) -> dict:
    """Per variant, mean ± s.e.m. over seeds of every figure at every epoch; and, paired by seed, the differences to
    each reference variant at the final epoch: precision at equal coverage along its frontier, pass@k at each
    temperature, the held-out expert NLL."""
    by_variant: dict[str, list[dict]] = {}
    for entry in runs.values():
        by_variant.setdefault(entry["variant"], []).append(entry)
    temps = [f"T={t:g}" for t in cfg["temperatures"]]
    out: dict = {}
    for vname, entries in by_variant.items():
        n_epochs = min(len(e["curve"]) for e in entries)
        epochs = []
        for i in range(n_epochs):
            pts = [e["curve"][i] for e in entries]
            row: dict = {"epoch": pts[0]["epoch"], "greedy_precision": mean_sem([p["greedy"]["precision"] for p in pts]),
                         "expert_nll": mean_sem([(p.get("expert") or {}).get("expert_nll") for p in pts]),
                         "forward_kl": mean_sem([(p.get("expert") or {}).get("forward_kl") for p in pts])}
            for t in temps:
                row[t] = {k: mean_sem([p[t][k] for p in pts]) for k in ("precision", "coverage", "self_bleu")}
                row[t]["pass_at_k"] = {k: mean_sem([p[t]["pass_at_k"][k - 1] for p in pts]) for k in MANY_KS
                                       if k <= min(len(p[t]["pass_at_k"]) for p in pts)}
            epochs.append(row)
        summary: dict = {"seeds": len(entries), "epochs": epochs}
        for ref in references:
            if ref == vname or ref not in by_variant:
                continue
            refs = {e["seed"]: e for e in by_variant[ref]}
            paired = [(e["curve"][-1], refs[e["seed"]]["curve"][-1]) for e in entries if e["seed"] in refs]
            if not paired:
                continue
            d: dict = {"seeds": len(paired)}
            deltas = [frontier_delta(r, a, cfg["temperatures"]) for a, r in paired]
            for t in temps:
                d[t] = {**mean_sem([x[t]["delta"] for x in deltas]),
                        "extrapolated": any(x[t]["extrapolated"] for x in deltas),
                        "pass_at_k": {k: mean_sem([a[t]["pass_at_k"][k - 1] - r[t]["pass_at_k"][k - 1]
                                                   for a, r in paired]) for k in MANY_KS
                                      if all(k <= len(a[t]["pass_at_k"]) for a, _ in paired)}}
            d["expert_nll"] = mean_sem([a["expert"]["expert_nll"] - r["expert"]["expert_nll"] for a, r in paired
                                        if a.get("expert") and r.get("expert")])
            d["greedy_precision"] = mean_sem([a["greedy"]["precision"] - r["greedy"]["precision"] for a, r in paired])
            summary[f"vs_{ref}"] = d
        out[vname] = summary
    return out


def many_section(cfg: dict, all_variants: dict, runs: Path, recorded: dict | None = None) -> dict:
    """Every task of `cfg["tasks"]`: its variants and seeds (a task may override the section's), per-epoch curves
    and final-epoch comparisons with MLE and the baselines; plots of the final frontier, pass@k and the epochs.
    `cfg["variant_args"]`: the section's own arguments for some variants (its own λ screen)."""
    recorded = recorded or {}
    all_variants = {**all_variants, **cfg.get("variant_args", {})}
    result: dict = {"config": cfg}
    for task, overrides in cfg["tasks"].items():
        tcfg = {**cfg, "dataset": task, **overrides}
        # a task's own variant list stays within the section's (which --variants may have narrowed)
        tcfg["variants"] = [v for v in tcfg["variants"] if v in cfg["variants"]]
        truns = runs / task
        before = recorded.get(task) or {}
        summarise_only = CACHED_ONLY or tcfg.pop("extra_task", False)  # an extra task, not named by --tasks
        if summarise_only:
            tcfg["extra"] = list(tcfg["variants"])
        if summarise_only and not list(truns.glob("*/many_curve.json")) and not before.get("runs"):
            continue
        untrained_cached = (truns / "untrained" / "eval" / "greedy" / "metrics.json").is_file()
        if summarise_only and not untrained_cached and before.get("untrained"):
            base = before["untrained"]  # summarising the recorded runs again (runs are not committed)
        else:
            base = many_evals(tcfg, tcfg["model"], truns / "untrained" / "eval")
        section: dict = {"config": {k: v for k, v in tcfg.items() if k != "tasks"}, "untrained": base, "runs": {}}
        previous = before.get("runs", {})
        for vname in tcfg["variants"]:
            for seed in seeds_of(tcfg, vname, truns, previous):
                key = f"{vname}-s{seed}"
                if key in previous and not (truns / key / "many_curve.json").is_file():
                    section["runs"][key] = previous[key]
                    continue
                if (CACHED_ONLY or vname in tcfg.get("extra", ())) and not (truns / key / "many_curve.json").is_file():
                    continue
                entry = many_run(tcfg, all_variants[vname], seed, truns / key, base)
                section["runs"][key] = {"variant": vname, "seed": seed, **entry}
                print(f"  {task} {key}: final precision/coverage at T=1 "
                      f"{entry['curve'][-1].get('T=1', {}).get('precision', float('nan')):.1f}/"
                      f"{entry['curve'][-1].get('T=1', {}).get('coverage', float('nan')):.1f}", flush=True)
        section["summary"] = many_summary(section["runs"], tcfg, references=tuple(cfg["references"]))
        plot_many(section, tcfg, result_path(f"quality_many_{task}.png"))
        if tcfg.get("rewards") and not SKIP_REWARDS:
            # the recorded analysis stays when its pool of samples is not in the cache
            section["rewards"] = many_reward_section(tcfg, truns) or before.get("rewards", {})
        elif before.get("rewards"):
            section["rewards"] = before["rewards"]
        result[task] = section
    return result


def many_reward_section(cfg: dict, runs: Path) -> dict:
    """The paper's reward protocol on a many-answer task: Spearman of each model's R = Σ r_t with validity over every
    sample of one shared pool (the first seed's MLE, its final model's K samples at T = 1 on the test prompts), across
    prompts and within each, with Σ log π as the bar. Within a prompt R ranks almost as Σ log π does (exactly at
    γ = 1; docs/method.md §4), so only the across-prompt figure can tell a reward from the likelihood."""
    seed = cfg["seeds"][0]
    pool = runs / f"mle-s{seed}" / "eval" / f"epoch{cfg['epochs']}" / "t1" / "generations.jsonl"
    if not pool.is_file():
        return {}
    models: dict = {}
    for vname in cfg["variants"]:
        model_dir, out_dir = runs / f"{vname}-s{seed}", runs / "reward-analysis" / vname
        if not (model_dir / "many_curve.json").is_file() or (CACHED_ONLY and not (out_dir / "analysis.json").is_file()):
            continue
        if not (out_dir / "analysis.json").is_file():
            if out_dir.exists():  # an interrupted analysis: start it again
                shutil.rmtree(out_dir)
            tirl("rewards", "analyse", "--models", str(model_dir), "--labels", vname, "--generations", str(pool),
                 "--preference", "demonstrations", "--num_pairs", "200", "--output_dir", str(out_dir))
        one = json.loads((out_dir / "analysis.json").read_text())["models"][vname]
        models[vname] = {x: one.get(x) for x in ("iq_value", "gamma", "reward", "logprob", "reward_per_token",
                                                 "preference", "mean_R", "mean_R_correct", "mean_R_wrong")}
    return {"pool": f"{cfg['prompts']} prompts × {cfg['samples']} samples of mle-s{seed} at T = 1 (final epoch)",
            "score": "valid", "models": models}


def plot_many(section: dict, cfg: dict, png: Path) -> None:
    """Three panels: precision against coverage along the temperatures at the final epoch; pass@k against k at
    T = 1 at the final epoch; pass@1 and pass@32 at T = 1 and the held-out expert NLL through the epochs."""
    from tirl.plots import pyplot as _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    temps = [f"T={t:g}" for t in cfg["temperatures"]]
    hot = "T=1" if "T=1" in temps else temps[-1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (vname, s) in enumerate(section["summary"].items()):
        color = colors[i % len(colors)]
        last = s["epochs"][-1]
        xs = [last[t]["coverage"]["mean"] for t in temps]
        ys = [last[t]["precision"]["mean"] for t in temps]
        axes[0].errorbar(xs, ys, xerr=[last[t]["coverage"]["sem"] or 0 for t in temps],
                         yerr=[last[t]["precision"]["sem"] or 0 for t in temps], marker="o", ms=4, lw=1.3, capsize=2,
                         color=color, label=f"{vname} ({s['seeds']})")
        for t, x, y in zip(temps, xs, ys, strict=True):
            axes[0].annotate(t.removeprefix("T="), (x, y), xytext=(3, -9), textcoords="offset points", fontsize=6,
                             color=color)
        ks = sorted(last[hot]["pass_at_k"], key=int)
        axes[1].errorbar([int(k) for k in ks], [last[hot]["pass_at_k"][k]["mean"] for k in ks],
                         yerr=[last[hot]["pass_at_k"][k]["sem"] or 0 for k in ks], marker="o", ms=3, lw=1.3,
                         capsize=2, color=color, label=vname)
        ep = [e["epoch"] for e in s["epochs"]]
        for k, style in ((1, ":"), (max(int(k) for k in ks), "-")):
            axes[2].plot(ep, [e[hot]["pass_at_k"].get(k, e[hot]["pass_at_k"].get(str(k), {})).get("mean")
                              for e in s["epochs"]], style, marker="o", ms=3, color=color,
                         label=f"{vname} pass@{k}")
        axes[3].errorbar(ep, [e["expert_nll"]["mean"] for e in s["epochs"]],
                         yerr=[e["expert_nll"]["sem"] or 0 for e in s["epochs"]], marker="o", ms=3, capsize=2,
                         color=color, label=vname)
    axes[0].set(xlabel="coverage (%)  → more of the valid set", ylabel="precision (%)  ↑ valid",
                title="final epoch: precision vs coverage along T")
    axes[1].set(xscale="log", xlabel="k", ylabel="pass@k (%)", title=f"final epoch: pass@k at {hot}")
    axes[1].set_xticks(list(MANY_KS), [str(k) for k in MANY_KS])
    for ax in axes[:3]:
        ax.set_ylim(0, 100)
    axes[0].set_xlim(0, 100)
    axes[2].set(xlabel="epoch", ylabel="pass@k (%)", title=f"through training, {hot}: pass@1 (dotted), pass@K")
    axes[3].set(xlabel="epoch", ylabel="nats per prompt", title="held-out expert NLL (= forward KL + log|valid|)")
    axes[3].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{cfg['dataset']}: {cfg['train_examples']} training rows ({cfg['train_examples'] // 4} prompts x 4 "
                 f"uniform draws), {cfg['epochs']} epochs, {cfg['prompts']} test prompts x K = {cfg['samples']} "
                 "(mean ± s.e.m. over seeds; seeds per variant in the legend)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------
# Known-expert grammar (in process: small models train in seconds)


def grammar_run(cfg: dict, vname: str, seed: int, train_rows: list[str]) -> dict:
    import torch
    from datasets import Dataset

    from tirl import models
    from tirl.data.grammar import default_grammar, forward_kl, reverse_kl_on_support, survival_by_length, validity_mass
    from tirl.evaluation.metrics import self_bleu
    from tirl.rewards import score
    from tirl.trainers import (
        GAILConfig,
        GAILTrainer,
        IQLearnConfig,
        IQLearnTrainer,
        OnlineIQLearnConfig,
        OnlineIQLearnTrainer,
    )

    grammar = default_grammar()
    support = list(grammar.support().items())
    model, tok = models.tiny_model(cfg["model"], seed=seed)
    tok.chat_template = None  # plain "prompt + string + EOS": log q(y) is exactly the sum over the string and EOS
    prompt = "> "
    ds = Dataset.from_list([{"prompt": prompt, "completion": y} for y in train_rows])
    common = dict(output_dir=str(RUNS / "grammar-tmp"), per_device_train_batch_size=cfg["batch"],
                  max_steps=cfg["max_steps"], learning_rate=cfg["lr"], lr_scheduler_type="cosine",
                  warmup_steps=max(1, cfg["max_steps"] // 10), report_to="none", bf16=False,
                  gradient_checkpointing=False, save_strategy="no", logging_steps=50, seed=seed, disable_tqdm=True,
                  iq_gamma=0.99)
    spec = grammar_variant(vname)
    if vname == "gail":
        args = GAILConfig(**{**common, "max_steps": cfg["gail_steps"]}, max_new_tokens=grammar.max_len + 8)
        trainer = GAILTrainer(model, args, train_dataset=ds, processing_class=tok)
    elif vname == "iq-online":
        args = OnlineIQLearnConfig(**common, **spec, iq_alpha=cfg["online_alpha"], max_new_tokens=grammar.max_len + 8)
        trainer = OnlineIQLearnTrainer(model, args, train_dataset=ds, processing_class=tok)
    else:
        trainer = IQLearnTrainer(model, IQLearnConfig(**common, **spec), train_dataset=ds, processing_class=tok)
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    model.eval()
    scored = score(model, tok, [(prompt, y) for y, _ in support], gamma=0.99, batch_size=256, progress=False)
    lq = [s.logprob for s in scored]
    lp = [math.log(p) for _, p in support]
    enc = tok([prompt] * cfg["num_samples"], return_tensors="pt")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                             max_new_tokens=grammar.max_len + 8, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    samples = [tok.decode(g[enc["input_ids"].shape[1]:], skip_special_tokens=True) for g in gen]
    groups = [[" ".join(s) for s in samples[i : i + 4]] for i in range(0, len(samples), 4)]
    return {
        "variant": vname, "seed": seed, "train_seconds": seconds,
        "forward_kl": forward_kl(lp, lq), "validity_mass": validity_mass(lq), "reverse_kl_on_support": reverse_kl_on_support(lp, lq),
        "sample_validity": sum(s in grammar.support() for s in samples) / len(samples),
        "self_bleu": self_bleu(groups), "survival_by_length": survival_by_length(grammar, samples),
        "mean_length": statistics.fmean(len(s) for s in samples),
    }


def grammar_variant(vname: str) -> dict:
    """IQLearnConfig fields of a variant, read off its `tirl train` arguments (same λ / β / form as the tasks)."""
    argv = CURRENT_VARIANTS.get(vname, [])
    fields: dict = {}
    for flag, cast in (("--iq_lambda", float), ("--iq_value", str), ("--entropy_coef", float),
                       ("--iq_lambda_warmup_steps", int)):
        if flag in argv:
            fields[flag[2:]] = cast(argv[argv.index(flag) + 1])
    if "mle" in argv:
        fields["iq_lambda"] = 0.0
    return fields


CURRENT_VARIANTS: dict = {}
CURRENT_PRESET: list[str] = ["cpu"]


def result_path(name: str) -> Path:
    """benchmarks/results/<name>, with the preset in the name for presets other than "cpu" (the committed one)."""
    preset = CURRENT_PRESET[0]
    if preset == "cpu":
        return RESULTS / name
    stem, dot, ext = name.rpartition(".")
    return RESULTS / f"{stem}_{preset}{dot}{ext}"


def grammar_section(cfg: dict) -> dict:
    from tirl.data.grammar import default_grammar, survival_by_length
    from tirl.evaluation.metrics import self_bleu

    grammar = default_grammar()
    train_rows = grammar.sample(cfg["train_examples"], seed=1234)
    expert = grammar.sample(cfg["num_samples"], seed=99)
    reference = {"self_bleu": self_bleu([[" ".join(s) for s in expert[i : i + 4]] for i in range(0, len(expert), 4)]),
                 "mean_length": statistics.fmean(len(s) for s in expert),
                 "survival_by_length": survival_by_length(grammar, expert)}
    runs = []
    for seed in cfg["seeds"]:
        for vname in cfg["variants"]:
            r = grammar_run(cfg, vname, seed, train_rows)
            print(f"  grammar {vname} seed={seed}: fwd KL {r['forward_kl']:.4f}, valid {r['validity_mass']:.4f}, "
                  f"rev KL {r['reverse_kl_on_support']:.4f}, Self-BLEU {r['self_bleu']:.1f} ({r['train_seconds']:.0f} s)",
                  flush=True)
            runs.append(r)
    summary = {}
    keys = ("forward_kl", "validity_mass", "reverse_kl_on_support", "sample_validity", "self_bleu", "mean_length")
    for vname in cfg["variants"]:
        rs = [r for r in runs if r["variant"] == vname]
        summary[vname] = {k: mean_sem([r[k] for r in rs]) for k in keys}
        summary[vname]["survival_by_length"] = [statistics.fmean(v) for v in zip(*(r["survival_by_length"] for r in rs), strict=True)]
        for ref in ("mle", "ent-mle"):
            if ref in cfg["variants"] and ref != vname:
                pairs = [(r, next(x for x in runs if x["variant"] == ref and x["seed"] == r["seed"])) for r in rs]
                summary[vname][f"vs_{ref}"] = {k: mean_sem([a[k] - b[k] for a, b in pairs]) for k in keys}
    plot_grammar(summary, reference, result_path("quality_grammar.png"))
    return {"config": cfg, "expert": reference, "runs": runs, "summary": summary}


def plot_grammar(summary: dict, expert: dict, path: Path) -> None:
    from tirl.plots import pyplot as _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    names = list(summary)
    for ax, key, title in ((axes[0], "forward_kl", "forward KL(p* ‖ q), nats (lower is better)"),
                           (axes[1], "validity_mass", "P(valid string) under q (higher is better)")):
        means = [summary[n][key]["mean"] for n in names]
        errs = [summary[n][key]["sem"] or 0 for n in names]
        ax.bar(names, means, yerr=errs, capsize=3, color=["#777" if "mle" in n else "#2166bf" for n in names])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
        lo = min(m - e for m, e in zip(means, errs, strict=True))
        hi = max(m + e for m, e in zip(means, errs, strict=True))
        ax.set_ylim(max(0.0, lo - 0.2 * (hi - lo)), hi + 0.2 * (hi - lo))
    ax = axes[2]
    ts = range(1, len(expert["survival_by_length"]) + 1)
    for n in names:
        ax.plot(ts, summary[n]["survival_by_length"], marker="o", ms=3, label=n)
    ax.plot(ts, expert["survival_by_length"], "k--", label="expert samples")
    ax.set_xlabel("generated symbols t")
    ax.set_title("fraction of samples still valid after t symbols (compounding error)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle("known-expert grammar: MLE vs IQLearn, online IQLearn and GAIL (mean ± s.e.m. over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------
# Tables


def tables(result: dict) -> str:
    lines: list[str] = []
    for name in ("arithmetic", "xsum", "gsm8k"):
        if name not in result:
            continue
        sec = result[name]
        cfg, score = sec["config"], sec["score"]
        passes = ["greedy", *[f"T={t:g}" for t in cfg["temperatures"]]]
        lines += [f"\n### {name}: {score} along the temperature frontier (mean ± s.e.m. over seeds)\n",
                  "| variant | seeds | " + " | ".join(f"{p} {score}" + ("" if p == "greedy" else " / Self-BLEU")
                                                  for p in passes) + " |",
                  "|---|---|" + "---|" * len(passes)]
        u = sec["untrained"]
        lines.append("| untrained | – | " + " | ".join(
            f"{u[p]['score']:.1f}" + ("" if p == "greedy" else f" / {u[p]['self_bleu']:.1f}") for p in passes) + " |")
        for vname, s in sec["summary"].items():
            f = s["frontier"]
            lines.append(f"| {vname} | {s['seeds']} | " + " | ".join(
                _ms(f[p]["score"]) + ("" if p == "greedy" else f" / {_ms(f[p]['self_bleu'])}") for p in passes) + " |")
        lines += [f"\n{name}: difference in {score} to MLE's (and entropy-MLE's) frontier at the same Self-BLEU, paired "
                  "by seed over the seeds both have (positive = better at equal diversity; * = outside the reference's "
                  "range)\n",
                  "| variant | vs | " + " | ".join(passes) + " |", "|---|---|" + "---|" * len(passes)]
        for vname, s in sec["summary"].items():
            for ref in ("mle", "ent-mle"):
                d = s.get(f"vs_{ref}")
                if not d:
                    continue
                cells = [_ms(d.get(p), signed=True) + ("*" if d.get(p, {}).get("extrapolated") else "") for p in passes]
                lines.append(f"| {vname} | {ref} | " + " | ".join(cells) + " |")
        hot = next((p for p in ("T=1", *reversed(passes)) if p in passes and p != "greedy"), None)
        with_k = {v: s["frontier"][hot]["pass_at_k"] for v, s in sec["summary"].items()
                  if hot and s["frontier"].get(hot, {}).get("pass_at_k")}
        if with_k:
            ks = range(1, min(len(c) for c in with_k.values()) + 1)
            lines += [f"\n{name}: pass@k against k at {hot} ({cfg['samples']} samples per prompt, unbiased estimator; "
                      "runs recorded before pass@k was kept have none)\n",
                      "| variant | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
            lines += [f"| {v} | " + " | ".join(_ms(c[k - 1]) for k in ks) + " |" for v, c in with_k.items()]
        if any("epochs" in s for s in sec["summary"].values()):
            lines += [f"\n{name}: overfitting ({cfg['train_examples']} rows, {cfg['epochs']} epochs)\n",
                      "| variant | held-out −log π, best epoch | held-out −log π, last epoch | Δ last vs MLE | "
                      f"greedy {score}, last epoch | Δ vs MLE | best epoch |", "|---|---|---|---|---|---|---|"]
            for vname, s in sec["summary"].items():
                d = s.get("vs_mle", {})
                lines.append(f"| {vname} | {_ms(s['min_heldout_nll'], 3)} | {_ms(s['final_heldout_nll'], 3)} | "
                             f"{_ms(d.get('final_heldout_nll'), 3, True)} | {_ms(s['final_greedy_score'])} | "
                             f"{_ms(d.get('final_greedy_score'), 1, True)} | {_ms(s['best_epoch'])} |")
        if "rewards" in sec:
            lines += reward_table(f"{name}: rewards vs sentence {score} over {sec['rewards']['pool']}", sec["rewards"])
            if sec["rewards"].get("earlier_pool"):  # not comparable with the rows above: another pool of samples
                lines += reward_table(f"{name}: rewards vs sentence {score} over {sec['rewards']['earlier_pool']['pool']}"
                                      " (another pool: compare these rows with each other only)",
                                      sec["rewards"]["earlier_pool"])
    if "many" in result:
        lines += many_tables(result["many"])
    if "overtraining" in result:
        lines += quality_overtraining.tables(result["overtraining"])
    if "grammar" in result:
        g = result["grammar"]
        lines += [f"\n### Known-expert grammar (mean ± s.e.m. over {len(g['config']['seeds'])} seeds)\n",
                  "| variant | forward KL ↓ | Δ vs MLE | P(valid) ↑ | reverse KL on support ↓ | valid samples | Self-BLEU "
                  f"(expert {g['expert']['self_bleu']:.1f}) |", "|---|---|---|---|---|---|---|"]
        for vname, s in g["summary"].items():
            lines.append(f"| {vname} | {_ms(s['forward_kl'], 4)} | {_ms(s.get('vs_mle', {}).get('forward_kl'), 4, True)} | "
                         f"{_ms(s['validity_mass'], 4)} | {_ms(s['reverse_kl_on_support'], 4)} | "
                         f"{_ms(s['sample_validity'], 3)} | {_ms(s['self_bleu'])} |")
    lines += cost_table(result)
    return "\n".join(lines) + "\n"


def cost_table(result: dict) -> list[str]:
    """What the preset's own runs (its seeds and variants, not the extra seeds) cost, from the recorded runs' wall time
    (training and every evaluation), one process per core with one thread each (`--threads 1`) as the preset is meant
    to run. Runs timed with more threads than that (older records), resumed ones and ones read back from the cache
    are not timings of that; a variant without a timed run takes its task's median (marked ~).
    The grammar section trains in process and has no cache, so its own time is its cost."""
    preset = PRESETS.get(result.get("preset", ""), {})
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
            over.append((f"overtraining / {task}", cfg["variants"], seeds, tsec.get("runs", {})))
            over.append((f"overtraining / {task}, MLE's shorter budgets", [f"mle-{b}ep" for b in cfg["short_budgets"]],
                           seeds, {k: {"variant": f"mle-{v['budget']}ep", **v}
                                   for k, v in tsec.get("short_runs", {}).items()}))
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
            lines.append(f"\nNot timed yet: {', '.join(untimed)}.")
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


def reward_table(title: str, rewards: dict) -> list[str]:
    """Spearman of R (and of Σ log π, the bar) with the per-sample score, within prompt and across all samples."""
    lines = [f"\n{title}\n",
             "| variant | V | Spearman R within prompt | Σ log π within prompt (the bar) | Spearman R across prompts | "
             "Σ log π across prompts | preference acc. R (demonstrations) | Σ log π |", "|---|---|---|---|---|---|---|---|"]
    for vname, m in rewards["models"].items():
        r, lp, pref = m["reward"], m["logprob"], m.get("preference") or {}
        lines.append(f"| {vname} | {m['iq_value']} | {_f(r['spearman_within_prompt'])} | "
                     f"{_f(lp['spearman_within_prompt'])} | {_f(r['spearman'])} | {_f(lp['spearman'])} | "
                     f"{_f(pref.get('accuracy'))} | {_f(pref.get('accuracy_logprob'))} |")
    return lines


def _f(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _k(d: dict, k: int):
    """pass@k entry `k` of a dict whose keys were ints before a JSON round trip."""
    return d.get(k, d.get(str(k)))


def many_tables(section: dict) -> list[str]:
    lines: list[str] = []
    for task, sec in section.items():
        if task == "config":
            continue
        cfg = sec["config"]
        temps = [f"T={t:g}" for t in cfg["temperatures"]]
        hot = "T=1" if "T=1" in temps else temps[-1]
        ks = [k for k in MANY_KS if k <= cfg["samples"]]
        lines += [f"\n### many-answer task {task}: the final epoch (mean ± s.e.m. over seeds; precision / coverage, %)\n",
                  "| variant | seeds | greedy precision | " + " | ".join(temps) + " | "
                  + " | ".join(f"pass@{k} ({hot})" for k in ks) + " | expert NLL | forward KL |",
                  "|---|---|---|" + "---|" * (len(temps) + len(ks) + 2)]
        u = sec["untrained"]
        lines.append("| untrained | – | " + f"{u['greedy']['precision']:.1f} | " + " | ".join(
            f"{u[t]['precision']:.1f} / {u[t]['coverage']:.1f}" for t in temps) + " | " + " | ".join(
            f"{u[hot]['pass_at_k'][k - 1]:.1f}" for k in ks) + f" | {_f((u.get('expert') or {}).get('expert_nll'))} | "
            f"{_f((u.get('expert') or {}).get('forward_kl'))} |")
        for vname, s in sec["summary"].items():
            last = s["epochs"][-1]
            lines.append(f"| {vname} | {s['seeds']} | {_ms(last['greedy_precision'])} | " + " | ".join(
                f"{_ms(last[t]['precision'])} / {_ms(last[t]['coverage'])}" for t in temps) + " | " + " | ".join(
                _ms(_k(last[hot]["pass_at_k"], k)) for k in ks) + f" | {_ms(last['expert_nll'], 3)} | "
                f"{_ms(last['forward_kl'], 3)} |")
        lines += [f"\n{task}: paired by seed, the final epoch against each reference: precision at the reference's "
                  "coverage along its temperature frontier (percentage points; * = outside its range), pass@k and the "
                  "expert NLL (negative = closer to the expert)\n",
                  "| variant | vs | seeds | " + " | ".join(f"Δ precision {t}" for t in temps) + " | "
                  + " | ".join(f"Δ pass@{k} ({hot})" for k in ks) + " | Δ expert NLL |",
                  "|---|---|---|" + "---|" * (len(temps) + len(ks) + 1)]
        for vname, s in sec["summary"].items():
            for key, d in s.items():
                if not key.startswith("vs_"):
                    continue
                lines.append(f"| {vname} | {key[3:]} | {d['seeds']} | " + " | ".join(
                    _ms(d[t], signed=True) + ("*" if d[t].get("extrapolated") else "") for t in temps) + " | "
                    + " | ".join(_ms(_k(d[hot]["pass_at_k"], k), signed=True) for k in ks)
                    + f" | {_ms(d['expert_nll'], 3, True)} |")
        lines += [f"\n{task}: through training at {hot} (pass@1 / pass@{ks[-1]} %, expert NLL)\n",
                  "| variant | " + " | ".join(f"epoch {e['epoch']}" for e in next(iter(sec["summary"].values()))["epochs"])
                  + " |", "|---|" + "---|" * len(next(iter(sec["summary"].values()))["epochs"])]
        for vname, s in sec["summary"].items():
            lines.append(f"| {vname} | " + " | ".join(
                f"{_ms(_k(e[hot]['pass_at_k'], 1))} / {_ms(_k(e[hot]['pass_at_k'], ks[-1]))}, "
                f"{_ms(e['expert_nll'], 2)}" for e in s["epochs"]) + " |")
        if sec.get("rewards", {}).get("models"):
            lines += reward_table(f"{task}: the paper's reward protocol, R = Σ r_t of each variant's first seed against "
                                  f"validity over {sec['rewards']['pool']}", sec["rewards"])
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--section", choices=[*SECTIONS, "all"], default="all", help="which section to run")
    p.add_argument("--preset", choices=list(PRESETS), default="cpu", help="sizes and variants (see the docstring)")
    p.add_argument("--output", default=None, help="JSON results (default: results/quality.json for the cpu preset, "
                   "results/quality_<preset>.json for the others)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds instead of the preset's, e.g. one process per "
                   "seed on separate cores; rerun without it afterwards to summarise every seed from the cache")
    p.add_argument("--variants", default=None, help="comma-separated variants instead of the section's, e.g. more "
                   "seeds for some of them (with --seeds); a later run without either summarises every cached seed")
    p.add_argument("--tasks", default=None, help="many-answer section: comma-separated tasks instead of the preset's, "
                   "e.g. more seeds for pick-two alone; the other tasks' recorded results are kept")
    p.add_argument("--cached_only", action="store_true", help="summarise the recorded runs and the finished trainings and "
                   "reward analyses in the cache; train and analyse nothing (e.g. while other processes still run). "
                   "The grammar section, which has no cache, is skipped")
    p.add_argument("--skip_rewards", action="store_true", help="summarise XSum and the many-answer tasks without their reward analysis (the slowest "
                   "part: every model scores the sample pool and the demonstration pairs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of each `tirl` command it starts (default: "
                   "torch's, one per core); 1 when running one process per core, or the processes' threads contend "
                   "for the cores and every run is slower")
    p.add_argument("--bf16", choices=["auto", "true", "false"], default="auto", help="precision of every `tirl` "
                   "command: auto = tirl's default (bf16 autocast only where the hardware computes bf16 natively, "
                   "float32 on an AVX2 CPU); the recorded cpu results trained under bf16 autocast, so `true` matches "
                   "them (at a large cost on an AVX2 CPU, see docs/benchmarks.md)")
    p.add_argument("--model", default=None, help="the model every section trains instead of the preset's: a built-in "
                   "name, a hub id or a local directory (e.g. SmolLM2-360M for the gpu preset)")
    args = p.parse_args()
    CACHED_ONLY[:] = [True] if args.cached_only else []
    SKIP_REWARDS[:] = [True] if args.skip_rewards else []
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads: {args.threads} is not a number of threads (1 or more)")
    if args.tasks and args.section not in ("many", "overtraining", "all"):
        p.error(f"--tasks picks many-answer tasks; --section {args.section} has none")
    THREADS[:] = [str(args.threads)] if args.threads else []
    PRECISION[:] = [] if args.bf16 == "auto" else [args.bf16]
    RESULTS.mkdir(parents=True, exist_ok=True)
    preset = PRESETS[args.preset]
    CURRENT_VARIANTS.update(preset["variants"])
    CURRENT_PRESET[0] = args.preset
    runs = RUNS / args.preset
    output = Path(args.output or RESULTS / ("quality.json" if args.preset == "cpu" else f"quality_{args.preset}.json"))
    result: dict = {"benchmark": "quality", "preset": args.preset, "variants": preset["variants"], "seconds": {}}
    if output.is_file():  # keep the other sections' results when one is rerun
        previous = json.loads(output.read_text())
        if previous.get("preset") == args.preset:
            result.update({k: v for k, v in previous.items() if k in SECTIONS})
            seconds = previous.get("seconds", {})
            result["seconds"] = seconds if isinstance(seconds, dict) else {}  # older files kept one total

    done: set[str] = set()

    def save() -> None:
        """After each section, so a killed run keeps what it finished. Sections may run in parallel processes
        (`--section`, e.g. one per core): the file is re-read under a lock and only this process's sections replaced."""
        import fcntl

        with open(output.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = dict(result)
            if output.is_file():
                on_disk = json.loads(output.read_text())
                if on_disk.get("preset") == args.preset:
                    merged.update({k: v for k, v in on_disk.items() if k in SECTIONS and k not in done})
                    merged["seconds"] = {**(on_disk.get("seconds") if isinstance(on_disk.get("seconds"), dict) else {}), **{k: result["seconds"][k] for k in done}}
            output.write_text(json.dumps(merged, indent=1) + "\n")
            output.with_suffix(".md").write_text(f"# Quality benchmark ({args.preset} preset)\n" + tables(merged))

    for name in SECTIONS:
        if args.section not in (name, "all") or name not in preset:
            continue
        if args.section == "all" and preset[name].get("extra_section"):  # its own command; its record is kept
            continue
        t0 = time.time()
        cfg = preset[name]
        if args.seeds:
            cfg = {**cfg, "seeds": [int(x) for x in args.seeds.split(",")], "seeds_given": True}
        if args.model:
            cfg = {**cfg, "model": args.model}
        if args.variants:
            given = args.variants.split(",")
            screened = ([] if name != "overtraining" else ["mle", *[quality_overtraining.screen_variant(lam)
                                                                   for lam in cfg["screen"]["lambdas"]]])
            unknown = set(given) - set(cfg.get("variants", [])) - set(screened)
            if unknown:
                p.error(f"--variants: {', '.join(sorted(unknown))} not in the {name} section of the preset")
            cfg = {**cfg, "variants": [v for v in cfg["variants"] if v in given], "extra": [],
                   **({"screen_variants": [v for v in screened if v in given]} if screened else {})}
        recorded = result.get(name) or {}
        if name == "grammar":
            if CACHED_ONLY:  # no cache to summarise: its recorded result stays
                continue
            result[name] = grammar_section(cfg)
        elif name == "many":
            # a task's own variants, restricted to --variants when given
            chosen = args.tasks.split(",") if args.tasks else list(cfg["tasks"])
            if set(chosen) - set(cfg["tasks"]):
                p.error(f"--tasks: {', '.join(sorted(set(chosen) - set(cfg['tasks'])))} not in the many section of the "
                        f"preset ({', '.join(cfg['tasks'])})")
            tasks = {t: {**o, "variants": [v for v in o.get("variants", cfg["variants"]) if v in cfg["variants"]],
                         "extra_task": bool(o.get("extra_task")) and not (args.tasks and t in chosen)}
                     for t, o in cfg["tasks"].items() if t in chosen}
            kept = {t: v for t, v in recorded.items() if t in cfg["tasks"] and t not in chosen}
            result[name] = {**kept, **many_section({**cfg, "tasks": tasks}, preset["variants"], runs / name, recorded)}
        elif name == "overtraining":
            chosen = args.tasks.split(",") if args.tasks else list(cfg["tasks"])
            if set(chosen) - set(cfg["tasks"]):
                p.error(f"--tasks: {', '.join(sorted(set(chosen) - set(cfg['tasks'])))} not in the overtraining "
                        f"section of the preset ({', '.join(cfg['tasks'])})")
            kept = {t: v for t, v in recorded.items() if t in cfg["tasks"] and t not in chosen}
            ran = quality_overtraining.section({**cfg, "tasks": {t: o for t, o in cfg["tasks"].items() if t in chosen}},
                                               preset["variants"], runs / name, recorded, result_path,
                                               seeds_given=bool(args.seeds))
            result[name] = {**kept, **ran}
        else:
            score = {"arithmetic": "accuracy_flexible", "gsm8k": "accuracy_flexible"}.get(name, "rouge1")
            if cfg["dataset"] == "arithmetic" and name == "xsum":
                score = "accuracy_flexible"  # the smoke preset stands arithmetic in for XSum
            result[name] = task_section(name, cfg, preset["variants"], runs / name, score,
                                        per_epoch=name == "arithmetic", rewards=name == "xsum" and not args.skip_rewards,
                                        recorded=recorded.get("runs"), recorded_rewards=recorded.get("rewards"))
        result["seconds"][name] = time.time() - t0
        done.add(name)
        save()
        print(f"section {name}: {result['seconds'][name] / 60:.1f} min", flush=True)
    print(tables(result))
    print(f"wrote {output} ({sum(result['seconds'].values()) / 60:.1f} min in all)")


if __name__ == "__main__":
    main()
