"""tirl.trainers.checkpoints: optimizer states without pickle, and staged checkpoints committed in one step."""

import json
import os

import torch

from tirl.trainers.checkpoints import optimizer_state_from_flat, optimizer_state_to_flat


def test_optimizer_state_round_trips_without_pickle():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=1e-3)
    p.grad = torch.randn(3)
    opt.step()
    tensors, meta = optimizer_state_to_flat(opt.state_dict())
    json.dumps(meta)  # JSON-ready
    back = optimizer_state_from_flat(tensors, json.loads(json.dumps(meta)))
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=1e-3)
    opt2.load_state_dict(back)
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(opt2.state_dict()["state"][0][k], opt.state_dict()["state"][0][k])


def test_a_staged_checkpoint_is_renamed_into_place_and_leftovers_are_removed(tmp_path):
    from transformers import TrainerState
    from transformers.trainer_utils import get_last_checkpoint

    from tirl.trainers.checkpoints import PARTIAL_PREFIX, commit_staged, staging_dir

    staged = os.path.join(staging_dir(str(tmp_path), 4), "checkpoint-4")
    os.makedirs(staged)
    open(os.path.join(staged, "model.safetensors"), "w").close()
    assert get_last_checkpoint(str(tmp_path)) is None  # invisible to resume while staged
    (tmp_path / f"{PARTIAL_PREFIX}checkpoint-2").mkdir()  # left by an earlier crash
    commit_staged(str(tmp_path), 4, TrainerState(), save_total_limit=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]
    assert (tmp_path / "checkpoint-4" / "model.safetensors").is_file()
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")


def test_a_committed_checkpoint_names_the_best_checkpoint_where_it_is(tmp_path):
    """Trainer writes trainer_state.json while the checkpoint is staged, so it names the best checkpoint inside the
    staging directory; once committed it must name `checkpoint-N` itself (resume and load_best_model_at_end read it)."""
    from transformers import TrainerState

    from tirl.trainers.checkpoints import commit_staged, staging_dir

    staged = os.path.join(staging_dir(str(tmp_path), 4), "checkpoint-4")
    os.makedirs(staged)
    state = TrainerState(best_model_checkpoint=staged, best_global_step=4)
    state.save_to_json(os.path.join(staged, "trainer_state.json"))
    commit_staged(str(tmp_path), 4, state, save_total_limit=None)
    recorded = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert recorded["best_model_checkpoint"] == str(tmp_path / "checkpoint-4")
    assert state.best_model_checkpoint == str(tmp_path / "checkpoint-4")
