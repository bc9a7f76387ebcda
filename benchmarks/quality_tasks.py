"""The quality benchmark's sections on real tasks (`python benchmarks/quality.py --section arithmetic|xsum|gsm8k`):
arithmetic (overfitting per epoch, then the temperature frontier of the best checkpoint), xsum (the frontier, then
reward quality against sentence ROUGE-1) and gsm8k (the paper-comparable row). Each variant and seed is trained and
evaluated through the `tirl` CLI and cached under the run directory; the sizes are quality.py's presets.

`frontier_evals`, `seeds_of` and `reward_table` are shared with the many-answer section."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from quality_runner import (
    CACHED_ONLY,
    evaluate,
    evaluate_passes,
    log_history,
    mean_sem,
    result_path,
    run_timing,
    tirl,
    train,
)
from quality_runner import (
    fmt_mean_sem as _ms,
)
from quality_runner import (
    fmt_value as _f,
)


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


def section(name: str, cfg: dict, all_variants: dict, runs: Path, score: str, per_epoch: bool,
            rewards: bool = False, recorded: dict | None = None, recorded_rewards: dict | None = None,
            recorded_untrained: dict | None = None) -> dict:
    """One task: every variant and seed trained and evaluated (cached under `runs`). `recorded`: the section's runs
    in an earlier results file; a run whose directory is gone (runs are not committed) is taken from there instead of
    trained again, so a section can gain variants without rerunning the others. With `--cached_only` the untrained
    model's recorded points stand when its evaluation is not cached (evaluating it again on another CPU could mix
    precisions in one table)."""
    recorded = recorded or {}
    sec: dict = {"config": cfg, "score": score, "runs": {}}
    untrained = runs / "untrained" / "eval"
    cached = all((untrained / p / "metrics.json").is_file() for p in ["greedy", *(f"t{t:g}" for t in cfg["temperatures"])])
    if CACHED_ONLY and recorded_untrained and not cached:
        sec["untrained"] = recorded_untrained
    else:
        sec["untrained"] = points(frontier_evals(cfg, cfg["model"], untrained), score)
    for vname in cfg["variants"]:
        for seed in seeds_of(cfg, vname, runs, recorded):
            key = f"{vname}-s{seed}"
            if key in recorded and not (runs / key / "metrics.json").is_file():
                sec["runs"][key] = recorded[key]
                continue
            last = runs / key / "eval" / "frontier" / f"t{cfg['temperatures'][-1]:g}" / "metrics.json"
            if (CACHED_ONLY or vname in cfg.get("extra", ())) and not last.is_file():  # not finished, or not asked for
                continue
            t0, timing = time.time(), run_timing(runs / key)
            run_dir = train(cfg, all_variants[vname], seed, runs / key, per_epoch)
            entry: dict = {"variant": vname, "seed": seed}
            model = str(run_dir)
            if per_epoch:
                entry["epochs"] = epoch_curve(cfg, run_dir, runs / key / "eval", score, sec["untrained"])
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
            sec["runs"][key] = entry
            if per_epoch:  # keep the chosen checkpoint and the final model; the others were only for the curves
                for ck in run_dir.glob("checkpoint-*"):
                    if str(ck) != model:
                        shutil.rmtree(ck, ignore_errors=True)
    sec["summary"] = summarise(sec, cfg)
    plot_frontiers(sec, cfg, result_path(f"quality_{name}_frontier.png"), score)
    if per_epoch:
        plot_epochs(sec, cfg, result_path(f"quality_{name}_epochs.png"), score)
    if rewards:
        sec["rewards"] = reward_section(cfg, sec, runs, recorded_rewards)
    return sec


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


def tables(name: str, sec: dict) -> list[str]:
    """The tables of one task section (`name`: arithmetic, xsum or gsm8k)."""
    lines: list[str] = []
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
    return lines


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
