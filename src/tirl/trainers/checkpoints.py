"""Checkpoints that are complete or absent, and the extra state tirl's trainers keep in them.

A checkpoint is written under `.partial-checkpoint-N/checkpoint-N` and renamed to `checkpoint-N` once every process
has finished writing it (`commit_staged`). `get_last_checkpoint` matches only `checkpoint-<digits>`, so a half-written
checkpoint is invisible to resume and is removed at the next save. Torch optimizer states (GAIL's discriminator)
are stored as safetensors plus JSON, never pickled (`optimizer_state_to_flat`). `LoadExtraStateOnResume` restores a
trainer's extra state (value head, sample buffer, discriminator) when `Trainer.train` resumes, after the model and
the optimizer have been loaded.
"""

from __future__ import annotations

import os
import shutil

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

PARTIAL_PREFIX = ".partial-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX_CHECKPOINT_DIR}-{step}"


def staging_dir(run_dir: str, step: int) -> str:
    """Where the checkpoint of `step` is written before it is renamed into place."""
    return os.path.join(run_dir, PARTIAL_PREFIX + checkpoint_name(step))


def commit_staged(run_dir: str, step: int, state, save_total_limit: int | None) -> None:
    """Rename the staged checkpoint of `step` into place (replacing one of the same step, e.g. saved again after
    resuming from it), remove leftovers of earlier crashes, then do what `Trainer` does after a save: note the best
    checkpoint and rotate old ones. Main process only."""
    name = checkpoint_name(step)
    staging = staging_dir(run_dir, step)
    final = os.path.join(run_dir, name)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(os.path.join(staging, name), final)
    shutil.rmtree(staging, ignore_errors=True)
    for entry in os.listdir(run_dir):
        if entry.startswith(PARTIAL_PREFIX):
            shutil.rmtree(os.path.join(run_dir, entry), ignore_errors=True)
    if state.best_global_step:
        best = os.path.join(run_dir, checkpoint_name(state.best_global_step))
        if os.path.exists(best):
            state.best_model_checkpoint = best
    rotate_checkpoints(output_dir=run_dir, save_total_limit=save_total_limit,
                       best_model_checkpoint=state.best_model_checkpoint, use_mtime=True)


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


__all__ = ["PARTIAL_PREFIX", "LoadExtraStateOnResume", "checkpoint_name", "commit_staged", "optimizer_state_from_flat",
           "optimizer_state_to_flat", "staging_dir"]
