"""Cost of the IQLearn loss vs TRL's SFTTrainer loss: step time and peak memory of one real training step.

Three variants of the same trainer step (`Trainer.training_step` + AdamW) on SmolLM2-135M, batch 8×256, bf16 autocast
with fp32 master weights, every token a completion token:
  trl_sft     TRL's SFTTrainer (its fused, chunked log-prob head)
  iq_naive    IQLearnTrainer, iq_chunk_size=0 (loss from the model's full [B, T, V] logits)
  iq_chunked  IQLearnTrainer, iq_chunk_size=1024 (chunked head, never builds the logits; on CUDA its per-chunk
              maths is compiled with torch.compile), iq_head="auto": the single-pass head in training
  iq_chunked_eager  the same with TIRL_FUSED_HEAD=0 (eager per-chunk maths; the same as iq_chunked on CPU); only with
              --variants
  iq_two_pass the same with iq_head="two_pass" (Q and V in forward, the logits recomputed in backward); only with
              --variants

Each variant runs in its own process (so its peak RSS is its own) for `--steps` timed steps after `--warmup` steps;
the variants alternate over `--rounds` rounds with the order rotated, and ratios are taken within a round (side by
side) before the median. Results: benchmarks/results/loss_cost.json and a markdown table on stdout.

    python benchmarks/loss_cost.py                       # full run, ~10 min on 2 cores
    python benchmarks/loss_cost.py --model tiny-llama --batch 4 --seq 64 --rounds 1   # smoke test, seconds
    python benchmarks/loss_cost.py --head-only           # the LM head alone (`head_only`), ~6 min on 2 cores

`--head-only` times forward + backward of the LM head and loss alone (SmolLM2 shape: D = 576, V = 49152; hidden
[batch, seq, D] and the head weight in float32 under bf16 autocast, every token a completion token): the CE heads
(full logits as transformers computes it; a Liger-style fused linear cross-entropy written like
`tirl.losses.single_pass_head`, with and without the entropy and top-1 statistics; TRL's chunked log-prob head as its
SFTTrainer runs it), the two-pass chunked IQ head (`chunked_iq_loss`) and the single-pass one (`single_pass_iq_loss`).
Times come from one process, variants alternating with the order rotated, ratios within a round before the median;
peak RSS from one process per variant; one thread unless --threads. Results go to `head_only.threads_N` in
loss_cost.json (the other keys are kept), each with `single_pass_vs_ce_head`, the single-pass IQ head's time over the
fused CE head's; the default (one-thread) run's ratio is also the top-level `single_pass_vs_ce_head`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("trl_sft", "iq_naive", "iq_chunked", "iq_chunked_eager", "iq_two_pass")
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
    from tirl.qv import reference
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
        cfg = IQLearnConfig(**common, iq_lambda=0.1, iq_gamma=0.99, iq_chunk_size=0 if variant == "iq_naive" else args.chunk,
                            iq_head="two_pass" if variant == "iq_two_pass" else "auto")
        trainer = IQLearnTrainer(model, cfg, train_dataset=dummy, processing_class=tok)
    trainer.create_optimizer_and_scheduler(num_training_steps=args.warmup + args.steps)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    if getattr(trainer.args, "iq_value", None) == "reference":
        # the default form reads the starting model's logsumexp per token from the batch (a dataset column, computed
        # once before training); its step cost is the form's, whatever the values, so a constant stands in for them
        batch[reference.COLUMN] = torch.full(ids.shape, 20.0)
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


# --------------------------------------------------------------------------------------------------------------------
# --head-only: the LM head and loss alone
# --------------------------------------------------------------------------------------------------------------------

HEAD_VARIANTS = ("ce_full", "ce_fused", "ce_fused_stats", "ce_trl", "iq_two_pass", "iq_single_pass",
                 "iq_single_pass_l0")
HEAD_BASELINE = "ce_fused"
HEAD_LAMBDA = 0.1
# one thread by default: on a shared machine the second thread of every parallel region waits for a time slice, which
# charges each of the many short block operations of the fused heads milliseconds that are scheduling, not compute
HEAD_THREADS = 1


def fused_linear_cross_entropy(rows, weight, targets, chunk_size: int = 1024, stats: bool = False):
    """Mean cross-entropy of rows @ weightᵀ against targets, written like `tirl.losses.single_pass_head`: chunks of rows
    through one reused logits buffer, the float32 softmax maths in blocks of rows in one buffer of `SCRATCH_ELEMENTS` (exp in place), the
    gradient formed in forward and multiplied into grad_hidden and grad_W at once (Liger's fused linear cross-entropy
    in torch). `stats` also computes the entropy and top-1 flag as SFTTrainer logs them (one more float32 block)."""
    return _fused_ce_function().apply(rows, weight, targets, chunk_size, stats)


@functools.cache
def _fused_ce_function():
    import torch

    from tirl.losses import single_pass_head as sp

    class FusedLinearCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, rows, weight, targets, chunk_size, stats):
            device = rows.device
            cd = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else rows.dtype
            n, vocab = rows.shape[0], weight.shape[0]
            block = max(1, sp.SCRATCH_ELEMENTS // vocab)
            grad_h = torch.zeros(rows.shape, device=device, dtype=torch.float32)
            grad_w = torch.zeros(weight.shape, device=device, dtype=torch.float32)
            nll = torch.zeros((), device=device, dtype=torch.float32)
            entropy = torch.empty(n, device=device) if stats else None
            top1 = torch.empty(n, device=device, dtype=torch.bool) if stats else None
            with torch.autocast(device.type, enabled=False):
                w_c = weight.to(cd)
                buf = torch.empty((min(chunk_size, n), vocab), device=device, dtype=cd)
                gw_buf = torch.empty(weight.shape, device=device, dtype=cd) if n > chunk_size else None
                z_buf = torch.empty((min(block, n), vocab), device=device, dtype=torch.float32)
                p_buf = torch.empty((min(block, n), vocab), device=device, dtype=torch.float32) if stats else None
                for s in range(0, n, chunk_size):
                    e = min(s + chunk_size, n)
                    h_c = rows[s:e].to(cd)
                    logits = torch.mm(h_c, w_c.t(), out=buf[: e - s])
                    for bs in range(s, e, block):
                        be = min(bs + block, e)
                        z = z_buf[: be - bs].copy_(logits[bs - s : be - s])
                        a = targets[bs:be, None]
                        zmax = z.amax(-1)
                        q = z.gather(-1, a).squeeze(-1)
                        z.sub_(zmax[:, None])
                        if stats:
                            top1[bs:be] = q >= zmax
                            p = torch.exp(z, out=p_buf[: be - bs])
                            sum_p = p.sum(-1)
                            entropy[bs:be] = sum_p.log() - z.mul_(p).sum(-1) / sum_p
                            torch.mul(p, (1 / (sum_p * n))[:, None], out=z)
                        else:
                            sum_p = z.exp_().sum(-1)
                            z.mul_((1 / (sum_p * n))[:, None])
                        nll += (zmax + sum_p.log() - q).sum()
                        z.scatter_add_(-1, a, torch.full_like(q, -1 / n)[:, None])
                        logits[bs - s : be - s].copy_(z)
                    grad_h[s:e] = logits @ w_c
                    sp._addmm_(grad_w, logits.t(), h_c, gw_buf)
            ctx.save_for_backward(grad_h, grad_w)
            return nll / n

        @staticmethod
        def backward(ctx, grad):
            grad_h, grad_w = ctx.saved_tensors
            return grad_h * grad, grad_w * grad, None, None, None

    return FusedLinearCE


def head_loss_fn(variant: str, chunk: int):
    """(hidden [B, T, D], weight [V, D], labels [B, T]) -> scalar loss, for one head-only variant."""
    import torch.nn.functional as F

    from tirl.losses import Objective, chunked_iq_loss, shift_labels, single_pass_iq_loss

    def objective(lam: float) -> Objective:
        return Objective.mle(iq_lambda=lam, eos_token_ids=(2,))  # the logits form: the head alone, no reference column

    def rows_of(hidden, labels):
        actions, mask = shift_labels(labels)
        return hidden[:, :-1][mask], actions[mask]

    if variant == "ce_full":
        def fn(hidden, weight, labels):
            # transformers' ForCausalLMLoss: full logits, upcast to float32, cross-entropy summed / tokens
            logits = (hidden @ weight.t())[:, :-1].float()
            targets = labels[:, 1:]
            n = (targets != -100).sum()
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                                   reduction="sum") / n
    elif variant in ("ce_fused", "ce_fused_stats"):
        def fn(hidden, weight, labels):
            rows, targets = rows_of(hidden, labels)
            return fused_linear_cross_entropy(rows, weight, targets, chunk, stats=variant == "ce_fused_stats")
    elif variant == "ce_trl":
        from trl.kernels import ChunkedLogProbFunction
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

        def fn(hidden, weight, labels):
            # what SFTTrainer's fused LM head runs: log-probs, entropy and top-1, the backward recomputing the logits
            rows, targets = rows_of(hidden, labels)
            logprobs = ChunkedLogProbFunction.apply(rows, weight, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE,
                                                    None, 1.0, ("log_probs", "entropy", "is_top1"))[0]
            return -logprobs.sum() / rows.shape[0]
    elif variant == "iq_two_pass":
        def fn(hidden, weight, labels):
            return chunked_iq_loss(hidden, weight, labels, objective(HEAD_LAMBDA), chunk_size=chunk).loss
    elif variant in ("iq_single_pass", "iq_single_pass_l0"):
        lam = HEAD_LAMBDA if variant == "iq_single_pass" else 0.0

        def fn(hidden, weight, labels):
            return single_pass_iq_loss(hidden, weight, labels, objective(lam), chunk_size=chunk).loss
    else:
        raise ValueError(variant)
    return fn


def head_inputs(args):
    import torch

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.batch, args.seq, args.hidden, generator=g).requires_grad_()
    weight = (0.05 * torch.randn(args.vocab, args.hidden, generator=g)).requires_grad_()
    labels = torch.randint(3, args.vocab, (args.batch, args.seq), generator=g)
    return hidden, weight, labels


def head_step(fn, hidden, weight, labels, bf16: bool):
    import torch

    hidden.grad = weight.grad = None
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = fn(hidden, weight, labels)
    loss.backward()
    return time.perf_counter() - t0, loss.item()


def head_timing_worker(args) -> dict:
    """All variants in one process, alternating (order rotated every round): per-round times and within-round ratios."""
    import torch

    torch.set_num_threads(args.threads)
    variants = args.head_variants.split(",")
    hidden, weight, labels = head_inputs(args)
    fns = {v: head_loss_fn(v, args.chunk) for v in variants}
    losses = {v: head_step(fns[v], hidden, weight, labels, args.bf16)[1] for v in variants}  # warm-up
    rounds = []
    for r in range(args.rounds):
        k = r % len(variants)
        rounds.append({v: head_step(fns[v], hidden, weight, labels, args.bf16)[0] for v in variants[k:] + variants[:k]})
        print(f"round {r + 1}: " + ", ".join(f"{v} {rounds[-1][v]:.2f} s" for v in variants), flush=True)
    return {"rounds": rounds, "losses": losses}


def head_memory_worker(variant: str, args) -> dict:
    """One variant in its own process: peak RSS over two forward + backward passes, and RSS once the inputs exist."""
    import torch

    torch.set_num_threads(args.threads)
    hidden, weight, labels = head_inputs(args)
    fn = head_loss_fn(variant, args.chunk)
    setup = rss_gb()
    for _ in range(2):
        head_step(fn, hidden, weight, labels, args.bf16)
    peak = peak_gb("cpu")
    return {"variant": variant, "peak_rss_gb": peak, "rss_after_setup_gb": setup, "head_peak_gb": peak - setup}


def head_only(args) -> None:
    import platform

    import torch

    variants = args.head_variants.split(",")
    if not set(variants) <= set(HEAD_VARIANTS) or HEAD_BASELINE not in variants:
        sys.exit(f"--head-variants must include {HEAD_BASELINE} and name only {', '.join(HEAD_VARIANTS)}")
    load_before = os.getloadavg()
    forwarded = ["--batch", str(args.batch), "--seq", str(args.seq), "--chunk", str(args.chunk), "--threads",
                 str(args.threads), "--bf16", str(args.bf16), "--rounds", str(args.rounds), "--hidden",
                 str(args.hidden), "--vocab", str(args.vocab), "--head-variants", args.head_variants]

    def run(*extra):
        out = subprocess.run([sys.executable, __file__, *extra, *forwarded], capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"worker {extra} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        print("\n".join(ln for ln in out.stdout.splitlines() if ln.startswith("round ")), flush=True)
        return json.loads(line[7:])

    timing = run("--head-worker", "timing")
    memory = {}
    for v in variants:
        memory[v] = run("--head-worker", v)
        print(f"memory {v:<18} peak RSS {memory[v]['peak_rss_gb']:.3f} GB, head {memory[v]['head_peak_gb']:.3f} GB",
              flush=True)
    load_after = os.getloadavg()
    rounds = timing["rounds"]

    def ratio(v, base):
        return statistics.median(rd[v] / rd[base] for rd in rounds)

    summary = {v: {"median_s": statistics.median(rd[v] for rd in rounds), "time_vs_ce_fused": ratio(v, HEAD_BASELINE),
                   "peak_rss_gb": memory[v]["peak_rss_gb"], "head_peak_gb": memory[v]["head_peak_gb"],
                   "head_peak_vs_ce_fused": memory[v]["head_peak_gb"] / memory[HEAD_BASELINE]["head_peak_gb"],
                   "loss": timing["losses"][v]}
               for v in variants}
    result = {
        "setup": {"hidden": args.hidden, "vocab": args.vocab, "batch": args.batch, "seq": args.seq,
                  "rows": args.batch * (args.seq - 1), "chunk_size": args.chunk, "bf16_autocast": args.bf16,
                  "iq_lambda": HEAD_LAMBDA, "rounds": args.rounds, "threads": args.threads, "variants": variants,
                  "baseline": HEAD_BASELINE, "cpu": platform.processor() or platform.machine(),
                  "torch": torch.__version__, "load_average_before": load_before, "load_average_after": load_after,
                  "time": "forward + backward of head and loss, one process, variants alternating; medians",
                  "peak_memory": "process peak RSS, one process per variant; head_peak = peak − RSS once the inputs "
                                 "exist"},
        "summary": summary,
        "targets": {"single_pass_vs_ce_head_max": 1.05, "single_pass_head_peak_vs_ce_head_max": 1.0},
        "rounds": rounds,
        "memory": memory,
    }
    if "iq_single_pass" in variants:
        result["single_pass_vs_ce_head"] = ratio("iq_single_pass", HEAD_BASELINE)
    path = Path(args.output)
    existing = json.loads(path.read_text()) if path.exists() else {}
    runs = existing.get("head_only", {})
    runs = runs if all(k.startswith("threads_") for k in runs) else {}
    runs[f"threads_{args.threads}"] = result
    existing["head_only"] = dict(sorted(runs.items()))
    if "single_pass_vs_ce_head" in result and args.threads == HEAD_THREADS:
        existing["single_pass_vs_ce_head"] = result["single_pass_vs_ce_head"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"\nLM head alone: D={args.hidden}, V={args.vocab}, {args.batch}×{args.seq} rows, bf16 autocast={args.bf16}, "
          f"{args.rounds} rounds; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    print("| head | forward + backward (s) | vs fused CE | peak RSS (GB) | head peak (GB) | head peak vs fused CE |")
    print("|---|---|---|---|---|---|")
    for v in variants:
        x = summary[v]
        print(f"| {v} | {x['median_s']:.2f} | {x['time_vs_ce_fused']:.3f} | {x['peak_rss_gb']:.2f} | "
              f"{x['head_peak_gb']:.3f} | {x['head_peak_vs_ce_fused']:.3f} |")
    print(f"\nwrote {args.output} (head_only)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model name for tirl.models.load")
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    p.add_argument("--chunk", type=int, default=1024, help="iq_chunk_size of the chunked variant")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round (median taken)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds; each runs every variant once, order rotated (default 3; 5 with --head-only)")
    p.add_argument("--threads", type=int, default=None, help=f"torch threads (default 2; {HEAD_THREADS} with --head-only)")
    p.add_argument("--bf16", type=lambda s: s.lower() in ("1", "true", "yes"), default=True, help="bf16 autocast")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu (peak = process RSS) or cuda (peak = torch.cuda.max_memory_allocated)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated, trl_sft first (ratios are to it); any of {', '.join(VARIANTS)}")
    p.add_argument("--output", default=str(RESULTS / "loss_cost.json"), help="where to write the JSON results")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--head-only", action="store_true", help="benchmark the LM head and loss alone (see above)")
    p.add_argument("--head-variants", default=",".join(HEAD_VARIANTS), help="with --head-only: comma-separated")
    p.add_argument("--hidden", type=int, default=576, help="with --head-only: hidden size (SmolLM2-135M)")
    p.add_argument("--vocab", type=int, default=49152, help="with --head-only: vocabulary size (SmolLM2-135M)")
    p.add_argument("--head-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rounds is None:
        args.rounds = 5 if args.head_only or args.head_worker else 3
    if args.threads is None:
        args.threads = HEAD_THREADS if args.head_only or args.head_worker else 2

    if args.head_worker:
        if args.head_worker == "timing":
            print("RESULT " + json.dumps(head_timing_worker(args)))
        else:
            print("RESULT " + json.dumps(head_memory_worker(args.head_worker, args)))
        return
    if args.head_only:
        head_only(args)
        return
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
                  "chunk_size": args.chunk, "iq_lambda": 0.1, "iq_value": "the default (reference; a constant LSE_θ0)",
                  "iq_head": "auto (single pass) for iq_chunked", "timed_steps": args.steps, "warmup_steps": args.warmup,
                  "rounds": args.rounds, "variants": list(variants), "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                  "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "summary": summary,
        "targets": {"iq_chunked_step_time_vs_trl_sft_max": 1.05, "iq_chunked_peak_rss_vs_trl_sft_max": 1.0},
        "rounds": rounds,
    }
    previous = json.loads(Path(args.output).read_text()) if Path(args.output).exists() else {}
    for key in ("head_only", "single_pass_vs_ce_head"):  # written by --head-only; kept
        if key in previous:
            result[key] = previous[key]
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
