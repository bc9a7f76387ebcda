"""The one module that writes files: atomic writes, paths that cannot leave their directory, plain file modes.

Everything `tirl` writes into a run, checkpoint or output directory goes through here: a crash never leaves half a
file (`write_atomic` and its text/JSON forms write a temporary file beside the target and rename it), a name taken
from a config or a dataset never makes it write elsewhere (`safe_path`), and files get the permissions a plain `open`
gives them (`share_file_modes`, for the files safetensors writes 0600).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def jsonable(obj: Any) -> Any:
    """`obj` as JSON-ready values: dataclasses (and configs) as dicts, tuples as lists, anything else as its string."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        source = obj
        obj = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        # TrainingArguments.to_dict masks every "*_token" field as a secret; TRL's eos_token and pad_token are text
        for name in ("eos_token", "pad_token"):
            if name in obj and isinstance(getattr(source, name, None), str | None):
                obj[name] = getattr(source, name)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def safe_path(root: str | Path, relative: str | Path) -> Path:
    """`root / relative`, refusing any path that would land outside `root` (absolute paths, `..`, symlinks out).

    Every file `tirl` writes into a run directory goes through this, so a name taken from a config or a dataset can
    never make it write elsewhere.
    """
    root_resolved = Path(root).resolve()
    target = (root_resolved / relative).resolve()
    if Path(relative).is_absolute() or (target != root_resolved and root_resolved not in target.parents):
        raise ValueError(f"refusing to write {relative!r}: it resolves outside the output directory {root_resolved}")
    return target


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`: a crash never leaves half a
    file. The file gets the permissions a plain `open` would give it (mkstemp's own are 0600)."""
    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path) or ".")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def share_file_modes(directory: str | Path) -> None:
    """Give the `*.safetensors` files under `directory` the permissions a plain `open` would (safetensors writes them
    0600 through a temporary file, while every other file of a run directory gets the umask's 0644)."""
    mode = _default_file_mode()
    for path in Path(directory).rglob("*.safetensors"):
        if path.is_file() and not path.is_symlink() and (path.stat().st_mode & 0o777) != mode:
            os.chmod(path, mode)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text through a temporary file and a rename, so a crash never leaves half a file."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def nan_to_none(obj: Any) -> Any:
    """`obj` with every NaN or infinite float (nested in dicts and lists) as None, so that it is written as strict JSON
    (`null`: "not defined"), which every JSON reader accepts, instead of Python's bare `NaN`."""
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a crash never leaves half a file."""
    write_text_atomic(path, json.dumps(jsonable(data), indent=2) + "\n")


__all__ = ["jsonable", "nan_to_none", "safe_path", "share_file_modes", "write_atomic", "write_json_atomic", "write_text_atomic"]
