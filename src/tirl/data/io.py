"""Reading user-supplied rows (JSONL, JSON arrays, CSV) with errors that name the file and line.

Nothing is dropped silently: a malformed row raises `DataError` naming `path:line`, or, with `skip_bad_rows=True`,
is counted in the returned `ReadReport` (and the caller prints the count).
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A dataset row or file that cannot be used; the message names the file and line (or row index)."""


@dataclass
class ReadReport:
    """What a reader kept and skipped; `skipped` holds `(location, reason)` for each skipped row."""

    source: str
    rows: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.source}: {self.rows} rows"
        if self.skipped:
            text += f", {len(self.skipped)} skipped (first: {self.skipped[0][0]}: {self.skipped[0][1]})"
        return text


def _open_text(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding="utf-8", newline="")


def iter_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield `(location, record)` for each row of a .jsonl/.json/.csv file (optionally .gz); location is `path:line`.

    Errors in decoding (bad UTF-8, bad JSON) are yielded as `(location, DataError)` so the caller decides whether to
    raise or skip.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    if name.endswith(".csv"):
        with _open_text(path) as f:
            try:
                reader = csv.DictReader(f)
                for i, row in enumerate(reader, start=2):  # line 1 is the header
                    yield f"{path}:{i}", row
            except UnicodeDecodeError as e:
                yield f"{path}", DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})")
        return
    if name.endswith(".json"):
        try:
            with _open_text(path) as f:
                data = json.load(f)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
        for i, row in enumerate(data):
            yield f"{path}[{i}]", row
        return
    # JSON lines: read bytes so one bad line is reported with its number instead of failing the whole file
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            loc = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield loc, DataError(f"{loc}: not valid UTF-8 ({e.reason} at byte {e.start})")
                continue
            try:
                yield loc, json.loads(text)
            except json.JSONDecodeError as e:
                yield loc, DataError(f"{loc}: invalid JSON: {e.msg} (column {e.colno})")


def read_records(path: str | Path, skip_bad_rows: bool = False) -> tuple[list[tuple[str, Any]], ReadReport]:
    """All decodable records of a file with their locations; bad ones raise, or are skipped and counted."""
    report = ReadReport(source=str(path))
    records = []
    for loc, rec in iter_records(path):
        if isinstance(rec, DataError):
            if not skip_bad_rows:
                raise rec
            report.skipped.append((loc, str(rec).split(": ", 1)[-1]))
            continue
        records.append((loc, rec))
    if not records and not report.skipped:
        raise DataError(f"{path}: the file has no rows")
    return records, report
