"""What a tirl trainer logs: one store per mode, averaged into the logs at each logging step.

TRL's `SFTTrainer` keeps its metrics in a private `_metrics` dict that its own `compute_loss` fills and its `log`
averages. tirl's trainers compute their own losses, so they keep their own store (`MetricStore`) and merge it into
the logs from the public `Trainer.log` (`TirlTrainer.log`): nothing of TRL's private metric state is touched.
"""

from __future__ import annotations

from collections import defaultdict


class MetricStore:
    """Values of each metric since the last logging step, per mode ("train" or "eval"), and the running count of
    training tokens (`num_tokens`, as TRL's SFTTrainer reports it)."""

    def __init__(self) -> None:
        self._values: dict[str, defaultdict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.train_tokens = 0

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
