"""Pictures a person would rather look at than read: training curves, and `pyplot`, the one way `tirl` draws.

Other modules draw through `pyplot()` (evaluation frontiers, reward pictures), so matplotlib is imported only when
a picture is made, and only ever into files.
"""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend (never opens a window), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(log_history: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Plot loss terms, reward/value and entropy against the step from a `Trainer.state.log_history`; PNG at `path`."""
    train = [h for h in log_history if "loss" in h and "step" in h]
    evals = [h for h in log_history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    plt = pyplot()
    panels = [
        ("loss", [("loss", "loss"), ("mle_loss", "−log π (MLE term)"), ("eval_loss", "eval loss"), ("eval_mle_loss", "eval −log π")]),
        ("TD term E[r²]", [("td_loss", "train"), ("eval_td_loss", "eval")]),
        ("reward / value", [("mean_reward", "mean r_t"), ("mean_value", "mean V(s_t)")]),
        ("entropy (nats)", [("entropy", "train"), ("eval_entropy", "eval")]),
    ]
    # online IQLearn / GAIL runs log these too; the panels appear only when their series exist
    optional = [
        ("reward: expert vs policy rows", [("reward/expert_mean", "expert rows"), ("reward/policy_mean", "policy samples")]),
        ("GAIL discriminator / KL", [("disc_accuracy", "disc accuracy"), ("disc_loss", "disc loss"),
                                     ("kl_to_initial", "KL to initial")]),
    ]
    panels += [p for p in optional if any(key in h for key, _ in p[1] for h in train)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (name, series) in zip(axes, panels, strict=True):
        for key, label in series:
            src = evals if key.startswith("eval_") else train
            pts = [(h["step"], h[key]) for h in src if key in h]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if len(pts) < 12 else None, ms=3, label=label)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
