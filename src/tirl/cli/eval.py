"""`tirl eval`: sample K completions per prompt (plus a greedy pass), score them, write metrics/generations/report."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap

from . import errors

EPILOG = """
What it writes (in --output_dir):
  metrics.json       task scores per pass (greedy, sampled), Self-BLEU, distinct-1/2, entropy, all settings
  generations.jsonl  one line per prompt x sample, appended as produced: rerunning the same command resumes
  report.md          a table and a few example generations
  eval_config.json   the settings a resumed run must match

Diversity (Self-BLEU, distinct-n, entropy) is always measured on the sampled pass.

Prompts are 0-shot: each is rendered exactly as training renders it (the chat template with the generation prompt).
lm-evaluation-harness's gsm8k task is 5-shot and its numbers are not comparable with these; for those, a run directory
is a plain transformers model:  lm_eval --model hf --model_args pretrained=RUN_DIR --tasks gsm8k

Examples:
  tirl eval --model smollm2-135m --dataset gsm8k --num_examples 100 --samples 4
  tirl eval --model runs/iqlearn-... --dataset gsm8k            # writes runs/iqlearn-.../eval/<tag>/
  tirl eval --model tiny-llama --dataset arithmetic --num_examples 8 --max_new_tokens 32
  tirl eval --model M --dataset my.jsonl --prompt_field question --completion_field answer --metric gsm8k
  tirl compare runs/mle-... runs/iqlearn-...                   # then plot score vs Self-BLEU
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help, and the epilog kept as written."""


def fail(message: object) -> int:
    """A user error: one line on stderr, exit code 2."""
    return errors.fail("eval", message)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        sys.exit(fail(f"{message} (`tirl eval --help` lists the options)"))  # one line, not the usage block first


def _optional_int(text: str) -> int | None:
    """A count where 0 means all; a negative one is refused (it used to mean all too, without a word)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = all), got {value}")
    return value or None


def build_parser() -> argparse.ArgumentParser:
    from tirl.data.tasks import TASK_INFO
    from tirl.evaluation.families import METRIC_FAMILIES

    width = max(len(info.metric) for info in TASK_INFO.values()) + 2
    tasks = "\n".join(f"  {name:<13}{info.metric:<{width}}{info.description}" for name, info in TASK_INFO.items())
    families = "\n".join(textwrap.fill(family.help, 118, initial_indent=f"  {name:<11}", subsequent_indent=" " * 13)
                          for name, family in METRIC_FAMILIES.items())
    p = _Parser(
        prog="tirl eval",
        description="Evaluate a model: greedy and sampled generations for a dataset's prompts, the task score, and "
        "the diversity of the samples (Self-BLEU, distinct-n, entropy). Resumable: finished prompts are never "
        "generated again.",
        epilog=f"\nBuilt-in tasks (name, metric family, contents):\n{tasks}\n\nMetric families (--metric auto picks "
        f"the task's own):\n{families}\n" + EPILOG,
        formatter_class=_HelpFormatter,
    )
    a = p.add_argument
    a("--model", default="smollm2-135m", help="Model to evaluate: 'smollm2-135m' (embedded), 'tiny-llama' etc. "
      "(random init, for tests), a `tirl train` run directory or checkpoint, any local model directory, or a hub id.")
    a("--dataset", default="gsm8k", help="Prompts and references: a built-in task (listed below), a local "
      ".jsonl/.json/.csv file of prompt/completion (or messages) rows, or a hub dataset id (`datasets.load_dataset`).")
    a("--split", default="test", help="Split of a built-in task or cached dataset (built-in tasks: train/test; "
      "WMT22's train split is WMT21 newstest; many-answer tasks also have validation: training-distribution prompts no "
      "run of up to 800 training rows trained on). On a many-answer task each prompt is evaluated once, and when the "
      "model is a tirl run whose training rows include some of the prompts, every pass also reports memorisation: the "
      "share of samples repeating one of the prompt's demonstrations, and of valid answers never demonstrated for it.")
    a("--num_examples", type=_optional_int, default=100, help="Evaluate a seeded random subset of this many prompts "
      "(0 = all). The subset depends only on --data_seed, so runs with different --seed share prompts.")
    a("--data_seed", type=int, default=0, help="Seed of the prompt subset (and of the generated arithmetic task).")
    a("--samples", "-k", type=int, default=4, help="K, completions sampled per prompt (0 = greedy pass only). "
      "Self-BLEU needs K >= 2.")
    a("--temperature", type=float, default=1.0, help="Sampling temperature of the sampled pass (> 0).")
    a("--top_p", type=float, default=1.0, help="Nucleus sampling threshold of the sampled pass (1.0 = off). "
      "Top-k is always off.")
    a("--greedy", action=argparse.BooleanOptionalAction, default=True,
      help="Also run a greedy pass (one completion per prompt, temperature 0).")
    a("--max_new_tokens", type=int, default=256, help="Generation stops at EOS or after this many new tokens.")
    a("--batch_size", type=int, default=32, help="Sequences per generate() call (prompts per call = batch_size // "
      "K). Larger is faster on CPU up to ~64; results depend on it only through the RNG stream.")
    a("--seed", type=int, default=0, help="Sampling seed: the same seed and batch size give the same samples.")
    a("--sampler", choices=["packed", "generate"], default="packed",
      help="Decoding loop. packed: rows that reached EOS leave the batch (faster when lengths differ); generate: "
      "transformers' model.generate, which computes every row until the longest ends. Same distribution and "
      "options, different random stream: a resumed run must keep its sampler.")
    a("--bf16", action=argparse.BooleanOptionalAction, default=None,
      help="bfloat16 autocast during generation (weights stay float32). Default: on where the hardware computes "
      "bf16 natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX: about 2.5x faster there), float32 elsewhere "
      "(an AVX2 CPU emulates bf16, several times slower). --no-bf16 for exact float32 everywhere.")
    a("--metric", default="auto", choices=["auto", *METRIC_FAMILIES],
      help="Task score family; 'auto' = the built-in task's own, 'rouge' for local files and cached datasets.")
    a("--self_bleu_n", type=int, default=4, help="Maximum n-gram order of Self-BLEU.")
    a("--prompt_field", default="prompt", help="Prompt column of a local file / cached dataset.")
    a("--completion_field", default="completion", help="Completion column of a local file / cached dataset.")
    a("--reference_field", default=None, help="Column scored against (default: the completion).")
    a("--skip_bad_rows", action="store_true", help="Skip malformed rows (counted) instead of stopping at the first.")
    a("--wrap_in_chat_template", action=argparse.BooleanOptionalAction, default=None,
      help="Render the plain-string prompts of your data (a local file or hub dataset) as a user message with the "
      "chat template. Default: as the run was trained (its --wrap_in_chat_template), else plain text, as `trl sft` "
      "trains. Built-in tasks are always rendered as training renders them.")
    a("--output_dir", default=None, help="Where to write. Default: RUN_DIR/eval/<tag> for a run directory, else "
      "evals/<model>-<tag>, with tag = dataset-split-n-K-T.")
    a("--overwrite", action="store_true", help="Discard generations already in --output_dir instead of resuming "
      "(needed when the settings changed).")
    a("--num_report_examples", type=int, default=3, help="Prompts shown with their generations in report.md.")
    a("--expert_nll", action=argparse.BooleanOptionalAction, default=True,
      help="Many-answer tasks (sum-pairs, countdown): also score every valid answer of each prompt under the model, "
      "for the held-out expert NLL (= forward KL to the uniform expert + log|valid|; written to expert_nll.json).")
    a("--trust_remote_code", action="store_true", help="Allow a local model to run code it ships (off: models never execute code).")
    a("--no_progress", action="store_true", help="No progress bars (e.g. in CI logs).")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.samples < 0:
        parser.error("--samples must be >= 0")
    if args.samples == 0 and not args.greedy:
        parser.error("--samples 0 with --no-greedy leaves nothing to generate")
    # checked before anything runs: a NaN passes `<= 0`, and would only fail in the sampled pass, after the greedy
    # pass had written its generations
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        parser.error(f"--temperature must be a finite number > 0 (the greedy pass is temperature 0), got "
                     f"{args.temperature}")
    if not 0 < args.top_p <= 1:
        parser.error("--top_p must be in (0, 1]")
    if args.max_new_tokens < 1 or args.batch_size < 1:
        parser.error("--max_new_tokens and --batch_size must be >= 1")

    from tirl.data import DataError
    from tirl.jobs.eval import EvalSettings, run_eval
    from tirl.jobs.rundir import RunDirError
    from tirl.models import ModelNotAvailableError

    settings = EvalSettings(**{k: v for k, v in vars(args).items() if k != "no_progress"}, progress=not args.no_progress)
    try:
        result = run_eval(settings)
    except (DataError, ModelNotAvailableError, RunDirError) as e:
        return fail(e)
    except KeyboardInterrupt:
        return errors.interrupted("eval", "the generations made so far are kept; the same command continues them")
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    from tirl.evaluation.report import SCORE_LABELS, fmt_score

    m = result.metrics
    print("\n" + "=" * 72)
    print(f"tirl eval: {m['model']} on {m['dataset']} ({m['split']}, {m['num_prompts']} prompts)")
    for pass_name in ("greedy", "sampled"):
        if pass_name not in m:
            continue
        stats = m[pass_name]
        shown = [f"{SCORE_LABELS.get(k, k)} {fmt_score(k, v)}" for k, v in stats.items() if k in SCORE_LABELS]
        shown += [f"Self-BLEU {fmt_score('self_bleu', stats.get('self_bleu'))}"] if "self_bleu" in stats else []
        shown += [f"distinct-2 {fmt_score('distinct_2', stats['distinct_2'])}",
                  f"entropy {fmt_score('entropy', stats['entropy'])}",
                  f"mean tokens {fmt_score('mean_tokens', stats['mean_tokens'])}"]
        print(f"  {pass_name + ' (K=' + str(stats['k']) + ')':<14}" + "; ".join(shown))
    total = (m.get("timing") or {}).get("total_seconds")
    if total:
        print(f"  generation + model load: {total:.0f} s")
    out = result.output_dir
    print(f"  metrics:      {out / 'metrics.json'}")
    print(f"  generations:  {out / 'generations.jsonl'}")
    print(f"  report:       {out / 'report.md'}")
    print("=" * 72)
