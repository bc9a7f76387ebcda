"""tirl.trainers.counts: the counts the losses divide by, counted on the actions as Trainer counts num_items_in_batch."""

import types

import torch

from tirl.trainers.counts import global_counts, local_counts


def labels(rows):
    """Unshifted labels [B, T] from rows of action flags (position 0 is never an action)."""
    out = torch.full((len(rows), len(rows[0]) + 1), -100)
    for i, row in enumerate(rows):
        for j, on in enumerate(row):
            if on:
                out[i, j + 1] = 7
    return out


def test_sequences_are_rows_with_an_action_and_policy_rows_are_counted_apart():
    expert = [labels([[1, 1, 0], [0, 0, 0]]), labels([[0, 1, 1]])]
    policy = [labels([[1, 0, 0], [1, 1, 1]])]
    c = local_counts(expert, policy)
    assert c["sequences"].item() == 2  # the all-prompt row is no sequence of the mean
    assert c["policy_tokens"].item() == 4 and c["policy_sequences"].item() == 2
    assert set(local_counts(expert)) == {"sequences"}


def test_the_first_position_is_never_an_action():
    lab = torch.tensor([[5, -100, -100]])  # a label at position 0 predicts nothing (the shift drops it)
    assert local_counts([lab])["sequences"].item() == 0


def test_one_process_keeps_its_counts_and_shared_batches_are_divided():
    args = types.SimpleNamespace(device="cpu", average_tokens_across_devices=True, world_size=1)
    local = {"sequences": torch.tensor(6), "policy_tokens": torch.tensor(10)}
    assert {k: v.item() for k, v in global_counts(local, None, args, 1).items()} == {"sequences": 6,
                                                                                      "policy_tokens": 10}
    halved = global_counts(local, None, args, 2)  # two ranks hold the same batch (tensor parallelism)
    assert halved["sequences"].item() == 3 and halved["policy_tokens"].item() == 5


def test_several_processes_sum_their_counts():
    class Accelerator:
        def gather(self, x):  # two processes with the same counts
            return torch.cat([x, x])

    args = types.SimpleNamespace(device="cpu", average_tokens_across_devices=True, world_size=2)
    out = global_counts({"sequences": torch.tensor(3)}, Accelerator(), args, 1)
    assert out["sequences"].item() == 6
