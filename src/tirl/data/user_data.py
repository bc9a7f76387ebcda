"""A user's own data: a local file or directory, or a Hugging Face Hub dataset id, in TRL's dataset formats.

The formats are `trl sft`'s: conversational `messages` rows, prompt/completion rows (strings or message lists), and
language-modelling rows with only a `text` field. Every row of one dataset has the same format (TRL prepares one
format per dataset): a row in another format than the first is an error naming its `FILE:LINE`.

- `.jsonl`/`.json`/`.csv` files (optionally `.gz`) are read by `tirl.data.io`, so a bad row is named by `FILE:LINE`,
  or skipped and counted with `skip_bad_rows`;
- `.parquet`/`.arrow` files and data directories go through `datasets.load_dataset` (a bad row is `FILE:row N`);
- anything else is a hub dataset id (`datasets.load_dataset(id, name=config, split=...)`, streamed with `streaming`,
  when only the first rows are wanted); from the local cache when the hub cannot be reached, one line when neither.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from .io import DataError, ReadReport, read_records

DATASETS_SUFFIXES = (".parquet", ".arrow")


def user_row(rec, i: int, prompt_field: str = "prompt", completion_field: str = "completion",
             reference_field: str | None = None, text_field: str = "text") -> dict:
    """One row of a user's data in tirl's row layout: {"id", "messages"}, {"id", "prompt", "completion", "reference"}
    or {"id", "text"} (language modelling, read from the `text_field` column, TRL's `dataset_text_field`). A
    `DataError` says what is wrong with the row."""
    if not isinstance(rec, dict):
        raise DataError(f"expected a JSON object, got {type(rec).__name__}")
    row_id = str(rec.get("id", i))
    if "messages" in rec and prompt_field not in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m and "content" in m
                                                             for m in msgs):
            raise DataError("'messages' must be a non-empty list of {'role', 'content'} objects")
        if not any(m["role"] == "assistant" and str(m["content"]).strip() for m in msgs):
            raise DataError("'messages' has no non-empty assistant turn, so there is nothing to learn from")
        return {"id": row_id, "messages": msgs}
    if prompt_field not in rec and completion_field not in rec and isinstance(rec.get(text_field), str):
        if not rec[text_field].strip():
            raise DataError(f"empty '{text_field}'")
        return {"id": row_id, "text": rec[text_field]}
    missing = [f for f in (prompt_field, completion_field) if f not in rec]
    if missing:
        raise DataError(f"missing field(s) {missing}; found {sorted(rec)} (a row needs prompt/completion, messages "
                        f"or {text_field}; set --prompt_field/--completion_field or --dataset_text_field)")
    prompt, completion = rec[prompt_field], rec[completion_field]
    if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt/completion
        if not any(str(m.get("content", "")).strip() for m in completion if isinstance(m, dict)):
            raise DataError("empty completion")
        return {"id": row_id, "prompt": prompt, "completion": completion, "reference": ""}
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DataError(f"'{prompt_field}' and '{completion_field}' must be strings (or message lists)")
    if not completion.strip():
        raise DataError("empty completion")
    reference = str(rec.get(reference_field, "")) if reference_field else completion
    return {"id": row_id, "prompt": prompt, "completion": completion, "reference": reference}


def row_format(row: dict) -> str:
    """'messages', 'prompt/completion' or 'text'."""
    return "messages" if "messages" in row else "text" if "text" in row else "prompt/completion"


def _collect(located, source: str, skip_bad_rows: bool, fields: dict, report: ReadReport) -> list[dict]:
    """Rows from (location, record) pairs: each checked (`user_row`), all of the first row's format."""
    rows: list[dict] = []
    first: tuple[str, str] | None = None
    for i, (loc, rec) in enumerate(located):
        try:
            row = user_row(rec, i, **fields)
        except DataError as e:
            if not skip_bad_rows:
                raise DataError(f"{loc}: {e}") from None
            report.skipped.append((loc, str(e)))
            continue
        fmt = row_format(row)
        if first is None:
            first = (fmt, loc)
        elif fmt != first[0]:
            raise DataError(f"{loc}: a {fmt} row in a dataset whose first row ({first[1]}) is {first[0]}: every row "
                            "of one dataset needs the same format (TRL trains one format per dataset)")
        rows.append({**row, "location": loc})
    if not rows:
        raise DataError(f"{source}: no usable rows ({len(report.skipped)} skipped)")
    report.rows = len(rows)
    return rows


def load_local(path: str | Path, prompt_field: str = "prompt", completion_field: str = "completion",
               reference_field: str | None = None, skip_bad_rows: bool = False,
               split: str = "train", text_field: str = "text") -> tuple[list[dict], ReadReport]:
    """Rows of a local file or directory (module docstring), with what was skipped."""
    fields = {"prompt_field": prompt_field, "completion_field": completion_field, "reference_field": reference_field,
              "text_field": text_field}
    path = Path(path)
    if path.is_dir() or path.suffix in DATASETS_SUFFIXES:
        import datasets

        report = ReadReport(source=str(path))
        try:
            if path.is_dir():
                ds = datasets.load_dataset(str(path), split=split)
            else:
                ds = datasets.load_dataset(path.suffix[1:], data_files=str(path), split="train")
        except Exception as e:  # an unreadable file, a directory without data files, a missing split
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{path}: datasets.load_dataset could not read it: {first}") from None
        return _collect(((f"{path}:row {i}", rec) for i, rec in enumerate(ds)), str(path), skip_bad_rows, fields,
                        report), report
    records, report = read_records(path, skip_bad_rows=skip_bad_rows)
    return _collect(records, str(path), skip_bad_rows, fields, report), report


def load_hub(name: str, split: str = "train", config: str | None = None, streaming: bool = False,
             limit: int | None = None, prompt_field: str = "prompt", completion_field: str = "completion",
             reference_field: str | None = None, skip_bad_rows: bool = False, text_field: str = "text") -> list[dict]:
    """Rows of a hub dataset (`datasets.load_dataset(name, config, split=split)`); with `streaming`, only the first
    `limit` rows are read from the stream (nothing else is downloaded)."""
    import datasets

    from .tasks import TASKS

    known = ", ".join(sorted(TASKS))
    if name.endswith((".jsonl", ".json", ".csv", ".gz", *DATASETS_SUFFIXES)) or name.startswith(("/", ".", "~")):
        raise DataError(f"{name}: no such file (nor a built-in task: {known})")
    if streaming and limit is None:
        raise DataError("--dataset_streaming reads the first --num_train_examples rows of the stream: give "
                        "--num_train_examples")
    source = _hub_dataset_source(name, known)
    try:
        ds = datasets.load_dataset(source, config, split=split, streaming=streaming)
    except Exception as e:  # datasets raises many types for "not found / no such split / no such config"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{name!r} is not a built-in task ({known}), not a local file, and datasets.load_dataset "
                        f"could not load it: {first}") from e
    records = itertools.islice(ds, limit) if streaming else ds
    fields = {"prompt_field": prompt_field, "completion_field": completion_field, "reference_field": reference_field,
              "text_field": text_field}
    where = f"{name}" + (f"[{config}]" if config else "") + f"[{split}]"
    return _collect(((f"{where}[{i}]", rec) for i, rec in enumerate(records)), where, skip_bad_rows, fields,
                    ReadReport(source=where))


def _hub_dataset_source(name: str, known: str) -> str:
    """What `datasets.load_dataset` should read for `name`: the id itself when the hub answers for it, the cached
    snapshot when the hub cannot be reached. An id the hub does not know, or one out of reach and not cached, is a
    one-line `DataError` at once instead of after the hub client's retries."""
    from huggingface_hub import constants, dataset_info, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise DataError(f"{name!r} is not a built-in task ({known}), not a local file, nor a hub dataset id") from None
    if constants.HF_HUB_OFFLINE:
        reason = "HF_HUB_OFFLINE is set"
    else:
        try:
            dataset_info(name, timeout=10.0)
            return name
        except GatedRepoError:
            raise DataError(f"{name!r} is gated on the hub ({constants.ENDPOINT}): accept its conditions there and log "
                            "in (`hf auth login`)") from None
        except RepositoryNotFoundError:
            raise DataError(f"{name!r} is not a built-in task ({known}), not a local file, and not a dataset on the hub "
                            f"({constants.ENDPOINT})") from None
        except Exception as e:  # connection refused, DNS failure, timeout: the hub cannot be used
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            reason = f"{constants.ENDPOINT}: {first}"
    try:
        return snapshot_download(name, repo_type="dataset", local_files_only=True)
    except Exception:  # nothing cached for this id
        raise DataError(f"{name!r} is not a built-in task ({known}) nor a local file, and the Hugging Face hub cannot "
                        f"be reached to look for it as a dataset ({reason}); it is not in the local cache") from None


def is_local(name: str) -> bool:
    return os.path.exists(name)


__all__ = ["is_local", "load_hub", "load_local", "row_format", "user_row"]
