"""Precision on a CPU: is bf16 autocast faster than float32 here? It decides tirl's default (`tirl.hardware`).

TRL turns bf16 on by default. A CPU with bf16 instructions (AVX512-BF16, AMX) runs bf16 matmuls natively; others
(AVX2: most AMD EPYCs, many laptops) emulate them. This times both precisions on SmolLM2-135M-Instruct, side by side
in one process (the two alternate within each round; the ratio is taken within a round, then the median):

    train   one forward + backward of the causal-LM loss, batch × seq tokens (AdamW's step is the same in both)
    sample  `generate` of new tokens for a batch of prompts (KV cache, sampling at T = 1)

Writes benchmarks/results/precision.json and precision.md (tagged with the CPU's capability, so results from
different machines sit side by side).

    python benchmarks/precision.py                 # ~20 min on an AVX2 CPU (its bf16 is emulated), minutes elsewhere
    python benchmarks/precision.py --model tiny-llama --rounds 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model name for tirl.models.load")
    p.add_argument("--batch", type=int, default=4, help="sequences per training step")
    p.add_argument("--seq", type=int, default=256, help="tokens per training sequence")
    p.add_argument("--prompts", type=int, default=16, help="prompts per generate call")
    p.add_argument("--prompt_tokens", type=int, default=64, help="tokens per prompt")
    p.add_argument("--new_tokens", type=int, default=32, help="tokens generated per prompt")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--output", default=str(RESULTS / "precision.json"), help="results file")
    args = p.parse_args()

    import torch

    from tirl import hardware, models
    from tirl.generation import generate, generation_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = models.load(args.model)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq))
    prompts = torch.randint(0, vocab, (args.prompts, args.prompt_tokens))
    config = generation_config(max_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=tok.pad_token_id,
                               min_new_tokens=args.new_tokens)

    def train(bf16: bool) -> float:
        model.train()
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def sample(bf16: bool) -> float:
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            generate(model, config, input_ids=prompts, attention_mask=torch.ones_like(prompts))
        return time.perf_counter() - t0

    tasks = {"train": (train, args.batch * args.seq), "sample": (sample, args.prompts * args.new_tokens)}
    rows = {}
    for name, (fn, tokens) in tasks.items():
        fn(False), fn(True)  # warm-up
        rounds = []
        for k in range(args.rounds):
            order = (False, True) if k % 2 == 0 else (True, False)  # alternate which goes first
            rounds.append({bf16: fn(bf16) for bf16 in order})
        fp32 = statistics.median(r[False] for r in rounds)
        bf16 = statistics.median(r[True] for r in rounds)
        ratio = statistics.median(r[True] / r[False] for r in rounds)
        rows[name] = {"tokens": tokens, "fp32_seconds": fp32, "bf16_seconds": bf16, "fp32_tokens_per_s": tokens / fp32,
                      "bf16_tokens_per_s": tokens / bf16, "bf16_time_over_fp32": ratio}
        print(f"{name}: fp32 {tokens / fp32:.0f} tok/s, bf16 autocast {tokens / bf16:.0f} tok/s, "
              f"bf16 time / fp32 time {ratio:.2f}", flush=True)

    cpu = hardware.cpu_info()
    machine = {"cpu": cpu["name"], "capability": cpu["capability"], "native_bf16": cpu["native_bf16"],
               "threads": args.threads, "torch": torch.__version__}
    key = f"{machine['capability']}{'+bf16' if machine['native_bf16'] else ''}"
    out = Path(args.output)
    results = json.loads(out.read_text()) if out.is_file() else {"benchmark": "precision", "machines": {}}
    results["machines"][key] = {"machine": machine, "settings": vars(args) | {"output": None},
                                "date": time.strftime("%Y-%m-%d"), "results": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Precision on a CPU: float32 vs bf16 autocast (median of rounds; ratio within a round)", "",
             "| CPU | capability | native bf16 | what | float32 tok/s | bf16 tok/s | bf16 time / float32 time |",
             "|---|---|---|---|---|---|---|"]
    for entry in results["machines"].values():
        m = entry["machine"]
        for name, r in entry["results"].items():
            lines.append(f"| {m['cpu']} | {m['capability']} | {'yes' if m['native_bf16'] else 'no'} | {name} | "
                         f"{r['fp32_tokens_per_s']:.0f} | {r['bf16_tokens_per_s']:.0f} | {r['bf16_time_over_fp32']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
