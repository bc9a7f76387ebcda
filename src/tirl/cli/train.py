"""`tirl train`: parse TRL-style options (the command line and a `--config` YAML file) into the job's dataclasses
(`TrainScriptArguments`, the method's trainer config, TRL's `ModelConfig`) and run the job (`tirl.jobs.train`)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field, fields

from trl import ModelConfig

from . import errors
from .train_help import CLI_DEFAULTS, DEMO_DEFAULTS, HELP_EPILOG, MODEL_HELP, SCRIPT_HELP, TRL_OPTION_HELP, method_help


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help, and the epilog's examples kept as written."""


@dataclass
class ModelArguments(ModelConfig):
    """TRL's `ModelConfig` (LoRA/PEFT options etc.) with `--model` as the short flag."""

    model_name_or_path: str | None = field(default=None, metadata={"aliases": ["--model"], "help": MODEL_HELP})


def fail(message: object) -> int:
    """A user error: one line on stderr, exit code 2."""
    return errors.fail("train", message)


def option_message(error: ValueError, known: set[str]) -> str:
    """A config's validation error with the option written as typed: the dataclasses say `iq_lambda must be >= 0`,
    the user gave `--iq_lambda`."""
    text = " ".join(str(error).split())
    first = re.match(r"(\w+)\b", text)
    return f"--{text}" if first and first.group(1) in known else text


# `trl sft`'s `DatasetMixtureConfig` keys: a YAML file with them is refused by name rather than as unknown options
TRL_MIXTURE_KEYS = ("datasets", "streaming", "test_split_size")


def _config_path(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def aliases(parser) -> dict[str, str]:
    """Every name an option may be written with, on the command line or as a YAML key, mapped to the option (`model`
    → `model_name_or_path`, `trl sft`'s `dataset_name` → `dataset`, ...)."""
    return {o[2:].replace("-", "_"): a.dest for a in parser._actions for o in a.option_strings if o.startswith("--")}


def read_yaml(path: str) -> dict:
    """The options of a `--config` YAML file; its `env:` mapping is set in the environment, as `trl sft` does. A file
    that is not a mapping is a ValueError."""
    import yaml

    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"--config {path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: the file must hold a YAML mapping of option names to values")
    env = data.pop("env", {}) or {}
    if not isinstance(env, dict):
        raise ValueError(f"--config {path}: `env` must be a mapping of variable names to values")
    for key, value in env.items():
        os.environ[key] = str(value)
    return data


def given_options(argv: list[str], yaml_options: dict, names: dict[str, str]) -> set[str]:
    """The options (dests) the user set, on the command line or in the `--config` file; `names`: `aliases`."""
    given = {names.get(k, k) for k in yaml_options}
    for arg in argv:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            given.add(names.get(name, name))
    return given


def selected_method(argv: list[str], yaml_options: dict) -> str:
    """The --method of a command line (or of its --config YAML file), read before parsing: it picks the config class."""
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    method = yaml_options.get("method")
    return method if isinstance(method, str) else "iqlearn"


def build_parser(method: str):
    """The parser of `tirl train --method METHOD`: the script's, the method's config's and TRL's model options, with
    tirl's defaults and the method's (`Method.defaults` and `.fixed`), and [demo job: …] marks."""
    from trl import TrlParser

    from tirl.jobs.train import DEFAULT_DATASET, TrainScriptArguments
    from tirl.trainers.methods import METHODS

    class Parser(TrlParser):
        def error(self, message: str):
            # argparse prints the whole usage first: hundreds of options for `tirl train`
            sys.exit(fail(f"{message} (`tirl train --help` lists the options)"))

    # an unknown method still gets a parser (the iqlearn one), so that argparse reports it with the valid choices
    shown = method if method in METHODS else "iqlearn"
    spec = METHODS[shown]
    config_class = spec.config
    parser = Parser(
        (TrainScriptArguments, config_class, ModelArguments),
        prog="tirl train",
        description="Fine-tune a causal LM with MLE, offline IQLearn (TD-regularised MLE), the GEM and DFT baselines, "
        "online IQLearn or GAIL. Every option of TRL's SFTConfig / transformers' TrainingArguments is accepted, plus "
        "the IQLearn options (--iq_lambda, --iq_gamma, --iq_chunk_size, ...), TRL's model/LoRA options (--use_peft, "
        f"--lora_r, ...) and the options of the chosen method (shown here: {config_class.__name__}, for --method "
        f"{shown}).",
        epilog=HELP_EPILOG.format(demo_data=repr(DEFAULT_DATASET)),
        formatter_class=_HelpFormatter,
    )
    known = {f.name for dc in (TrainScriptArguments, config_class, ModelArguments) for f in fields(dc)}
    parser.set_defaults(**{k: v for k, v in {**CLI_DEFAULTS, **spec.defaults, **spec.fixed}.items() if k in known})
    for action in parser._actions:
        if action.dest in SCRIPT_HELP:
            action.help = SCRIPT_HELP[action.dest]
        elif action.dest in TRL_OPTION_HELP:
            action.help = TRL_OPTION_HELP[action.dest]
        if action.dest == "method":
            action.choices = list(METHODS)
            action.help = method_help(METHODS)
        if action.dest in DEMO_DEFAULTS and action.help is not argparse.SUPPRESS:
            action.help = f"{action.help or ''} [demo job: {DEMO_DEFAULTS[action.dest]}]".strip()
    return parser


def parse(argv: list[str]):
    """(script, config, model_args, given option names) of a `tirl train` command line; a user error exits 2."""
    path = _config_path(argv)
    try:
        yaml_options = read_yaml(path) if path else {}
    except (OSError, ValueError) as e:
        sys.exit(fail(e if isinstance(e, ValueError) else f"--config {path}: {e.strerror or e}"))
    method = selected_method(argv, yaml_options)
    parser = build_parser(method)
    known = {a.dest for a in parser._actions if a.option_strings}
    names = aliases(parser)
    mixture = sorted(k for k in TRL_MIXTURE_KEYS if k in yaml_options)
    if mixture:
        sys.exit(fail(f"--config {path}: {', '.join(mixture)}: `trl sft`'s dataset mixture is not supported; tirl "
                      "train trains on one dataset: give it as dataset_name (a hub id, a local file or a built-in "
                      "task), with dataset_config and dataset_train_split"))
    unknown = sorted(k for k in yaml_options if k not in names)
    if unknown:
        sys.exit(fail(f"--config {path}: unknown option(s) {', '.join(unknown)} (`tirl train --method {method} --help` "
                      "lists the options)"))
    yaml_options = {names[k]: v for k, v in yaml_options.items()}
    given = given_options(argv, yaml_options, names)
    if not given & {"model_name_or_path", "dataset"} and not {"-h", "--help"} & set(argv):
        parser.set_defaults(**{k: v for k, v in DEMO_DEFAULTS.items() if k in known})
    parser.set_defaults_with_config(**yaml_options)
    args = [a for i, a in enumerate(argv) if a != "--config" and not a.startswith("--config=")
            and not (i > 0 and argv[i - 1] == "--config")]
    try:
        script, config, model_args = parser.parse_args_into_dataclasses(args=args)
    except ImportError as e:  # an option whose package is missing: transformers checks for it while parsing
        extra = next((x for x in ("deepspeed", "bitsandbytes", "wandb", "vllm") if x in str(e)), None)
        hint = f"; install it with pip install 'tirl[{extra}]'" if extra else ""
        sys.exit(fail(f"{' '.join(str(e).split())}{hint}"))
    except (ValueError, TypeError) as e:  # a config's own validation (e.g. iq_gamma outside [0, 1]), or a JSON option
        sys.exit(fail(option_message(e, known)))  # whose keys the class it builds does not take (--accelerator_config)
    return script, config, model_args, given


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from tirl.cli.launch import maybe_relaunch

    relaunched = maybe_relaunch("train", argv)
    if relaunched is not None:
        return relaunched
    # TRL's SFTConfig sets `gradient_checkpointing`, which transformers 5 renamed: the FutureWarning it prints on
    # every run is about TRL's default, not anything the user typed
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    script, config, model_args, given = parse(argv)
    if "output_dir" not in given and config.output_dir in (None, "trainer_output"):
        model = (model_args.model_name_or_path or "smollm2-135m").rstrip("/").split("/")[-1]
        config.output_dir = f"runs/{script.method}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"

    from tirl.data import DataError
    from tirl.jobs.rundir import RunDirError, last_checkpoint
    from tirl.jobs.train import OptionError, run
    from tirl.models import ModelNotAvailableError
    from tirl.trainers import CheckpointStateError, NonFiniteLossError, NoTrainableTokensError

    try:
        with errors.on_sigterm():
            result = run(script, config, model_args, given)
    except (CheckpointStateError, DataError, ModelNotAvailableError, NoTrainableTokensError, OptionError,
            RunDirError) as e:
        return fail(e)
    except NonFiniteLossError as e:
        print(f"\ntirl train: stopped: {' '.join(str(e).split())}", file=sys.stderr)
        return 3
    except errors.Terminated:
        checkpoint = last_checkpoint(config.output_dir)
        return errors.terminated("train", f"the last checkpoint, {checkpoint}, is kept: continue from it with the same "
                                 "command plus --resume" if checkpoint else
                                 "it stopped before the first checkpoint; nothing was kept")
    except KeyboardInterrupt:
        if last_checkpoint(config.output_dir):
            return errors.interrupted("train", f"continue with the same command plus --resume (checkpoints in "
                                      f"{config.output_dir})")
        return errors.interrupted("train", "it stopped before the first checkpoint; nothing was kept")
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
