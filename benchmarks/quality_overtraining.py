"""The over-training section of the quality benchmark: does IQLearn keep what MLE loses as it keeps training on a
fixed SFT set? (`python benchmarks/quality.py --section overtraining`; the whole design is in docs/benchmarks.md.)

On a many-answer task with a known, uniform expert (`tirl.data.many_answer`), each variant trains for a long, fixed
budget (12 epochs of 128 rows, past MLE's best held-out epoch) with a checkpoint per epoch, and the checkpoints at
log-spaced epochs are evaluated on three sets of prompts:
- the test prompts: greedy with the expert NLL, and K samples at each temperature of `temperatures`;
- validation prompts (`--split validation`: training-distribution prompts the run never trained on): the expert NLL,
  which alone chooses a run's best epoch, so the test prompts never choose anything;
- the run's own training prompts: K samples at T = 1 and how many of them repeat a demonstration of that prompt,
  or are valid answers never demonstrated for it (`tirl eval`'s memorisation scores).
At the final and the best epoch the test prompts are also sampled along the whole temperature grid, so every method
is compared with MLE's upper frontier at equal coverage, never at one temperature.

MLE is also trained with shorter budgets (each with its own full learning-rate schedule), as a careful user would tune
it: "tuned MLE" is the best of its long run's epochs and those budgets, by validation expert NLL.

λ is screened for the long budget on a seed that is not reported (`screen`): MLE and the default value form at each
λ, and the reported `iq-best` takes the screen's choice (`choose_lambda`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from quality_runner import (
    CACHED_ONLY,
    MANY_KS,
    SAMPLER,
    envelope_delta,
    frontier_delta,
    frontier_dominates,
    mean_sem,
    run_timing,
    tirl,
    tirl_commands,
)
from quality_runner import (
    fmt_mean_sem as _ms,
)

OVERTRAINING_CPU = {
    "model": "smollm2-135m", "train_examples": 128, "epochs": 12, "batch": 8, "lr": 5e-5,
    "eval_epochs": [1, 2, 3, 4, 6, 8, 10, 12],
    "prompts": 16, "samples": 32, "temperatures": [0.7, 1.0],  # the test prompts at every evaluated epoch
    "grid": [0.5, 0.7, 0.85, 1.0, 1.15, 1.3],  # the test prompts at the final and the best epoch
    "validation_prompts": 32, "train_samples": 16, "max_new_tokens": 16, "eval_batch": 128,
    # float32 on every CPU, so a section begun on one machine can be finished on another (bf16 is fast only with
    # AVX512-BF16/AMX, and two precisions never meet in one paired table)
    "bf16": "false",
    "short_budgets": [2, 3, 5],
    "seeds": [1, 2, 3],
    "variants": ["mle", "gem", "iq-reference", "iq-best"],
    # in the order they run. λ 0.01 is not screened: it is the default `iq-reference`, which the section reports on
    # its own seeds, and over 10 epochs it followed MLE to within noise (docs/benchmarks.md, "Over-training")
    "screen": {"task": "pick-two", "seed": 0, "lambdas": [0.1, 1.0, 0.3, 0.03]},
    # `between` checks the main comparison on a second task: MLE against iq-best only; of MLE's shorter budgets only
    # the 3-epoch one, the epoch its long run was best at on every seed (2 and 5 epochs were not run for time)
    "tasks": {"pick-two": {}, "between": {"variants": ["mle", "iq-best"], "short_budgets": [3]}},
}

OVERTRAINING_SMOKE = {
    **OVERTRAINING_CPU, "model": "tiny-llama", "train_examples": 16, "epochs": 3, "lr": 3e-3, "eval_epochs": [1, 3],
    "prompts": 3, "samples": 4, "temperatures": [1.0], "grid": [0.7, 1.0, 1.3], "validation_prompts": 4,
    "train_samples": 2, "max_new_tokens": 6, "eval_batch": 16, "short_budgets": [1], "seeds": [1],
    "screen": {"task": "pick-two", "seed": 0, "lambdas": [0.01, 1.0]}, "tasks": {"pick-two": {}},
}


def screen_variant(lam: float) -> str:
    return f"iq-reference-{lam:g}"


def variant_args(name: str, all_variants: dict, best: float | None) -> list[str]:
    """`tirl train` arguments of a variant: the preset's, a screened λ of the reference form, or the screen's choice."""
    if name == "iq-best":
        if best is None:
            raise KeyError("iq-best before the λ screen has chosen")
        name = screen_variant(best)
    if name.startswith("iq-reference-"):
        return ["--method", "iqlearn", "--iq_value", "reference", "--iq_lambda", name.removeprefix("iq-reference-")]
    return list(all_variants[name])


# ---------------------------------------------------------------------------------------------------------------------
# One run: train for a budget, evaluate its checkpoints


def _eval(cfg: dict, model: str, out: Path, *, split: str, n: int, data_seed: int, temperature: float | None,
          samples: int = 0, expert: bool = False) -> list[str] | None:
    """One `tirl eval` command, or None when its result is cached. `temperature=None`: greedy only."""
    if (out / "metrics.json").is_file():
        return None
    passes = ["--samples", "0"] if temperature is None else [
        "--samples", str(samples), "--temperature", f"{temperature:g}", "--no-greedy"]
    return ["eval", "--model", model, "--dataset", cfg["dataset"], "--split", split, "--num_examples", str(n),
            "--data_seed", str(data_seed), *passes, "--max_new_tokens", str(cfg["max_new_tokens"]), "--batch_size",
            str(cfg["eval_batch"]), "--seed", "0", "--no_progress", "--output_dir", str(out),
            "--expert_nll" if expert else "--no-expert_nll", "--bf16" if cfg["bf16"] == "true" else "--no-bf16",
            *SAMPLER]


def _metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def _sampled(m: dict) -> dict:
    s = m["sampled"]
    return {"precision": 100.0 * s["precision"], "coverage": 100.0 * s["coverage"],
            "pass_at_k": [100.0 * x for x in s.get("pass_at_k") or []], "self_bleu": s.get("self_bleu")}


def evaluate_checkpoint(cfg: dict, model: str, root: Path, seed: int, temperatures: list[float], test: bool = True,
                        memorisation: bool = True) -> dict:
    """One checkpoint, every pass in one process: the validation expert NLL; with `test`, the test prompts' greedy pass
    with the expert NLL and K samples at each of `temperatures`; with `memorisation`, K samples at T = 1 on the run's
    own training prompts."""
    val, greedy, train = root / "validation", root / "greedy", root / "train_t1"
    temps = {t: root / f"t{t:g}" for t in temperatures}
    commands = [_eval(cfg, model, val, split="validation", n=cfg["validation_prompts"], data_seed=seed,
                      temperature=None, expert=True)]
    if test:
        commands.append(_eval(cfg, model, greedy, split="test", n=cfg["prompts"], data_seed=0, temperature=None,
                              expert=True))
        commands += [_eval(cfg, model, d, split="test", n=cfg["prompts"], data_seed=0, temperature=t,
                           samples=cfg["samples"]) for t, d in temps.items()]
    if memorisation:
        commands.append(_eval(cfg, model, train, split="train", n=cfg["train_examples"], data_seed=seed,
                              temperature=1.0, samples=cfg["train_samples"]))
    tirl_commands([c for c in commands if c])
    out: dict = {"validation_nll": _metrics(val)["expert"]["expert_nll"]}
    if test:
        g = _metrics(greedy)
        out.update(expert_nll=g["expert"]["expert_nll"], forward_kl=g["expert"]["forward_kl"],
                   greedy_precision=100.0 * g["greedy"]["precision"])
        for t, d in temps.items():
            out[f"T={t:g}"] = _sampled(_metrics(d))
        out["sampler"] = g["settings"].get("sampler")
    if memorisation:
        m = _metrics(train)["sampled"]
        mem = m.get("memorisation") or {}
        out["train"] = {"precision": 100.0 * m["precision"], "coverage": 100.0 * m["coverage"],
                        "demonstrated": 100.0 * mem["demonstrated"] if mem.get("demonstrated") is not None else None,
                        "novel_valid": 100.0 * mem["novel_valid"] if mem.get("novel_valid") is not None else None}
    return out


def train_budget(cfg: dict, args: list[str], seed: int, run_dir: Path, epochs: int, keep: list[int]) -> dict[int, Path]:
    """`tirl train` for `epochs` epochs with a checkpoint per epoch; {epoch: checkpoint} for the epochs in `keep` (the
    others are removed at once: a float32 SmolLM2 checkpoint is 0.5 GB). A finished run is taken from the cache; an
    interrupted one starts again (model-only checkpoints cannot resume the optimizer)."""
    def checkpoints() -> dict[int, Path]:
        found = {}
        for ck in run_dir.glob("checkpoint-*"):
            state = ck / "trainer_state.json"
            if state.is_file():
                found[round(json.loads(state.read_text())["epoch"])] = ck
        return found

    if not (run_dir / "metrics.json").is_file():
        if run_dir.exists():
            shutil.rmtree(run_dir)
        tirl("train", *args, "--model", cfg["model"], "--dataset", cfg["dataset"], "--num_train_examples",
             str(cfg["train_examples"]), "--num_train_epochs", str(epochs), "--eval_split", "validation",
             "--num_eval_examples", str(cfg["validation_prompts"]), "--per_device_train_batch_size", str(cfg["batch"]),
             "--per_device_eval_batch_size", "16", "--learning_rate", str(cfg["lr"]), "--lr_scheduler_type", "cosine",
             "--warmup_steps", "0.1", "--max_length", "384", "--gradient_checkpointing", "false", "--eval_strategy",
             "epoch", "--save_strategy", "epoch", "--save_only_model", "true", "--save_total_limit", "1000",
             "--report_to", "none", "--logging_steps", "5", "--seed", str(seed), "--disable_tqdm", "true",
             "--bf16", cfg["bf16"], "--output_dir", str(run_dir))
    found = checkpoints()
    for epoch, ck in found.items():
        if epoch not in keep:
            shutil.rmtree(ck, ignore_errors=True)
    return {e: ck for e, ck in found.items() if e in keep}


def long_run(cfg: dict, args: list[str], seed: int, run_dir: Path, screen: bool = False) -> dict:
    """The long budget: every epoch of `eval_epochs` evaluated, its best epoch (validation expert NLL) and its final
    one also along the whole grid. A screen run evaluates the test prompts only at the final epoch."""
    cached = run_dir / "overtraining.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    t0, timing = time.time(), run_timing(run_dir)
    final = cfg["epochs"]
    found = train_budget(cfg, args, seed, run_dir, final, cfg["eval_epochs"])
    curve = []
    for epoch in sorted(found):
        last = epoch == final
        curve.append({"epoch": epoch, **evaluate_checkpoint(
            cfg, str(found[epoch]), run_dir / "eval" / f"epoch{epoch}", seed,
            cfg["grid"] if (screen and last) else cfg["temperatures"], test=not screen or last,
            memorisation=not screen or last)})
    best = min(curve, key=lambda e: e["validation_nll"])
    grid = {}
    for name, epoch in (("final", final), ("best", best["epoch"])):
        if screen and name == "best":
            continue
        point = next(p for p in curve if p["epoch"] == epoch)  # its validation and memorisation figures
        grid[name] = {**point, **evaluate_checkpoint(cfg, str(found[epoch]), run_dir / "eval" / f"epoch{epoch}", seed,
                                                     cfg["grid"], memorisation=False)}
    entry = {"curve": curve, "best_epoch": best["epoch"], "grid": grid, "seconds": time.time() - t0, **timing}
    cached.write_text(json.dumps(entry, indent=1) + "\n")
    for ck in found.values():  # the final model stays (the run directory itself)
        shutil.rmtree(ck, ignore_errors=True)
    return entry


def short_run(cfg: dict, args: list[str], seed: int, run_dir: Path, epochs: int) -> dict:
    """A shorter budget with its own schedule, evaluated at its end only (the whole grid, validation, memorisation)."""
    cached = run_dir / "overtraining.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    t0, timing = time.time(), run_timing(run_dir)
    found = train_budget(cfg, args, seed, run_dir, epochs, [epochs])
    point = {"epoch": epochs, **evaluate_checkpoint(cfg, str(found[epochs]), run_dir / "eval" / f"epoch{epochs}", seed,
                                                    cfg["grid"])}
    entry = {"budget": epochs, "point": point, "seconds": time.time() - t0, **timing}
    cached.write_text(json.dumps(entry, indent=1) + "\n")
    shutil.rmtree(found[epochs], ignore_errors=True)
    return entry


# ---------------------------------------------------------------------------------------------------------------------
# The λ screen


def choose_lambda(screen: dict, grid: list[float]) -> float | None:
    """The screened λ whose final epoch is closest to the expert on the validation prompts, among those whose final
    frontier along the grid is at most 2 points of precision below MLE's at equal coverage on average, envelope
    against envelope (`envelope_delta`): a λ must keep the valid answers it is meant to spread over. None until MLE
    and every λ have finished."""
    runs = screen.get("runs", {})
    if "mle" not in runs or any(screen_variant(lam) not in runs for lam in screen["lambdas"]):
        return None
    ref = runs["mle"]["grid"]["final"]
    admissible = []
    for lam in screen["lambdas"]:
        final = runs[screen_variant(lam)]["grid"]["final"]
        delta = envelope_delta(ref, final, grid)
        if delta is not None and delta >= -2.0:
            admissible.append((final["validation_nll"], lam))
    return min(admissible)[1] if admissible else None


# ---------------------------------------------------------------------------------------------------------------------
# Summaries: per epoch, and paired against MLE at the final epoch and at each method's best


def _point_figures(p: dict, hot: str) -> dict:
    out = {"validation_nll": p.get("validation_nll"), "expert_nll": p.get("expert_nll"),
           "forward_kl": p.get("forward_kl"), "greedy_precision": p.get("greedy_precision")}
    for t in [k for k in p if k.startswith("T=")]:
        out[f"{t} precision"], out[f"{t} coverage"] = p[t]["precision"], p[t]["coverage"]
        if t == hot and p[t]["pass_at_k"]:
            out.update({f"pass@{k}": p[t]["pass_at_k"][k - 1] for k in MANY_KS if k <= len(p[t]["pass_at_k"])})
    for k in ("demonstrated", "novel_valid"):
        out[f"train {k}"] = (p.get("train") or {}).get(k)
    return out


def tuned_mle(entry: dict, shorts: dict[int, dict]) -> dict:
    """MLE as a careful user tunes it: the best, by validation expert NLL, of its long run's evaluated epochs (the
    grid at its best epoch) and each shorter budget's end."""
    candidates = [("long", entry["best_epoch"], entry["grid"]["best"])]
    candidates += [(f"{b} epochs", b, s["point"]) for b, s in shorts.items()]
    label, epoch, point = min(candidates, key=lambda c: c[2]["validation_nll"])
    return {"label": label, "epoch": epoch, "point": point}


def paired(variant_points: dict[int, dict], ref_points: dict[int, dict], grid: list[float]) -> dict:
    """Mean ± s.e.m. over the seeds both have of variant − reference: every figure of `_point_figures`, and precision
    at the reference's coverage along its grid frontier (the upper envelope), per temperature."""
    seeds = sorted(set(variant_points) & set(ref_points))
    out: dict = {"seeds": len(seeds)}
    if not seeds:
        return out
    figs = {s: (_point_figures(variant_points[s], "T=1"), _point_figures(ref_points[s], "T=1")) for s in seeds}
    for key in figs[seeds[0]][0]:
        values = [a[key] - b[key] for a, b in figs.values() if a.get(key) is not None and b.get(key) is not None]
        out[key] = mean_sem(values)
    deltas = [frontier_delta(ref_points[s], variant_points[s], grid) for s in seeds]
    out["envelope"] = mean_sem([d for d in (envelope_delta(ref_points[s], variant_points[s], grid) for s in seeds)
                                if d is not None])
    # seeds on which one whole frontier dominates the other (a frontier beyond the other's coverage has no envelope Δ)
    out["dominates"] = sum(frontier_dominates(ref_points[s], variant_points[s], grid) for s in seeds)
    out["dominated"] = sum(frontier_dominates(variant_points[s], ref_points[s], grid) for s in seeds)
    out["frontier"] = {f"T={t:g}": {**mean_sem([d[f"T={t:g}"]["delta"] for d in deltas]),
                                    "extrapolated": any(d[f"T={t:g}"]["extrapolated"] for d in deltas)} for t in grid}
    return out


def summarise_task(tsec: dict, cfg: dict) -> dict:
    """Per variant: every evaluated epoch's figures (mean ± s.e.m. over seeds); paired against MLE at the final epoch
    (fixed budget) and at each one's best epoch against tuned MLE."""
    by_variant: dict[str, dict[int, dict]] = {}
    for entry in tsec["runs"].values():
        by_variant.setdefault(entry["variant"], {})[entry["seed"]] = entry
    shorts: dict[int, dict[int, dict]] = {}
    for entry in tsec.get("short_runs", {}).values():
        shorts.setdefault(entry["seed"], {})[entry["budget"]] = entry
    out: dict = {}
    mle = by_variant.get("mle", {})
    tuned = {s: tuned_mle(e, shorts.get(s, {})) for s, e in mle.items()}
    for vname, entries in by_variant.items():
        epochs = sorted({p["epoch"] for e in entries.values() for p in e["curve"]})
        rows = []
        for ep in epochs:
            pts = [_point_figures(p, "T=1") for e in entries.values() for p in e["curve"] if p["epoch"] == ep]
            rows.append({"epoch": ep, **{k: mean_sem([p.get(k) for p in pts]) for k in pts[0]}})
        best = mean_sem([e["best_epoch"] for e in entries.values()])
        s: dict = {"seeds": len(entries), "epochs": rows, "best_epoch": best,
                   "final": {k: mean_sem([_point_figures(e["grid"]["final"], "T=1").get(k) for e in entries.values()])
                             for k in _point_figures(next(iter(entries.values()))["grid"]["final"], "T=1")},
                   "best": {k: mean_sem([_point_figures(e["grid"]["best"], "T=1").get(k) for e in entries.values()])
                            for k in _point_figures(next(iter(entries.values()))["grid"]["best"], "T=1")}}
        if vname != "mle" and mle:
            s["vs_mle_final"] = paired({sd: e["grid"]["final"] for sd, e in entries.items()},
                                       {sd: e["grid"]["final"] for sd, e in mle.items()}, cfg["grid"])
            s["vs_tuned_mle"] = paired({sd: e["grid"]["best"] for sd, e in entries.items()},
                                       {sd: t["point"] for sd, t in tuned.items()}, cfg["grid"])
        out[vname] = s
    if tuned:
        out["tuned_mle"] = {"chosen": {str(s): {"label": t["label"], "epoch": t["epoch"]} for s, t in tuned.items()},
                            "point": {k: mean_sem([_point_figures(t["point"], "T=1").get(k) for t in tuned.values()])
                                      for k in _point_figures(next(iter(tuned.values()))["point"], "T=1")}}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The section


def section(cfg: dict, all_variants: dict, runs: Path, recorded: dict | None = None,
            result_path=None, seeds_given: bool = False) -> dict:
    """The λ screen, then every task's long runs and MLE's shorter budgets; cached per run under `runs` (an
    interrupted section resumes: finished runs and evaluations are kept). Recorded runs whose cache is gone are kept."""
    recorded = recorded or {}
    out: dict = {"config": {k: v for k, v in cfg.items() if k != "seeds_given"}}
    scfg = cfg["screen"]
    screen: dict = {**scfg, "runs": dict((recorded.get("screen") or {}).get("runs", {}))}
    task_cfg = {**cfg, "dataset": scfg["task"]}
    screen_names = ["mle", *[screen_variant(lam) for lam in scfg["lambdas"]]]
    for name in screen_names:
        run_dir = runs / "screen" / f"{name}-s{scfg['seed']}"
        # a finished screen run is always read (so a process for another seed sees the screen's choice); an
        # unfinished one runs only when its seed and variant were asked for
        wanted = ((not seeds_given or scfg["seed"] in cfg["seeds"])
                  and name in cfg.get("screen_variants", screen_names))
        if not (run_dir / "overtraining.json").is_file() and (CACHED_ONLY or not wanted):
            continue
        screen["runs"][name] = long_run(task_cfg, variant_args(name, all_variants, None), scfg["seed"], run_dir,
                                        screen=True)
        print(f"  screen {name}: validation expert NLL at the final epoch "
              f"{screen['runs'][name]['grid']['final']['validation_nll']:.3f}", flush=True)
    best = choose_lambda(screen, cfg["grid"])
    screen["chosen_lambda"] = best
    out["screen"] = screen
    for task, overrides in cfg["tasks"].items():
        tcfg = {**cfg, "dataset": task, **overrides}
        if seeds_given:
            tcfg["seeds"] = [s for s in cfg["seeds"] if s != scfg["seed"]]
        before = recorded.get(task) or {}
        tsec: dict = {"runs": dict(before.get("runs", {})), "short_runs": dict(before.get("short_runs", {}))}
        truns = runs / task
        for vname in tcfg["variants"]:
            if vname == "iq-best" and (best is None or screen_variant(best) in tcfg["variants"]):
                if best is None:
                    print(f"  {task} iq-best: waits for the λ screen", flush=True)
                continue
            for seed in tcfg["seeds"]:
                key, run_dir = f"{vname}-s{seed}", truns / f"{vname}-s{seed}"
                if CACHED_ONLY and not (run_dir / "overtraining.json").is_file():
                    continue
                entry = long_run(tcfg, variant_args(vname, all_variants, best), seed, run_dir)
                tsec["runs"][key] = {"variant": vname, "seed": seed,
                                     **({"iq_lambda": best} if vname == "iq-best" else {}), **entry}
                last = entry["curve"][-1]
                print(f"  {task} {key}: final expert NLL {last['expert_nll']:.3f}, T=1 precision/coverage "
                      f"{last['T=1']['precision']:.1f}/{last['T=1']['coverage']:.1f}", flush=True)
            if vname == "mle":
                for seed in tcfg["seeds"]:
                    for budget in tcfg["short_budgets"]:
                        key, run_dir = f"mle-{budget}ep-s{seed}", truns / f"mle-{budget}ep-s{seed}"
                        if CACHED_ONLY and not (run_dir / "overtraining.json").is_file():
                            continue
                        tsec["short_runs"][key] = {"seed": seed, **short_run(
                            tcfg, variant_args("mle", all_variants, None), seed, run_dir, budget)}
        if not tsec["runs"]:
            continue
        tsec["summary"] = summarise_task(tsec, tcfg)
        if result_path is not None:
            plot_task(tsec, tcfg, result_path(f"quality_overtraining_{task}.png"))
        out[task] = tsec
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Plot and tables


def plot_task(tsec: dict, cfg: dict, png: Path) -> None:
    """Per variant (mean ± s.e.m. over seeds) against epoch: the test and validation expert NLL, precision and
    coverage at T = 1, and on the training prompts the share of samples repeating a demonstration and of valid answers
    never demonstrated; the best epoch of each seed marked; last, the final and the best epoch's grid frontier."""
    from tirl.plots import pyplot as _pyplot

    plt = _pyplot()
    panels = [("expert_nll", "test expert NLL (nats) ↓"), ("validation_nll", "validation expert NLL (nats) ↓"),
              ("T=1 precision", "precision at T = 1 (%)"), ("T=1 coverage", "coverage at T = 1 (%)"),
              ("train demonstrated", "training prompts: repeat a demonstration (%)"),
              ("train novel_valid", "training prompts: valid, never demonstrated (%)")]
    fig, axes = plt.subplots(2, 4, figsize=(22, 9))
    flat = axes.flatten()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    variants = [v for v in tsec["summary"] if v != "tuned_mle"]
    for i, vname in enumerate(variants):
        s, color = tsec["summary"][vname], colors[i % len(colors)]
        eps = [r["epoch"] for r in s["epochs"]]
        for ax, (key, title) in zip(flat, panels, strict=False):
            ys = [r[key]["mean"] if r.get(key) else None for r in s["epochs"]]
            es = [(r[key]["sem"] or 0) if r.get(key) else 0 for r in s["epochs"]]
            pts = [(x, y, e) for x, y, e in zip(eps, ys, es, strict=True) if y is not None]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", ms=3,
                            capsize=2, color=color, label=f"{vname} ({s['seeds']})")
                best = s["best_epoch"]["mean"]
                ax.axvline(best, color=color, ls=":", lw=0.8)
            ax.set(title=title, xlabel="epoch")
            ax.set_xscale("log", base=2)
            ax.set_xticks(cfg["eval_epochs"], [str(e) for e in cfg["eval_epochs"]])
        for ax, which, style in ((flat[6], "final", "-"), (flat[7], "best", "--")):
            pt = s[which]
            xs = [pt[f"T={t:g} coverage"]["mean"] for t in cfg["grid"]]
            ys = [pt[f"T={t:g} precision"]["mean"] for t in cfg["grid"]]
            ax.plot(xs, ys, style, marker="o", ms=3, color=color, label=vname)
            for t, x, y in zip(cfg["grid"], xs, ys, strict=True):
                ax.annotate(f"{t:g}", (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6, color=color)
    if "tuned_mle" in tsec["summary"]:
        pt = tsec["summary"]["tuned_mle"]["point"]
        flat[7].plot([pt[f"T={t:g} coverage"]["mean"] for t in cfg["grid"]],
                     [pt[f"T={t:g} precision"]["mean"] for t in cfg["grid"]], ":", marker="s", ms=3, color="black",
                     label="tuned MLE")
    flat[6].set(title=f"final epoch ({cfg['epochs']}): precision vs coverage along T", xlabel="coverage (%)",
                ylabel="precision (%)")
    flat[7].set(title="each at its best epoch (validation NLL); tuned MLE dotted", xlabel="coverage (%)",
                ylabel="precision (%)")
    for ax in flat:
        ax.grid(alpha=0.3)
    flat[0].legend(fontsize=7)
    flat[6].legend(fontsize=7)
    fig.suptitle(f"{cfg['dataset']}: {cfg['train_examples']} training rows, {cfg['epochs']} epochs; dotted vertical "
                 "lines: each variant's mean best epoch by validation expert NLL (mean ± s.e.m. over seeds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def tables(sec: dict) -> list[str]:
    cfg = sec["config"]
    lines: list[str] = []
    screen = sec.get("screen") or {}
    if screen.get("runs"):
        mle = screen["runs"].get("mle")
        lines += [f"\n### Over-training: the λ screen ({screen['task']}, seed {screen['seed']}, {cfg['epochs']} epochs; "
                  f"chosen λ = {screen.get('chosen_lambda')})\n",
                  "| variant | best epoch | validation NLL, final | test expert NLL, final | "
                  + " | ".join(f"T={t:g} prec / cov" for t in cfg["grid"])
                  + " | train: repeats a demo / valid, never shown (%) | Δ precision, envelope vs MLE's |",
                  "|---|---|---|---|" + "---|" * (len(cfg["grid"]) + 2)]
        for name, e in screen["runs"].items():
            f = e["grid"]["final"]
            delta = "–"
            if mle and name != "mle":
                d = envelope_delta(mle["grid"]["final"], f, cfg["grid"])
                delta = "–" if d is None else f"{d:+.1f}"
            lines.append(f"| {name} | {e['best_epoch']} | {f['validation_nll']:.3f} | {f['expert_nll']:.3f} | "
                         + " | ".join(f"{f[f'T={t:g}']['precision']:.1f} / {f[f'T={t:g}']['coverage']:.1f}"
                                      for t in cfg["grid"])
                         + f" | {(f.get('train') or {}).get('demonstrated', float('nan')):.1f} / "
                           f"{(f.get('train') or {}).get('novel_valid', float('nan')):.1f} | {delta} |")
    for task, tsec in sec.items():
        if task in ("config", "screen") or "summary" not in tsec:
            continue
        summ = tsec["summary"]
        keys = [("expert_nll", 3, "test expert NLL"), ("validation_nll", 3, "validation NLL"),
                ("T=1 precision", 1, "precision T=1"), ("T=1 coverage", 1, "coverage T=1"),
                ("train demonstrated", 1, "train: repeats a demo (%)"),
                ("train novel_valid", 1, "train: valid, never shown (%)"), ("pass@1", 1, "pass@1 T=1")]
        lines += [f"\n### Over-training on {task}: through training (mean ± s.e.m. over seeds)\n",
                  "| variant | epoch | " + " | ".join(k[2] for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
        for vname, s in summ.items():
            if vname == "tuned_mle":
                continue
            for row in s["epochs"]:
                lines.append(f"| {vname} ({s['seeds']}) | {row['epoch']} | "
                             + " | ".join(_ms(row.get(k), d) for k, d, _ in keys) + " |")
        head = [k for k in keys if k[0] != "pass@1"]
        lines += [f"\n{task}: at the final epoch ({cfg['epochs']}) and at each run's best epoch (validation NLL); mean ± "
                  "s.e.m. over seeds\n", "| variant | seeds | epoch | " + " | ".join(k[2] for k in head) + " |",
                  "|---|---|---|" + "---|" * len(head)]
        for vname, s in summ.items():
            if vname == "tuned_mle":
                lines.append(f"| tuned MLE | {len(s['chosen'])} | its best | "
                             + " | ".join(_ms(s["point"].get(k), d) for k, d, _ in head) + " |")
                continue
            for which in ("final", "best"):
                epoch = cfg["epochs"] if which == "final" else f"best ({_ms(s['best_epoch'], 1)})"
                lines.append(f"| {vname} | {s['seeds']} | {epoch} | "
                             + " | ".join(_ms(s[which].get(k), d) for k, d, _ in head) + " |")
        for which, title in (("vs_mle_final", f"at the final epoch ({cfg['epochs']}) against MLE's final epoch"),
                             ("vs_tuned_mle", "each at its best epoch (validation NLL) against tuned MLE")):
            lines += [f"\n{task}: {title}, paired by seed (precision at MLE's coverage along its grid frontier, "
                      "percentage points, * = outside its range; negative NLL = closer to the expert)\n",
                      "| variant | seeds | Δ test expert NLL | Δ coverage T=1 | Δ train: repeats a demo | "
                      "Δ train: valid, never shown | " + " | ".join(f"Δ precision T={t:g}" for t in cfg["grid"])
                      + " | Δ precision, envelope vs MLE's | seeds its frontier dominates MLE's / MLE's dominates |",
                      "|---|---|---|---|---|---|" + "---|" * (len(cfg["grid"]) + 2)]
            for vname, s in summ.items():
                d = s.get(which)
                if not d or not d.get("seeds"):
                    continue
                lines.append(f"| {vname} | {d['seeds']} | {_ms(d.get('expert_nll'), 3, True)} | "
                             f"{_ms(d.get('T=1 coverage'), 1, True)} | {_ms(d.get('train demonstrated'), 1, True)} | "
                             f"{_ms(d.get('train novel_valid'), 1, True)} | " + " | ".join(
                                 _ms(d['frontier'][f'T={t:g}'], 1, True)
                                 + ("*" if d["frontier"][f"T={t:g}"]["extrapolated"] else "") for t in cfg["grid"])
                             + f" | {_ms(d.get('envelope'), 1, True)} | {d.get('dominates', 0)} / "
                             f"{d.get('dominated', 0)} |")
        if "tuned_mle" in summ:
            chosen = summ["tuned_mle"]["chosen"]
            lines.append("\nTuned MLE per seed: " + ", ".join(f"seed {s}: {c['label']} (epoch {c['epoch']})"
                                                                for s, c in chosen.items()) + ".")
    return lines

