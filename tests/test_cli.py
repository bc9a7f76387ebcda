"""The `tirl` command end to end on a tiny model: help texts, a training run, its outputs, resume."""

import json
from importlib import metadata
from pathlib import Path

import pytest

from conftest import run_cli
from conftest import tirl_in_process as tirl
from tirl.cli import main as cli_main


def test_top_level_help(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "env" in out
    assert cli_main(["no-such-command"]) == 2


def test_train_help_explains_every_option():
    from tirl.cli.train import build_parser

    parser = build_parser("iqlearn")
    undocumented = [a.option_strings[0] for a in parser._actions if a.option_strings and not (a.help or "").strip()]
    assert not undocumented, f"options without help: {undocumented}"
    text = parser.format_help()
    for flag in ("--method", "--dataset", "--model", "--iq_lambda", "--iq_gamma", "--iq_chunk_size", "--use_peft",
                 "--output_dir", "--resume", "--report_to", "embedded default job", "--gem_beta", "--loss_type"):
        assert flag in text, flag


def test_every_script_option_has_its_help_in_the_cli():
    from dataclasses import fields

    from tirl.cli.train_help import SCRIPT_HELP
    from tirl.jobs.train import TrainScriptArguments

    assert {f.name for f in fields(TrainScriptArguments)} == set(SCRIPT_HELP)


def test_demo_defaults_apply_only_without_model_and_dataset():
    from tirl.cli.train import parse

    demo = parse([])
    assert demo[1].max_steps == 40 and demo[0].num_train_examples == 160
    custom = parse(["--model", "tiny-llama"])
    assert custom[1].max_steps == -1 and custom[0].num_train_examples is None
    assert custom[1].report_to == ["tensorboard"]


def test_demo_keeps_one_checkpoint():
    """The demo's run directory holds one checkpoint (enough for --resume), not two of 1.6 GB each; a run the user
    sizes keeps tirl's usual three."""
    from tirl.cli.train import parse

    assert parse([])[1].save_total_limit == 1
    assert parse(["--model", "tiny-llama"])[1].save_total_limit == 3


def with_max_steps(args: list[str], steps: int) -> list[str]:
    """`args` with only the value of --max_steps replaced."""
    i = args.index("--max_steps") + 1
    return [*args[:i], str(steps), *args[i + 1:]]


@pytest.mark.slow
def test_train_end_to_end_tiny_model_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_train_examples", "64",
            "--num_eval_examples", "16", "--max_steps", "6", "--per_device_train_batch_size", "4",
            "--learning_rate", "3e-3", "--save_steps", "3", "--logging_steps", "2", "--output_dir", str(out),
            "--bf16", "false", "--disable_tqdm", "true"]
    proc = run_cli(*args)
    assert "tirl train finished" in proc.stdout and str(out) in proc.stdout
    for name in ("model.safetensors", "tokenizer.json", "run.json", "metrics.json", "summary.md", "training_curves.png"):
        assert (out / name).is_file(), name
    assert (out / "checkpoint-6").is_dir()
    assert list((out / "runs").glob("*/events.out.tfevents.*")), "no TensorBoard event file"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_after"]["eval_loss"] < metrics["eval_before"]["eval_loss"]
    run = json.loads((out / "run.json").read_text())
    train = run["data"]["train"]
    # 6 steps of 4 draw 24 of the 64 rows: only those are prepared and recorded
    assert run["method"] == "iqlearn" and (train["rows"], train["rows_available"]) == (24, 64)
    assert len(train["sha256"]) == len(train["sha256_available"]) == 64
    assert run["versions"]["trl"] == "1.16.0"

    # the saved run loads back as a model
    from tirl.models import load

    model, tok = load(str(out))
    assert model.config.vocab_size == len(tok)

    # resume continues from the last checkpoint to a larger max_steps
    proc = run_cli(*with_max_steps(args, 9), "--resume")
    assert "resuming from" in proc.stdout and "checkpoint-6" in proc.stdout
    state = json.loads((out / "checkpoint-9" / "trainer_state.json").read_text())
    assert state["global_step"] == 9


def test_mle_rejects_nonzero_lambda(tmp_path):
    proc = run_cli("train", "--method", "mle", "--iq_lambda", "0.5", "--model", "tiny-llama", check=False)
    assert proc.returncode == 2 and "iq_lambda" in proc.stderr


def test_bad_dataset_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{not json}\n')
    proc = run_cli("train", "--model", "tiny-llama", "--dataset", str(bad), "--output_dir", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2
    assert f"{bad}:2" in proc.stderr and "invalid JSON" in proc.stderr


def test_env_command(capsys, monkeypatch, tmp_path):
    """`tirl env` reports what is installed and where models are cached, as `tirl.models.cache_dir` decides it."""
    monkeypatch.setenv("TIRL_CACHE", str(tmp_path / "cache"))
    assert cli_main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for package in ("torch", "transformers", "trl"):
        assert info["versions"][package] == metadata.version(package)
    assert info["model_cache"] == str(tmp_path / "cache")
    # the precision an unset --bf16 becomes here: on a CPU, bf16 only where the CPU computes it natively
    if not info["cuda"]:
        assert info["default_bf16"] == info["cpu_native_bf16"]
    monkeypatch.delenv("TIRL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cli_main(["env", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model_cache"] == str(tmp_path / "xdg" / "tirl")


# ---------------------------------------------------------------------------------------------------------------------
# Reliability of the command (docs/reliability.md): user errors, reused directories, resumed runs


TINY = ["--model", "tiny-llama", "--dataset", "arithmetic", "--num_train_examples", "32", "--num_eval_examples", "8",
        "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--logging_steps", "1", "--bf16", "false",
        "--disable_tqdm", "true", "--report_to", "none", "--seed", "0"]


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tirl train: error: "), err
    return lines[0]


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_reusing_an_output_directory_is_refused_and_overwrite_replaces_the_run(tmp_path, capsys):
    """The issue's sequence: an IQLearn run, then an MLE run into the same directory, then an MLE --resume."""
    out = tmp_path / "X"
    assert tirl(capsys, "train", *TINY, "--max_steps", 6, "--save_steps", 2, "--eval_strategy", "no", "--output_dir", out)[0] == 0
    before = files_of(out)
    rc, _, err = tirl(capsys, "train", *TINY, "--method", "mle", "--max_steps", 5, "--save_steps", 5,
                      "--eval_strategy", "no", "--output_dir", out)
    assert rc == 2 and "already holds a run (method iqlearn, model tiny-llama, last checkpoint checkpoint-6)" in one_line_error(err)
    assert "--resume" in err and "--overwrite" in err
    rc, _, err = tirl(capsys, "train", *TINY, "--method", "mle", "--max_steps", 8, "--save_steps", 5,
                      "--eval_strategy", "no", "--output_dir", out, "--resume")
    assert rc == 2 and "--resume: " in one_line_error(err) and "method 'iqlearn' here, 'mle' now" in err
    rc, _, err = tirl(capsys, "train", *TINY, "--num_train_examples", 16, "--max_steps", 8, "--save_steps", 2,
                      "--eval_strategy", "no", "--output_dir", out, "--resume")
    assert rc == 2 and "training data sha256" in one_line_error(err)
    assert files_of(out) == before  # nothing written by the refused commands

    assert tirl(capsys, "train", *TINY, "--method", "mle", "--max_steps", 5, "--save_steps", 5, "--eval_strategy", "no",
                "--output_dir", out, "--overwrite")[0] == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-5"]  # none of the old run's
    assert json.loads((out / "run.json").read_text())["method"] == "mle"


def test_resumed_run_keeps_the_before_training_evaluation(tmp_path, capsys):
    out = tmp_path / "run"
    assert tirl(capsys, "train", *TINY, "--max_steps", 4, "--save_steps", 2, "--output_dir", out)[0] == 0
    first = json.loads((out / "metrics.json").read_text())
    assert tirl(capsys, "train", *TINY, "--max_steps", 6, "--save_steps", 2, "--output_dir", out, "--resume")[0] == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["eval_before"] == first["eval_before"] and (out / "checkpoint-6").is_dir()
    assert f"| eval loss | {first['eval_before']['eval_loss']:.4g} |" in (out / "summary.md").read_text()
    assert json.loads((out / "run.json").read_text())["resumed_from"] == [str(out / "checkpoint-4")]


def test_run_directory_files_get_the_permissions_of_a_plain_open(tmp_path, capsys):
    """model.safetensors (safetensors writes 0600) included, in the run directory and its checkpoints."""
    out = tmp_path / "run"
    assert tirl(capsys, "train", *TINY, "--max_steps", 2, "--save_steps", 2, "--eval_strategy", "no", "--output_dir", out)[0] == 0
    plain = tmp_path / "plain"
    plain.write_text("")
    modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
    assert "model.safetensors" in modes and "checkpoint-2/model.safetensors" in modes
    assert set(modes.values()) == {oct(plain.stat().st_mode & 0o777)}, modes


def _bad_model_dir(tmp_path, kind):
    d = tmp_path / kind
    d.mkdir()
    if kind == "corrupt":
        from tirl.models import tiny_model

        model, tok = tiny_model()
        model.save_pretrained(d)
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(data[: len(data) // 2])  # a copy cut short
    return d


@pytest.mark.parametrize("args, expected", [
    (["--iq_lambda", "-1"], "--iq_lambda must be a finite number >= 0"),
    (["--iq_lambda", "nan"], "--iq_lambda must be a finite number"),
    (["--iq_lambda", "abc"], "argument --iq_lambda"),
    (["--iq_gamma", "1.5"], "--iq_gamma must be a finite number in [0, 1]"),
    (["--iq_chunk_size", "-2"], "--iq_chunk_size must be >= 0"),
    (["--max_steps", "0"], "--max_steps 0 would train nothing"),
    (["--max_steps", "-1", "--num_train_epochs", "0"], "--num_train_epochs 0 with --max_steps -1 would train nothing"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be >= 1, got 0"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be >= 1, got 0"),
    (["--learning_rate", "-1"], "--learning_rate must be a finite number >= 0, got -1.0"),
    (["--eval_fraction", "1.5"], "--eval_fraction must be in [0, 1), got 1.5"),
    (["--num_train_examples", "0"], "--num_train_examples must be >= 1 (or unset for all rows), got 0"),
    (["--do_predict", "true"], "--do_predict: tirl train has no prediction step"),
    (["--model", "{empty}"], "--model: {empty} is not a model directory: it has no config.json"),
    (["--model", "{corrupt}"], "--model: {corrupt}/model.safetensors: not a readable safetensors file"),
    (["--model", "./no-such-dir"], "--model: ./no-such-dir: no such model directory; built-in models: smollm2-135m, tiny-llama"),
    (["--dataset", "{nodata}"], "--dataset: {nodata}: datasets.load_dataset could not read it"),
    (["--output_dir", "{file}"], "--output_dir {file} is a file, not a directory"),
    (["--output_dir", "/sys/tirl-test"], "--output_dir /sys/tirl-test is not writable"),
])
def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys, args, expected):
    if "/sys/tirl-test" in args and not Path("/sys").is_dir():
        pytest.skip("no /sys to stand for an unwritable directory (chmod does not stop root)")
    (tmp_path / "nodata").mkdir()  # a directory without data files
    names = {"nodata": tmp_path / "nodata", "file": tmp_path / "file", "empty": _bad_model_dir(tmp_path, "empty"),
             "corrupt": _bad_model_dir(tmp_path, "corrupt")}
    (tmp_path / "file").write_text("x")
    args = [a.format(**names) for a in args]
    out = tmp_path / "out"
    rc, _, err = tirl(capsys, "train", *TINY, "--max_steps", 2, "--output_dir", out, *args)
    assert rc == 2 and expected.format(**names) in one_line_error(err)
    assert not out.exists()  # nothing left behind


def test_links_in_the_output_directory_are_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert tirl(capsys, "train", *TINY, "--max_steps", 2, "--save_steps", 2, "--eval_strategy", "no", "--output_dir", out)[0] == 0
    target = tmp_path / "outside.txt"
    target.write_text("keep")
    for name in ("config.json", "tokenizer.json", "README.md", "metrics.json"):
        (out / name).unlink()
        (out / name).symlink_to(target)
        rc, _, err = tirl(capsys, "train", *TINY, "--max_steps", 4, "--save_steps", 2, "--eval_strategy", "no",
                          "--output_dir", out, "--resume")
        assert rc == 2 and f"{out / name} is a symbolic link" in one_line_error(err)
        assert target.read_text() == "keep" and not (out / "checkpoint-4").exists()  # refused before training
        (out / name).unlink()


def test_eval_writes_nothing_through_links(tmp_path, capsys):
    target = tmp_path / "outside.txt"
    target.write_text("keep")
    base = ["eval", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_examples", 2, "--samples", 1,
            "--max_new_tokens", 4, "--no_progress"]
    for name in ("generations.jsonl", "report.md", "metrics.json", "eval_config.json"):
        out = tmp_path / f"ev-{name}"
        out.mkdir()
        (out / name).symlink_to(target)
        rc, _, err = tirl(capsys, *base, "--output_dir", out)
        assert rc == 2 and f"{out / name} is a symbolic link" in err and len(err.strip().splitlines()) == 1
        assert target.read_text() == "keep" and sorted(p.name for p in out.iterdir()) == [name]
    # the default output directory inside a model directory: its eval/ must not lead elsewhere
    from tirl.models import tiny_model

    model_dir = tmp_path / "model"
    model, tok = tiny_model()
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    (tmp_path / "elsewhere").mkdir()
    (model_dir / "eval").symlink_to(tmp_path / "elsewhere")
    rc, _, err = tirl(capsys, *[a if a != "tiny-llama" else model_dir for a in base])
    assert rc == 2 and "eval is a symbolic link" in err and not any((tmp_path / "elsewhere").iterdir())


def test_failed_run_before_its_first_checkpoint_leaves_no_directory(tmp_path, capsys, monkeypatch):
    from tirl.trainers import IQLearnTrainer

    def crash(self, *a, **kw):
        raise RuntimeError("simulated crash in a training step")

    monkeypatch.setattr(IQLearnTrainer, "training_step", crash)
    out = tmp_path / "new"
    with pytest.raises(RuntimeError, match="simulated"):
        tirl(capsys, "train", *TINY, "--max_steps", 4, "--save_steps", 2, "--output_dir", out)
    assert not out.exists()


@pytest.mark.parametrize("writer", ["optimizer.pt stream error", "model.safetensors ENOSPC"])
def test_full_disk_during_a_checkpoint_names_device_file_and_intact_checkpoint(tmp_path, capsys, monkeypatch, writer):
    import errno
    import shutil

    import torch
    import transformers.modeling_utils

    from tirl.jobs.rundir import device_of

    out = tmp_path / "run"
    if writer.startswith("optimizer"):
        real_save = torch.save

        def save(obj, f, *a, **kw):  # the disk fills while optimizer.pt of checkpoint-4 is being written
            if str(f).endswith("checkpoint-4/optimizer.pt"):
                Path(f).write_bytes(b"\0" * 100)
                monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**10, 10**10, 0))
                raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0 "
                                   "basic_ios::clear: iostream error")
            return real_save(obj, f, *a, **kw)

        monkeypatch.setattr(torch, "save", save)
        written = out / ".partial-checkpoint-4" / "checkpoint-4" / "optimizer.pt"
    else:
        real_save_file = transformers.modeling_utils.safe_save_file

        def save_file(tensors, filename, *a, **kw):
            if "checkpoint-4" in str(filename):
                raise OSError(errno.ENOSPC, "No space left on device", str(filename))
            return real_save_file(tensors, filename, *a, **kw)

        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_file)
        written = out / ".partial-checkpoint-4" / "checkpoint-4" / "model.safetensors"
    rc, _, err = tirl(capsys, "train", *TINY, "--max_steps", 6, "--save_steps", 2, "--eval_strategy", "no",
                      "--output_dir", out)
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last == (
        f"tirl train: error: no space left on {device_of(out)} while writing {written}; the partial checkpoint was "
        f"removed; the last complete checkpoint, {out / 'checkpoint-2'}, is intact: free some space and rerun with "
        "--resume")
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"]
    monkeypatch.undo()
    rc, outp, _ = tirl(capsys, "train", *TINY, "--max_steps", 6, "--save_steps", 2, "--eval_strategy", "no",
                       "--output_dir", out, "--resume")
    assert rc == 0 and f"resuming from {out / 'checkpoint-2'}" in outp and (out / "checkpoint-6").is_dir()


def test_too_long_prompt_warning_names_file_and_line(tmp_path, capsys):
    rows = [{"prompt": f"what is {i} + 1?", "completion": f"{i + 1}"} for i in range(40)]
    rows[6]["prompt"] = "x" * 300  # line 7
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match=rf"1 of \d+ (train|eval) examples were skipped .* \({data}:7\)"):
        rc, _, _ = tirl(capsys, "train", *TINY[:2], "--dataset", data, *TINY[4:], "--max_steps", 10,
                        "--max_length", 64, "--output_dir", tmp_path / "out")
    assert rc == 0


def test_resume_refuses_a_tampered_pickle_in_one_line(tmp_path, capsys):
    """optimizer.pt & co. go through torch.load(weights_only=True): a payload is refused, not run."""
    import torch

    out = tmp_path / "run"
    assert tirl(capsys, "train", *TINY, "--max_steps", 2, "--save_steps", 2, "--eval_strategy", "no", "--output_dir", out)[0] == 0
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state": Payload()}, out / "checkpoint-2" / "optimizer.pt")
    rc, _, err = tirl(capsys, "train", *TINY, "--max_steps", 4, "--save_steps", 2, "--eval_strategy", "no",
                      "--output_dir", out, "--resume")
    assert rc == 2 and err.strip().splitlines()[-1].startswith(
        f"tirl train: error: --resume: {out / 'checkpoint-2'} holds a pickle that torch.load(weights_only=True) refuses")
    assert not marker.exists() and not (out / "checkpoint-4").exists()


def test_rewards_commands_write_nothing_through_links(tmp_path, capsys):
    target = tmp_path / "outside.html"
    target.write_text("keep")
    for command, name in ((["rewards"], "rewards.html"), (["rewards", "analyse"], "analysis.md")):
        out = tmp_path / name
        out.mkdir()
        (out / name).symlink_to(target)
        rc, _, err = tirl(capsys, *command, "--model", "tiny-llama", "--dataset", "arithmetic", "--num_examples", 2,
                          "--output_dir", out)
        assert rc == 2 and f"{out / name} is a symbolic link" in err and target.read_text() == "keep"


# ---------------------------------------------------------------------------------------------------------------------
# The online methods from the command line


@pytest.mark.slow
def test_cli_online_run_finishes(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--method", "iqlearn-online", "--model", "tiny-llama", "--dataset", "arithmetic",
                   "--num_train_examples", "32", "--num_eval_examples", "8", "--max_steps", "4",
                   "--per_device_train_batch_size", "4", "--iq_alpha", "0.25", "--max_new_tokens", "16",
                   "--save_steps", "4", "--logging_steps", "2", "--output_dir", str(out), "--bf16", "false",
                   "--disable_tqdm", "true", "--report_to", "none")
    assert "tirl train finished" in proc.stdout
    assert (out / "checkpoint-4" / "tirl_sample_buffer" / "rank-0.safetensors").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "iqlearn-online"
    assert (out / "training_curves.png").is_file()


def test_cli_help_documents_each_methods_options():
    from tirl.cli.train import build_parser, selected_method

    for method, flags in (("iqlearn-online", ("--iq_alpha", "--generate_every", "--max_new_tokens", "--use_vllm")),
                          ("gail", ("--gail_disc_model", "--mle_weight", "--gail_kl_coef", "--generate_every"))):
        parser = build_parser(method)
        undocumented = [a.option_strings[0] for a in parser._actions if a.option_strings and not (a.help or "").strip()]
        assert not undocumented, f"{method}: options without help: {undocumented}"
        text = parser.format_help()
        for flag in flags:
            assert flag in text, (method, flag)
    base = build_parser("iqlearn").format_help()
    assert "--gail_disc_model" not in base and "--method gail --help" in base
    assert selected_method(["--method=gail"], {}) == "gail" and selected_method([], {}) == "iqlearn"
    assert selected_method([], {"method": "gem"}) == "gem"


def test_cli_reads_the_method_from_a_yaml_config(tmp_path):
    from tirl.cli.train import parse
    from tirl.trainers import OnlineIQLearnConfig

    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: iqlearn-online\niq_alpha: 0.3\nmodel_name_or_path: tiny-llama\n")
    script, config, model_args, given = parse(["--config", str(cfg)])
    assert script.method == "iqlearn-online" and isinstance(config, OnlineIQLearnConfig) and config.iq_alpha == 0.3
    assert model_args.model_name_or_path == "tiny-llama" and "iq_alpha" in given


@pytest.mark.slow
def test_cli_gail_run_finishes_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--method", "gail", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_train_examples", "32",
            "--num_eval_examples", "8", "--max_steps", "4", "--per_device_train_batch_size", "4", "--max_new_tokens",
            "16", "--save_steps", "2", "--logging_steps", "2", "--output_dir", str(out), "--bf16", "false",
            "--disable_tqdm", "true", "--report_to", "none", "--gail_disc_num_layers", "1"]
    proc = run_cli(*args)
    assert "tirl train finished" in proc.stdout
    assert (out / "checkpoint-4" / "tirl_discriminator" / "discriminator.safetensors").is_file()
    assert json.loads((out / "run.json").read_text())["method"] == "gail"
    proc = run_cli(*with_max_steps(args, 6), "--resume")
    assert "checkpoint-4" in proc.stdout and "no saved discriminator" not in proc.stderr
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert any("disc_accuracy" in h for h in state["log_history"])
