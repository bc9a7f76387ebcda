"""Named datasets as plain prompt/completion rows, and the conversion to TRL's formats.

Every loader returns a list of dicts with string fields `prompt` (the user's message), `completion` (the target
answer), `reference` (what a task metric compares against, e.g. GSM8k's final number) and `id`; rows read from a file
also have `location` (`FILE:LINE`), which names them in warnings and is not part of their checksum. `to_trl` turns them
into TRL's conversational prompt/completion format when the tokenizer has a chat template, else into TRL's standard
prompt/completion format with the prompt followed by a newline (TRL appends EOS to the completion).

Built-in tasks (`TASK_INFO`; `task_metric(name)` gives the metric family `tirl eval` scores them with):

| task | source (`../shared/data/...`) | splits | metric |
|---|---|---|---|
| `gsm8k` | `gsm8k/{train,test}.jsonl` | train 7473, test 1319 | `gsm8k` (accuracy) |
| `arithmetic` | generated in code | train, test | `gsm8k` |
| `xsum` | `xsum/test_1000.jsonl`, split by id | train 800, test 200 | `rouge` |
| `xsum-lead` | the same, each article cut to its first ~120 words | train 800, test 200 | `rouge` |
| `wmt22-de-en`, `wmt22-en-de` | test: `wmt22` generaltest2022; train/validation: `wmt21_newstest` | test 1984/2037 | `bleu` |
| `wmt21-de-en`, `wmt21-en-de` | `wmt21_newstest` newstest2021 (train/validation only) | 1000/1002 | `bleu` |
| `alpaca` | `alpaca/alpaca_5000.json`, split by position | train 4499, test 499 | `rouge` |
"""

from __future__ import annotations

import hashlib
import inspect
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import many_answer
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
    """`../shared/data/<subdir>`, or a `DataError` that says how to point `tirl` at the shared folder."""
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
    _check_split("gsm8k", split, ("train", "test"))
    path = require_shared("gsm8k") / f"{split}.jsonl"
    records, _ = read_records(path, skip_bad_rows=skip_bad_rows)
    rows = []
    for i, (loc, rec) in enumerate(records):
        if not isinstance(rec, dict) or not {"question", "answer"} <= rec.keys():
            if skip_bad_rows:
                continue
            raise DataError(f"{loc}: expected fields 'question' and 'answer'")
        answer = rec["answer"] if keep_calculator else CALCULATOR_ANNOTATION.sub("", rec["answer"])
        rows.append({"id": f"gsm8k-{split}-{i}", "prompt": rec["question"], "completion": answer,
                     "reference": gsm8k_final_answer(answer), "location": loc})
    return rows


def load_arithmetic(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """The generated arithmetic task (see `tirl.data.arithmetic`); 2,000 train / 200 test problems by default."""
    return generate_arithmetic(n if n is not None else (2000 if split == "train" else 200), seed=seed, split=split)


def _check_split(task: str, split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise DataError(f"the {task!r} task has no split {split!r}; choose from {', '.join(valid)}")


def _split_rank(key: str) -> str:
    """A stable pseudo-random rank for `key` (sha256 of its text): the same on every machine and Python version."""
    return hashlib.sha256(key.encode()).hexdigest()


def _many_answer_loader(task: str) -> Callable[..., list[dict]]:
    def load(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
        per_prompt = many_answer.COMPLETIONS_PER_PROMPT if split == "train" else 1
        prompts = None if n is None else -(-n // per_prompt)
        rows = many_answer.generate(task, split=split, n=prompts, seed=seed)
        return rows if n is None else rows[:n]

    load.__name__ = f"load_{task.replace('-', '_')}"
    load.__doc__ = (f"The many-answer task {task!r} (`tirl.data.many_answer`): n rows, whole prompts first (train: "
                    f"{many_answer.COMPLETIONS_PER_PROMPT} rows per prompt).")
    return load


# --------------------------------------------------------------------------------------------------------------------
# XSum (summarisation)
# --------------------------------------------------------------------------------------------------------------------

XSUM_TEMPLATE = "Summarize the following BBC news article in one sentence.\n\n{document}"
XSUM_TEST_SIZE = 200


def lead(document: str, max_words: int) -> str:
    """The first sentences (lines) of a document up to `max_words` words in all; at least the first sentence, itself
    cut to `max_words` words when it is longer."""
    kept, count = [], 0
    for line in document.strip().split("\n"):
        words = line.split()
        if kept and count + len(words) > max_words:
            break
        kept.append(line if len(words) <= max_words else " ".join(words[:max_words]))
        count += len(words)
    return "\n".join(kept)


XSUM_LEAD_WORDS = 120


def load_xsum_lead(split: str = "test", skip_bad_rows: bool = False) -> list[dict]:
    """`load_xsum` with each article cut to its lead: whole sentences up to `XSUM_LEAD_WORDS` words (median article:
    293 words). The same documents, splits and references; a quarter of the tokens, so 135M-model experiments fit
    a 2-core CPU. BBC articles put the gist first, but a summary may use facts from later sentences: scores are lower
    than on full articles and comparable only with each other."""
    rows = load_xsum(split, skip_bad_rows=skip_bad_rows, max_document_words=XSUM_LEAD_WORDS)
    return [{**r, "id": r["id"].replace("xsum-", "xsum-lead-", 1)} for r in rows]


def load_xsum(split: str = "test", skip_bad_rows: bool = False, max_document_words: int | None = None) -> list[dict]:
    """XSum from `../shared/data/xsum/test_1000.jsonl` (1000 documents of the official XSum test split).

    Split rule: the documents are ranked by sha256 of their BBC id written in decimal (`_split_rank(str(id))`); the
    first 200 in that order are `test`, the other 800 `train` (`validation` is an alias of `train`). The rule depends
    only on the ids, so it is the same whatever the file order, and it does not follow the ids' publication order.

    Template: prompt = `XSUM_TEMPLATE` with the article (its sentences one per line, as in the file);
    completion = reference = the one-sentence reference summary (scored with ROUGE).
    """
    _check_split("xsum", split, ("train", "validation", "test"))
    path = require_shared("xsum") / "test_1000.jsonl"
    records, _ = read_records(path, skip_bad_rows=skip_bad_rows)
    usable = []
    for loc, rec in records:
        if not isinstance(rec, dict) or not isinstance(rec.get("document"), str) or not isinstance(rec.get("summary"), str) \
                or "id" not in rec or not rec["summary"].strip():
            if skip_bad_rows:
                continue
            raise DataError(f"{loc}: expected string fields 'document' and 'summary' (non-empty) and an 'id'")
        usable.append((loc, rec))
    ranked = sorted(usable, key=lambda lr: _split_rank(str(lr[1]["id"])))
    chosen = ranked[:XSUM_TEST_SIZE] if split == "test" else ranked[XSUM_TEST_SIZE:]
    chosen.sort(key=lambda lr: int(lr[1]["id"]))  # a readable, stable order inside each split
    return [
        {"id": f"xsum-{r['id']}", "prompt": XSUM_TEMPLATE.format(
            document=r["document"].strip() if max_document_words is None else lead(r["document"], max_document_words)),
         "completion": r["summary"].strip(), "reference": r["summary"].strip(), "location": loc}
        for loc, r in chosen
    ]


# --------------------------------------------------------------------------------------------------------------------
# WMT (translation)
# --------------------------------------------------------------------------------------------------------------------

LANGUAGES = {"de": "German", "en": "English", "cs": "Czech", "fr": "French", "ru": "Russian", "zh": "Chinese"}
WMT_TEMPLATE = "Translate the following {src} text into {tgt}. Reply with the translation only.\n\n{text}"


def _wmt_files(year: int, pair: str) -> tuple[Path, Path]:
    """(source file, reference-A file) of WMT22 generaltest2022 or WMT21 newstest2021 for `pair` ('de-en', ...)."""
    src, tgt = pair.split("-")
    if year == 22:
        root, stem = require_shared("wmt22"), f"generaltest2022.{pair}"
    elif year == 21:
        root, stem = require_shared("wmt21_newstest"), f"newstest2021.{pair}"
    else:
        raise DataError(f"no WMT{year} data here; use 21 or 22")
    source, reference = root / "sources" / f"{stem}.src.{src}", root / "references" / f"{stem}.ref.A.{tgt}"
    for p in (source, reference):
        if not p.is_file():
            raise DataError(f"{p}: no such file (WMT{year} {pair} is not in the shared data)")
    return source, reference


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from e
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def load_wmt(pair: str, year: int = 22, split: str = "test", skip_bad_rows: bool = False) -> list[dict]:
    """One WMT translation direction as rows; `pair` is 'src-tgt' (e.g. 'de-en'), one segment per row.

    Which file each split reads (there is no WMT training corpus in the shared data; WMT21's newstest2021 is the
    customary dev set of WMT22, so it serves as the train/dev side):

    - `year=22`: `test` → `wmt22/sources/generaltest2022.<pair>.src.<src>` with `references/...ref.A.<tgt>`;
      `train` and `validation` → the WMT21 newstest2021 files below.
    - `year=21`: `train` and `validation` → `wmt21_newstest/sources/newstest2021.<pair>.src.<src>` with
      `references/newstest2021.<pair>.ref.A.<tgt>`; there is no `test` split (evaluate on `wmt22-<pair>`), so a
      training run on it is never evaluated on its own training segments.

    Template: prompt = `WMT_TEMPLATE` (e.g. "Translate the following German text into English. Reply with the
    translation only." then the segment); completion = reference = reference translation A (scored with sacreBLEU
    BLEU and chrF). A line-count mismatch between source and reference, or an empty line, is an error naming the
    file and line (or the segment is skipped with `skip_bad_rows`).
    """
    valid = ("train", "validation", "test") if year == 22 else ("train", "validation")
    _check_split(f"wmt{year}-{pair}", split, valid)
    file_year = 22 if (year == 22 and split == "test") else 21
    source, reference = _wmt_files(file_year, pair)
    src_lines, ref_lines = _read_lines(source), _read_lines(reference)
    if len(src_lines) != len(ref_lines):
        raise DataError(f"{source} has {len(src_lines)} lines but {reference} has {len(ref_lines)}; they must align")
    src, tgt = pair.split("-")
    rows = []
    for i, (s, r) in enumerate(zip(src_lines, ref_lines, strict=True)):
        if not s.strip() or not r.strip():
            if skip_bad_rows:
                continue
            bad = source if not s.strip() else reference
            raise DataError(f"{bad}:{i + 1}: empty segment")
        prompt = WMT_TEMPLATE.format(src=LANGUAGES.get(src, src), tgt=LANGUAGES.get(tgt, tgt), text=s.strip())
        rows.append({"id": f"wmt{file_year}-{pair}-{i}", "prompt": prompt, "completion": r.strip(), "reference": r.strip(),
                     "location": f"{source}:{i + 1}"})
    return rows


def _wmt_loader(pair: str, year: int) -> Callable[..., list[dict]]:
    def load(split: str = "test" if year == 22 else "train", skip_bad_rows: bool = False) -> list[dict]:
        return load_wmt(pair, year=year, split=split, skip_bad_rows=skip_bad_rows)

    load.__name__ = f"load_wmt{year}_{pair.replace('-', '_')}"
    load.__doc__ = f"WMT{year} {pair}: see `load_wmt` for which file each split reads."
    return load


# --------------------------------------------------------------------------------------------------------------------
# Alpaca (instruction following)
# --------------------------------------------------------------------------------------------------------------------

ALPACA_TEST_START = 4500


def load_alpaca(split: str = "train", skip_bad_rows: bool = False) -> list[dict]:
    """Stanford Alpaca, the 5000-example subset `../shared/data/alpaca/alpaca_5000.json`.

    Split rule: the file is itself a uniform random sample of the 52K set, so the split is positional: entries
    0–4499 are `train` (`validation` is an alias), 4500–4999 `test`. The two entries with an empty `output`
    (positions 2335 and 4658) are dropped, as there is nothing to imitate or score: 4499 train, 499 test rows.

    Template: prompt = the instruction, followed by a blank line and the input when the input is not empty;
    completion = reference = the output (scored with ROUGE against it, a rough proxy for open-ended answers).
    """
    _check_split("alpaca", split, ("train", "validation", "test"))
    path = require_shared("alpaca") / "alpaca_5000.json"
    records, _ = read_records(path, skip_bad_rows=skip_bad_rows)
    rows = []
    for i, (loc, rec) in enumerate(records):
        if (i >= ALPACA_TEST_START) != (split == "test"):
            continue
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("instruction", "input", "output")):
            if skip_bad_rows:
                continue
            raise DataError(f"{loc}: expected string fields 'instruction', 'input' and 'output'")
        if not rec["output"].strip():
            continue  # documented above: two entries of the published file have no output
        instruction, extra = rec["instruction"].strip(), rec["input"].strip()
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        rows.append({"id": f"alpaca-{i}", "prompt": prompt, "completion": rec["output"].strip(),
                     "reference": rec["output"].strip(), "location": loc})
    return rows


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
            rows.append({**_local_row(rec, i, prompt_field, completion_field, reference_field), "location": loc})
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

METRIC_FAMILIES = ("gsm8k", "rouge", "bleu", "valid_set", "none")


@dataclass(frozen=True)
class TaskInfo:
    """A built-in task: its loader, the metric family `tirl eval` scores it with, and a one-line description."""

    loader: Callable[..., list[dict]]
    metric: str
    description: str


TASK_INFO: dict[str, TaskInfo] = {
    "gsm8k": TaskInfo(load_gsm8k, "gsm8k", "GSM8k grade-school maths (train 7473 / test 1319)"),
    "arithmetic": TaskInfo(load_arithmetic, "gsm8k", "generated GSM8k-style arithmetic (no files needed)"),
    "sum-pairs": TaskInfo(_many_answer_loader("sum-pairs"), "valid_set", "generated: two numbers that add up to N, "
                          "2-25 valid answers per prompt, uniform expert (train 200 prompts x 4 / test 50)"),
    "countdown": TaskInfo(_many_answer_loader("countdown"), "valid_set", "generated: an expression of a, b, c that "
                          "equals N, 2-6 valid answers per prompt, uniform expert (train 200 prompts x 4 / test 50)"),
    "pick-two": TaskInfo(_many_answer_loader("pick-two"), "valid_set", "generated: two different words from a list of "
                         "3-6, 6-30 valid answers per prompt, uniform expert (train 200 prompts x 4 / test 50)"),
    "between": TaskInfo(_many_answer_loader("between"), "valid_set", "generated: a whole number between two bounds, "
                        "2-20 valid answers per prompt, uniform expert (train 200 prompts x 4 / test 50)"),
    "xsum": TaskInfo(load_xsum, "rouge", "XSum one-sentence summaries, 1000-document subset (train 800 / test 200)"),
    "xsum-lead": TaskInfo(load_xsum_lead, "rouge", f"XSum with each article cut to its first ~{XSUM_LEAD_WORDS} words "
                          "(CPU-sized; same documents and splits)"),
    "wmt22-de-en": TaskInfo(_wmt_loader("de-en", 22), "bleu", "WMT22 German→English (test; train = WMT21)"),
    "wmt22-en-de": TaskInfo(_wmt_loader("en-de", 22), "bleu", "WMT22 English→German (test; train = WMT21)"),
    "wmt21-de-en": TaskInfo(_wmt_loader("de-en", 21), "bleu", "WMT21 newstest German→English (train/dev side)"),
    "wmt21-en-de": TaskInfo(_wmt_loader("en-de", 21), "bleu", "WMT21 newstest English→German (train/dev side)"),
    "alpaca": TaskInfo(load_alpaca, "rouge", "Alpaca instructions, 5000-example subset (train 4499 / test 499)"),
}

# name -> loader, the registry `load_rows` dispatches on
TASKS: dict[str, Callable[..., list[dict]]] = {name: info.loader for name, info in TASK_INFO.items()}


def task_metric(name_or_path: str) -> str:
    """The metric family a dataset is scored with: 'gsm8k' (answer accuracy), 'rouge', 'bleu' (BLEU + chrF).

    Built-in tasks have their own (`TASK_INFO`); a local file or cached `datasets` dataset gets 'rouge' against its
    reference (the completion unless a reference field is given), the generic text-overlap score.
    """
    info = TASK_INFO.get(name_or_path)
    return info.metric if info is not None else "rouge"


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
    """Rows of a named task, a local file, or a hub dataset (`datasets.load_dataset`); `limit` takes a seeded sample."""
    if name_or_path in TASKS:
        loader = TASKS[name_or_path]
        # each loader takes the subset of these it understands (a generated task makes exactly `n` rows)
        offered = {"split": split, "seed": seed, "skip_bad_rows": skip_bad_rows, "n": limit}
        accepted = inspect.signature(loader).parameters
        rows = loader(**{k: v for k, v in offered.items() if k in accepted and not (k == "n" and v is None)})
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

    known = ", ".join(sorted(TASKS))
    if name.endswith((".jsonl", ".json", ".csv", ".gz")) or name.startswith(("/", ".", "~")):
        raise DataError(f"{name}: no such file (nor a built-in task: {known})")
    source = _hub_dataset_source(name, known)
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # datasets raises many types for "not found / no such split / unreadable"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{name!r} is not a built-in task ({known}), not a local file, and datasets.load_dataset "
                        f"could not load it: {first}") from e
    rows = []
    for i, rec in enumerate(ds):
        try:
            rows.append(_local_row(rec, i, prompt_field, completion_field, reference_field))
        except DataError as err:
            if not skip_bad_rows:
                raise DataError(f"{name}[{split}][{i}]: {err}") from None
    return rows


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
