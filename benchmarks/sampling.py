"""Sampling speed: useful tokens per second of plain `generate`, tirl's `generate` sampler and the packed sampler.

Useful tokens are the tokens of each sample up to and including its EOS (what a sample is; `generate` computes
padding after it until the batch's longest row ends). Three samplers draw the same prompts with the same seeds,
side by side in one process (the order rotates from round to round; ratios are taken within a round, then the
median):

    generate        `model.generate` with num_return_sequences=K (tirl's neutral generation config), each prompt
                    read K times, no entropy recorded: what a plain transformers loop does
    tirl_generate   `tirl.evaluation.sampling.iter_samples` with `SamplingSettings(sampler="generate")`: `tirl eval
                    --sampler generate` (the prompt read once for its K samples, per-token entropy recorded)
    tirl_packed     `iter_samples` with `SamplingSettings(sampler="packed")`: `tirl eval`'s default sampler
                    (finished rows leave the batch)

Workloads (SmolLM2-135M, the embedded model; `tirl eval`'s batching: batch_size // K prompts per call):

    short-t0.7, short-t1.3   pick-two, K = 32, at most 16 new tokens, batch 128 (the quality benchmark's setting);
                             4 prompts by default (128 samples, one batch)
    medium                   arithmetic, K = 4, at most 64 new tokens, T = 1, batch 32; 16 prompts (64 samples)
    long                     gsm8k, K = 4, at most 128 new tokens, T = 1, batch 32; 8 prompts (32 samples)

bf16 autocast where the CPU computes bf16 natively (`tirl.hardware.fast_bf16`), float32 otherwise; one torch thread.
The compute bound of a workload is 2 × parameters × useful tokens ÷ the matmul FLOP/s measured here (a [512, d] ×
[d, d] matmul at the model's hidden size d, same dtype, one thread); `fraction_of_bound` is a sampler's useful
tokens/s ÷ the bound's. transformers' continuous batching (`model.generate_batch`) is timed once on the short T = 1.3
workload's first prompts, beside plain `generate` on the same prompts.

Writes benchmarks/results/sampling.json and sampling.md.

    python benchmarks/sampling.py                                   # ~15 min on one loaded core
    python benchmarks/sampling.py --prompts 32 --rounds 5           # a bigger run
    python benchmarks/sampling.py --model tiny-llama --prompts 2 --rounds 1 --no-continuous-batching   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLERS = ("generate", "tirl_generate", "tirl_packed")
# name: (task, K, temperature, max_new_tokens, batch_size, default prompts)
WORKLOADS = {
    "short-t0.7": ("pick-two", 32, 0.7, 16, 128, 4),
    "short-t1.3": ("pick-two", 32, 1.3, 16, 128, 4),
    "medium": ("arithmetic", 4, 1.0, 64, 32, 16),
    "long": ("gsm8k", 4, 1.0, 128, 32, 8),
}


def matmul_flops(hidden: int, dtype, rows: int = 512, repeats: int = 20) -> float:
    """FLOP/s of a [rows, hidden] × [hidden, hidden] matmul in `dtype` (median of `repeats` timings)."""
    import torch

    a, b = torch.randn(rows, hidden, dtype=dtype), torch.randn(hidden, hidden, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        times.append((time.perf_counter() - t0) / 5)
    return 2 * rows * hidden * hidden / statistics.median(times)


def run_sampler(name: str, model, tok, prompts: list[str], k: int, temperature: float, max_new_tokens: int,
                batch_size: int, bf16: bool, seed: int = 0) -> tuple[int, float]:
    """(useful tokens, seconds) of one sampler over `prompts`."""
    import torch

    from tirl.evaluation.sampling import SamplingSettings, _eos_ids, batch_seed, encode_prompt, iter_samples
    from tirl.generation import eval_mode, generate, generation_config, left_pad, truncate_at_eos

    t0 = time.perf_counter()
    tokens = 0
    if name == "generate":
        eos = _eos_ids(model, tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        config = generation_config(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                                   temperature=temperature, num_return_sequences=k)
        per_call = max(1, batch_size // k)
        with eval_mode(model), torch.no_grad():
            for start in range(0, len(prompts), per_call):
                ids, mask = left_pad([encode_prompt(p, tok) for p in prompts[start:start + per_call]], pad)
                with torch.random.fork_rng(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    torch.manual_seed(batch_seed(seed, start))
                    out = generate(model, config, input_ids=ids, attention_mask=mask)
                tokens += sum(len(truncate_at_eos(row, eos)[0]) for row in out[:, ids.shape[1]:].tolist())
    else:
        sampler = "generate" if name == "tirl_generate" else "packed"
        settings = SamplingSettings(k=k, temperature=temperature, max_new_tokens=max_new_tokens, sampler=sampler,
                                    batch_size=batch_size, seed=seed, autocast_bf16=bf16, progress=False)
        for _, batch in iter_samples(model, tok, prompts, settings):
            tokens += sum(s.num_tokens for per_prompt in batch for s in per_prompt)
    return tokens, time.perf_counter() - t0


def continuous_batching(model, tok, prompts: list[str], k: int, temperature: float, max_new_tokens: int,
                        bf16: bool) -> dict:
    """Useful tokens/s of `model.generate_batch` (transformers' continuous batching) on `prompts`, K samples each,
    beside plain `generate` on the same prompts. Its worker thread does not see the caller's autocast, so in bf16 it
    runs a bf16 copy of the weights."""
    import copy

    import torch

    from tirl.evaluation.sampling import _eos_ids, encode_prompt
    from tirl.generation import generation_config, truncate_at_eos

    eos = _eos_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    config = generation_config(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                               temperature=temperature, num_return_sequences=k)
    result: dict = {"prompts": len(prompts), "k": k, "weights": "bf16 copy" if bf16 else "float32"}
    base_tokens, base_s = run_sampler("generate", model, tok, prompts, k, temperature, max_new_tokens, len(prompts) * k,
                                      bf16)
    result["generate_tokens_per_s"] = base_tokens / base_s
    cb_model = copy.deepcopy(model).to(torch.bfloat16) if bf16 else model
    try:
        from transformers import ContinuousBatchingConfig

        t0 = time.perf_counter()
        with torch.no_grad():
            out = cb_model.generate_batch([encode_prompt(p, tok) for p in prompts], generation_config=config,
                                          continuous_batching_config=ContinuousBatchingConfig(seed=0), warmup=False)
        seconds = time.perf_counter() - t0
        tokens = sum(len(truncate_at_eos(o.generated_tokens, eos)[0]) for o in out.values())
        result.update(ran=True, sequences=len(out), useful_tokens=tokens, seconds=seconds,
                      tokens_per_s=tokens / seconds, vs_generate=tokens / seconds / result["generate_tokens_per_s"])
    except Exception as e:  # noqa: BLE001 - recorded: whether it runs here is what is measured
        result.update(ran=False, error=f"{type(e).__name__}: {e}"[:500])
    finally:
        if cb_model is not model:
            del cb_model
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="tirl.models name")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated, from: " + ", ".join(WORKLOADS))
    p.add_argument("--prompts", type=int, default=None, help="prompts per workload (default: short 4, medium 16, "
                   "long 8)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds; each runs every sampler once, order rotated")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--bf16", choices=["auto", "true", "false"], default="auto",
                   help="bf16 autocast (auto: where the CPU computes bf16 natively)")
    p.add_argument("--continuous-batching", action=argparse.BooleanOptionalAction, default=True,
                   help="also time transformers' continuous batching once (short-t1.3, --cb-prompts prompts)")
    p.add_argument("--cb-prompts", type=int, default=1, help="prompts of the continuous-batching check")
    p.add_argument("--output", default=str(RESULTS / "sampling.json"), help="JSON results; the table beside it (.md)")
    args = p.parse_args()

    import platform

    import torch
    import transformers

    from tirl import hardware, models
    from tirl.data import load_rows

    torch.set_num_threads(args.threads)
    bf16 = hardware.fast_bf16("cpu") if args.bf16 == "auto" else args.bf16 == "true"
    dtype = torch.bfloat16 if bf16 else torch.float32
    load_before, t_start = os.getloadavg(), time.time()
    model, tok = models.load(args.model)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    hidden = model.config.hidden_size
    flops = matmul_flops(hidden, dtype)
    bound_tokens_per_s = flops / (2 * params)
    print(f"{args.model}: {params / 1e6:.1f} M parameters, {'bf16 autocast' if bf16 else 'float32'}; matmul "
          f"[512, {hidden}] x [{hidden}, {hidden}]: {flops / 1e9:.1f} GFLOP/s -> bound {bound_tokens_per_s:.0f} "
          f"tokens/s; load average {load_before[0]:.1f} on {os.cpu_count()} cores", flush=True)

    results: dict = {}
    for name in args.workloads.split(","):
        task, k, temperature, max_new, batch, default_prompts = WORKLOADS[name]
        n = args.prompts or default_prompts
        prompts = [r["prompt"] for r in load_rows(task, split="test", limit=n, seed=0)]
        run_sampler("tirl_packed", model, tok, prompts[:1], k, temperature, 4, batch, bf16)  # warm-up
        rounds = []
        for r in range(args.rounds):
            order = SAMPLERS[r % 3:] + SAMPLERS[: r % 3]
            row = {}
            for s in order:
                tokens, seconds = run_sampler(s, model, tok, prompts, k, temperature, max_new, batch, bf16)
                row[s] = {"useful_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
                print(f"{name} round {r + 1} {s:<14} {tokens:6d} tokens {seconds:7.1f} s {tokens / seconds:7.1f} tok/s",
                      flush=True)
            rounds.append(row)
        summary = {}
        for s in SAMPLERS:
            tps = statistics.median(rd[s]["tokens_per_s"] for rd in rounds)
            summary[s] = {"tokens_per_s": tps, "useful_tokens": statistics.median(rd[s]["useful_tokens"] for rd in rounds),
                          "seconds": statistics.median(rd[s]["seconds"] for rd in rounds),
                          "vs_generate": statistics.median(rd[s]["tokens_per_s"] / rd["generate"]["tokens_per_s"]
                                                           for rd in rounds),
                          "fraction_of_bound": tps / bound_tokens_per_s}
        results[name] = {
            "task": task, "k": k, "temperature": temperature, "max_new_tokens": max_new, "batch_size": batch,
            "prompts": n, "samples": n * k,
            "vs_generate": summary["tirl_packed"]["vs_generate"],
            "vs_tirl_generate": statistics.median(rd["tirl_packed"]["tokens_per_s"] / rd["tirl_generate"]["tokens_per_s"]
                                                  for rd in rounds),
            "fraction_of_bound": summary["tirl_packed"]["fraction_of_bound"],
            "bound_tokens_per_s": bound_tokens_per_s,
            "samplers": summary, "rounds": rounds,
        }
        print(f"{name}: packed {summary['tirl_packed']['tokens_per_s']:.1f} tok/s = "
              f"{results[name]['vs_generate']:.2f}x generate, {results[name]['vs_tirl_generate']:.2f}x tirl's generate "
              f"sampler, {100 * results[name]['fraction_of_bound']:.1f}% of the bound", flush=True)

    cb = None
    if args.continuous_batching:
        task, k, temperature, max_new, _, _ = WORKLOADS["short-t1.3"]
        prompts = [r["prompt"] for r in load_rows(task, split="test", limit=args.cb_prompts, seed=0)]
        cb = continuous_batching(model, tok, prompts, k, temperature, max_new, bf16)
        print(f"continuous batching: {cb}", flush=True)

    load_after = os.getloadavg()
    out = {
        "benchmark": "sampling",
        "setup": {
            "model": args.model, "parameters": params, "hidden_size": hidden, "precision": "bf16 autocast" if bf16 else
            "float32", "fast_bf16": hardware.fast_bf16("cpu"), "threads": args.threads, "rounds": args.rounds,
            "matmul": {"shape": f"[512, {hidden}] x [{hidden}, {hidden}]", "dtype": str(dtype).removeprefix("torch."),
                       "flops_per_s": flops},
            "bound_tokens_per_s": bound_tokens_per_s,
            "bound": "2 x parameters x useful tokens / matmul FLOP/s",
            "useful_tokens": "tokens of each sample up to and including its EOS",
            "cpu": hardware.cpu_info(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "load_average_before": load_before, "load_average_after": load_after,
            "machine_loaded": max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1),
            "wall_s": time.time() - t_start,
            "torch": torch.__version__, "transformers": transformers.__version__,
        },
        "workloads": results,
        "by_size": by_size(results),
        "continuous_batching": cb,
        "online_cost": online_cost_note(Path(args.output).parent / "online_cost.json"),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    Path(args.output).with_suffix(".md").write_text(markdown(out))
    print("\n" + markdown(out))


def by_size(workloads: dict) -> dict:
    """`short`, `medium` and `long`: each size's `vs_generate` and `fraction_of_bound`, the worst of its workloads
    (short has one per temperature), with the compute bound they are fractions of."""
    out: dict = {}
    for name, w in workloads.items():
        size = name.split("-")[0]
        if "vs_generate" not in w:
            continue
        if size not in out or w["vs_generate"] < out[size]["vs_generate"]:
            out[size] = {"workload": name, "vs_generate": w["vs_generate"], "fraction_of_bound": w["fraction_of_bound"],
                         "bound_tokens_per_s": w.get("bound_tokens_per_s")}
    return out


def online_cost_note(path: Path) -> dict | None:
    """Online IQLearn and GAIL step time ÷ offline step time, before (sampler generate) and after (packed), from
    `benchmarks/online_cost.py`'s results beside this file (None when it has no per-sampler figures)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    models = {m: r["step_time_vs_offline"] for m, r in data.get("models", {}).items() if "step_time_vs_offline" in r}
    if not models:
        return None
    generation = {m: {v: r["summary"][v]["median_generation_s"] for v in r["summary"] if v != "offline"}
                  for m, r in data["models"].items() if m in models}
    setup = data.get("setup", {})
    return {"file": str(path.name), "step_time_vs_offline": models, "median_generation_s": generation,
            "threads": setup.get("threads"), "load_average_before": setup.get("load_average_before"),
            "command": "python benchmarks/online_cost.py --threads 1"}


def markdown(out: dict) -> str:
    st = out["setup"]
    lines = [
        f"# Sampling speed ({st['model']}, {st['precision']}, {st['threads']} thread(s), median of {st['rounds']} "
        "rounds)",
        "",
        f"Useful tokens/s (up to and including EOS). Compute bound: 2 × {st['parameters'] / 1e6:.1f} M parameters per "
        f"token at {st['matmul']['flops_per_s'] / 1e9:.1f} GFLOP/s ({st['matmul']['shape']} {st['matmul']['dtype']} "
        f"matmul, same thread count) = {st['bound_tokens_per_s']:.0f} tokens/s. CPU: {st['cpu'].get('name')}; load "
        f"average {st['load_average_before'][0]:.1f} before, {st['load_average_after'][0]:.1f} after on "
        f"{st['cpu_count']} cores" + (" (the machine was loaded by other jobs: absolute figures are low, ratios are "
                                       "taken within a round)" if st["machine_loaded"] else "") + ".",
        "",
        "| workload | task | K | T | max new | samples | generate tok/s | tirl generate tok/s | packed tok/s | "
        "packed vs generate | packed vs tirl generate | packed, fraction of bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, w in out["workloads"].items():
        s = w["samplers"]
        lines.append(f"| {name} | {w['task']} | {w['k']} | {w['temperature']:g} | {w['max_new_tokens']} | {w['samples']} | "
                     f"{s['generate']['tokens_per_s']:.1f} | {s['tirl_generate']['tokens_per_s']:.1f} | "
                     f"{s['tirl_packed']['tokens_per_s']:.1f} | {w['vs_generate']:.2f}× | {w['vs_tirl_generate']:.2f}× | "
                     f"{100 * w['fraction_of_bound']:.1f}% |")
    cb = out.get("continuous_batching")
    if cb:
        lines.append("")
        if cb.get("ran"):
            lines.append(f"transformers' continuous batching (`generate_batch`, {cb['weights']} weights) on {cb['prompts']} "
                         f"pick-two prompt(s) × K = {cb['k']}, T = 1.3: {cb['tokens_per_s']:.1f} useful tokens/s, "
                         f"{cb['vs_generate']:.2f}× plain `generate` on the same prompts "
                         f"({cb['generate_tokens_per_s']:.1f} tokens/s)"
                         + (": it runs on a CPU but is slower, so tirl's packed sampler is its own loop."
                            if cb["vs_generate"] < 1 else "."))
        else:
            lines.append(f"transformers' continuous batching did not run here: {cb['error']}")
    oc = out.get("online_cost")
    if oc:
        lines += ["", f"Online training step ÷ offline IQLearn step (`{oc['file']}`, {oc['threads']} thread(s)), before "
                  "(sampler `generate`) → after (`packed`):", ""]
        for model, ratios in oc["step_time_vs_offline"].items():
            shown = "; ".join(f"{method} {r.get('generate', float('nan')):.2f}× → {r.get('packed', float('nan')):.2f}×"
                              for method, r in ratios.items())
            lines.append(f"- {model}: {shown}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
