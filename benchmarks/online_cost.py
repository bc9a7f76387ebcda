"""Cost of online IQLearn and GAIL vs offline IQLearn: step time, and the share of a step spent generating.

Three variants of one real trainer step (`Trainer.training_step` + AdamW step) on the same batches of the generated
arithmetic task, batch 8, bf16 autocast with fp32 master weights (as `Trainer.train` runs it):
  offline   IQLearnTrainer (λ = 0.1), no sampling
  online    OnlineIQLearnTrainer, α = 0.1 (1 sampled completion per batch of 8), generate_every = 1
  gail      GAILTrainer, one sampled completion per prompt (8), generate_every = 1, frozen-trunk discriminator

Generation is measured inside the step (the trainer's own timer around sampling): `generation_share` = generation
time / step time. The online variants run once per sampler in `--samplers` (the `sampler` option: `generate`, the
loop before the packed sampler, and `packed`, the default), so the JSON holds both step-time ratios, before and
after. Each variant runs in its own process for `--steps` timed steps after `--warmup` steps, for each model in
`--models`; step-time ratios are taken within a round (side by side) before the median. Results:
benchmarks/results/online_cost.json and a markdown table on stdout.

    python benchmarks/online_cost.py                                   # tiny-llama and SmolLM2-135M, ~15 min on 2 cores
    python benchmarks/online_cost.py --models tiny-llama --steps 2     # smoke test, under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("offline", "online", "gail")
SAMPLERS = ("generate", "packed")


def variant_ids(samplers) -> list[str]:
    """offline, then each online method once per sampler: `online:generate`, `online:packed`, ..."""
    return ["offline"] + [f"{v}:{s}" for v in VARIANTS[1:] for s in samplers]
RESULTS = Path(__file__).resolve().parent / "results"


def worker(variant: str, args) -> dict:
    import torch
    from datasets import Dataset

    from tirl import models
    from tirl.data import load_rows, to_trl
    from tirl.trainers import (
        GAILConfig,
        GAILTrainer,
        IQLearnConfig,
        IQLearnTrainer,
        OnlineIQLearnConfig,
        OnlineIQLearnTrainer,
    )

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = models.load(args.model)
    rows = load_rows("arithmetic", split="train", limit=args.batch * (args.warmup + args.steps), seed=0)
    ds = Dataset.from_list(to_trl(rows, tok))
    common = dict(output_dir="/tmp/tirl-bench-online", per_device_train_batch_size=args.batch, report_to="none",
                  use_cpu=True, bf16=args.bf16, gradient_checkpointing=False, save_strategy="no", learning_rate=1e-5,
                  disable_tqdm=True, max_length=args.seq, seed=0, iq_lambda=0.1)
    sampling = dict(max_new_tokens=args.max_new_tokens, generate_every=1, sampler=args.sampler)
    if variant == "offline":
        trainer = IQLearnTrainer(model, IQLearnConfig(**common), train_dataset=ds, processing_class=tok)
    elif variant == "online":
        trainer = OnlineIQLearnTrainer(model, OnlineIQLearnConfig(**common, iq_alpha=0.1, **sampling),
                                       train_dataset=ds, processing_class=tok)
    else:
        gail = {k: v for k, v in common.items() if k != "iq_lambda"}  # GAIL has no IQLearn options
        trainer = GAILTrainer(model, GAILConfig(**gail, **sampling), train_dataset=ds,
                              processing_class=tok)
    disc_seconds = []
    if variant == "gail":  # time the discriminator update inside the step too
        inner = trainer.discriminator_step

        def timed(batch):
            t = time.perf_counter()
            out = inner(batch)
            disc_seconds.append(time.perf_counter() - t)
            return out

        trainer.discriminator_step = timed
    n_steps = args.warmup + args.steps
    trainer.create_optimizer_and_scheduler(num_training_steps=n_steps)
    batches = list(trainer.get_train_dataloader())[:n_steps]
    # `Trainer.train` gets autocast from `accelerator.prepare(model)`, which wraps the forward; do the same here
    prepared = trainer.accelerator.prepare_model(trainer.model)
    prepared.train()
    steps, gens, tokens = [], [], []
    for i, batch in enumerate(batches):
        n_items = (batch["labels"][:, 1:] != -100).sum()
        t0 = time.perf_counter()
        trainer.training_step(prepared, dict(batch), n_items)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        trainer.state.global_step += 1  # so `generate_every` sees a new optimizer step
        sampler = getattr(trainer, "sampler", None)
        gen = sampler.last_step_timing.get("generation_s", 0.0) if sampler is not None else 0.0
        entry = sampler.buffer.get(0) if sampler is not None and len(sampler.buffer) else None
        if i >= args.warmup:
            steps.append(dt)
            gens.append(gen)
            tokens.append(int(entry.rollout.completion_lengths().sum()) if entry is not None else 0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {"variant": variant, "sampler": args.sampler if variant != "offline" else None, "step_s": steps, "generation_s": gens, "sampled_tokens": tokens,
            "discriminator_s": disc_seconds[args.warmup:], "median_step_s": statistics.median(steps),
            "median_generation_s": statistics.median(gens),
            "generation_share": statistics.median(g / s for g, s in zip(gens, steps, strict=True)),
            "peak_rss_gb": peak}


def run_model(model: str, args) -> dict:
    forwarded = ["--model", model, "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
                 "--warmup", str(args.warmup), "--threads", str(args.threads), "--bf16", str(args.bf16),
                 "--max_new_tokens", str(args.max_new_tokens if model != "tiny-llama" else args.tiny_max_new_tokens)]
    rounds = []
    ids = variant_ids(args.samplers.split(","))
    for r in range(args.rounds):
        order = ids[r % len(ids):] + ids[: r % len(ids)]
        res = {}
        for v in order:
            method, _, sampler = v.partition(":")
            out = subprocess.run([sys.executable, __file__, "--worker", method, "--sampler", sampler or "packed",
                                  *forwarded], capture_output=True, text=True)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{model} worker {v} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
            res[v] = json.loads(line[7:])
            print(f"{model} round {r + 1} {v:<16} median step {res[v]['median_step_s']:.3f} s, generation "
                  f"{res[v]['median_generation_s']:.3f} s ({100 * res[v]['generation_share']:.0f}% of the step)", flush=True)
        rounds.append(res)

    def med(v, key):
        return statistics.median(rd[v][key] for rd in rounds)

    summary = {v: {"median_step_s": med(v, "median_step_s"), "median_generation_s": med(v, "median_generation_s"),
                   "generation_share": med(v, "generation_share"), "peak_rss_gb": med(v, "peak_rss_gb"),
                   "step_time_vs_offline": statistics.median(rd[v]["median_step_s"] / rd["offline"]["median_step_s"]
                                                             for rd in rounds)}
               for v in ids}
    for v in ids:
        disc = [x for rd in rounds for x in rd[v]["discriminator_s"]]
        if disc:
            summary[v]["median_discriminator_s"] = statistics.median(disc)
    # the step-time ratio of each online method per sampler: before (generate) and after (packed)
    vs_offline = {m: {s: summary[f"{m}:{s}"]["step_time_vs_offline"] for s in args.samplers.split(",")}
                  for m in VARIANTS[1:]}
    return {"summary": summary, "step_time_vs_offline": vs_offline, "rounds": rounds,
            "max_new_tokens": args.max_new_tokens if model != "tiny-llama" else args.tiny_max_new_tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny-llama,smollm2-135m", help="comma-separated tirl.models names")
    p.add_argument("--batch", type=int, default=8, help="expert rows per step")
    p.add_argument("--seq", type=int, default=256, help="max_length of the expert rows")
    p.add_argument("--max_new_tokens", type=int, default=64, help="longest sampled completion (real models)")
    p.add_argument("--tiny_max_new_tokens", type=int, default=64, help="longest sampled completion for tiny-llama")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round (median taken)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=1, help="rounds; each runs every variant once, order rotated")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--bf16", type=lambda s: s.lower() in ("1", "true", "yes"), default=True, help="bf16 autocast")
    p.add_argument("--samplers", default=",".join(SAMPLERS),
                   help="the online variants run once per sampler (`sampler` option: generate = before, packed = now)")
    p.add_argument("--output", default=str(RESULTS / "online_cost.json"), help="where to write the JSON results")
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--sampler", default="packed", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)))
        return

    import platform

    import torch
    import transformers
    import trl

    load_before = os.getloadavg()
    t0 = time.time()
    per_model = {m: run_model(m, args) for m in args.models.split(",")}
    result = {
        "benchmark": "online_cost",
        "setup": {"batch": args.batch, "max_length": args.seq, "bf16_autocast": args.bf16, "timed_steps": args.steps,
                  "warmup_steps": args.warmup, "rounds": args.rounds, "threads": args.threads,
                  "iq_alpha": 0.1, "generate_every": 1, "data": "arithmetic (generated), train split",
                  "samplers": args.samplers.split(","),
                  "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                  "load_average_before": load_before, "load_average_after": os.getloadavg(),
                  "wall_s": time.time() - t0,
                  "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "models": per_model,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nbatch {args.batch}, bf16 autocast={args.bf16}, {args.rounds} round(s) × {args.steps} steps (medians)\n")
    print("| model | method | sampler | max new tokens | step time (s) | vs offline | generation (s) | generation share "
          "of step |")
    print("|---|---|---|---|---|---|---|---|")
    for m, res in per_model.items():
        for v in variant_ids(args.samplers.split(",")):
            s = res["summary"][v]
            method, _, sampler = v.partition(":")
            print(f"| {m} | {method} | {sampler or '–'} | {res['max_new_tokens'] if v != 'offline' else '–'} | "
                  f"{s['median_step_s']:.3f} | "
                  f"{s['step_time_vs_offline']:.2f}× | {s['median_generation_s']:.3f} | {100 * s['generation_share']:.0f}% |")


if __name__ == "__main__":
    main()
