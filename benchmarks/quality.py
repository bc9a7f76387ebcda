"""Quality: IQLearn vs MLE on real data (GSM8k, SmolLM2-135M) and on a task whose expert is known exactly.

Part "gsm8k" — fine-tune SmolLM2-135M-Instruct on a GSM8k train subset with MLE and with IQLearn at several λ
(through `tirl train`, the same seed and data for all), evaluate each (and the untrained model) on a fixed GSM8k test
subset with `tirl eval` (greedy, and K samples at temperature 1: accuracy and Self-BLEU), and draw the
score-vs-diversity picture with `tirl compare`.

Part "grammar" — the known-expert task (`tirl.data.grammar`): a probabilistic grammar with 1,887 valid strings whose
probabilities are known. A small Llama is trained from scratch on expert samples with MLE and IQLearn (several λ,
several seeds). Every valid string is scored, so forward KL(p*‖q), the probability of generating a valid string and
the reverse KL on the valid set are exact; samples give Self-BLEU and the fraction still valid after t symbols
(compounding error).

    python benchmarks/quality.py                       # CPU preset, both parts, ~30 min on 2 cores
    python benchmarks/quality.py --part grammar        # ~3 min
    python benchmarks/quality.py --preset smoke        # tiny everything, a couple of minutes (checks the script)

Writes benchmarks/results/quality.json, quality_gsm8k.png (+ .md) and quality_grammar.png; prints markdown tables.
Run directories go to benchmarks/runs/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = HERE / "runs" / "quality"

PRESETS = {
    "cpu": {
        "gsm8k": {"model": "smollm2-135m", "lambdas": [0.01, 0.1, 1.0], "seeds": [0], "train_examples": 320,
                  "max_steps": 40, "batch": 4, "lr": 5e-5, "eval_examples": 50, "samples": 4, "max_new_tokens": 192,
                  "eval_batch": 64},
        "grammar": {"model": "small-llama", "lambdas": [0.01, 0.1, 1.0], "seeds": [0, 1, 2], "train_examples": 2000,
                    "max_steps": 200, "batch": 32, "lr": 2e-3, "num_samples": 400},
    },
    "smoke": {
        "gsm8k": {"model": "tiny-llama", "lambdas": [0.1], "seeds": [0], "train_examples": 32, "max_steps": 4,
                  "batch": 4, "lr": 3e-3, "eval_examples": 4, "samples": 2, "max_new_tokens": 16, "eval_batch": 8,
                  "dataset": "arithmetic"},
        "grammar": {"model": "tiny-llama", "lambdas": [0.1], "seeds": [0], "train_examples": 200, "max_steps": 10,
                    "batch": 16, "lr": 3e-3, "num_samples": 40},
    },
}


def tirl(*args: str) -> None:
    cmd = [sys.executable, "-m", "tirl.cli", *args]
    print("$ tirl " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"tirl {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


# ---------------------------------------------------------------------------------------------------------------------
# GSM8k


def gsm8k_part(cfg: dict, out_runs: Path) -> dict:
    dataset = cfg.get("dataset", "gsm8k")
    eval_args = ["--dataset", dataset, "--split", "test", "--num_examples", str(cfg["eval_examples"]), "--samples",
                 str(cfg["samples"]), "--temperature", "1.0", "--max_new_tokens", str(cfg["max_new_tokens"]),
                 "--batch_size", str(cfg["eval_batch"]), "--seed", "0"]
    runs = [("untrained", None, None)]
    for seed in cfg["seeds"]:
        runs.append((f"mle-s{seed}", 0.0, seed))
        runs += [(f"iqlearn-l{lam:g}-s{seed}", lam, seed) for lam in cfg["lambdas"]]
    eval_dirs, timings = [], {}
    for name, lam, seed in runs:
        run_dir = out_runs / name
        t0 = time.time()
        if lam is None:
            model = cfg["model"]
        else:
            if not (run_dir / "model.safetensors").is_file():
                method = ["--method", "mle"] if lam == 0 else ["--method", "iqlearn", "--iq_lambda", str(lam)]
                tirl("train", *method, "--model", cfg["model"], "--dataset", dataset, "--num_train_examples",
                     str(cfg["train_examples"]), "--num_eval_examples", "16", "--max_steps", str(cfg["max_steps"]),
                     "--per_device_train_batch_size", str(cfg["batch"]), "--learning_rate", str(cfg["lr"]),
                     "--lr_scheduler_type", "cosine", "--warmup_steps", str(max(1, cfg["max_steps"] // 10)),
                     "--max_length", "384", "--gradient_checkpointing", "false", "--save_strategy", "no",
                     "--report_to", "none", "--seed", str(seed), "--disable_tqdm", "true", "--output_dir", str(run_dir))
            model = str(run_dir)
        eval_dir = out_runs / "eval" / name
        tirl("eval", "--model", model, *eval_args, "--output_dir", str(eval_dir))
        timings[name] = time.time() - t0
        eval_dirs.append((name, eval_dir))
    names = [n for n, _ in eval_dirs]
    tirl("compare", *[str(d) for _, d in eval_dirs], "--labels", ",".join(names), "--output", str(RESULTS / "quality_gsm8k.png"))
    rows = {}
    for name, d in eval_dirs:
        m = json.loads((d / "metrics.json").read_text())
        rows[name] = {"greedy": m.get("greedy"), "sampled": m.get("sampled"), "seconds": timings[name]}
    return {"config": cfg, "runs": rows}


# ---------------------------------------------------------------------------------------------------------------------
# Known-expert grammar


def grammar_run(cfg: dict, lam: float, seed: int, train: list[str]) -> dict:
    import torch
    from datasets import Dataset

    from tirl import models
    from tirl.data.grammar import default_grammar, forward_kl, reverse_kl_on_support, survival_by_length, validity_mass
    from tirl.evaluation.metrics import self_bleu
    from tirl.rewards import score
    from tirl.trainers import IQLearnConfig, IQLearnTrainer

    grammar = default_grammar()
    support = list(grammar.support().items())
    model, tok = models.tiny_model(cfg["model"], seed=seed)
    tok.chat_template = None  # plain "prompt + string + EOS": log q(y) is exactly the sum over the string and EOS
    prompt = "> "
    ds = Dataset.from_list([{"prompt": prompt, "completion": y} for y in train])
    args = IQLearnConfig(output_dir=str(RUNS / "grammar-tmp"), per_device_train_batch_size=cfg["batch"],
                         max_steps=cfg["max_steps"], learning_rate=cfg["lr"], lr_scheduler_type="cosine",
                         warmup_steps=max(1, cfg["max_steps"] // 10), report_to="none", bf16=False,
                         gradient_checkpointing=False, save_strategy="no", logging_steps=50, seed=seed,
                         disable_tqdm=True, iq_lambda=lam, iq_gamma=0.99)
    trainer = IQLearnTrainer(model, args, train_dataset=ds, processing_class=tok)
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
        gen = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=grammar.max_len + 8,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    samples = [tok.decode(g[enc["input_ids"].shape[1]:], skip_special_tokens=True) for g in gen]
    groups = [[" ".join(s) for s in samples[i : i + 4]] for i in range(0, len(samples), 4)]
    return {
        "lambda": lam, "seed": seed, "train_seconds": seconds,
        "forward_kl": forward_kl(lp, lq), "validity_mass": validity_mass(lq), "reverse_kl_on_support": reverse_kl_on_support(lp, lq),
        "sample_validity": sum(s in grammar.support() for s in samples) / len(samples),
        "self_bleu": self_bleu(groups), "survival_by_length": survival_by_length(grammar, samples),
        "mean_length": statistics.fmean(len(s) for s in samples),
    }


def grammar_part(cfg: dict) -> dict:
    from tirl.data.grammar import default_grammar, survival_by_length
    from tirl.evaluation.metrics import self_bleu

    grammar = default_grammar()
    train = grammar.sample(cfg["train_examples"], seed=1234)
    expert = grammar.sample(cfg["num_samples"], seed=99)
    reference = {"self_bleu": self_bleu([[" ".join(s) for s in expert[i : i + 4]] for i in range(0, len(expert), 4)]),
                 "mean_length": statistics.fmean(len(s) for s in expert),
                 "survival_by_length": survival_by_length(grammar, expert)}
    runs = []
    for seed in cfg["seeds"]:
        for lam in [0.0, *cfg["lambdas"]]:
            r = grammar_run(cfg, lam, seed, train)
            print(f"  grammar λ={lam:g} seed={seed}: fwd KL {r['forward_kl']:.4f}, valid {r['validity_mass']:.4f}, "
                  f"rev KL {r['reverse_kl_on_support']:.4f}, Self-BLEU {r['self_bleu']:.1f} ({r['train_seconds']:.0f} s)",
                  flush=True)
            runs.append(r)
    summary = {}
    for lam in [0.0, *cfg["lambdas"]]:
        rs = [r for r in runs if r["lambda"] == lam]
        summary[f"{lam:g}"] = {k: _mean_sem([r[k] for r in rs]) for k in
                               ("forward_kl", "validity_mass", "reverse_kl_on_support", "sample_validity", "self_bleu", "mean_length")}
        summary[f"{lam:g}"]["survival_by_length"] = [statistics.fmean(v) for v in zip(*(r["survival_by_length"] for r in rs), strict=True)]
    plot_grammar(summary, reference, RESULTS / "quality_grammar.png")
    return {"config": cfg, "expert": reference, "runs": runs, "summary": summary}


def _mean_sem(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": mean, "sem": sem}


def plot_grammar(summary: dict, expert: dict, path: Path) -> None:
    from tirl.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    lams = list(summary)
    names = ["MLE" if lam == "0" else f"IQ λ={lam}" for lam in lams]
    for ax, key, title in ((axes[0], "forward_kl", "forward KL(p* ‖ q), nats (lower is better)"),
                           (axes[1], "validity_mass", "P(valid string) under q (higher is better)")):
        means = [summary[lam][key]["mean"] for lam in lams]
        errs = [summary[lam][key]["sem"] or 0 for lam in lams]
        ax.bar(names, means, yerr=errs, capsize=3, color=["#777"] + ["#2166bf"] * (len(lams) - 1))
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    ax = axes[2]
    ts = range(1, len(expert["survival_by_length"]) + 1)
    for lam, name in zip(lams, names, strict=True):
        ax.plot(ts, summary[lam]["survival_by_length"], marker="o", ms=3, label=name)
    ax.plot(ts, expert["survival_by_length"], "k--", label="expert samples")
    ax.set_xlabel("generated symbols t")
    ax.set_title("fraction of samples still valid after t symbols", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle("known-expert grammar: MLE vs IQLearn (mean ± s.e.m. over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------


def print_tables(result: dict) -> None:
    if "gsm8k" in result:
        print("\n### GSM8k test subset (greedy and K samples at T = 1)\n")
        print("| run | greedy acc. (flexible) | greedy acc. (strict) | sampled acc. (flexible) | any-of-K (flexible) | Self-BLEU | distinct-2 | entropy |")
        print("|---|---|---|---|---|---|---|---|")
        for name, r in result["gsm8k"]["runs"].items():
            g, s = r["greedy"] or {}, r["sampled"] or {}
            print(f"| {name} | {_pct(g.get('accuracy_flexible'))} | {_pct(g.get('accuracy_strict'))} | "
                  f"{_pct(s.get('accuracy_flexible'))} | {_pct(s.get('pass_at_k_flexible'))} | {_num(s.get('self_bleu'))} | "
                  f"{_num(s.get('distinct_2'), 3)} | {_num(s.get('entropy'), 2)} |")
    if "grammar" in result:
        print("\n### Known-expert grammar (mean ± s.e.m. over seeds)\n")
        print("| method | forward KL | P(valid) | reverse KL on support | valid samples | Self-BLEU (expert "
              f"{result['grammar']['expert']['self_bleu']:.1f}) |")
        print("|---|---|---|---|---|---|")
        for lam, s in result["grammar"]["summary"].items():
            name = "MLE" if lam == "0" else f"IQLearn λ={lam}"
            print(f"| {name} | " + " | ".join(_ms(s[k]) for k in ("forward_kl", "validity_mass", "reverse_kl_on_support",
                                                                  "sample_validity", "self_bleu")) + " |")


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x, d: int = 1) -> str:
    return "–" if x is None else f"{x:.{d}f}"


def _ms(s: dict) -> str:
    return f"{s['mean']:.4f}" + (f" ± {s['sem']:.4f}" if s["sem"] is not None else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["gsm8k", "grammar", "all"], default="all", help="which part to run")
    p.add_argument("--preset", choices=list(PRESETS), default="cpu", help="sizes: 'cpu' (≤ 60 min) or 'smoke'")
    p.add_argument("--output", default=str(RESULTS / "quality.json"), help="JSON results")
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    preset = PRESETS[args.preset]
    runs_dir = RUNS / args.preset
    result: dict = {"benchmark": "quality", "preset": args.preset}
    if Path(args.output).is_file():  # keep the other part's results when only one part is rerun
        previous = json.loads(Path(args.output).read_text())
        if previous.get("preset") == args.preset:
            result.update({k: v for k, v in previous.items() if k in ("gsm8k", "grammar")})
    t0 = time.time()

    def save() -> None:  # after each part, so a killed run keeps what it finished
        result["seconds"] = time.time() - t0
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")

    if args.part in ("grammar", "all"):
        result["grammar"] = grammar_part(preset["grammar"])
        save()
    if args.part in ("gsm8k", "all"):
        result["gsm8k"] = gsm8k_part(preset["gsm8k"], runs_dir)
        save()
    print_tables(result)
    print(f"\nwrote {args.output} in {result['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
