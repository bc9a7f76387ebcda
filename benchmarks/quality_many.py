"""The quality benchmark's many-answer section (`python benchmarks/quality.py --section many`): tasks with a known,
uniform expert (`tirl.data.many_answer`: pick-two, between). Per epoch, precision and coverage of K samples along the
temperatures, pass@k, the held-out expert NLL; paired differences against MLE and the baselines at the final epoch;
and, on pick-two, the paper's reward protocol (Spearman of R with validity). The sizes are quality.py's presets."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from quality_runner import (
    CACHED_ONLY,
    MANY_KS,
    SKIP_REWARDS,
    frontier_delta,
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
from quality_tasks import frontier_evals, reward_table, seeds_of


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


def section(cfg: dict, all_variants: dict, runs: Path, recorded: dict | None = None) -> dict:
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
        tsec: dict = {"config": {k: v for k, v in tcfg.items() if k != "tasks"}, "untrained": base, "runs": {}}
        previous = before.get("runs", {})
        for vname in tcfg["variants"]:
            for seed in seeds_of(tcfg, vname, truns, previous):
                key = f"{vname}-s{seed}"
                if key in previous and not (truns / key / "many_curve.json").is_file():
                    tsec["runs"][key] = previous[key]
                    continue
                if (CACHED_ONLY or vname in tcfg.get("extra", ())) and not (truns / key / "many_curve.json").is_file():
                    continue
                entry = many_run(tcfg, all_variants[vname], seed, truns / key, base)
                tsec["runs"][key] = {"variant": vname, "seed": seed, **entry}
                print(f"  {task} {key}: final precision/coverage at T=1 "
                      f"{entry['curve'][-1].get('T=1', {}).get('precision', float('nan')):.1f}/"
                      f"{entry['curve'][-1].get('T=1', {}).get('coverage', float('nan')):.1f}", flush=True)
        tsec["summary"] = many_summary(tsec["runs"], tcfg, references=tuple(cfg["references"]))
        plot_many(tsec, tcfg, result_path(f"quality_many_{task}.png"))
        if tcfg.get("rewards") and not SKIP_REWARDS:
            # the recorded analysis stays when its pool of samples is not in the cache
            tsec["rewards"] = many_reward_section(tcfg, truns) or before.get("rewards", {})
        elif before.get("rewards"):
            tsec["rewards"] = before["rewards"]
        result[task] = tsec
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


def tables(section: dict) -> list[str]:
    """The tables of each many-answer task: the final epoch, paired differences, the epochs, rewards."""
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


def _k(d: dict, k: int):
    """pass@k entry `k` of a dict whose keys were ints before a JSON round trip."""
    return d.get(k, d.get(str(k)))
