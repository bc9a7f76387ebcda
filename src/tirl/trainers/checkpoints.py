"""Checkpoints that are complete or absent, and the extra state tirl's trainers keep in them.

A checkpoint is written under `.partial-checkpoint-N/checkpoint-N` and renamed to `checkpoint-N` once every process
has finished writing it (`commit_staged`). `get_last_checkpoint` matches only `checkpoint-<digits>`, so a half-written
checkpoint is invisible to resume and is removed at the next save. Each checkpoint lists the files the trainer wrote
into it (`FILES_LIST`); rotation (`rotate_checkpoints`, by step) deletes only those, so whatever else is there, such as
the `eval/` that `tirl eval --model RUN/checkpoint-N` writes, stays (`remove_checkpoint`). Torch optimizer states (GAIL's discriminator)
are stored as safetensors plus JSON, never pickled (`optimizer_state_to_flat`). `LoadExtraStateOnResume` restores a
trainer's extra state (value head, sample buffer, discriminator) when `Trainer.train` resumes, after the model and
the optimizer have been loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..files import write_json_atomic

PARTIAL_PREFIX = ".partial-"
# in each checkpoint: the names the trainer wrote there ("_*" is what push_to_hub leaves out)
FILES_LIST = "_tirl_checkpoint_files.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"{PREFIX_CHECKPOINT_DIR}-{step}"


def staging_dir(run_dir: str, step: int) -> str:
    """Where the checkpoint of `step` is written before it is renamed into place."""
    return os.path.join(run_dir, PARTIAL_PREFIX + checkpoint_name(step))


def commit_staged(run_dir: str, step: int, state, save_total_limit: int | None) -> None:
    """Record what the trainer wrote (`FILES_LIST`) and rename the staged checkpoint of `step` into place (replacing
    one of the same step, e.g. saved again after resuming from an earlier one), remove leftovers of earlier crashes,
    then do what `Trainer` does after a save: note the best checkpoint and rotate old ones (`rotate_checkpoints`).
    Main process only."""
    name = checkpoint_name(step)
    staging = staging_dir(run_dir, step)
    staged = os.path.join(staging, name)
    written = sorted(os.listdir(staged))
    with open(os.path.join(staged, FILES_LIST), "w") as f:
        json.dump(written, f)
    final = os.path.join(run_dir, name)
    if os.path.exists(final):
        kept = remove_checkpoint(final)
        if kept:
            # the user's files describe the replaced checkpoint, not this one: they move aside, under a name that
            # neither resume nor rotation takes for a checkpoint
            aside = _free_name(os.path.join(run_dir, f"replaced-{name}"))
            os.replace(final, aside)
            print(f"[tirl] {name} was saved again; what tirl train had not written in the one it replaces "
                  f"({_shown(kept)}) was moved to {aside}")
    os.replace(staged, final)
    _unstage_best(final, run_dir)
    shutil.rmtree(staging, ignore_errors=True)
    for entry in os.listdir(run_dir):
        if entry.startswith(PARTIAL_PREFIX):
            shutil.rmtree(os.path.join(run_dir, entry), ignore_errors=True)
    if state.best_global_step:
        best = os.path.join(run_dir, checkpoint_name(state.best_global_step))
        if os.path.exists(best):
            state.best_model_checkpoint = best
    rotate_checkpoints(run_dir, save_total_limit, state.best_model_checkpoint, newest=step)


def _unstage_best(checkpoint: str, run_dir: str) -> None:
    """The checkpoint's trainer_state.json names the best checkpoint where Trainer saw it, inside a staging
    directory that no longer exists once committed: name it where it now is, so that a resumed run's
    `load_best_model_at_end` and rotation find it."""
    path = os.path.join(checkpoint, "trainer_state.json")
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):  # not a state Trainer wrote: nothing of it to correct
        return
    best = state.get("best_model_checkpoint") if isinstance(state, dict) else None
    if best and PARTIAL_PREFIX in best:
        state["best_model_checkpoint"] = os.path.join(run_dir, os.path.basename(os.path.normpath(best)))
        write_json_atomic(path, state)


def checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """(step, path) of every `checkpoint-N` directory of a run that still holds a checkpoint (not one rotated out
    whose other files were kept, `remove_checkpoint`), by step."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for entry in os.listdir(run_dir):
        match = _CHECKPOINT.match(entry)
        path = os.path.join(run_dir, entry)
        if match and os.path.isdir(path) and holds_checkpoint(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def holds_checkpoint(path: str | os.PathLike) -> bool:
    """Whether a `checkpoint-N` directory holds a checkpoint: a rotated-out one keeps only what the trainer did not
    write, so none of these (a damaged one still has some, and is refused by name when resumed from)."""
    return any(os.path.exists(os.path.join(path, name)) for name in (
        FILES_LIST, "trainer_state.json", "config.json", "adapter_config.json", "model.safetensors"))


def last_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The checkpoint of the highest step (the one `--resume` continues from), or None."""
    found = checkpoints(run_dir)
    return found[-1][1] if found else None


def rotate_checkpoints(run_dir: str, save_total_limit: int | None, best: str | None = None,
                       newest: int | None = None) -> None:
    """Keep at most `save_total_limit` checkpoints, as `Trainer` does, but ordered by step, not by modification time
    (which `tirl eval --model RUN/checkpoint-N` changes, so that an old checkpoint would look newest and a newer one be
    deleted), and deleting only what the trainer wrote (`remove_checkpoint`). The checkpoint of step `newest` (just
    saved) and `best` are kept; checkpoints of later steps than `newest` come from a branch that resuming from an
    earlier checkpoint left, and go first."""
    if not save_total_limit or save_total_limit <= 0:
        return
    found = checkpoints(run_dir)
    if len(found) <= save_total_limit:
        return
    if newest is not None:
        found = [c for c in found if c[0] > newest] + [c for c in found if c[0] <= newest]
    protected = {os.path.realpath(p) for s, p in found if s == newest}
    if best:
        protected.add(os.path.realpath(best))
    remaining, keep = len(found), max(save_total_limit, len(protected))
    for _, path in found:
        if remaining <= keep:
            break
        if os.path.realpath(path) in protected:
            continue
        kept = remove_checkpoint(path)
        remaining -= 1
        if kept:
            print(f"[tirl] {os.path.basename(path)} rotated out (save_total_limit {save_total_limit}): its checkpoint "
                  f"files were deleted; kept {_shown(kept)} in {path}, which tirl train did not write")


def remove_checkpoint(path: str) -> list[str]:
    """Delete what the trainer wrote into a checkpoint directory (its `FILES_LIST`; a checkpoint saved before there
    was one: everything but `eval/`, where `tirl eval` writes), and the directory when nothing else is left. Returns
    the names it kept."""
    try:
        with open(os.path.join(path, FILES_LIST)) as f:
            written = set(json.load(f)) | {FILES_LIST}
    except (OSError, ValueError):
        # rotated out before (only others' files are left), or saved by a tirl that kept no list
        written = set(os.listdir(path)) - {"eval"} if holds_checkpoint(path) else set()
    kept = []
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if entry not in written:
            kept.append(entry + ("/" if os.path.isdir(full) and not os.path.islink(full) else ""))
        elif os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)
    if not kept:
        os.rmdir(path)
    return kept


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _free_name(path: str) -> str:
    candidate, n = path, 1
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{path}-{n}"
    return candidate


class LoadExtraStateOnResume(TrainerCallback):
    """Calls `trainer.load_extra_state(checkpoint)` at the start of a resumed `train()`: by then `Trainer` has loaded
    the model weights, the optimizer and the scheduler, and no step has run."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        checkpoint = self.trainer.resumed_from
        if checkpoint is not None:
            self.trainer.load_extra_state(checkpoint)


def optimizer_state_to_flat(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A torch optimizer `state_dict` as safetensors-ready tensors plus JSON-ready metadata (no pickle).

    Tensors are named `state.<param id>.<key>`; non-tensor per-parameter values and `param_groups` go to the JSON.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars, "format": 1}


def optimizer_state_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of `optimizer_state_to_flat`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


__all__ = ["FILES_LIST", "PARTIAL_PREFIX", "LoadExtraStateOnResume", "checkpoint_name", "checkpoints", "commit_staged",
           "holds_checkpoint", "last_checkpoint", "optimizer_state_from_flat", "optimizer_state_to_flat",
           "remove_checkpoint", "rotate_checkpoints", "staging_dir"]
