"""`tirl rewards`: per-token rewards of a checkpoint (`score`, the default), and their analysis (`analyse`)."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint to read rewards from: a run directory, 'smollm2-135m', "
                   "or a tiny model name")
    p.add_argument("--gamma", type=float, default=None, help="discount γ in r_t = Q(s_t,a_t) − γ·V(s_{t+1}); default: "
                   "the run's iq_gamma (0.99 for a model that is not a tirl run). γ=1 makes R the log-likelihood plus "
                   "V(s_0), so keep γ < 1 for a reward that is more than a likelihood. V is read in the run's own "
                   "iq_value form (logits, reference or head, from its run.json)")
    p.add_argument("--num_examples", type=int, default=50, help="rows to score (seeded random subset)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset")
    p.add_argument("--batch_size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--max_length", type=int, default=1024, help="tokens per sequence kept (prompt + completion)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass (faster on recent CPUs)")
    p.add_argument("--output_dir", required=True, help="where to write the outputs")


def build_score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tirl rewards",
        description="Per-token rewards r_t, values V(s_t), log-probabilities and sequence rewards R = Σ r_t of "
        "(prompt, completion) pairs under a checkpoint. Writes rewards.jsonl, summary.json, rewards.html "
        "(tokens coloured by r_t; hover for values) and rewards.png. `tirl rewards analyse --help` for correlations "
        "with task scores and preference accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_common(p)
    p.add_argument("--dataset", default=None, help="pairs to score: a task name (gsm8k, arithmetic, ...), a local "
                   "prompt/completion file; or use --generations")
    p.add_argument("--split", default="test", help="split of a named task")
    p.add_argument("--generations", default=None, help="a generations.jsonl written by `tirl eval`: score the sampled "
                   "completions instead of the dataset's references")
    p.add_argument("--num_render", type=int, default=12, help="completions drawn in rewards.html / rewards.png")
    return p


def _pairs_from_generations(path: str, limit: int | None) -> tuple[list[tuple], list[dict]]:
    from tirl.data import read_records

    records, _ = read_records(path)
    pairs, meta = [], []
    for loc, rec in records:
        if not isinstance(rec, dict) or "prompt" not in rec or "completion" not in rec:
            from tirl.data import DataError

            raise DataError(f"{loc}: a generations file needs 'prompt' and 'completion' fields")
        pairs.append((rec["prompt"], rec["completion"]))
        meta.append({k: v for k, v in rec.items() if k not in ("completion",)})
    return (pairs[:limit], meta[:limit]) if limit else (pairs, meta)


def score_main(argv: list[str]) -> int:
    args = build_score_parser().parse_args(argv)
    if not args.dataset and not args.generations:
        print("tirl rewards: error: give --dataset or --generations", file=sys.stderr)
        return 2
    from tirl import models
    from tirl.data import DataError, load_rows
    from tirl.files import safe_path, write_json_atomic, write_text_atomic
    from tirl.jobs.rundir import RunDirError, check_no_links, check_writable
    from tirl.rewards import load_reward_model, render_html, render_png, score

    try:
        # before any work: nothing is written through a link, nor into a path that cannot be written
        if check_writable(args.output_dir):
            check_no_links(args.output_dir)
        if args.generations:
            pairs, meta = _pairs_from_generations(args.generations, args.num_examples)
        else:
            rows = load_rows(args.dataset, split=args.split, limit=args.num_examples, seed=args.seed)
            pairs = [(r["prompt"], r["completion"]) for r in rows]
            meta = [{"id": r.get("id"), "prompt": r["prompt"]} for r in rows]
        rm = load_reward_model(args.model)
    except (DataError, RunDirError, models.ModelNotAvailableError, FileNotFoundError) as e:
        print(f"tirl rewards: error: {e}", file=sys.stderr)
        return 2
    model, tok = rm.model, rm.tokenizer
    args.gamma = rm.gamma if args.gamma is None else args.gamma
    print(f"[tirl] rewards of {args.model} with V in its '{rm.form.name}' form, γ = {args.gamma}")
    # prompts from a task are user messages, formatted the way training formats them
    from tirl.data import to_trl

    if not args.generations:
        trl_rows = to_trl([{"prompt": p, "completion": c} for p, c in pairs], tok)
        pairs = [(r["prompt"], r["completion"]) for r in trl_rows]
    scored = score(model, tok, pairs, gamma=args.gamma, batch_size=args.batch_size, max_length=args.max_length, bf16=args.bf16,
                   form=rm.form, reference_model=rm.reference)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({**m, **s.to_dict()}, ensure_ascii=False) for m, s in zip(meta, scored, strict=True)]
    write_text_atomic(safe_path(out, "rewards.jsonl"), "\n".join(lines) + "\n")
    R = [s.reward for s in scored]
    per_tok = [r for s in scored for r in s.rewards if not math.isnan(r)]
    summary = {"model": args.model, "gamma": args.gamma, "iq_value": rm.form.name, "n": len(scored), "mean_R": statistics.fmean(R),
               "std_R": statistics.pstdev(R), "mean_r_t": statistics.fmean(per_tok) if per_tok else None,
               "mean_logprob": statistics.fmean(s.logprob for s in scored),
               "mean_tokens": statistics.fmean(s.num_tokens for s in scored)}
    write_json_atomic(safe_path(out, "summary.json"), summary)
    shown = scored[: args.num_render]
    labels = [{"prompt": m.get("prompt") if isinstance(m.get("prompt"), str) else json.dumps(m.get("prompt"))} for m in meta[: args.num_render]]
    render_html(shown, safe_path(out, "rewards.html"), title=f"rewards of {args.model} (γ = {args.gamma})", labels=labels)
    render_png(shown[:4], safe_path(out, "rewards.png"), title=f"r_t under {args.model}")
    print(f"scored {len(scored)} completions: mean R = {summary['mean_R']:.3f} (sd {summary['std_R']:.3f}), "
          f"mean r_t = {summary['mean_r_t']:.3f}")
    print(f"  per-token rewards: {out / 'rewards.jsonl'}\n  picture: {out / 'rewards.html'} and {out / 'rewards.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "analyse":
        from tirl.cli.rewards_analyse import main as analyse_main

        return analyse_main(argv[1:])
    if argv and argv[0] == "score":
        argv = argv[1:]
    return score_main(argv)
