"""Training cost of every objective vs TRL's SFTTrainer: tokens/s and peak memory, and loss memory vs vocabulary size.

Part "grid" — one real trainer step (`Trainer.training_step` + AdamW, bf16 autocast, 2 threads) of SmolLM2-135M-Instruct
at two sequence lengths × two batch sizes, every token a completion token, for:
  trl_sft      TRL's SFTTrainer
  tirl_mle     IQLearnTrainer with iq_lambda=0 (tirl's MLE: same loss as SFT, chunked Q/V head)
  iq_naive     offline IQLearn from the model's full logits (iq_chunk_size=0)
  iq_chunked   offline IQLearn, chunked head (the default)
  iq_online    online IQLearn (α=0.1, a fresh policy sample every step, 64 new tokens), when the trainer is available
Part "vocab" — the same step on a small trunk (Llama d=256, 2 layers) at vocabularies of 32k, 50k, 128k and 256k
tokens, batch 4 × 512: the peak memory of trl_sft, iq_naive and iq_chunked shows what the [B, T, V] logits cost.

Each measurement runs in its own process (its peak RSS is its own); variants alternate within a round, ratios to
trl_sft are taken within a round and then the median over rounds. Writes benchmarks/results/cost.json and prints
markdown tables.

    python benchmarks/cost.py                      # both parts, ~30 min on 2 cores
    python benchmarks/cost.py --part vocab         # ~5 min
    python benchmarks/cost.py --model tiny-llama --seqs 32 --batches 2 --vocabs 1000 --rounds 1   # smoke test
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

RESULTS = Path(__file__).resolve().parent / "results"
GRID_VARIANTS = ("trl_sft", "tirl_mle", "iq_naive", "iq_chunked", "iq_online")
VOCAB_VARIANTS = ("trl_sft", "iq_naive", "iq_chunked")


def online_available() -> bool:
    try:
        from tirl.trainers import OnlineIQLearnConfig, OnlineIQLearnTrainer  # noqa: F401
    except ImportError:
        return False
    return True


def build_model(spec: str):
    """`spec` is a tirl model name, or `vocab:N` for the small trunk with an N-token vocabulary."""
    from tirl import models

    if not spec.startswith("vocab:"):
        return models.load(spec)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = models.char_tokenizer()
    cfg = LlamaConfig(vocab_size=int(spec.split(":")[1]), hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=1024, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(cfg), tok


def make_trainer(variant: str, model, tok, common: dict, chunk: int):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tirl.trainers import IQLearnConfig, IQLearnTrainer

    dummy = Dataset.from_list([{"prompt": "a", "completion": "b"}] * 2)
    if variant == "trl_sft":
        return SFTTrainer(model, SFTConfig(**common), train_dataset=dummy, processing_class=tok)
    if variant == "iq_online":
        from tirl.trainers import OnlineIQLearnConfig, OnlineIQLearnTrainer

        cfg = OnlineIQLearnConfig(**common, iq_lambda=0.1, iq_chunk_size=chunk, iq_alpha=0.1, generate_every=1,
                                  max_new_tokens=64)
        return OnlineIQLearnTrainer(model, cfg, train_dataset=dummy, processing_class=tok)
    lam = 0.0 if variant == "tirl_mle" else 0.1
    cfg = IQLearnConfig(**common, iq_lambda=lam, iq_gamma=0.99, iq_chunk_size=0 if variant == "iq_naive" else chunk)
    return IQLearnTrainer(model, cfg, train_dataset=dummy, processing_class=tok)


def worker(args) -> dict:
    import torch

    from tirl.qv import reference

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = build_model(args.model)
    common = dict(output_dir="/tmp/tirl-bench", per_device_train_batch_size=args.batch, report_to="none", use_cpu=True,
                  bf16=True, gradient_checkpointing=False, save_strategy="no", learning_rate=1e-5, disable_tqdm=True,
                  max_length=args.seq)
    trainer = make_trainer(args.variant, model, tok, common, args.chunk)
    trainer.create_optimizer_and_scheduler(num_training_steps=args.warmup + args.steps)
    g = torch.Generator().manual_seed(0)
    if args.variant == "iq_online":
        # online rows need a prompt to sample from: the first quarter of each row is prompt
        ids = torch.randint(3, min(model.config.vocab_size, len(tok)), (args.batch, args.seq), generator=g)
        labels = ids.clone()
        labels[:, : args.seq // 4] = -100
    else:
        ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq), generator=g)
        labels = ids.clone()
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if getattr(trainer.args, "iq_value", None) == "reference":
        # the default form reads the starting model's logsumexp per token from the batch (a dataset column, computed
        # once before training); its step cost is the form's, whatever the values, so a constant stands in for them
        batch[reference.COLUMN] = torch.full(ids.shape, 20.0)
    n_items = (labels[:, 1:] != -100).sum()
    model = trainer.accelerator.prepare_model(trainer.model)  # autocast, as Trainer.train does
    model.train()
    times = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        trainer.training_step(model, dict(batch), n_items)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"median_step_s": med, "step_s": times, "tokens_per_s": args.batch * args.seq / med,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def run_worker(args, model: str, variant: str, batch: int, seq: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--variant", variant, "--batch", str(batch),
           "--seq", str(seq), "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--chunk", str(args.chunk)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{variant} {model} {batch}x{seq} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(line[7:])


def measure(args, model: str, variants: tuple[str, ...], batch: int, seq: int) -> dict:
    rounds = []
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        res = {v: run_worker(args, model, v, batch, seq) for v in order}
        rounds.append(res)
        print(f"  {model} {batch}x{seq} round {r + 1}: " + ", ".join(
            f"{v} {res[v]['median_step_s']:.2f}s/{res[v]['peak_rss_gb']:.2f}GB" for v in variants), flush=True)
    return {v: {"tokens_per_s": statistics.median(rd[v]["tokens_per_s"] for rd in rounds),
                "median_step_s": statistics.median(rd[v]["median_step_s"] for rd in rounds),
                "peak_rss_gb": statistics.median(rd[v]["peak_rss_gb"] for rd in rounds),
                "tokens_per_s_vs_trl_sft": statistics.median(rd[v]["tokens_per_s"] / rd["trl_sft"]["tokens_per_s"] for rd in rounds),
                "peak_rss_vs_trl_sft": statistics.median(rd[v]["peak_rss_gb"] / rd["trl_sft"]["peak_rss_gb"] for rd in rounds)}
            for v in variants}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["grid", "vocab", "all"], default="all", help="which measurements to run")
    p.add_argument("--model", default="smollm2-135m", help="model of the grid part")
    p.add_argument("--seqs", default="128,256", help="sequence lengths of the grid part")
    p.add_argument("--batches", default="4,8", help="batch sizes of the grid part")
    p.add_argument("--vocabs", default="32000,50000,128000,256000", help="vocabulary sizes of the vocab part")
    p.add_argument("--vocab_batch", type=int, default=4, help="batch of the vocab part")
    p.add_argument("--vocab_seq", type=int, default=512, help="sequence length of the vocab part")
    p.add_argument("--steps", type=int, default=2, help="timed steps per measurement (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="rounds per configuration, variant order rotated")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--chunk", type=int, default=1024, help="iq_chunk_size of the chunked variants")
    p.add_argument("--output", default=str(RESULTS / "cost.json"), help="JSON results")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return

    result: dict = {"benchmark": "cost", "setup": {k: v for k, v in vars(args).items() if k not in ("worker", "variant", "batch", "seq")}}
    if args.part != "all" and Path(args.output).is_file():  # rerunning one part keeps the other part's results
        previous = json.loads(Path(args.output).read_text())
        result.update({k: v for k, v in previous.items() if k in ("grid", "vocab")})
        result["setup"] = {**previous.get("setup", {}), **{k: v for k, v in result["setup"].items() if k.startswith(args.part) or k == "part"}}
    if args.part in ("grid", "all"):
        variants = tuple(v for v in GRID_VARIANTS if v != "iq_online" or online_available())
        result["grid"] = []
        for seq in map(int, args.seqs.split(",")):
            for batch in map(int, args.batches.split(",")):
                result["grid"].append({"batch": batch, "seq": seq, "variants": measure(args, args.model, variants, batch, seq)})
    if args.part in ("vocab", "all"):
        result["vocab"] = []
        for vocab in map(int, args.vocabs.split(",")):
            res = measure(args, f"vocab:{vocab}", VOCAB_VARIANTS, args.vocab_batch, args.vocab_seq)
            result["vocab"].append({"vocab": vocab, "variants": res})
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print_tables(result)
    print(f"\nwrote {args.output}")


def print_tables(result: dict) -> None:
    if "grid" in result:
        print(f"\n### {result['setup']['model']}: tokens/s (× TRL SFT) and peak RSS GB (× TRL SFT)\n")
        variants = list(result["grid"][0]["variants"])
        print("| batch × seq | " + " | ".join(variants) + " |")
        print("|---|" + "---|" * len(variants))
        for row in result["grid"]:
            cells = [f"{s['tokens_per_s']:.0f} ({s['tokens_per_s_vs_trl_sft']:.2f}×), {s['peak_rss_gb']:.2f} GB "
                     f"({s['peak_rss_vs_trl_sft']:.2f}×)" for s in row["variants"].values()]
            print(f"| {row['batch']} × {row['seq']} | " + " | ".join(cells) + " |")
    if "vocab" in result:
        setup = result["setup"]
        print(f"\n### peak RSS (GB) vs vocabulary, Llama d=256 × 2 layers, batch {setup['vocab_batch']} × {setup['vocab_seq']}\n")
        print("| vocabulary | " + " | ".join(VOCAB_VARIANTS) + " | iq_chunked vs trl_sft |")
        print("|---|" + "---|" * (len(VOCAB_VARIANTS) + 1))
        for row in result["vocab"]:
            v = row["variants"]
            print(f"| {row['vocab']:,} | " + " | ".join(f"{v[k]['peak_rss_gb']:.2f}" for k in VOCAB_VARIANTS)
                  + f" | {v['iq_chunked']['peak_rss_vs_trl_sft']:.2f}× |")


if __name__ == "__main__":
    main()
