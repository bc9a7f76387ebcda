"""No option of `tirl train` is silently ignored: each one given a value other than its default either changes what
the run records as its settings in run.json (the script's, the trainer config's and the model options, which are
what the job, the trainer and `from_pretrained` are given) or is refused in one line with exit code 2.

Every option of `tirl train --help` is walked for every registered method (`tirl.trainers.methods.METHODS`: each
config class, and the methods that fix some of its options).
"""

import argparse
import dataclasses
import functools
import inspect
import re

import pytest

import tirl.cli.train as train_cli
from tirl.files import jsonable
from tirl.trainers.methods import METHODS

BASE = ["--model", "tiny-llama", "--dataset", "arithmetic", "--output_dir", "/tmp/tirl-walk"]
SKIP = {"help", "config"}  # --config is a file of these same options (test_cli.py)
# accepted, and rightly recorded as they are: a secret (transformers writes "<HUB_TOKEN>"), and options that
# transformers resolves for the machine (without a GPU: use_cpu on, pinned memory off, whatever was asked)
UNRECORDED = {"hub_token": "a secret", "use_cpu": "no GPU here", "dataloader_pin_memory": "no GPU here"}


def other_values(action: argparse.Action) -> list[list[str]]:
    """Command-line words that set `action` to something other than its default (each list one try: a boolean whose
    default is resolved later, such as bf16, is tried both ways)."""
    if action.nargs == 0:  # a --no_X flag
        return [[]]
    if action.type is not None and getattr(action.type, "__name__", "") == "string_to_bool":
        return [["true"], ["false"]]
    return [other_value(action)]


def other_value(action: argparse.Action) -> list[str]:
    default = action.default
    if action.choices:
        return [str(next(c for c in action.choices if c != default and str(c) != str(default)))]
    if action.type is int:
        return [str(default + 1 if isinstance(default, int) else 3)]
    if action.type is float:
        return [str(default * 0.5 + 0.25 if isinstance(default, (int, float)) and default == default else 0.25)]
    if action.nargs == "+":
        return ["none"] if action.dest == "report_to" else ["x_value"]
    if isinstance(default, dict) or "kwargs" in action.dest or action.dest.endswith("_config") and action.dest not in (
            "dataset_config", "eval_config"):
        return ['{"x_value": 1}']
    return ["x_value"]


def recorded(script, config, model_args) -> dict:
    return {"script": jsonable(script), "config": jsonable(config), "model_args": jsonable(model_args)}


_build_parser = train_cli.build_parser


@functools.cache
def parser_for(method: str):
    return _build_parser(method)


def outcome(argv: list[str], capsys) -> tuple[str, object]:
    """("refused", message) or ("recorded", run.json's settings) for `tirl train ARGV`, without training."""
    from tirl.jobs.train import OptionError, check_options, fix_method

    capsys.readouterr()
    try:
        script, config, model_args, given = train_cli.parse(argv)
        fix_method(script.method, config, given)
        check_options(script, config, model_args)
    except SystemExit as e:
        err = capsys.readouterr().err.strip().splitlines()  # a library's warning may come first
        assert e.code == 2 and err and err[-1].startswith("tirl train: error: "), (argv, e.code, err[-3:])
        return "refused", err[-1]
    except OptionError as e:
        return "refused", str(e)
    return "recorded", recorded(script, config, model_args)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_train_option_changes_the_recorded_settings_or_is_refused(method, capsys, monkeypatch):
    monkeypatch.setattr(train_cli, "build_parser", parser_for)
    base = [*BASE, "--method", method]
    kind, baseline = outcome(base, capsys)
    assert kind == "recorded", baseline
    ignored = []
    for action in parser_for(method)._actions:
        if not action.option_strings or action.dest in SKIP | set(UNRECORDED) or action.dest == "method":
            continue
        option = next(o for o in action.option_strings if o.startswith("--"))
        results = [outcome([*base, option, *words], capsys) for words in other_values(action)]
        if all(kind == "recorded" and result == baseline for kind, result in results):
            ignored.append(option)
    assert not ignored, f"accepted but changing nothing recorded: {ignored}"


def test_every_model_option_reaches_from_pretrained_or_trls_helpers():
    """run.json records the model options as given; each one is also used: by `load_model` (name, revision, dtype,
    attention) or by TRL's `get_peft_config` / `get_quantization_config`, which `tirl train` calls as `trl sft` does."""
    from trl import ModelConfig, get_peft_config, get_quantization_config

    from tirl.jobs.train import load_model

    used = set(re.findall(r"model_args\.(\w+)", inspect.getsource(load_model)))
    for helper in (get_peft_config, get_quantization_config):
        used |= set(re.findall(r"model_args\.(\w+)", inspect.getsource(helper)))
    used.add("model_name_or_path")  # the model_name argument of load_model
    assert {f.name for f in dataclasses.fields(ModelConfig)} <= used
