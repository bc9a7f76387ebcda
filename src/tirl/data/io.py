"""Reading user-supplied rows (JSONL, JSON arrays, CSV) with errors that name the file and line.

Nothing is dropped silently: a malformed row raises `DataError` naming `path:line`, or, with `skip_bad_rows=True`,
is counted in the returned `ReadReport` (and the caller prints the count). A bad row is that row alone in every
format: the files are decoded with `surrogateescape`, so a byte that is not UTF-8 marks its own row bad instead of
ending the reader (Python's CSV reader stops at the first decoding error otherwise). A UTF-8 byte-order mark, as
Excel writes it, is dropped.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import gzip
import json
import re
import zlib
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


# bytes that are not UTF-8 come out of a `surrogateescape` decode as these code points, and nothing else does
_UNDECODED = re.compile("[\udc80-\udcff]")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _utf8_error(path: Path, line: int, raw: bytes, offset: int) -> DataError:
    """The error for the first non-UTF-8 byte of `raw`, which starts on `line` at byte `offset` of the file."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line += raw.count(b"\n", 0, e.start)
        return DataError(f"{path}:{line}: not valid UTF-8 ({e.reason}: byte 0x{raw[e.start]:02x} at byte {offset + e.start} "
                         "of the file)")
    return DataError(f"{path}:{line}: not valid UTF-8")


def check_data_file(path: str | Path) -> Path:
    """`path` as a `Path` if it is a readable file; a `DataError` saying what it is otherwise."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a data file (give a .jsonl, .json or .csv file)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return path


def iter_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield `(location, record)` for each row of a .jsonl/.json/.csv file (optionally .gz); location is `path:line`
    (for a JSON array, the line where the element starts).

    A row that cannot be decoded (bytes that are not UTF-8, bad JSON on a JSONL line, a CSV row with the wrong number
    of fields) is yielded as `(location, DataError)` so the caller decides whether to raise or skip. Errors that leave
    the rest of the file unreadable (a JSON array's syntax) raise.
    """
    path = check_data_file(path)
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    reader = _iter_csv if name.endswith(".csv") else _iter_json_array if name.endswith(".json") else _iter_jsonl
    try:
        yield from reader(path)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        # the rows read so far would be a silent cut of the file: the whole file is refused
        reason = "cut short: it ends inside its compressed stream" if isinstance(e, EOFError) else str(e)
        raise DataError(f"{path}: not a readable gzip file ({reason})") from None


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    # bytes, line by line, so one bad line is reported with its number instead of failing the whole file
    offset = 0
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw, start = raw[len(codecs.BOM_UTF8):], start + len(codecs.BOM_UTF8)
            loc = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield loc, _utf8_error(path, lineno, raw, start)
                continue
            try:
                yield loc, json.loads(text)
            except json.JSONDecodeError as e:
                yield loc, DataError(f"{loc}: invalid JSON: {e.msg} (column {e.colno})")


def _iter_json_array(path: Path) -> Iterator[tuple[str, Any]]:
    with _open_binary(path) as f:
        data = f.read()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    text = data[bom:].decode("utf-8", errors="surrogateescape")
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_right(line_starts, pos)

    decoder = json.JSONDecoder()

    def fail(pos: int, msg: str) -> DataError:
        return DataError(f"{path}:{line_of(pos)}: invalid JSON: {msg}")

    pos = _JSON_SPACE.match(text, 0).end()
    if pos == len(text):
        return  # no rows; the caller reports an empty file
    if text[pos] != "[":
        try:
            value, _ = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise fail(e.pos, e.msg) from None
        raise DataError(f"{path}: expected a JSON array of objects, got {type(value).__name__}")
    pos = _JSON_SPACE.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return
    while True:
        # one element per step, so each is located by its line and a non-UTF-8 byte spoils that element only
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise fail(e.pos, f"{e.msg} (the rest of a JSON array cannot be read past this point)") from None
        loc = f"{path}:{line_of(pos)}"
        if _UNDECODED.search(text, pos, end):
            raw = text[pos:end].encode("utf-8", errors="surrogateescape")
            prefix = len(text[:pos].encode("utf-8", errors="surrogateescape"))
            yield loc, _utf8_error(path, line_of(pos), raw, bom + prefix)
        else:
            yield loc, value
        pos = _JSON_SPACE.match(text, end).end()
        if text.startswith("]", pos):
            if _JSON_SPACE.match(text, pos + 1).end() != len(text):
                raise fail(pos + 1, "extra data after the array")
            return
        if not text.startswith(",", pos):
            raise fail(pos, "expected ',' or ']' between array elements")
        pos = _JSON_SPACE.match(text, pos + 1).end()


class _CountedLines:
    """The lines of a binary file as text for the csv module, with the lines of the current record and its byte offset,
    so a bad record can be named and skipped by itself.

    Lines are split at b"\\n" (no UTF-8 character contains that byte) and decoded one by one with `surrogateescape`;
    line ends stay in the text, as with `open(..., newline="")`, so quoted fields may span lines.
    """

    def __init__(self, f):
        self._f = f
        self.offset = 0  # bytes of the file consumed so far
        self.record: list[str] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = next(self._f)
        if self.offset == 0 and raw.startswith(codecs.BOM_UTF8):
            raw, self.offset = raw[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
        self.offset += len(raw)
        line = raw.decode("utf-8", errors="surrogateescape")
        self.record.append(line)
        return line


def _iter_csv(path: Path) -> Iterator[tuple[str, Any]]:
    with _open_binary(path) as f:
        lines = _CountedLines(f)
        reader = csv.reader(lines)
        header: list[str] | None = None
        while True:
            first_line, start = reader.line_num + 1, lines.offset
            lines.record = []
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                if header is None:
                    raise DataError(f"{path}:{first_line}: {e}") from None
                yield f"{path}:{first_line}", DataError(f"{path}:{first_line}: {e}")
                continue
            raw_text = "".join(lines.record)
            if _UNDECODED.search(raw_text):
                error = _utf8_error(path, first_line, raw_text.encode("utf-8", errors="surrogateescape"), start)
                if header is None:
                    raise error
                yield f"{path}:{first_line}", error
                continue
            if not row:
                continue  # a blank line
            if header is None:
                header = row
                continue
            loc = f"{path}:{first_line}"
            if len(row) != len(header):
                yield loc, DataError(f"{loc}: {len(row)} fields where the header has {len(header)}")
                continue
            yield loc, dict(zip(header, row, strict=True))


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
