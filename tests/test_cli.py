"""The `tirl` command end to end on a tiny model: help texts, a training run, its outputs, resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tirl.cli import main as cli_main


def run_cli(*args, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "tirl.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"tirl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def test_top_level_help(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "env" in out
    assert cli_main(["no-such-command"]) == 2


def test_train_help_explains_every_option():
    from tirl.cli.train import build_parser

    parser = build_parser([])
    undocumented = [a.option_strings[0] for a in parser._actions if a.option_strings and not (a.help or "").strip()]
    assert not undocumented, f"options without help: {undocumented}"
    text = parser.format_help()
    for flag in ("--method", "--dataset", "--model", "--iq_lambda", "--iq_gamma", "--iq_chunk_size", "--use_peft",
                 "--output_dir", "--resume", "--report_to", "embedded default job"):
        assert flag in text, flag


def test_demo_defaults_apply_only_without_model_and_dataset():
    from tirl.cli.train import build_parser

    demo = build_parser([]).parse_args_and_config([])
    assert demo[1].max_steps == 40 and demo[0].num_train_examples == 160
    custom = build_parser(["--model", "tiny-llama"]).parse_args_and_config(["--model", "tiny-llama"])
    assert custom[1].max_steps == -1 and custom[0].num_train_examples is None
    assert custom[1].report_to == ["tensorboard"]


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
    assert run["method"] == "iqlearn" and run["data"]["train"]["rows"] == 64 and len(run["data"]["train"]["sha256"]) == 64
    assert run["versions"]["trl"] == "1.16.0"

    # the saved run loads back as a model
    from tirl.models import load

    model, tok = load(str(out))
    assert model.config.vocab_size == len(tok)

    # resume continues from the last checkpoint to a larger max_steps
    proc = run_cli(*[a if a != "6" else "9" for a in args], "--resume")
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


def test_env_command(capsys):
    assert cli_main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["torch"].startswith("2.13.0")
    assert Path(info["model_cache"]).name == "tirl" or info["model_cache"]
