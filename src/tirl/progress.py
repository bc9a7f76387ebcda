"""Progress bars that honour the user's `TQDM_*` environment variables (`TQDM_DISABLE=1` turns every bar off)."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, **kwargs: Any):
    """A `tqdm.auto` bar; `enabled=False` turns it off. Otherwise `disable` is not passed at all: tqdm takes an
    argument given over its `TQDM_*` variables, so `disable=False` would override `TQDM_DISABLE=1`."""
    from tqdm.auto import tqdm

    if not enabled:
        kwargs["disable"] = True
    return tqdm(total=total, desc=desc, unit=unit, **kwargs)


__all__ = ["progress_bar"]
