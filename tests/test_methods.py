"""tirl.trainers.methods: each `--method` is one registration, which the job, the parser and `tirl train --help` read;
and the help lists what the registries hold (the methods, the built-in tasks)."""

import dataclasses

import pytest

from conftest import tirl_in_process as tirl


def test_every_method_names_a_config_a_trainer_and_a_help_line():
    from trl import SFTConfig, SFTTrainer

    from tirl.trainers import METHODS

    for name, method in METHODS.items():
        assert dataclasses.is_dataclass(method.config) and issubclass(method.config, SFTConfig), name
        assert issubclass(method.trainer, SFTTrainer), name
        assert method.help.strip() and "\n" not in method.help, name
        fields = {f.name for f in dataclasses.fields(method.config)}
        assert set(method.fixed) | set(method.defaults) <= fields, name


def test_the_method_help_lists_every_method_with_its_help_line():
    from tirl.cli.train import build_parser
    from tirl.trainers import METHODS

    [action] = [a for a in build_parser("iqlearn")._actions if a.dest == "method"]
    assert action.choices == list(METHODS)
    for name, method in METHODS.items():
        assert f"'{name}' ({method.help})" in action.help


def test_the_dataset_help_lists_every_built_in_task():
    from tirl.cli.train_help import SCRIPT_HELP
    from tirl.data.tasks import TASK_INFO

    assert all(name in SCRIPT_HELP["dataset"] for name in TASK_INFO)


@pytest.fixture
def one_more_method(monkeypatch):
    """A method registered with one line: the IQLearn config and trainer, λ fixed at 0."""
    from tirl.trainers import IQLearnConfig, IQLearnTrainer, methods

    method = methods.Method(IQLearnConfig, IQLearnTrainer, "a method registered in a test", {"iq_lambda": 0.0},
                            {"iq_value": "logits"})
    monkeypatch.setitem(methods.METHODS, "one-more", method)
    return method


def test_one_registration_makes_a_method_the_command_parses_and_fixes(one_more_method):
    from tirl.cli.train import build_parser, parse

    [action] = [a for a in build_parser("one-more")._actions if a.dest == "method"]
    assert "one-more" in action.choices and one_more_method.help in action.help
    script, config, _, given = parse(["--method", "one-more", "--model", "tiny-llama", "--dataset", "arithmetic"])
    assert script.method == "one-more" and isinstance(config, one_more_method.config)
    assert config.iq_lambda == 0.0 and config.iq_value == "logits"


def test_a_fixed_option_given_otherwise_is_refused_once_by_the_job(tmp_path, capsys, monkeypatch):
    """The CLI hands the options the user gave to the job, which applies and checks what the method fixes: once."""
    import tirl.jobs.train as job

    calls = []
    fix_method = job.fix_method
    monkeypatch.setattr(job, "fix_method", lambda *a, **k: (calls.append(a[0]), fix_method(*a, **k)))
    rc, _, err = tirl(capsys, "train", "--method", "mle", "--iq_lambda", "0.5", "--model", "tiny-llama", "--dataset",
                      "arithmetic", "--output_dir", tmp_path / "run")
    assert rc == 2 and err.strip().splitlines()[-1] == (
        "tirl train: error: --method mle trains with iq_lambda=0.0; drop --iq_lambda or use --method iqlearn")
    assert calls == ["mle"] and not (tmp_path / "run").exists()

    calls.clear()  # a run the job refuses later (here: no step to train) has had its method fixed once
    rc, _, err = tirl(capsys, "train", "--method", "gem", "--max_steps", "0", "--model", "tiny-llama", "--dataset",
                      "arithmetic", "--output_dir", tmp_path / "run")
    assert rc == 2 and "--max_steps 0 would train nothing" in err and calls == ["gem"]
