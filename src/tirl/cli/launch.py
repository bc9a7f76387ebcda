"""`--accelerate_config NAME|PATH [--num_processes N]`: re-launch a command on several processes, as `trl` does.

NAME is `multi_cpu` (N processes on this machine's CPU, gloo backend) or one of TRL's shipped accelerate configs
(`single_gpu`, `multi_gpu`, `zero1`, `zero2`, `zero3`, `fsdp1`, `fsdp2`); PATH is any accelerate config file.
Inside the launched processes the option is gone, so each process runs the command normally and accelerate/Trainer
take care of the rest.

`multi_cpu` goes through `torch.distributed.run` (torchrun): accelerate's own launcher starts a single process for
a multi-CPU config unless MPI is set up, while torchrun's environment plus `use_cpu=True` (set by `IQLearnConfig` on
machines without a GPU) gives accelerate a gloo process group.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources

OWN_CONFIGS = ("multi_cpu",)


def config_path(name: str) -> str:
    if os.path.isfile(name):
        return name
    candidate = resources.files("trl.accelerate_configs").joinpath(f"{name}.yaml")
    if candidate.is_file():
        return str(candidate)
    shipped = sorted(p.name.removesuffix(".yaml") for p in resources.files("trl.accelerate_configs").iterdir()
                     if p.name.endswith(".yaml"))
    raise SystemExit(f"--accelerate_config {name!r}: not a file, nor one of {', '.join(OWN_CONFIGS + tuple(shipped))}")


def _pop(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if a.startswith(flag + "="):
            del argv[i]
            return a.split("=", 1)[1]
    return None


def maybe_relaunch(command: str, argv: list[str]) -> int | None:
    """If `argv` asks for `--accelerate_config`, run the command under `accelerate launch` and return its exit code."""
    argv = list(argv)
    name = _pop(argv, "--accelerate_config")
    if name is None:
        return None
    n = _pop(argv, "--num_processes")
    if name == "multi_cpu":
        # --standalone: a free port of this machine, so two multi_cpu runs side by side do not both claim 29500
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", n or "2"]
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_path(name)]
        if n is not None:
            launch += ["--num_processes", n]
    launch += ["-m", "tirl.cli", command, *argv]
    print("[tirl] " + " ".join(launch[2:]), flush=True)
    return subprocess.call(launch)
