"""The output directory's guards: what `tirl train` and `tirl eval` check before writing, and how a failure ends.

- A directory holding another run is never silently reused. `tirl train` refuses a non-empty `--output_dir` unless
  `--resume` continues the same run (its `run.json` names the same method, model and training data) or
  `--overwrite` replaces a tirl run directory (one with a `run.json`): only what a run writes there (`RUN_FILES`) is
  deleted, and named; anything else (`eval/`, `rewards/`, a user's notes) stays. `--resume` where there is no run is
  refused.
- Nothing is written through a symbolic link: a link anywhere inside the output directory is refused before the work
  starts, so no file that tirl, transformers or TRL would write there (model, tokenizer, model card, checkpoints,
  logs, metrics, generations) can land outside it.
- A path that is a file, or a directory that cannot be written, is found by a probe before anything else runs.
- A run that fails before saving a checkpoint leaves nothing behind (`remove_failed_run`).
- A full disk is reported with the device, the file and the last complete checkpoint (`write_failure`).
- One job at a time: a job holds an OS lock on its output directory (`output_lock`, `_tirl.lock` inside it) while it
  runs, and a shared lock on every enclosing directory that has one (a run directory, when it writes into one of its
  checkpoints or beside it); a second job there, or a job writing anywhere inside a live run, is refused in one line
  that names the holder.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

# below this much free space, a stream error while writing (torch.save's "basic_ios::clear: iostream error", which
# carries no errno) is taken for a full disk
LOW_SPACE_BYTES = 64 * 2**20


class RunDirError(ValueError):
    """The output directory cannot be used as asked; the message names the cause and the option that changes it."""


# inside an output directory, held (flock) by the job writing there; "_*" is what Trainer.push_to_hub leaves out
LOCK_NAME = "_tirl.lock"
# the lock files this process holds (real path → how many times), so that a job run inside another job of the same
# process (`tirl rewards analyse` runs `tirl eval` into its samples/) does not find itself in the way
_HELD: dict[str, int] = {}


@contextmanager
def output_lock(directory: str | Path, command: str, name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold an exclusive OS lock (`fcntl.flock`) on `directory/name` for the block (created, with the directory, if
    needed), so that two tirl jobs never write into one directory, and a shared lock on the `_tirl.lock` of every
    directory enclosing what it writes (`enclosing_locks`), so that no job writes inside a live run, and a run does
    not start (nor rotate checkpoints, nor --overwrite) while a job writes inside it. A lock held elsewhere is a
    `RunDirError` naming the process and command that hold it; a live run enclosing `directory` is found before
    `directory` is created. The locks go with the process (also when it is killed)."""
    directory = Path(directory)
    with ExitStack() as stack:
        for lock in enclosing_locks(directory, include_own=name != LOCK_NAME):
            stack.enter_context(_shared_lock(lock, directory))
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        handle = stack.enter_context(open(path, "a+"))
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _working_inside(directory) or handle.read().strip() or "another process"
            raise RunDirError(f"{directory} is in use by {holder}; wait for it to finish or choose another output "
                              "directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} (tirl {command}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{' '.join(sys.argv[1:])[:200]})\n")
        handle.flush()
        stack.enter_context(_registered(path))
        try:
            yield path
        finally:
            # a lock beside files in a shared folder (compare's) goes with the job; a run directory's goes when
            # nothing else is there (a failed job removed its files): leave nothing behind
            if name != LOCK_NAME or (directory.is_dir() and not _entries(directory)):
                path.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def enclosing_locks(directory: str | Path, include_own: bool = False) -> list[Path]:
    """The `_tirl.lock` of every existing directory above `directory` (and of `directory` itself with `include_own`:
    a job whose lock has another name, writing files beside others) that has one, or that holds a run (`run.json`:
    its lock is created)."""
    directory = Path(os.path.abspath(directory))
    above = ([directory] if include_own else []) + list(directory.parents)
    return [d / LOCK_NAME for d in above if (d / LOCK_NAME).is_file() or (d / "run.json").is_file()]


@contextmanager
def _registered(path: Path) -> Iterator[None]:
    key = os.path.realpath(path)
    _HELD[key] = _HELD.get(key, 0) + 1
    try:
        yield
    finally:
        _HELD[key] -= 1
        if not _HELD[key]:
            del _HELD[key]


@contextmanager
def _shared_lock(lock: Path, target: Path) -> Iterator[None]:
    """A shared lock on an enclosing directory's lock file: refused while a job holds it exclusively (a live run)."""
    if os.path.realpath(lock) in _HELD:  # this process's own job encloses this one
        yield
        return
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:  # neither there nor creatable: nothing holds it
            yield
            return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock.read_text(errors="replace").strip() or "another process"
            raise RunDirError(f"{lock.parent} is in use by {holder}; {target} is inside it: wait for it to finish or "
                              "write elsewhere") from None
        with _registered(lock):
            yield
    finally:
        os.close(fd)


def _working_inside(directory: Path, depth: int = 4) -> str | None:
    """Who holds a lock inside `directory` (a job writing in a subdirectory or beside the files there), or None. Looks
    `depth` levels down: `RUN/checkpoint-N/eval/TAG` is the deepest place a tirl job writes in a run by default."""
    own = os.path.realpath(directory / LOCK_NAME)
    top = len(directory.parts)
    for dirpath, dirnames, filenames in os.walk(directory):
        if len(Path(dirpath).parts) - top >= depth:
            dirnames.clear()
        for n in filenames:
            lock = os.path.join(dirpath, n)
            if (n != LOCK_NAME and not n.endswith(".tirl.lock")) or os.path.realpath(lock) in (own, *_HELD):
                continue
            try:
                fd = os.open(lock, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                with open(lock, errors="replace") as f:
                    holder = f.read().strip() or "another process"
                return f"{holder}, writing in {dirpath}"
            finally:
                os.close(fd)
    return None


def refuse_links(paths: Sequence[str | Path], option: str) -> None:
    """Refuse output files that are symbolic links (dangling ones too): writing would go through them."""
    for p in map(Path, paths):
        if p.is_symlink():
            raise RunDirError(f"{option}: {p} is a symbolic link (to {os.readlink(p)}): tirl writes nothing through "
                              "links; remove it or choose another path")
        if p.parent.is_symlink():
            raise RunDirError(f"{option}: {p.parent} is a symbolic link (to {os.readlink(p.parent)}): tirl writes "
                              "nothing through links")
    for parent in {Path(p).parent for p in paths}:
        check_writable(parent, option)


def _entries(path: Path) -> list[Path]:
    """What a directory holds besides tirl's lock file."""
    return [p for p in path.iterdir() if p.name != LOCK_NAME]


# --------------------------------------------------------------------------------------------------------------------
# Checks that write nothing


def find_links(root: str | Path) -> list[Path]:
    """Every symbolic link inside `root` (a linked directory is listed, not entered)."""
    links = []
    for dirpath, dirnames, filenames in os.walk(root):
        links += [Path(dirpath) / n for n in dirnames + filenames if os.path.islink(os.path.join(dirpath, n))]
    return sorted(links)


def check_no_links(root: str | Path, option: str = "--output_dir") -> None:
    """Refuse an output directory that holds a symbolic link: whatever writes through it would land elsewhere."""
    links = find_links(root)
    if links:
        more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
        raise RunDirError(f"{links[0]} is a symbolic link (to {os.readlink(links[0])}){more}: tirl writes nothing "
                          f"through links in its output directory; remove it or choose another {option}")


def check_writable(path: str | Path, option: str = "--output_dir") -> bool:
    """Refuse `path` unless it is, or can be created as, a writable directory. Returns whether it exists."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise RunDirError(f"{option} {path} is a broken symbolic link (to {os.readlink(path)})")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{option} {path} is a file, not a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"{option} {path} cannot be created: {probe} is a file, not a directory")
    try:  # a real write: permissions, read-only mounts and ACLs all show up here (os.access is blind to some)
        fd, tmp = tempfile.mkstemp(prefix=".tirl-write-test-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RunDirError(f"{option} {path} is not writable ({e.strerror or e}: {probe})") from None
    return path.exists()


def read_run_json(path: str | Path) -> dict | None:
    """The `run.json` of a run directory; None when there is none, {} when it cannot be read."""
    f = Path(path) / "run.json"
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def last_checkpoint(path: str | Path) -> str | None:
    """The newest complete `checkpoint-N` in `path` (the one `--resume` continues from; a directory whose checkpoint
    was rotated out, left with files tirl train did not write, is none)."""
    from ..trainers.checkpoints import last_checkpoint as newest

    return newest(path)


def _describe(run: dict, path: Path) -> str:
    checkpoint = last_checkpoint(path)
    where = f"last checkpoint {Path(checkpoint).name}" if checkpoint else "no checkpoint"
    return f"a run (method {run.get('method', '?')}, model {run.get('model', '?')}, {where})"


def _train_sha(run: dict) -> str | None:
    """The checksum of the rows a run drew its training rows from (runs recorded before `sha256_available` existed
    drew from all of them)."""
    train = (run.get("data") or {}).get("train") or {}
    return train.get("sha256_available", train.get("sha256"))


# --------------------------------------------------------------------------------------------------------------------
# The plan for a training run's directory


@dataclass
class RunDir:
    """What `tirl train` will do with its output directory, decided before anything is written."""

    path: Path
    existed: bool
    fresh: bool  # nothing of value was there (new, empty or replaced): a run failing before a checkpoint removes it
    replace: bool = False  # --overwrite: the old run's files are removed before this run writes
    resume_from: str | None = None


def plan_train_dir(path: str | Path, *, resume: bool, overwrite: bool, method: str, model: str,
                   train_sha256: str, checkpoint: str | None = None, settings: dict | None = None,
                   allow_changes: bool = False, restored: Collection[str] = ()) -> RunDir:
    """Check `--output_dir` against `--resume`/`--overwrite` and the run it may hold; raise `RunDirError` (one line)
    when it cannot be used. Writes nothing.

    `checkpoint` (`--resume_from_checkpoint`) resumes from that checkpoint of the run, instead of its last. A resumed
    run must be the same run: the same method, model and training data (`train_sha256`: the rows it draws from, which
    a longer run may draw more of), and the same `settings` (what defines the
    run: objective, optimizer, schedule, batch, data selection) unless `allow_changes`. The `restored` settings (the
    optimizer's and its schedule's, which the checkpoint's optimizer.pt and scheduler.pt bring back) cannot change
    even then: the change would not take effect."""
    path = Path(path)
    if checkpoint is not None:
        if overwrite:
            raise RunDirError("--resume_from_checkpoint continues a run and --overwrite replaces it: give one of them")
        if Path(checkpoint).resolve().parent != path.resolve() or not Path(checkpoint).is_dir():
            raise RunDirError(f"--resume_from_checkpoint {checkpoint}: not a checkpoint directory of --output_dir "
                              f"{path} (resume a run in its own directory)")
        resume = True
    if resume and overwrite:
        raise RunDirError("--resume continues the run in --output_dir and --overwrite replaces it: give one of them")
    existed = check_writable(path)
    if not existed or not _entries(path):
        if resume:
            raise RunDirError(f"--resume: {path} {'is empty' if existed else 'does not exist'}, so there is no run to "
                              "continue; to start a new run there, give the same command without --resume")
        return RunDir(path, existed=existed, fresh=True)
    check_no_links(path)
    previous = read_run_json(path)
    if overwrite:
        if previous is None:
            raise RunDirError(f"--overwrite: {path} is not a tirl run directory (no run.json), so it is not deleted; "
                              "choose an empty or new --output_dir")
        return RunDir(path, existed=True, fresh=True, replace=True)
    if previous is None:
        shown = ", ".join(sorted(p.name for p in _entries(path))[:5])
        raise RunDirError(f"--output_dir {path} is not empty ({shown}) and holds no tirl run; choose an empty or new "
                          "directory")
    if not resume:
        raise RunDirError(f"--output_dir {path} already holds {_describe(previous, path)}: pass --resume to continue "
                          "it, --overwrite to replace it, or choose another --output_dir")
    differences = [f"{label} {old!r} here, {new!r} now" for label, old, new in (
        ("method", previous.get("method"), method),
        ("model", previous.get("model"), model),
        ("training data sha256", (_train_sha(previous) or "")[:12] or None, train_sha256[:12]),
    ) if old != new]
    if differences:
        raise RunDirError(f"--resume: {path} holds another run ({'; '.join(differences)}); resume it with the "
                          "options that started it, or pass --overwrite to replace it")
    changed = changed_settings(previous.get("defining") or {}, settings or {})
    fixed = {k: v for k, v in changed.items() if k in restored}
    if fixed and allow_changes:
        shown = "; ".join(f"{k} {a!r} then, {b!r} now" for k, (a, b) in fixed.items())
        raise RunDirError(f"--resume_with_changes: {shown}: the optimizer and its learning-rate schedule are restored "
                          "from the checkpoint, so this change would not take effect; resume without it, or start a "
                          "new run")
    if changed and not allow_changes:
        shown = "; ".join(f"{k} {a!r} then, {b!r} now" for k, (a, b) in list(changed.items())[:4])
        more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
        raise RunDirError(f"--resume: the run in {path} was started with other settings ({shown}{more}); resume with "
                          "the options that started it, or pass --resume_with_changes to continue with these (run.json "
                          "records each resumed segment's settings)")
    checkpoint = str(checkpoint) if checkpoint is not None else last_checkpoint(path)
    if checkpoint is not None:
        check_checkpoint_weights(checkpoint)
    return RunDir(path, existed=True, fresh=False, resume_from=checkpoint)


def changed_settings(before: dict, now: dict) -> dict:
    """{name: (before, now)} for every setting of `now` whose value differs from `before`'s (a setting `before` lacks
    is not a change: runs recorded before it existed)."""
    return {k: (before[k], v) for k, v in now.items() if k in before and before[k] != v}


def check_checkpoint_weights(checkpoint: str | Path) -> None:
    """Refuse to resume from a checkpoint that cannot be read back: weights that are not readable safetensors
    (pickled `pytorch_model.bin` weights would go through `torch.load`), a `trainer_state.json` that is not JSON, or
    optimizer, scheduler or RNG states (`torch.save` zip archives) that are cut short or corrupt."""
    import zipfile

    from ..models import ModelNotAvailableError, check_model_dir

    try:
        check_model_dir(checkpoint)
    except ModelNotAvailableError as e:
        raise RunDirError(f"--resume: {e}") from None
    checkpoint = Path(checkpoint)
    hint = "resume from an earlier one with --resume_from_checkpoint, or pass --overwrite to start again"
    state = checkpoint / "trainer_state.json"
    try:
        saved = json.loads(state.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"--resume: {state} cannot be read ({getattr(e, 'msg', None) or e}); the checkpoint is "
                          f"damaged: {hint}") from None
    # transformers reads it back as `TrainerState(**state)` and resumes from its step
    if not isinstance(saved, dict) or not isinstance(saved.get("global_step"), int):
        raise RunDirError(f"--resume: {state} is not a trainer state (a JSON object with a global_step); the "
                          f"checkpoint is damaged: {hint}")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        path = checkpoint / name
        if path.exists() and not zipfile.is_zipfile(path):
            raise RunDirError(f"--resume: {path} is not a readable torch.save archive (cut short or corrupt); the "
                              f"checkpoint is damaged: {hint}")


# What `tirl train` (with transformers and TRL) writes into a run directory, as glob patterns: `--overwrite` and a run
# that fails before its first checkpoint delete these, and nothing else
RUN_FILES = (
    # tirl's records and caches
    "run.json", "metrics.json", "summary.md", "training_curves.png", "_tirl_*",
    # the model, its tokenizer and model card (Trainer.save_model, PEFT adapters, the value head)
    "config.json", "generation_config.json", "model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
    "adapter_config.json", "adapter_model.safetensors", "value_head.safetensors", "training_args.bin", "README.md",
    "adapter",  # a LoRA run on a built-in base: its adapter beside the merged model (`tirl.jobs.train.ADAPTER_DIR`)
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    # checkpoint staging, logs and trainer records (`checkpoint-N` directories lose only the trainer's files)
    ".partial-*", "runs", "trainer_state.json", "all_results.json", "train_results.json",
    "eval_results.json", "emissions.csv",
)


def prepare(run_dir: RunDir) -> None:
    """Carry out the plan on the main process: remove the replaced run's files (saying which, and what stays), create
    the directory."""
    if run_dir.replace:
        removed, kept = remove_run_files(run_dir.path)
        print(f"[tirl] --overwrite: removed the previous run's files from {run_dir.path} ({_listed(removed, 20)})"
              + (f"; kept {_listed(kept, 10)}, which tirl train did not write" if kept else ""))
    run_dir.path.mkdir(parents=True, exist_ok=True)


def remove_failed_run(run_dir: RunDir) -> bool:
    """After a failure: remove what this run wrote if it saved no checkpoint and nothing of value was there before
    (a directory it created goes when nothing else is left in it). Returns whether it did."""
    if not run_dir.fresh or not run_dir.path.is_dir() or last_checkpoint(run_dir.path) is not None:
        return False
    remove_run_files(run_dir.path)
    if not run_dir.existed and not _entries(run_dir.path):
        shutil.rmtree(run_dir.path, ignore_errors=True)
    return True


def remove_run_files(path: Path) -> tuple[list[str], list[str]]:
    """Delete what a run writes into its directory (`RUN_FILES`; of a checkpoint directory, only what the trainer wrote
    there). Returns (what was removed, what was kept), as names (a directory's with a `/`)."""
    from ..trainers.checkpoints import remove_checkpoint

    removed, kept = [], []
    for entry in sorted(_entries(path)):  # the lock file stays: the job that empties the directory holds it
        name = entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else "")
        checkpoint = re.fullmatch(r"checkpoint-\d+", entry.name) and entry.is_dir() and not entry.is_symlink()
        if not checkpoint and not any(fnmatch.fnmatchcase(entry.name, p) for p in RUN_FILES):
            kept.append(name)
        elif checkpoint:  # only the trainer's files of it
            before = len(os.listdir(entry))
            inside = remove_checkpoint(str(entry))
            if len(inside) < before:
                removed.append(name)
            kept += [f"{name}{n}" for n in inside]
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
            removed.append(name)
        else:
            entry.unlink()
            removed.append(name)
    return removed, kept


def _listed(names: list[str], shown: int) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


# --------------------------------------------------------------------------------------------------------------------
# Full disks


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _says_disk_full(exc: BaseException) -> bool:
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        # safetensors (Rust) reports `IoError(Os { code: 28, kind: StorageFull, .. })` in a SafetensorError
        if "No space left on device" in text or "StorageFull" in text or "os error 28" in text:
            return True
    return False


def _is_stream_error(exc: BaseException) -> bool:
    """torch.save's C++ writer fails with a bare stream error, naming neither the cause nor the file (a short write
    shows up as `basic_ios::clear: iostream error`, `file write failed` or, at the end of the archive,
    `[enforce fail at inline_container.cc:...] . unexpected pos N vs M`)."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "iostream error", "failed writing file", "file write failed", "unexpected pos"))


def device_of(path: str | Path) -> str:
    """The device (and mount point) holding `path`, as `/proc/mounts` names it."""
    mount = Path(path).resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    device = None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[1].replace("\\040", " ") == str(mount):
                    device = parts[0]
    except OSError:
        pass
    return f"{device} (mounted at {mount})" if device else str(mount)


def write_failure(exc: BaseException, output_dir: str | Path, staging_prefix: str) -> str | None:
    """If `exc` is a full disk while writing into `output_dir`, the one-line message for it (after removing the
    partial checkpoint, the directory named `staging_prefix + checkpoint-N`, which frees its space); else None."""
    output_dir = Path(output_dir)
    full = _says_disk_full(exc)
    if not full and _is_stream_error(exc):
        try:
            full = shutil.disk_usage(output_dir).free < LOW_SPACE_BYTES
        except OSError:
            full = False
    if not full:
        return None
    partial = sorted(p for p in output_dir.glob(staging_prefix + "*") if p.is_dir()) if output_dir.is_dir() else []
    path = next((e.filename for e in _chain(exc) if isinstance(e, OSError) and e.filename), None)
    if path is None and partial:
        # the writer says no file name: the one it was writing is the newest file of the partial checkpoint
        files = [f for p in partial for f in p.rglob("*") if f.is_file()]
        path = max(files, key=lambda f: f.stat().st_mtime_ns) if files else partial[0]
    path = path or output_dir
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    checkpoint = last_checkpoint(output_dir)
    state = (f"the last complete checkpoint, {checkpoint}, is intact: free some space and rerun with --resume"
             if checkpoint else "no checkpoint had been saved yet")
    removed = "the partial checkpoint was removed; " if partial else ""
    return f"no space left on {device_of(output_dir)} while writing {path}; {removed}{state}"
