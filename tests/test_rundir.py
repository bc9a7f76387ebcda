"""The output directory's guards: reuse, --resume/--overwrite, links, writability, failed runs, full disks."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from tirl.jobs import rundir
from tirl.jobs.rundir import RunDirError, plan_train_dir
from tirl.trainers.checkpoints import PARTIAL_PREFIX as STAGING


def fake_run(path: Path, method="iqlearn", model="tiny-llama", sha="a" * 64, checkpoints=(10, 20)):
    """A run directory as `tirl train` leaves it: run.json and checkpoints with safetensors weights and a trainer
    state."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "run.json").write_text(json.dumps({"method": method, "model": model,
                                               "data": {"train": {"sha256": sha, "rows": 3}}}))
    for step in checkpoints:
        ckpt = path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "config.json").write_text("{}")
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        _safetensors(ckpt / "model.safetensors")
    return path


def _safetensors(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))


def plan(path, resume=False, overwrite=False, method="iqlearn", model="tiny-llama", sha="a" * 64):
    return plan_train_dir(path, resume=resume, overwrite=overwrite, method=method, model=model, train_sha256=sha)


def test_new_or_empty_directory_is_a_fresh_run(tmp_path):
    p = plan(tmp_path / "new")
    assert p.fresh and not p.existed and not (tmp_path / "new").exists()  # planning writes nothing
    (tmp_path / "empty").mkdir()
    assert plan(tmp_path / "empty").fresh


def test_a_directory_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    run = fake_run(tmp_path / "X")
    with pytest.raises(RunDirError, match=r"already holds a run \(method iqlearn, model tiny-llama, last checkpoint "
                                          r"checkpoint-20\): pass --resume to continue it, --overwrite to replace it"):
        plan(run, method="mle")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="is not empty .notes.txt. and holds no tirl run"):
        plan(other)
    # --overwrite deletes only a tirl run directory
    with pytest.raises(RunDirError, match="not a tirl run directory .no run.json., so it is not deleted"):
        plan(other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
    p = plan(run, overwrite=True, method="mle")
    assert p.replace and p.fresh and (run / "checkpoint-10").is_dir()  # nothing removed until prepare()
    rundir.prepare(p)
    assert run.is_dir() and not any(run.iterdir())
    with pytest.raises(RunDirError, match="give one of them"):
        plan(run, resume=True, overwrite=True)


@pytest.mark.parametrize("change, expected", [
    ({"method": "mle"}, "method 'iqlearn' here, 'mle' now"),
    ({"model": "small-llama"}, "model 'tiny-llama' here, 'small-llama' now"),
    ({"sha": "b" * 64}, "training data sha256 'aaaaaaaaaaaa' here, 'bbbbbbbbbbbb' now"),
])
def test_resume_refuses_another_runs_checkpoints(tmp_path, change, expected):
    run = fake_run(tmp_path / "X")
    with pytest.raises(RunDirError, match=rf"^--resume: {run} holds another run \({expected}\)"):
        plan(run, resume=True, **change)
    same = plan(run, resume=True)
    assert same.resume_from == str(run / "checkpoint-20") and not same.fresh


def test_resume_refuses_a_checkpoint_whose_weights_are_not_safetensors(tmp_path):
    run = fake_run(tmp_path / "X")
    last = run / "checkpoint-20"
    (last / "model.safetensors").unlink()
    (last / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(RunDirError, match=r"--resume: .*checkpoint-20 has pickled weights only \(pytorch_model.bin\)"):
        plan(run, resume=True)
    (last / "pytorch_model.bin").unlink()
    (last / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # cut short
    with pytest.raises(RunDirError, match=r"checkpoint-20/model.safetensors: not a readable safetensors file"):
        plan(run, resume=True)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "README.md", "metrics.json", "model.safetensors",
                                  "training_args.bin", "runs", "checkpoint-30", "checkpoint-10/optimizer.pt"])
def test_a_link_anywhere_in_the_output_directory_is_refused(tmp_path, name):
    run = fake_run(tmp_path / "X")
    target = tmp_path / "outside"
    target.write_text("keep")
    (run / name).parent.mkdir(exist_ok=True)
    (run / name).symlink_to(target)
    for kw in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(RunDirError, match=rf"^{run / name} is a symbolic link \(to {target}\)"):
            plan(run, **kw)
    assert target.read_text() == "keep"


def test_output_dir_that_is_a_file_or_cannot_be_written(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RunDirError, match=rf"^--output_dir {f} is a file, not a directory"):
        plan(f)
    with pytest.raises(RunDirError, match=rf"cannot be created: {f} is a file"):
        plan(f / "sub")
    if not Path("/sys").is_dir():
        pytest.skip("no /sys to stand for an unwritable directory")
    # /sys refuses new entries even to root (chmod would not stop a root test run)
    with pytest.raises(RunDirError, match=r"^--output_dir /sys/tirl-test/run is not writable \(.*: /sys\)"):
        plan("/sys/tirl-test/run")


def test_a_failed_run_without_checkpoint_leaves_nothing(tmp_path):
    new = plan(tmp_path / "new")
    rundir.prepare(new)
    (new.path / "run.json").write_text("{}")
    assert rundir.remove_failed_run(new) and not new.path.exists()
    (tmp_path / "empty").mkdir()
    empty = plan(tmp_path / "empty")
    rundir.prepare(empty)
    (empty.path / "runs").mkdir()
    assert rundir.remove_failed_run(empty) and empty.path.is_dir() and not any(empty.path.iterdir())
    # a checkpoint, or a run that was there before (--resume), is kept
    resumed = plan(fake_run(tmp_path / "X", checkpoints=()), resume=True)
    assert not rundir.remove_failed_run(resumed) and (tmp_path / "X" / "run.json").is_file()
    kept = plan(tmp_path / "new2")
    rundir.prepare(kept)
    fake_run(kept.path, checkpoints=(5,))
    assert not rundir.remove_failed_run(kept) and (kept.path / "checkpoint-5").is_dir()


def _partial_checkpoint(run: Path, step: int) -> Path:
    staged = run / f"{STAGING}checkpoint-{step}" / f"checkpoint-{step}"
    staged.mkdir(parents=True)
    (staged / "model.safetensors").write_bytes(b"x" * 10)
    half = staged / "optimizer.pt"
    half.write_bytes(b"x" * 5)
    os.utime(half, ns=(staged.stat().st_mtime_ns + 10**9,) * 2)  # written last
    return half


def test_full_disk_names_device_file_and_the_intact_checkpoint(tmp_path):
    run = fake_run(tmp_path / "X", checkpoints=(2,))
    half = _partial_checkpoint(run, 4)
    message = rundir.write_failure(OSError(errno.ENOSPC, "No space left on device"), run, STAGING)
    assert message.startswith(f"no space left on {rundir.device_of(run)} while writing {half};")
    assert f"the last complete checkpoint, {run / 'checkpoint-2'}, is intact" in message and "--resume" in message
    assert not (run / ".partial-checkpoint-4").exists()  # its space is given back
    # an errno with the file name (open() failing), and safetensors' own wording
    named = rundir.write_failure(OSError(errno.ENOSPC, "No space left on device", str(run / "x.json")), run, STAGING)
    assert f"while writing {run / 'x.json'};" in named
    rust = RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")
    assert rundir.write_failure(rust, run, STAGING).startswith("no space left on ")
    assert rundir.write_failure(ValueError("something else"), run, STAGING) is None


def test_stream_error_counts_as_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch):
    run = fake_run(tmp_path / "X", checkpoints=())
    _partial_checkpoint(run, 4)
    stream = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0 basic_ios::clear: iostream error")
    plenty = shutil._ntuple_diskusage(10**12, 0, 10**12)
    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", lambda p: plenty)
        assert rundir.write_failure(stream, run, STAGING) is None  # a stream error with free space is not a full disk
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    message = rundir.write_failure(stream, run, STAGING)
    assert message.startswith("no space left on ") and message.endswith("no checkpoint had been saved yet")
