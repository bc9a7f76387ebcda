"""What a training or evaluation run records about itself (`run.json`): config, versions, git commit, data checksums."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ..files import jsonable

PACKAGES = ("tirl", "torch", "transformers", "trl", "accelerate", "peft", "datasets", "tokenizers", "sacrebleu", "rouge-score")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the repository holding `path` (default: this package), with `-dirty` if it has changes."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def rows_checksum(rows: list[dict]) -> str:
    """sha256 of the rows as canonical JSON: the same data gives the same checksum whatever file it came from (a
    row's `location`, where it was read, is left out)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps({k: v for k, v in r.items() if k != "location"}, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def run_record(**sections: Any) -> dict[str, Any]:
    """The `run.json` payload: the given sections plus versions, git commit, command line and host."""
    return {
        **{k: jsonable(v) for k, v in sections.items()},
        "versions": versions(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
