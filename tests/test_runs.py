"""One job per directory, resumes that tell the truth, nothing lost without a word: `tirl train`, `eval`, `rewards`
and `compare` as a user runs them, on the tiny models.

Each test names the fault it pins down; docs/reliability.md lists them.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tirl_in_process as tirl
from tirl.cli import main as cli_main

TINY = ["--model", "tiny-llama", "--dataset", "arithmetic", "--num_train_examples", "32", "--num_eval_examples", "8",
        "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--logging_steps", "1", "--bf16", "false",
        "--disable_tqdm", "true", "--report_to", "none", "--seed", "0"]
EVAL = ["--dataset", "arithmetic", "--num_examples", "4", "--samples", "2", "--max_new_tokens", "6", "--batch_size",
        "4", "--no_progress"]


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def train(capsys, out, *extra):
    rc, stdout, err = tirl(capsys, "train", *TINY, "--output_dir", out, *extra)
    assert rc == 0, err[-3000:]
    return stdout


# --------------------------------------------------------------------------------------------------------------------
# 1. One job per directory


def _lock_holder(path: Path) -> str:
    lock = path / "_tirl.lock"
    return lock.read_text() if lock.is_file() else ""


@pytest.mark.slow
def test_a_live_run_directory_is_locked_against_every_other_job(tmp_path, capsys):
    run = tmp_path / "run"
    live = subprocess.Popen([sys.executable, "-m", "tirl.cli", "train", *TINY, "--max_steps", "100000",
                             "--save_steps", "2", "--eval_strategy", "no", "--output_dir", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not ((run / "checkpoint-2").is_dir() and f"pid {live.pid} " in _lock_holder(run)):
            assert live.poll() is None and time.time() < deadline, "the run ended before the test could reach it"
            time.sleep(0.05)
        held = f"{run} is in use by pid {live.pid} (tirl train"
        for flag in ("--resume", "--overwrite"):
            rc, _, err = tirl(capsys, "train", *TINY, "--max_steps", 4, "--output_dir", run, flag)
            assert rc == 2 and last_line(err).startswith(f"tirl train: error: {held}"), err
        rc, _, err = tirl(capsys, "eval", "--model", "tiny-llama", *EVAL, "--output_dir", run)
        assert rc == 2 and held in last_line(err)
        rc, _, err = tirl(capsys, "rewards", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_examples", 2,
                          "--output_dir", run)
        assert rc == 2 and held in last_line(err)
        assert live.poll() is None and (run / "run.json").is_file()  # the live run lost nothing
    finally:
        live.kill()
        live.wait(timeout=30)
    # the lock goes with the process: once it is gone, the directory resumes
    rc, _, err = tirl(capsys, "train", *TINY, "--max_steps", 4, "--save_steps", 2, "--eval_strategy", "no",
                      "--output_dir", run, "--resume")
    assert rc == 0, err[-2000:]


# --------------------------------------------------------------------------------------------------------------------
# 2. Resumes that change the run


def test_a_resume_that_changes_the_run_is_refused_or_recorded_per_segment(tmp_path, capsys):
    run = tmp_path / "run"
    train(capsys, run, "--max_steps", 2, "--save_steps", 2, "--eval_strategy", "no", "--iq_lambda", "0.1")
    more = ["--max_steps", 4, "--save_steps", 2, "--eval_strategy", "no", "--output_dir", run, "--resume"]

    rc, _, err = tirl(capsys, "train", *TINY, *more, "--iq_lambda", "0.5", "--iq_value", "logits")
    assert rc == 2 and last_line(err).startswith(
        f"tirl train: error: --resume: the run in {run} was started with other settings (iq_lambda 0.1 then, 0.5 now; "
        "iq_value 'reference' then, 'logits' now)")
    # the optimizer and its schedule come back from the checkpoint: a change there could never take effect
    rc, _, err = tirl(capsys, "train", *TINY, *more, "--learning_rate", "0.01", "--resume_with_changes")
    assert rc == 2 and "learning_rate 0.003 then, 0.01 now: the optimizer and its learning-rate schedule are " \
                       "restored from the checkpoint" in last_line(err)
    assert not (run / "checkpoint-4").exists()

    rc, _, err = tirl(capsys, "train", *TINY, *more, "--iq_lambda", "0.5", "--resume_with_changes")
    assert rc == 0, err[-2000:]
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["iq_lambda"] == 0.1 and record["defining"]["iq_lambda"] == 0.1  # as the run started
    [segment] = record["segments"]
    assert segment["resumed_from"].endswith("checkpoint-2")
    assert segment["changed"]["config"]["iq_lambda"] == 0.5
    summary = (run / "summary.md").read_text()
    assert "λ = 0.1," in summary and "- resumed from `checkpoint-2`: changed iq_lambda = 0.5" in summary


# --------------------------------------------------------------------------------------------------------------------
# 3. Non-finite training


def test_a_diverging_run_never_offers_a_checkpoint_with_non_finite_weights(tmp_path, capsys):
    run = tmp_path / "run"
    rc, _, err = tirl(capsys, "train", *TINY, "--learning_rate", "1e30", "--max_steps", 6, "--save_steps", 1,
                      "--eval_strategy", "no", "--output_dir", run)
    assert rc == 3, err[-2000:]
    line = last_line(err)
    assert line.startswith("tirl train: stopped: ") and "not finite at step" in line
    for checkpoint in run.glob("checkpoint-*"):
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values()), f"{checkpoint.name} has non-finite weights"
    named = [w.strip(".,;)") for w in line.split() if "checkpoint-" in w]
    assert all((run / Path(n).name).is_dir() for n in named)  # only a checkpoint that is there (and finite) is named


# --------------------------------------------------------------------------------------------------------------------
# 4. Held-out rows


def test_every_held_out_row_is_evaluated_and_every_other_row_trained_on(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(1500)))
    run = tmp_path / "run"
    args = [str(data) if a == "arithmetic" else a for a in TINY]
    rc, _, err = tirl(capsys, "train", *args, "--num_train_examples", 1500, "--num_eval_examples", 16,
                      "--eval_fraction", "0.05", "--num_train_epochs", 1, "--max_steps", -1, "--eval_strategy", "no",
                      "--save_strategy", "no", "--per_device_train_batch_size", 64, "--output_dir", run)
    assert rc == 0, err[-2000:]
    data_info = json.loads((run / "run.json").read_text())["data"]
    # 5 % of 1,500 would be 75, but only 16 are evaluated: hold out 16, train on the other 1,484
    assert data_info["eval"]["rows"] == data_info["eval"]["held_out_from_train"] == 16
    assert data_info["train"]["rows"] == data_info["train"]["rows_available"] == 1484


# --------------------------------------------------------------------------------------------------------------------
# 5. A full disk


@pytest.fixture
def small_filesystem(tmp_path):
    """A 3 MB tmpfs, where one can be mounted (root on Linux); skipped, with the reason, where not."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root on Linux (the full-disk path is also tested with an injected "
                    "ENOSPC in test_cli.py)")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"this machine does not permit mounting a tmpfs: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_real_full_disk_during_a_checkpoint_is_one_line_and_frees_the_partial(small_filesystem, capsys):
    run = small_filesystem / "run"
    rc, _, err = tirl(capsys, "train", *TINY, "--max_steps", 40, "--save_steps", 1, "--save_total_limit", 100,
                      "--eval_strategy", "no", "--output_dir", run)
    assert rc == 2, err[-2000:]
    line = last_line(err)
    assert line.startswith(f"tirl train: error: no space left on tmpfs (mounted at {small_filesystem}) while writing "
                           f"{run}/.partial-checkpoint-"), err[-2000:]
    assert "the partial checkpoint was removed" in line
    intact = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert intact and f"the last complete checkpoint, {intact[-1]}, is intact" in line
    assert not list(run.glob(".partial-*"))
    assert all(load_file(c / "model.safetensors") for c in intact)


# --------------------------------------------------------------------------------------------------------------------
# 6. Totals of a resumed run


def test_a_resumed_run_reports_the_whole_runs_loss_and_token_counts(tmp_path, capsys):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    common = ["--save_steps", 2, "--eval_strategy", "steps", "--eval_steps", 2]
    train(capsys, whole, "--max_steps", 4, *common)
    train(capsys, resumed, "--max_steps", 4, *common)
    shutil.rmtree(resumed / "checkpoint-4")  # as a crash after checkpoint-2 leaves it
    train(capsys, resumed, "--max_steps", 4, *common, "--resume")
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((resumed / "metrics.json").read_text())
    assert math.isclose(a["train"]["train_loss"], b["train"]["train_loss"], rel_tol=1e-5)
    for key in ("num_input_tokens_seen", "train_num_tokens"):
        if key in a["train"]:
            assert a["train"][key] == b["train"][key], key
    assert a["eval_after"]["eval_num_tokens"] == b["eval_after"]["eval_num_tokens"]


# --------------------------------------------------------------------------------------------------------------------
# 8-10. The rewards workflows


@pytest.fixture
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    assert cli_main(["train", *TINY, "--max_steps", "2", "--save_steps", "2", "--eval_strategy", "no",
                     "--output_dir", str(run)]) == 0
    return run


@pytest.mark.slow
def test_rewards_score_what_eval_generated_and_analyse_counts_empty_completions(trained, tmp_path, capsys):
    rc, _, err = tirl(capsys, "eval", "--model", trained, *EVAL, "--output_dir", tmp_path / "ev")
    assert rc == 0, err[-2000:]
    generations = tmp_path / "ev" / "generations.jsonl"
    rc, _, err = tirl(capsys, "rewards", "--model", trained, "--generations", generations, "--output_dir",
                      tmp_path / "r")
    assert rc == 0, err[-2000:]
    lines = generations.read_text().splitlines()
    scored = [json.loads(x) for x in (tmp_path / "r" / "rewards.jsonl").read_text().splitlines()]
    assert len(scored) == sum(1 for x in lines if json.loads(x)["token_ids"])

    # an empty completion (EOS at once is stored as no token): skipped and counted, the rest analysed
    records = [json.loads(x) for x in lines]
    sampled = [r for r in records if r["pass"] == "sampled"]
    sampled[0]["text"], sampled[0]["token_ids"] = "", []
    generations.write_text("".join(json.dumps(r) + "\n" for r in records))
    rc, _, err = tirl(capsys, "rewards", "analyse", "--models", trained, "--generations", generations,
                      "--preference", "demonstrations", "--output_dir", tmp_path / "a")
    assert rc == 0, err[-2000:]
    result = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert result["skipped_without_tokens"] == 1 and result["num_completions"] == len(sampled) - 1


def test_rewards_read_messages_rows_and_name_the_line_of_a_mixed_file(tmp_path, capsys):
    messages = tmp_path / "messages.jsonl"
    chat = [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]
    messages.write_text(json.dumps({"messages": chat}) + "\n" + json.dumps({"messages": chat}) + "\n")
    rc, _, err = tirl(capsys, "rewards", "--model", "tiny-llama", "--generations", messages, "--output_dir",
                      tmp_path / "r")
    assert rc == 0, err[-2000:]
    assert len((tmp_path / "r" / "rewards.jsonl").read_text().splitlines()) == 2

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"messages": chat}) + "\n" + json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n")
    rc, _, err = tirl(capsys, "rewards", "--model", "tiny-llama", "--generations", mixed, "--output_dir",
                      tmp_path / "m")
    assert rc == 2 and last_line(err).startswith(f"tirl rewards: error: {mixed}:2: ")
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------------------------------------------------
# 12. One line, exit 2


@pytest.mark.parametrize("damage", ["optimizer.pt", "trainer_state.json"])
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, capsys, damage):
    run = tmp_path / "run"
    train(capsys, run, "--max_steps", 2, "--save_steps", 2, "--eval_strategy", "no")
    path = run / "checkpoint-2" / damage
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short, as a crash or a full disk leaves it
    rc, _, err = tirl(capsys, "train", *TINY, "--max_steps", 4, "--save_steps", 2, "--eval_strategy", "no",
                      "--output_dir", run, "--resume")
    assert rc == 2 and last_line(err).startswith(f"tirl train: error: --resume: {path} ")
    assert "the checkpoint is damaged" in last_line(err) and len(err.strip().splitlines()) == 1


def test_rewards_refuse_a_discount_train_would_refuse(capsys, tmp_path):
    for gamma in ("1.5", "-0.1", "nan"):
        rc, _, err = tirl(capsys, "rewards", "--model", "tiny-llama", "--dataset", "arithmetic", "--gamma", gamma,
                          "--output_dir", tmp_path / "r")
        assert rc == 2 and last_line(err).startswith("tirl rewards: error: --gamma must be in [0, 1]"), err
    assert not (tmp_path / "r").exists()


@pytest.fixture
def evaluation(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation") / "ev"
    assert cli_main(["eval", "--model", "tiny-llama", *EVAL, "--output_dir", str(out)]) == 0
    return out


def test_compare_into_a_directory_it_cannot_write_is_one_line(evaluation, capsys):
    if not Path("/sys").is_dir():
        pytest.skip("no /sys to stand for an unwritable directory (chmod does not stop root)")
    rc, _, err = tirl(capsys, "compare", evaluation, "--output", "/sys/tirl-test/c.png")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "/sys/tirl-test" in last_line(err)


# --------------------------------------------------------------------------------------------------------------------
# 13. Ctrl-C


def test_ctrl_c_in_rewards_and_compare_says_what_was_kept_and_exits_130(evaluation, tmp_path, capsys, monkeypatch):
    from tirl.evaluation import report
    from tirl.rewards import extraction

    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(extraction, "score_encoded", interrupt)
    rc, _, err = tirl(capsys, "rewards", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_examples", 2,
                      "--output_dir", tmp_path / "r")
    assert rc == 130 and last_line(err).startswith("tirl rewards: interrupted; ")
    monkeypatch.setattr(report, "plot_compare", interrupt)
    rc, _, err = tirl(capsys, "compare", evaluation, "--output", tmp_path / "c" / "c.png")
    assert rc == 130 and last_line(err).startswith("tirl compare: interrupted; ")
    assert not (tmp_path / "c" / "c.md").exists()


# --------------------------------------------------------------------------------------------------------------------
# 14. Links


@pytest.mark.parametrize("name, dangling", [("c.md", False), ("c.png", False), ("c.md", True)])
def test_compare_writes_nothing_through_a_link(evaluation, tmp_path, capsys, name, dangling):
    out = tmp_path / "d"
    out.mkdir()
    target = tmp_path / "outside"
    if not dangling:
        target.write_text("keep")
    (out / name).symlink_to(target)
    rc, _, err = tirl(capsys, "compare", evaluation, "--output", out / "c.png")
    assert rc == 2 and f"{out / name} is a symbolic link" in last_line(err)
    assert (target.read_text() == "keep") if not dangling else not target.exists()


# --------------------------------------------------------------------------------------------------------------------
# 15. Work for nothing


def test_reference_values_are_computed_only_for_the_rows_a_run_draws_and_methods_that_use_them(tmp_path, capsys):
    run = tmp_path / "run"
    stdout = train(capsys, run, "--max_steps", 2, "--eval_strategy", "no", "--save_strategy", "no")
    assert "the 8 of 32 that --max_steps draws" in stdout
    data = json.loads((run / "run.json").read_text())["data"]["train"]
    assert (data["rows"], data["rows_available"]) == (8, 32)
    [cache] = (run / "_tirl_reference_values").glob("train-*.safetensors")
    assert load_file(cache)["lengths"].shape == (8,)

    mle = tmp_path / "mle"
    train(capsys, mle, "--method", "mle", "--max_steps", 2, "--eval_strategy", "no", "--save_strategy", "no")
    assert not (mle / "_tirl_reference_values").exists()


# --------------------------------------------------------------------------------------------------------------------
# Cosmetic, but users see them


def test_a_resume_does_not_warn_about_tied_weights(tmp_path, capsys):
    run = tmp_path / "run"
    train(capsys, run, "--max_steps", 2, "--save_steps", 2, "--eval_strategy", "no")
    rc, out, err = tirl(capsys, "train", *TINY, "--max_steps", 4, "--save_steps", 2, "--eval_strategy", "no",
                        "--output_dir", run, "--resume")
    assert rc == 0 and "lm_head.weight" not in out + err


def test_a_yaml_typo_is_named_without_advice_a_cli_user_cannot_follow(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rat: 0.1\n")
    rc, _, err = tirl(capsys, "train", "--config", config, "--output_dir", tmp_path / "run")
    assert rc == 2 and "learning_rat" in last_line(err) and "fail_with_unknown_args" not in err


def test_eval_of_a_local_file_labels_its_rows_file_not_test(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(3)))
    rc, _, err = tirl(capsys, "eval", "--model", "tiny-llama", "--dataset", data, "--samples", 0, "--max_new_tokens",
                      4, "--no_progress", "--output_dir", tmp_path / "ev")
    assert rc == 0, err[-2000:]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["split"] == "file"
