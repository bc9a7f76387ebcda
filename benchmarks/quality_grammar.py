"""The quality benchmark's known-expert grammar section (`python benchmarks/quality.py --section grammar`): small
models trained in process on strings of `tirl.data.grammar`, whose exact distribution is known, so forward KL, P(valid)
and compounding error (validity after t symbols) are measured, not estimated. Offline variants, online IQLearn and
GAIL; the sizes are quality.py's presets. No cache: `--cached_only` keeps its recorded result."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from quality_runner import RUNS, mean_sem, result_path
from quality_runner import (
    fmt_mean_sem as _ms,
)


def section(cfg: dict, all_variants: dict) -> dict:
    """Every variant and seed trained on the grammar's samples and measured against the grammar; `all_variants`:
    the preset's variants (name -> `tirl train` arguments), read for their λ / β / form."""
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
            r = grammar_run(cfg, vname, seed, train_rows, all_variants.get(vname, []))
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


def grammar_run(cfg: dict, vname: str, seed: int, train_rows: list[str], argv: list[str]) -> dict:
    """One variant and seed: trained in process, then scored on every string of the grammar's support and sampled.
    `argv`: the variant's `tirl train` arguments (none for GAIL)."""
    import torch
    from datasets import Dataset

    from tirl import models
    from tirl.data.grammar import default_grammar, forward_kl, reverse_kl_on_support, survival_by_length, validity_mass
    from tirl.evaluation.metrics import self_bleu
    from tirl.rewards import RewardModel, ScoreSettings, score
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
    spec = grammar_variant(argv)
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
    scored = score(RewardModel(model, tok).with_gamma(0.99), [(prompt, y) for y, _ in support],
                   ScoreSettings(batch_size=256, progress=False))
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


def grammar_variant(argv: list[str]) -> dict:
    """IQLearnConfig fields of a variant, read off its `tirl train` arguments `argv` (same λ / β / form as the tasks)."""
    fields: dict = {}
    for flag, cast in (("--iq_lambda", float), ("--iq_value", str), ("--entropy_coef", float),
                       ("--iq_lambda_warmup_steps", int)):
        if flag in argv:
            fields[flag[2:]] = cast(argv[argv.index(flag) + 1])
    if "mle" in argv:
        fields["iq_lambda"] = 0.0
    return fields


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


def tables(g: dict) -> list[str]:
    """The grammar section's table."""
    lines: list[str] = []
    lines += [f"\n### Known-expert grammar (mean ± s.e.m. over {len(g['config']['seeds'])} seeds)\n",
              "| variant | forward KL ↓ | Δ vs MLE | P(valid) ↑ | reverse KL on support ↓ | valid samples | Self-BLEU "
              f"(expert {g['expert']['self_bleu']:.1f}) |", "|---|---|---|---|---|---|---|"]
    for vname, s in g["summary"].items():
        lines.append(f"| {vname} | {_ms(s['forward_kl'], 4)} | {_ms(s.get('vs_mle', {}).get('forward_kl'), 4, True)} | "
                     f"{_ms(s['validity_mass'], 4)} | {_ms(s['reverse_kl_on_support'], 4)} | "
                     f"{_ms(s['sample_validity'], 3)} | {_ms(s['self_bleu'])} |")
    return lines
