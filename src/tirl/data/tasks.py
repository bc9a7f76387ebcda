"""Named datasets as plain prompt/completion rows, and the conversion to TRL's formats.

Every loader returns a list of dicts with string fields `prompt` (the user's message), `completion` (the target
answer), `reference` (what a task metric compares against, e.g. GSM8k's final number) and `id`. `to_trl` turns them
into TRL's conversational prompt/completion format when the tokenizer has a chat template, else into TRL's standard
prompt/completion format with the prompt followed by a newline (TRL appends EOS to the completion).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path

from .arithmetic import generate as generate_arithmetic
from .io import DataError, ReadReport, read_records

SHARED_DATA_ENV = "TIRL_DATA_DIR"


def shared_data_dir() -> Path | None:
    """The folder with the real datasets: `$TIRL_DATA_DIR`, else `../shared/data` beside the repository (or cwd)."""
    if os.environ.get(SHARED_DATA_ENV):
        path = Path(os.environ[SHARED_DATA_ENV])
        return path if path.is_dir() else None
    here = Path(__file__).resolve()
    candidates = [parent / "shared" / "data" for parent in here.parents] + [Path.cwd().parent / "shared" / "data"]
    for cand in candidates:
        if (cand / "gsm8k").is_dir():
            return cand
    return None


def require_shared(subdir: str) -> Path:
    root = shared_data_dir()
    if root is None or not (root / subdir).is_dir():
        raise DataError(
            f"the {subdir!r} dataset needs the shared data folder (../shared/data beside the repository, or set "
            f"${SHARED_DATA_ENV}); it was not found"
        )
    return root / subdir


# --------------------------------------------------------------------------------------------------------------------
# GSM8k
# --------------------------------------------------------------------------------------------------------------------

CALCULATOR_ANNOTATION = re.compile(r"<<[^>]*>>")


def gsm8k_final_answer(answer: str) -> str:
    """The gold number after `#### `, with thousands separators removed."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def load_gsm8k(split: str = "train", keep_calculator: bool = False, skip_bad_rows: bool = False) -> list[dict]:
    """GSM8k from `../shared/data/gsm8k/{train,test}.jsonl`.

    Template: prompt = the question; completion = the worked answer ending in `#### <n>`. The `<<48/2=24>>`
    calculator annotations are removed unless `keep_calculator` (they are tool calls, not text to imitate).
    """
    path = require_shared("gsm8k") / f"{split}.jsonl"
    records, _ = read_records(path, skip_bad_rows=skip_bad_rows)
    rows = []
    for i, (loc, rec) in enumerate(records):
        if not isinstance(rec, dict) or not {"question", "answer"} <= rec.keys():
            if skip_bad_rows:
                continue
            raise DataError(f"{loc}: expected fields 'question' and 'answer'")
        answer = rec["answer"] if keep_calculator else CALCULATOR_ANNOTATION.sub("", rec["answer"])
        rows.append(
            {"id": f"gsm8k-{split}-{i}", "prompt": rec["question"], "completion": answer, "reference": gsm8k_final_answer(answer)}
        )
    return rows


def load_arithmetic(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """The generated arithmetic task (see `tirl.data.arithmetic`); 2,000 train / 200 test problems by default."""
    return generate_arithmetic(n if n is not None else (2000 if split == "train" else 200), seed=seed, split=split)


# --------------------------------------------------------------------------------------------------------------------
# Local files
# --------------------------------------------------------------------------------------------------------------------


def load_local(
    path: str | Path,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    reference_field: str | None = None,
    skip_bad_rows: bool = False,
) -> tuple[list[dict], ReadReport]:
    """Prompt/completion rows from a local .jsonl/.json/.csv file (TRL's field names by default).

    A row missing a field, with a non-string value, or with an empty completion raises `DataError` naming its line,
    or is skipped and counted with `skip_bad_rows`. TRL-style conversational rows (`messages`, or `prompt`/
    `completion` given as message lists) are passed through unchanged.
    """
    records, report = read_records(path, skip_bad_rows=skip_bad_rows)
    rows = []
    for i, (loc, rec) in enumerate(records):
        try:
            rows.append(_local_row(rec, i, prompt_field, completion_field, reference_field))
        except DataError as e:
            if not skip_bad_rows:
                raise DataError(f"{loc}: {e}") from None
            report.skipped.append((loc, str(e)))
    if not rows:
        raise DataError(f"{path}: no usable rows ({len(report.skipped)} skipped)")
    report.rows = len(rows)
    return rows, report


def _local_row(rec, i: int, prompt_field: str, completion_field: str, reference_field: str | None) -> dict:
    if not isinstance(rec, dict):
        raise DataError(f"expected a JSON object, got {type(rec).__name__}")
    if "messages" in rec and prompt_field not in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise DataError("'messages' must be a non-empty list of {'role', 'content'} objects")
        if not any(m["role"] == "assistant" and str(m["content"]).strip() for m in msgs):
            raise DataError("'messages' has no non-empty assistant turn, so there is nothing to learn from")
        return {"id": str(rec.get("id", i)), "messages": msgs}
    missing = [f for f in (prompt_field, completion_field) if f not in rec]
    if missing:
        raise DataError(f"missing field(s) {missing}; found {sorted(rec)} (set --prompt-field/--completion-field)")
    prompt, completion = rec[prompt_field], rec[completion_field]
    if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt/completion
        if not any(str(m.get("content", "")).strip() for m in completion if isinstance(m, dict)):
            raise DataError("empty completion")
        return {"id": str(rec.get("id", i)), "prompt": prompt, "completion": completion, "reference": ""}
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DataError(f"'{prompt_field}' and '{completion_field}' must be strings (or message lists)")
    if not completion.strip():
        raise DataError("empty completion")
    reference = str(rec.get(reference_field, "")) if reference_field else completion
    return {"id": str(rec.get("id", i)), "prompt": prompt, "completion": completion, "reference": reference}


# --------------------------------------------------------------------------------------------------------------------
# Registry and conversion
# --------------------------------------------------------------------------------------------------------------------

TASKS: dict[str, Callable[..., list[dict]]] = {
    "gsm8k": load_gsm8k,
    "arithmetic": load_arithmetic,
}


def load_rows(
    name_or_path: str,
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    skip_bad_rows: bool = False,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    reference_field: str | None = None,
) -> list[dict]:
    """Rows of a named task, a local file, or a `datasets` dataset in the local cache; `limit` takes a seeded sample."""
    if name_or_path in TASKS:
        kwargs = {"split": split}
        if name_or_path == "arithmetic":
            kwargs["seed"] = seed
            if limit is not None:
                kwargs["n"] = limit
        rows = TASKS[name_or_path](**kwargs)
    elif os.path.exists(name_or_path):
        rows, report = load_local(name_or_path, prompt_field, completion_field, reference_field, skip_bad_rows)
        if report.skipped:
            print(f"[tirl] {report.summary()}")
    else:
        rows = _load_hf_dataset(name_or_path, split, prompt_field, completion_field, reference_field, skip_bad_rows)
    if limit is not None and len(rows) > limit:
        rows = random.Random(seed).sample(rows, limit)
    return rows


def _load_hf_dataset(name, split, prompt_field, completion_field, reference_field, skip_bad_rows) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # datasets raises many types for "not found / offline"
        known = ", ".join(sorted(TASKS))
        raise DataError(
            f"{name!r} is not a built-in task ({known}), not a local file, and could not be loaded with "
            f"datasets.load_dataset from the local cache: {e}"
        ) from e
    rows = []
    for i, rec in enumerate(ds):
        try:
            rows.append(_local_row(rec, i, prompt_field, completion_field, reference_field))
        except DataError as err:
            if not skip_bad_rows:
                raise DataError(f"{name}[{split}][{i}]: {err}") from None
    return rows


def to_trl(rows: list[dict], tokenizer) -> list[dict]:
    """Rows in TRL's prompt/completion format: conversational when the tokenizer has a chat template."""
    chat = getattr(tokenizer, "chat_template", None) is not None
    out = []
    for r in rows:
        if "messages" in r:
            out.append({"messages": r["messages"]})
        elif isinstance(r["prompt"], list):
            out.append({"prompt": r["prompt"], "completion": r["completion"]})
        elif chat:
            out.append({"prompt": [{"role": "user", "content": r["prompt"]}], "completion": [{"role": "assistant", "content": r["completion"]}]})
        else:
            out.append({"prompt": r["prompt"] + "\n", "completion": r["completion"]})
    return out
