"""The `tirl` command: `tirl train | eval | compare | rewards | env` (each subcommand has its own `--help`)."""

from __future__ import annotations

import os
import sys

COMMANDS = {
    "train": ("tirl.cli.train", "Fine-tune a model with MLE or IQLearn (`tirl train --help` lists every option)."),
    "eval": ("tirl.cli.eval", "Sample K completions per prompt, score them (task score, Self-BLEU, ...), write a report."),
    "compare": ("tirl.cli.compare", "Plot task score vs Self-BLEU for several evaluations (PNG + markdown table)."),
    "rewards": ("tirl.cli.rewards", "Per-token rewards r_t of a checkpoint; `tirl rewards analyse` correlates them with task scores."),
    "env": ("tirl.cli.env", "Print versions, devices and data/model availability, for bug reports."),
}

USAGE = """usage: tirl <command> [options]

Fine-tune language models by inverse reinforcement learning (IQLearn as TD-regularised MLE) on top of TRL.

commands:
{commands}

`tirl <command> --help` explains every option of a command. With no options, `tirl train` runs the embedded
default: SmolLM2-135M-Instruct on a GSM8k subset, a few minutes on 2 CPU cores.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command's one setting of its own, made here and not on `import tirl`: TRL's trainers report their use to
    # the hub (huggingface_hub's send_telemetry) unless told not to; HF_HUB_DISABLE_TELEMETRY=0 turns it back on.
    # Downloads and offline mode are left to the user's environment, as with transformers and TRL.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(commands="\n".join(f"  {name:<9}{doc}" for name, (_, doc) in COMMANDS.items())))
        return 0
    if argv[0] in ("-V", "--version"):
        from tirl import __version__

        print(f"tirl {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tirl: unknown command {name!r}; choose from {', '.join(COMMANDS)} (see `tirl --help`)", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
