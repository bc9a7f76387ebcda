"""`tirl rewards`: per-token rewards of a checkpoint (`score`, the default), and their analysis (`analyse`)."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from . import errors


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint to read rewards from: a run directory, 'smollm2-135m', "
                   "or a tiny model name")
    p.add_argument("--gamma", type=float, default=None, help="discount γ in r_t = Q(s_t,a_t) − γ·V(s_{t+1}); default: "
                   "the run's iq_gamma (for a model that is not a tirl run, the --iq_gamma default of `tirl train`). "
                   "γ=1 makes R the log-likelihood plus V(s_0), so keep γ < 1 for a reward that is more than a "
                   "likelihood. V is read in the run's own iq_value form (logits, reference or head, from its run.json)")
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
    p.add_argument("--generations", default=None, help="a generations.jsonl written by `tirl eval` (each sample scored "
                   "as it was generated), or any file of prompt/completion or messages rows: score those completions "
                   "instead of the dataset's references")
    p.add_argument("--num_render", type=int, default=12, help="completions drawn in rewards.html / rewards.png")
    return p


def _encoded_from_file(path: str, tokenizer, limit: int | None) -> tuple[list[dict], list[dict], int, int]:
    """(token ids and labels, metadata, skipped, torn) of the completions in a file: a `generations.jsonl` that `tirl
    eval` wrote (each sample scored as it was generated, cut by `max_new_tokens` or ended by EOS; samples without a
    token are skipped and counted, and so is a torn last line, named), or rows in TRL's formats (prompt/completion or
    messages, rendered as training does)."""
    import os

    from tirl.data import DataError, read_records
    from tirl.evaluation.sampling import encode_prompt
    from tirl.jobs.eval import generations_chat, torn_last_line
    from tirl.rewards.extraction import encode_generated

    torn = torn_last_line(path) if os.path.isfile(path) and str(path).endswith(".jsonl") else None
    records, report = read_records(path, skip_bad_rows=torn is not None)
    if any(loc != f"{path}:{torn}" for loc, _ in report.skipped):
        read_records(path)  # a bad line other than a torn last one: refused, named by its own error
    if records and isinstance(records[0][1], dict) and {"text", "token_ids", "prompt"} <= set(records[0][1]):
        if torn is not None:  # as `tirl rewards analyse` treats the same file
            print(f"[tirl] {path}:{torn}: a torn last line (cut short while `tirl eval` wrote it) is skipped")
        encoded, meta, skipped, chat = [], [], 0, generations_chat(path)
        for loc, rec in records:
            if not isinstance(rec, dict) or not {"text", "token_ids", "prompt"} <= set(rec):
                raise DataError(f"{loc}: a generations line needs 'prompt', 'text' and 'token_ids' (as `tirl eval` "
                                "writes them)")
            if not rec["token_ids"]:
                skipped += 1
                continue
            encoded.append(encode_generated(encode_prompt(rec["prompt"], tokenizer, chat), rec["token_ids"]))
            meta.append({k: v for k, v in rec.items() if k != "token_ids"})
            if limit and len(encoded) >= limit:
                break
        return encoded, meta, skipped, int(torn is not None)
    return (*_encoded_from_rows(path, tokenizer, limit), 0)


def _encoded_from_rows(name: str, tokenizer, limit: int | None, split: str = "test", seed: int = 0):
    """Rows of a task or a file (prompt/completion or messages) as training tokenises them; text rows have no prompt
    to read a reward against and are refused."""
    from tirl.data import DataError, is_builtin, load_rows, to_trl
    from tirl.data.tokenize import encode_prompt_completion

    rows = load_rows(name, split=split, limit=limit, seed=seed)
    pairs, meta = [], []
    for r in rows:
        if "text" in r:
            raise DataError(f"{r.get('location', name)}: a text row has no prompt; rewards are read for "
                            "prompt/completion or messages rows")
        if "messages" in r:
            last = max(i for i, m in enumerate(r["messages"]) if m["role"] == "assistant")
            r = {**r, "prompt": r["messages"][:last], "completion": [r["messages"][last]]}
        pairs.append(to_trl([{"prompt": r["prompt"], "completion": r["completion"]}], tokenizer,
                            None if is_builtin(name) else False)[0])
        meta.append({"id": r.get("id"), "prompt": r["prompt"]})
    return [encode_prompt_completion(tokenizer, p["prompt"], p["completion"]) for p in pairs], meta, 0


def score_main(argv: list[str]) -> int:
    args = build_score_parser().parse_args(argv)
    if not args.dataset and not args.generations:
        return errors.fail("rewards", "give --dataset or --generations")
    if args.gamma is not None and not 0.0 <= args.gamma <= 1.0:
        return errors.fail("rewards", f"--gamma must be in [0, 1], got {args.gamma}")
    from tirl import models
    from tirl.data import DataError
    from tirl.jobs.rundir import RunDirError, check_no_links, check_writable, output_lock
    from tirl.rewards import load_reward_model

    try:
        # before any work: nothing is written through a link, nor into a path that cannot be written
        if check_writable(args.output_dir):
            check_no_links(args.output_dir)
        rm = load_reward_model(args.model)
        tok = rm.tokenizer
        torn = 0
        if args.generations:
            encoded, meta, skipped, torn = _encoded_from_file(args.generations, tok, args.num_examples)
        else:
            encoded, meta, skipped = _encoded_from_rows(args.dataset, tok, args.num_examples, args.split, args.seed)
        with output_lock(args.output_dir, "rewards"):
            return _score(args, rm, encoded, meta, skipped, torn)
    except (DataError, RunDirError, models.ModelNotAvailableError, FileNotFoundError) as e:
        return errors.fail("rewards", e)
    except KeyboardInterrupt:
        return errors.interrupted("rewards", "nothing was written")


def _score(args, rm, encoded: list[dict], meta: list[dict], skipped: int, torn: int = 0) -> int:
    """Score the encoded completions under the reward model and write the four files."""
    from tirl.files import nan_to_none, safe_path, write_json_atomic, write_text_atomic
    from tirl.rewards import render_html, render_png
    from tirl.rewards.extraction import ScoreSettings, score_encoded

    rm = rm.with_gamma(args.gamma)
    args.gamma, form = rm.objective.iq_gamma, rm.objective.iq_value.name
    print(f"[tirl] rewards of {args.model} with V in its '{form}' form, γ = {args.gamma}"
          + (f"; {skipped} samples without a token skipped" if skipped else ""))
    scored = score_encoded(rm, encoded, ScoreSettings(batch_size=args.batch_size, max_length=args.max_length,
                                                      bf16=args.bf16))
    out = Path(args.output_dir)
    # a token without a defined reward (the last of a completion cut short) is null: the file is strict JSON
    lines = [json.dumps(nan_to_none({**m, **s.to_dict()}), ensure_ascii=False, allow_nan=False)
             for m, s in zip(meta, scored, strict=True)]
    write_text_atomic(safe_path(out, "rewards.jsonl"), "\n".join(lines) + "\n")
    R = [s.reward for s in scored]
    per_tok = [r for s in scored for r in s.rewards if not math.isnan(r)]
    summary = {"model": args.model, "gamma": args.gamma, "iq_value": form, "n": len(scored),
               "skipped_without_tokens": skipped, "skipped_torn_lines": torn, "mean_R": statistics.fmean(R), "std_R": statistics.pstdev(R),
               "mean_r_t": statistics.fmean(per_tok) if per_tok else None,
               "mean_logprob": statistics.fmean(s.logprob for s in scored),
               "mean_tokens": statistics.fmean(s.num_tokens for s in scored)}
    write_json_atomic(safe_path(out, "summary.json"), nan_to_none(summary))
    shown = scored[: args.num_render]
    labels = [{"prompt": m.get("prompt") if isinstance(m.get("prompt"), str) else json.dumps(m.get("prompt"))}
              for m in meta[: args.num_render]]
    render_html(shown, safe_path(out, "rewards.html"), title=f"rewards of {args.model} (γ = {args.gamma})",
                labels=labels)
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
