"""Cost of the IQLearn loss vs TRL's SFTTrainer loss: step time and peak memory of one real training step.

Three variants of the same trainer step (`Trainer.training_step` + AdamW) on SmolLM2-135M, batch 8×256, bf16 autocast
with fp32 master weights, every token a completion token:
  trl_sft     TRL's SFTTrainer (its fused, chunked log-prob head)
  iq_naive    IQLearnTrainer, iq_chunk_size=0 (loss from the model's full [B, T, V] logits)
  iq_chunked  IQLearnTrainer, iq_chunk_size=1024 (chunked Q/V head, never builds the logits; on CUDA its per-chunk
              maths is compiled with torch.compile)
  iq_chunked_eager  the same with TIRL_FUSED_HEAD=0 (eager per-chunk maths; the same as iq_chunked on CPU); only with
              --variants

Each variant runs in its own process (so its peak RSS is its own) for `--steps` timed steps after `--warmup` steps;
the variants alternate over `--rounds` rounds with the order rotated, and ratios are taken within a round (side by
side) before the median. Results: benchmarks/results/loss_cost.json and a markdown table on stdout.

    python benchmarks/loss_cost.py                       # full run, ~10 min on 2 cores
    python benchmarks/loss_cost.py --model tiny-llama --batch 4 --seq 64 --rounds 1   # smoke test, seconds
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

VARIANTS = ("trl_sft", "iq_naive", "iq_chunked", "iq_chunked_eager")
DEFAULT_VARIANTS = "trl_sft,iq_naive,iq_chunked"
RESULTS = Path(__file__).resolve().parent / "results"


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def peak_gb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB


def worker(variant: str, args) -> dict:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tirl import models
    from tirl.trainers import IQLearnConfig, IQLearnTrainer

    if variant == "iq_chunked_eager":
        os.environ["TIRL_FUSED_HEAD"] = "0"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = models.load(args.model)
    common = dict(output_dir="/tmp/tirl-bench", per_device_train_batch_size=args.batch, report_to="none",
                  use_cpu=args.device == "cpu", bf16=args.bf16, gradient_checkpointing=False, save_strategy="no",
                  learning_rate=1e-5, disable_tqdm=True, max_length=args.seq)
    dummy = Dataset.from_list([{"prompt": "a", "completion": "b"}] * 2)
    if variant == "trl_sft":
        trainer = SFTTrainer(model, SFTConfig(**common), train_dataset=dummy, processing_class=tok)
    else:
        cfg = IQLearnConfig(**common, iq_lambda=0.1, iq_gamma=0.99, iq_chunk_size=0 if variant == "iq_naive" else args.chunk)
        trainer = IQLearnTrainer(model, cfg, train_dataset=dummy, processing_class=tok)
    trainer.create_optimizer_and_scheduler(num_training_steps=args.warmup + args.steps)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    batch = {k: v.to(trainer.args.device) for k, v in batch.items()}
    n_items = torch.tensor(args.batch * (args.seq - 1))
    model = trainer.model
    model.train()
    rss_setup = rss_gb()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    # `Trainer.train` gets autocast from `accelerator.prepare(model)`, which wraps the forward; do the same here
    model = trainer.accelerator.prepare_model(model)
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = trainer.training_step(model, dict(batch), n_items)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
        losses.append(float(loss))
    peak = peak_gb(args.device)
    return {"variant": variant, "step_s": times, "median_step_s": statistics.median(times),
            "tokens_per_s": args.batch * args.seq / statistics.median(times), "peak_rss_gb": peak,
            "rss_after_setup_gb": rss_setup, "loss_first": losses[0], "loss_last": losses[-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model name for tirl.models.load")
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    p.add_argument("--chunk", type=int, default=1024, help="iq_chunk_size of the chunked variant")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round (median taken)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every variant once, order rotated")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--bf16", type=lambda s: s.lower() in ("1", "true", "yes"), default=True, help="bf16 autocast")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu (peak = process RSS) or cuda (peak = torch.cuda.max_memory_allocated)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated, trl_sft first (ratios are to it); any of {', '.join(VARIANTS)}")
    p.add_argument("--output", default=str(RESULTS / "loss_cost.json"), help="where to write the JSON results")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)))
        return

    forwarded = ["--model", args.model, "--batch", str(args.batch), "--seq", str(args.seq), "--chunk", str(args.chunk),
                 "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                 "--bf16", str(args.bf16), "--device", args.device]
    variants = tuple(args.variants.split(","))
    if variants[0] != "trl_sft" or not set(variants) <= set(VARIANTS):
        p.error(f"--variants must start with trl_sft and name only {', '.join(VARIANTS)}")
    rounds = []
    for r in range(args.rounds):
        k = r % len(variants)
        order = variants[k:] + variants[:k]
        res = {}
        for v in order:
            out = subprocess.run([sys.executable, __file__, "--worker", v, *forwarded], capture_output=True, text=True)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"worker {v} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
            res[v] = json.loads(line[7:])
            print(f"round {r + 1} {v:<11} median step {res[v]['median_step_s']:.3f} s, peak {res[v]['peak_rss_gb']:.2f} GB",
                  flush=True)
        rounds.append(res)

    def med(v, key):
        return statistics.median(rd[v][key] for rd in rounds)

    def ratio(v, key):
        return statistics.median(rd[v][key] / rd["trl_sft"][key] for rd in rounds)

    summary = {v: {"median_step_s": med(v, "median_step_s"), "tokens_per_s": med(v, "tokens_per_s"),
                   "peak_rss_gb": med(v, "peak_rss_gb"),
                   "step_time_vs_trl_sft": ratio(v, "median_step_s"), "peak_rss_vs_trl_sft": ratio(v, "peak_rss_gb")}
               for v in variants}
    import platform

    import torch
    import transformers
    import trl

    result = {
        "benchmark": "loss_cost",
        "setup": {"model": args.model, "device": args.device,
                  "peak_memory": "torch.cuda.max_memory_allocated" if args.device == "cuda" else "process peak RSS",
                  "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "batch": args.batch, "seq": args.seq, "bf16_autocast": args.bf16,
                  "chunk_size": args.chunk, "timed_steps": args.steps, "warmup_steps": args.warmup,
                  "rounds": args.rounds, "variants": list(variants), "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                  "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "summary": summary,
        "targets": {"iq_chunked_step_time_vs_trl_sft_max": 1.05, "iq_chunked_peak_rss_vs_trl_sft_max": 1.0},
        "rounds": rounds,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{args.model}, batch {args.batch}×{args.seq}, bf16 autocast={args.bf16}, {args.rounds} rounds × "
          f"{args.steps} steps (medians; ratios within a round)\n")
    print("| loss | step time (s) | tokens/s | peak memory (GB) | step time vs TRL SFT | peak memory vs TRL SFT |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        s = summary[v]
        print(f"| {v} | {s['median_step_s']:.2f} | {s['tokens_per_s']:.0f} | {s['peak_rss_gb']:.2f} | "
              f"{s['step_time_vs_trl_sft']:.3f} | {s['peak_rss_vs_trl_sft']:.3f} |")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
