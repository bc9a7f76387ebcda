"""First contact and no silent loss: checkpoint rotation, --overwrite, locks over whole runs, --resume where there is
no run, and the smaller ways a command used to lose or hide something without a word.

docs/reliability.md lists each fault and the behaviour pinned down here.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from datasets import Dataset

from conftest import common_args, run_cli
from conftest import tirl_in_process as tirl
from tirl.jobs import rundir
from tirl.jobs.rundir import RunDirError, output_lock, plan_train_dir
from tirl.trainers.checkpoints import FILES_LIST, commit_staged, last_checkpoint, staging_dir

TINY = ["--model", "tiny-llama", "--dataset", "arithmetic", "--num_train_examples", "16", "--num_eval_examples", "4",
        "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--logging_steps", "1", "--bf16", "false",
        "--disable_tqdm", "true", "--report_to", "none", "--seed", "0", "--eval_strategy", "no"]
EVAL = ["--dataset", "arithmetic", "--num_examples", "4", "--samples", "2", "--max_new_tokens", "6", "--batch_size",
        "4", "--no_progress"]


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


class _State:
    best_global_step = None
    best_model_checkpoint = None


def _save(run: Path, step: int, limit: int | None) -> Path:
    """A checkpoint of `step` staged and committed as the trainer does it (the files a checkpoint has)."""
    staged = Path(staging_dir(str(run), step)) / f"checkpoint-{step}"
    staged.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "optimizer.pt", "trainer_state.json"):
        (staged / name).write_text(f"{name} of step {step}")
    commit_staged(str(run), step, _State(), limit)
    return run / f"checkpoint-{step}"


# --------------------------------------------------------------------------------------------------------------------
# 1. Checkpoint rotation


def test_rotation_goes_by_step_and_keeps_what_the_trainer_did_not_write(tmp_path, capsys):
    run = tmp_path / "run"
    first, second = _save(run, 10, 2), _save(run, 20, 2)
    # `tirl eval --model RUN/checkpoint-10` writes inside it, which makes it the newest by modification time
    (first / "eval" / "tag").mkdir(parents=True)
    (first / "eval" / "tag" / "metrics.json").write_text("{}")
    now = time.time()
    os.utime(second, (now - 600, now - 600))
    os.utime(first, (now + 600, now + 600))
    capsys.readouterr()

    third = _save(run, 30, 2)
    # the newest two steps stay whole; of checkpoint-10 only what the trainer wrote is gone
    for kept in (second, third):
        assert sorted(p.name for p in kept.iterdir()) == sorted(
            [FILES_LIST, "config.json", "model.safetensors", "optimizer.pt", "trainer_state.json"])
    assert sorted(p.name for p in first.iterdir()) == ["eval"]
    assert (first / "eval" / "tag" / "metrics.json").read_text() == "{}"
    out = capsys.readouterr().out
    assert "checkpoint-10 rotated out (save_total_limit 2)" in out and f"kept eval/ in {first}" in out
    # what is left of checkpoint-10 is no checkpoint: resume and the next rotations pass it by
    assert last_checkpoint(run) == str(third) and rundir.last_checkpoint(run) == str(third)
    _save(run, 40, 2)
    assert not second.exists() and (first / "eval" / "tag" / "metrics.json").is_file()


def test_a_checkpoint_saved_again_moves_the_files_of_the_one_it_replaces_aside(tmp_path, capsys):
    run = tmp_path / "run"
    old = _save(run, 20, None)
    (old / "NOTES.txt").write_text("mine")
    # resumed from an earlier checkpoint, the run reaches step 20 again
    new = _save(run, 20, None)
    assert (new / "config.json").read_text() == "config.json of step 20" and not (new / "NOTES.txt").exists()
    assert (run / "replaced-checkpoint-20" / "NOTES.txt").read_text() == "mine"
    assert "moved to" in capsys.readouterr().out


def test_a_resumed_run_rotates_by_step_and_overwrite_keeps_what_it_did_not_write(tmp_path, capsys):
    """The whole story through the command: an evaluation of an old checkpoint survives a resume's rotation and an
    --overwrite, and each says in a line what it kept."""
    run = tmp_path / "run"
    rc, _, err = tirl(capsys, "train", *TINY, "--max_steps", 2, "--save_steps", 1, "--save_total_limit", 2,
                      "--output_dir", run)
    assert rc == 0, err[-2000:]
    rc, _, err = tirl(capsys, "eval", "--model", run / "checkpoint-1", *EVAL)
    assert rc == 0, err[-2000:]
    [evaluation] = (run / "checkpoint-1" / "eval").iterdir()
    later = time.time() + 600
    os.utime(run / "checkpoint-1", (later, later))  # as an evaluation long after training leaves it

    rc, out, err = tirl(capsys, "train", *TINY, "--max_steps", 3, "--save_steps", 1, "--save_total_limit", 2,
                        "--output_dir", run, "--resume")
    assert rc == 0, err[-2000:]
    assert rundir.last_checkpoint(run) == str(run / "checkpoint-3") and (run / "checkpoint-2" / "config.json").is_file()
    assert sorted(p.name for p in (run / "checkpoint-1").iterdir()) == ["eval"]
    assert (evaluation / "metrics.json").is_file() and "kept eval/" in out

    (run / "NOTES.txt").write_text("mine")
    (run / "rewards").mkdir()
    (run / "rewards" / "summary.json").write_text("{}")
    (run / "c.png").write_bytes(b"png")
    rc, out, err = tirl(capsys, "train", *TINY, "--max_steps", 1, "--save_strategy", "no", "--output_dir", run,
                        "--overwrite")
    assert rc == 0, err[-2000:]
    line = next(x for x in out.splitlines() if x.startswith("[tirl] --overwrite: "))
    assert "model.safetensors" in line and "checkpoint-2/" in line and "run.json" in line
    assert "NOTES.txt" in line.split("; kept ", 1)[1] and "checkpoint-1/eval/" in line.split("; kept ", 1)[1]
    assert (run / "NOTES.txt").read_text() == "mine" and (run / "rewards" / "summary.json").is_file()
    assert (run / "c.png").is_file() and (evaluation / "metrics.json").is_file()
    assert not (run / "checkpoint-2").exists() and not (run / "checkpoint-3").exists()


# --------------------------------------------------------------------------------------------------------------------
# 2. --overwrite


def _fake_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"method": "iqlearn", "model": "tiny-llama"}))
    for name in ("model.safetensors", "config.json", "tokenizer.json", "metrics.json", "summary.md", "README.md"):
        (path / name).write_text("x")
    (path / "runs" / "Jan01").mkdir(parents=True)
    _save(path, 5, None)
    return path


def test_overwrite_deletes_only_what_a_run_writes_and_says_what(tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    (run / "eval" / "tag").mkdir(parents=True)
    (run / "eval" / "tag" / "metrics.json").write_text("{}")
    (run / "rewards").mkdir()
    (run / "compare.png").write_bytes(b"png")
    (run / "compare.md").write_text("table")
    (run / "NOTES.txt").write_text("mine")
    (run / "checkpoint-5" / "eval").mkdir()
    plan = plan_train_dir(run, resume=False, overwrite=True, method="mle", model="tiny-llama", train_sha256="a" * 64)
    rundir.prepare(plan)
    assert sorted(p.name for p in run.iterdir()) == ["NOTES.txt", "checkpoint-5", "compare.md", "compare.png",
                                                     "eval", "rewards"]
    assert [p.name for p in (run / "checkpoint-5").iterdir()] == ["eval"]
    assert (run / "NOTES.txt").read_text() == "mine" and (run / "eval" / "tag" / "metrics.json").is_file()
    out = capsys.readouterr().out
    assert out.startswith(f"[tirl] --overwrite: removed the previous run's files from {run} (")
    assert "kept NOTES.txt, checkpoint-5/eval/, compare.md, compare.png, eval/, rewards/, which tirl train did not " \
           "write" in out
    # a replacing run that fails before its first checkpoint takes only its own files with it
    (run / "run.json").write_text("{}")
    assert rundir.remove_failed_run(plan) and (run / "NOTES.txt").is_file() and not (run / "run.json").exists()


# --------------------------------------------------------------------------------------------------------------------
# 3. Locks over a whole run


@pytest.fixture
def hold_lock():
    """`hold_lock(directory, command)`: another process holds `output_lock` there, as a live job does, until the test
    ends; returns its pid."""
    procs = []

    def hold(directory: Path, command: str) -> int:
        code = textwrap.dedent(f"""
            import sys
            from tirl.jobs.rundir import output_lock
            with output_lock({str(directory)!r}, {command!r}):
                print("ready", flush=True)
                sys.stdin.read()
        """)
        proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc.pid

    yield hold
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_no_job_writes_inside_a_live_run(tmp_path, capsys, hold_lock):
    from tirl.models import tiny_model

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    model, tok = tiny_model("tiny-llama")
    model.save_pretrained(run / "checkpoint-2")
    tok.save_pretrained(run / "checkpoint-2")
    rc, _, err = tirl(capsys, "eval", "--model", "tiny-llama", *EVAL, "--output_dir", tmp_path / "ev")
    assert rc == 0, err[-2000:]
    pid = hold_lock(run, "train")
    held = f"{run} is in use by pid {pid} (tirl train"

    rc, _, err = tirl(capsys, "eval", "--model", run / "checkpoint-2", *EVAL)
    assert rc == 2 and held in last_line(err) and len(err.strip().splitlines()) == 1, err
    assert not (run / "checkpoint-2" / "eval").exists()  # a refused job leaves nothing behind
    rc, _, err = tirl(capsys, "rewards", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_examples", 2,
                      "--output_dir", run / "rewards")
    assert rc == 2 and held in last_line(err) and not (run / "rewards").exists(), err
    rc, _, err = tirl(capsys, "compare", tmp_path / "ev", "--output", run / "c.png")
    assert rc == 2 and held in last_line(err) and not (run / "c.png").exists(), err


def test_a_run_does_not_start_while_a_job_writes_inside_it(tmp_path, hold_lock):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    inside = run / "checkpoint-2" / "eval" / "tag"
    pid = hold_lock(inside, "eval")
    refused = rf"^{run} is in use by pid {pid} \(tirl eval.*, writing in {inside}"
    with pytest.raises(RunDirError, match=refused), output_lock(run, "train"):
        pass
    # two jobs writing side by side inside one run are no trouble
    with output_lock(run / "eval" / "other", "eval"):
        pass


# --------------------------------------------------------------------------------------------------------------------
# 4. --resume where there is no run


def test_resume_where_there_is_no_run_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for path, why in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "is empty")):
        rc, _, err = tirl(capsys, "train", *TINY, "--max_steps", 1, "--output_dir", path, "--resume")
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert last_line(err) == (f"tirl train: error: --resume: {path} {why}, so there is no run to continue; to "
                                  "start a new run there, give the same command without --resume")
    assert not (tmp_path / "missing").exists() and not any((tmp_path / "empty").iterdir())


# --------------------------------------------------------------------------------------------------------------------
# 13. Smaller losses


@pytest.fixture
def generations(tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("ev") / "ev"
    rc, _, err = tirl(capsys, "eval", "--model", "tiny-llama", *EVAL, "--output_dir", out)
    assert rc == 0, err[-2000:]
    return out / "generations.jsonl"


def _strict(text: str) -> list[dict]:
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


@pytest.mark.slow
def test_a_torn_generations_line_is_named_and_counted_by_both_rewards_commands(generations, tmp_path, capsys):
    lines = generations.read_text().splitlines()
    torn = '{"pass": "sampled", "prompt_in'
    generations.write_text("\n".join(lines) + "\n" + torn)
    before = generations.read_text()
    where = f"{generations}:{len(lines) + 1}"

    rc, out, err = tirl(capsys, "rewards", "--model", "tiny-llama", "--generations", generations, "--output_dir",
                        tmp_path / "r")
    assert rc == 0, err[-2000:]
    assert f"{where}: a torn last line" in out
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["skipped_torn_lines"] == 1
    # a reward that is not defined (the last token of a completion cut short) is null: the file is strict JSON
    scored = _strict((tmp_path / "r" / "rewards.jsonl").read_text())
    assert len(scored) == sum(1 for x in lines if json.loads(x)["token_ids"])
    assert any(r is None for s in scored for r in s["rewards"])

    rc, out, err = tirl(capsys, "rewards", "analyse", "--models", "tiny-llama", "--generations", generations,
                        "--preference", "none", "--output_dir", tmp_path / "a")
    assert rc == 0, err[-2000:]
    assert f"{where}: a torn last line" in out
    result = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert result["skipped_torn_lines"] == 1
    assert generations.read_text() == before  # the user's file is read, never cut

    # a bad line elsewhere is still refused, by its place
    generations.write_text(lines[0] + "\n{oops\n" + "\n".join(lines[1:]) + "\n")
    rc, _, err = tirl(capsys, "rewards", "analyse", "--models", "tiny-llama", "--generations", generations,
                      "--preference", "none", "--output_dir", tmp_path / "b")
    assert rc == 2 and last_line(err).startswith(f"tirl rewards analyse: error: {generations}:2: invalid JSON")


@pytest.mark.slow
def test_sigterm_says_where_to_resume_from(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tirl.cli", "train", *TINY, "--max_steps", "100000", "--save_steps",
                             "1", "--output_dir", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 180
        while rundir.last_checkpoint(run) is None:
            assert proc.poll() is None and time.time() < deadline, "the run ended before it saved a checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    line = last_line(err)
    kept = line.split("the last checkpoint, ", 1)[1].split(",", 1)[0]
    assert line.startswith("tirl train: terminated (SIGTERM); the last checkpoint, ") and "--resume" in line
    assert Path(kept).parent == run and (Path(kept) / "trainer_state.json").is_file()


def test_an_epoch_run_says_its_steps_and_a_short_dataset_says_so(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(38)))
    args = [str(data) if a == "arithmetic" else a for a in TINY]
    rc, out, err = tirl(capsys, "train", *args, "--num_train_examples", 5000, "--num_train_epochs", 1, "--max_steps",
                        -1, "--save_strategy", "no", "--eval_fraction", 0, "--per_device_train_batch_size", 16,
                        "--output_dir", tmp_path / "run")
    assert rc == 0, err[-2000:]
    assert f"[tirl] --num_train_examples 5000: {str(data)!r} has only 38 rows; all 38 are used" in out
    steps = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]["global_step"]
    assert steps == 3  # 38 rows in batches of 16
    assert "steps = 3," in (tmp_path / "run" / "summary.md").read_text()


def test_eval_refuses_a_negative_number_of_examples(tmp_path, capsys):
    # the rest keeps the evaluation small where -1 would still mean "all the prompts"
    rc, _, err = tirl(capsys, "eval", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_examples", -1,
                      "--samples", 0, "--max_new_tokens", 1, "--no_progress", "--output_dir", tmp_path / "ev")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert last_line(err).startswith("tirl eval: error: argument --num_examples: must be >= 0 (0 = all), got -1")


def test_tqdm_disable_turns_tirls_own_bars_off(tmp_path, monkeypatch):
    # tqdm reads its TQDM_* variables once, when it is imported: the command runs in a process of its own
    args = ["eval", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_examples", 2, "--samples", 0,
            "--max_new_tokens", 2]
    assert "greedy (K=1)" in run_cli(*args, "--output_dir", tmp_path / "a").stderr  # the bar shown by default
    monkeypatch.setenv("TQDM_DISABLE", "1")
    proc = run_cli(*args, "--output_dir", tmp_path / "b")
    assert "greedy (K=1)" not in proc.stderr, proc.stderr


def test_a_huge_prompt_is_skipped_without_tokenising_it_whole(tiny, tmp_path):
    from tirl.trainers import IQLearnConfig, IQLearnTrainer

    model, tok = tiny
    seen: list[int] = []

    class Spy(type(tok)):
        """The tokenizer, noting the longest text it is asked to tokenise."""

        def __call__(self, text=None, *a, **kw):
            seen.append(max(map(len, text)) if isinstance(text, list) else len(text or ""))
            return super().__call__(text, *a, **kw)

    tok.__class__ = Spy
    huge = "7" * 2_000_000  # stands for the 20 MB prompt: its tokens would take gigabytes
    ds = Dataset.from_list([{"prompt": "1+1=", "completion": "2"}, {"prompt": huge, "completion": "x"},
                            {"prompt": "2+2=", "completion": "4"}])
    config = IQLearnConfig(**common_args(tmp_path, max_length=64))
    with pytest.warns(UserWarning, match=r"^1 of 3 train examples were skipped .*\(rows 1\)"):
        trainer = IQLearnTrainer(model, config, train_dataset=ds, processing_class=tok)
    assert len(trainer.train_dataset) == 2 and trainer.dropped_rows["train"] == [1]
    assert max(seen) <= 64 * 32  # at most max_length × CHARS_PER_TOKEN characters of it were tokenised
