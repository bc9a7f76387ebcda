"""What a tirl trainer logs: one store per mode, averaged into the logs at each logging step.

TRL's `SFTTrainer` keeps its metrics in a private `_metrics` dict that its own `compute_loss` fills and its `log`
averages. tirl's trainers compute their own losses, so they keep their own store (`MetricStore`) and merge it into
the logs from the public `Trainer.log` (`TirlTrainer.log`): nothing of TRL's private metric state is touched.
"""

from __future__ import annotations

from collections import defaultdict


class MetricStore:
    """Values of each metric since the last logging step, per mode ("train" or "eval"), and the run's totals: the
    training tokens (`num_tokens`, as TRL's SFTTrainer reports it) and the sum of the training losses, saved with
    each checkpoint (`totals`, `restore`) so that a resumed run reports the whole run's."""

    def __init__(self) -> None:
        self._values: dict[str, defaultdict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.train_tokens = 0
        self.loss_sum = 0.0  # Σ of `training_step`'s losses before this process's resume ...
        self._loss_since = None  # ... and since then, a tensor (no device sync per step)

    def add_loss(self, loss) -> None:
        """Count one micro-batch's training loss (what `Trainer` sums into its `train_loss`)."""
        self._loss_since = loss.detach() if self._loss_since is None else self._loss_since + loss.detach()

    def totals(self) -> dict:
        """The run's totals so far, JSON-ready (a checkpoint keeps them)."""
        since = 0.0 if self._loss_since is None else float(self._loss_since)
        return {"loss_sum": self.loss_sum + since, "train_tokens": self.train_tokens}

    def restore(self, totals: dict) -> None:
        """Continue from a checkpoint's `totals`."""
        self.loss_sum, self._loss_since = float(totals["loss_sum"]), None
        self.train_tokens = int(totals["train_tokens"])

    def add(self, mode: str, **values: float) -> None:
        """Record one value of each named metric (a micro-batch's, already reduced over processes)."""
        for name, value in values.items():
            self._values[mode][name].append(float(value))

    def set(self, mode: str, **values: float) -> None:
        """Replace the values of the named metrics with one value each (a running total such as `num_tokens`)."""
        for name, value in values.items():
            self._values[mode][name] = [float(value)]

    def values(self, mode: str) -> dict[str, list[float]]:
        """The values recorded since the last `pop`."""
        return dict(self._values[mode])

    def pop(self, mode: str) -> dict[str, float]:
        """The mean of each metric since the last call, with the `eval_` prefix in evaluation; then starts afresh."""
        prefix = "eval_" if mode == "eval" else ""
        means = {f"{prefix}{name}": sum(v) / len(v) for name, v in self._values[mode].items() if v}
        self._values[mode].clear()
        return means


__all__ = ["MetricStore"]
