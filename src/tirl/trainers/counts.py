"""The global counts a loss divides by, next to `num_items_in_batch` (exact gradient accumulation and data parallelism).

`Trainer` counts the completion tokens of the whole accumulated batch on every process (`num_items_in_batch`) before
the step's first forward. Whenever it passes that count to `compute_loss`, it no longer divides the loss by the
accumulation steps, and multiplies it by the number of processes (DDP averages them): every loss term must then be a
sum divided by a count of the whole accumulated batch. These give the terms that are not token means
(`iq_reduction="sequence"`; the online trainers' policy rows) their counts, made global the way `Trainer` makes
`num_items_in_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..losses import IGNORE_INDEX


def local_counts(expert_labels: Sequence[torch.Tensor],
                 policy_labels: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """This process's counts over batches of unshifted labels [B, T]: `sequences` (expert rows with a completion
    token) and, when `policy_labels` is given, `policy_tokens` and `policy_sequences` (the policy rows' completion
    tokens, and rows with one). Positions are counted on `labels[:, 1:]`, the actions the losses see, as `Trainer`
    counts `num_items_in_batch`."""
    def tokens_and_rows(labels: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        actions = [lab[..., 1:] != IGNORE_INDEX for lab in labels]
        tokens = sum(int(a.sum()) for a in actions)
        rows = sum(int(a.any(-1).sum()) for a in actions)
        return torch.tensor(tokens), torch.tensor(rows)

    counts = {"sequences": tokens_and_rows(expert_labels)[1]}
    if policy_labels is not None:
        counts["policy_tokens"], counts["policy_sequences"] = tokens_and_rows(policy_labels)
    return counts


def global_counts(local: dict[str, torch.Tensor], accelerator, args, same_batch: int) -> dict[str, torch.Tensor]:
    """Counts of this process's share of a batch made global exactly as `Trainer` makes `num_items_in_batch`: summed
    over processes when `args.average_tokens_across_devices`, then divided by `same_batch`, the number of ranks that
    hold the same batch (tensor × context × sequence parallelism). A collective: every process must call it at the
    same point."""
    names = list(local)
    values = torch.stack([local[k].to(args.device).long().reshape(()) for k in names])
    if args.average_tokens_across_devices and args.world_size > 1:
        values = accelerator.gather(values.reshape(1, -1)).reshape(-1, len(names)).sum(0)
    if same_batch > 1:
        values = values / same_batch
    return dict(zip(names, values.unbind(), strict=True))


__all__ = ["global_counts", "local_counts"]
