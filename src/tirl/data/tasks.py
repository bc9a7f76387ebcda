"""The built-in tasks: named datasets as plain prompt/completion rows, with the metric `tirl eval` scores them by.

Every loader returns a list of dicts with string fields `prompt` (the user's message), `completion` (the target
answer), `reference` (what a task metric compares against, e.g. GSM8k's final number) and `id`; rows read from a file
also have `location` (`FILE:LINE`), which names them in warnings and is not part of their checksum. Where each task's
files come from (packaged, a local copy, or online) is `tirl.data.sources`'; the rows, splits and checksums are the
same whichever source serves them.

| task | data | splits | metric |
|---|---|---|---|
| `gsm8k` | packaged with tirl (GSM8k, MIT) | train 7473, test 1319 | `gsm8k` (accuracy) |
| `arithmetic` | generated in code | train, test | `gsm8k` |
| `pick-two`, `between`, `sum-pairs`, `countdown` | generated in code (`tirl.data.many_answer`) | train, validation, test | `valid_set` |
| `xsum`, `xsum-lead` | `xsum/test_1000.jsonl`, else hub `EdinburghNLP/xsum` (test split, the same 1000 ids) | train 800, test 200 | `rouge` |
| `wmt22-de-en`, `wmt22-en-de` | `wmt22/`, `wmt21_newstest/`, else sacreBLEU's WMT22 / WMT21 download | test 1984/2037 | `bleu` |
| `wmt21-de-en`, `wmt21-en-de` | `wmt21_newstest/`, else sacreBLEU's WMT21 download (train/validation only) | 1000/1002 | `bleu` |
| `alpaca` | `alpaca/alpaca_5000.json`, else hub `tatsu-lab/alpaca` (the same 5000 rows) | train 4499, test 499 | `rouge` |
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import many_answer, sources
from .arithmetic import generate as generate_arithmetic
from .io import DataError, read_records

# --------------------------------------------------------------------------------------------------------------------
# GSM8k
# --------------------------------------------------------------------------------------------------------------------

CALCULATOR_ANNOTATION = re.compile(r"<<[^>]*>>")


def gsm8k_final_answer(answer: str) -> str:
    """The gold number after `#### `, with thousands separators removed."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def load_gsm8k(split: str = "train", keep_calculator: bool = False, skip_bad_rows: bool = False) -> list[dict]:
    """GSM8k (openai/grade-school-math, MIT licence), packaged with tirl: `tirl/data/files/gsm8k/{train,test}.jsonl.gz`,
    byte for byte the official files, gzip-compressed.

    Template: prompt = the question; completion = the worked answer ending in `#### <n>`. The `<<48/2=24>>`
    calculator annotations are removed unless `keep_calculator` (they are tool calls, not text to imitate).
    """
    _check_split("gsm8k", split, ("train", "test"))
    records, _ = read_records(sources.packaged(f"gsm8k/{split}.jsonl.gz"), skip_bad_rows=skip_bad_rows)
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
    """XSum, 1000 documents of the official test split: the local copy `xsum/test_1000.jsonl`, else the hub's
    `EdinburghNLP/xsum` test split restricted to the same ids (`tirl/data/files/xsum/test_1000_ids.txt`).

    Split rule: the documents are ranked by sha256 of their BBC id written in decimal (`_split_rank(str(id))`); the
    first 200 in that order are `test`, the other 800 `train` (`validation` is an alias of `train`). The rule depends
    only on the ids, so it is the same whatever the file order, and it does not follow the ids' publication order.

    Template: prompt = `XSUM_TEMPLATE` with the article (its sentences one per line, as in the file);
    completion = reference = the one-sentence reference summary (scored with ROUGE).
    """
    _check_split("xsum", split, ("train", "validation", "test"))
    records = _xsum_records(skip_bad_rows)
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


def _xsum_records(skip_bad_rows: bool) -> list[tuple[str, object]]:
    local = sources.local_copy("xsum")
    if local is not None and (local / "test_1000.jsonl").is_file():
        return read_records(local / "test_1000.jsonl", skip_bad_rows=skip_bad_rows)[0]
    ids = sources.packaged("xsum/test_1000_ids.txt").read_text().split()
    wanted = set(ids)
    rows = sources.hub_dataset("xsum", "xsum", "EdinburghNLP/xsum", "test")
    found = {str(r["id"]): r for r in rows if str(r.get("id")) in wanted}
    missing = wanted - set(found)
    if missing:
        raise DataError(f"the hub's EdinburghNLP/xsum test split lacks {len(missing)} of the 1000 documents tirl uses "
                        f"(e.g. id {sorted(missing)[0]}); use the local copy (${sources.DATA_DIR_ENV}/xsum)")
    return [(f"EdinburghNLP/xsum[test][id={i}]", {"id": int(i), "document": found[i]["document"],
                                                  "summary": found[i]["summary"]}) for i in ids]


# --------------------------------------------------------------------------------------------------------------------
# WMT (translation)
# --------------------------------------------------------------------------------------------------------------------

LANGUAGES = {"de": "German", "en": "English", "cs": "Czech", "fr": "French", "ru": "Russian", "zh": "Chinese"}
WMT_TEMPLATE = "Translate the following {src} text into {tgt}. Reply with the translation only.\n\n{text}"


def _wmt_files(year: int, pair: str) -> tuple[Path, Path]:
    """(source file, reference-A file) of WMT22 generaltest2022 or WMT21 newstest2021 for `pair` ('de-en', ...): the
    local copy, else sacreBLEU's download of the same official test set."""
    src, tgt = pair.split("-")
    if year not in (21, 22):
        raise DataError(f"no WMT{year} data here; use 21 or 22")
    subdir, stem = ("wmt22", f"generaltest2022.{pair}") if year == 22 else ("wmt21_newstest", f"newstest2021.{pair}")
    root = sources.local_copy(subdir)
    if root is None:
        return sources.sacrebleu_files(f"wmt{year}-{pair}", subdir, f"wmt{year}", pair)
    source, reference = root / "sources" / f"{stem}.src.{src}", root / "references" / f"{stem}.ref.A.{tgt}"
    for p in (source, reference):
        if not p.is_file():
            raise DataError(f"{p}: no such file (WMT{year} {pair} is not in the local copy)")
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
    """Stanford Alpaca, a 5000-example subset: the local copy `alpaca/alpaca_5000.json`, else the same rows, in the same
    order, of the hub's `tatsu-lab/alpaca` (selected by the hashes in `tirl/data/files/alpaca/alpaca_5000.sha256`).

    Split rule: the file is itself a uniform random sample of the 52K set, so the split is positional: entries
    0–4499 are `train` (`validation` is an alias), 4500–4999 `test`. The two entries with an empty `output`
    (positions 2335 and 4658) are dropped, as there is nothing to imitate or score: 4499 train, 499 test rows.

    Template: prompt = the instruction, followed by a blank line and the input when the input is not empty;
    completion = reference = the output (scored with ROUGE against it, a rough proxy for open-ended answers).
    """
    _check_split("alpaca", split, ("train", "validation", "test"))
    records = _alpaca_records(skip_bad_rows)
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


def _alpaca_hash(rec: dict) -> str:
    return hashlib.sha256(json.dumps([rec["instruction"], rec["input"], rec["output"]], ensure_ascii=False)
                          .encode()).hexdigest()[:20]


def _alpaca_records(skip_bad_rows: bool) -> list[tuple[str, object]]:
    local = sources.local_copy("alpaca")
    if local is not None and (local / "alpaca_5000.json").is_file():
        return read_records(local / "alpaca_5000.json", skip_bad_rows=skip_bad_rows)[0]
    order = sources.packaged("alpaca/alpaca_5000.sha256").read_text().split()
    by_hash = {_alpaca_hash(r): r for r in sources.hub_dataset("alpaca", "alpaca", "tatsu-lab/alpaca", "train")}
    missing = [h for h in order if h not in by_hash]
    if missing:
        raise DataError(f"the hub's tatsu-lab/alpaca lacks {len(missing)} of the 5000 rows tirl uses; use the local "
                        f"copy (${sources.DATA_DIR_ENV}/alpaca)")
    return [(f"tatsu-lab/alpaca[train][{h}]", by_hash[h]) for h in order]




# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskInfo:
    """A built-in task: its loader, the metric family `tirl eval` scores it with (a name in
    `tirl.evaluation.families.METRIC_FAMILIES`), a one-line description, where its data comes from and under which
    licence."""

    loader: Callable[..., list[dict]]
    metric: str
    description: str
    source: str
    licence: str


_MANY = ("generated in code", "tirl's (Apache-2.0)")
_WMT = ("local copy, else sacreBLEU's download of the official test sets", "WMT: research use")
TASK_INFO: dict[str, TaskInfo] = {
    "gsm8k": TaskInfo(load_gsm8k, "gsm8k", "GSM8k grade-school maths (train 7473 / test 1319)",
                      "packaged with tirl (openai/grade-school-math)", "MIT"),
    "arithmetic": TaskInfo(load_arithmetic, "gsm8k", "generated GSM8k-style arithmetic (no files needed)", *_MANY),
    "pick-two": TaskInfo(_many_answer_loader("pick-two"), "valid_set", "many answers: two different words from a list "
                         "of 3-6 (6-30 valid answers, uniform expert; train 200 prompts x 4 / test 50)", *_MANY),
    "between": TaskInfo(_many_answer_loader("between"), "valid_set", "many answers: a whole number between two bounds "
                        "(2-20 valid answers, uniform expert; train 200 prompts x 4 / test 50)", *_MANY),
    "sum-pairs": TaskInfo(_many_answer_loader("sum-pairs"), "valid_set", "many answers: two numbers up to M that add "
                          "up to N (2-25 valid answers, uniform expert; train 200 prompts x 4 / test 50)", *_MANY),
    "countdown": TaskInfo(_many_answer_loader("countdown"), "valid_set", "many answers: an expression of a, b, c with "
                          "+ and - that equals N (2-6 valid answers, uniform expert)", *_MANY),
    "xsum": TaskInfo(load_xsum, "rouge", "XSum one-sentence summaries, 1000-document subset (train 800 / test 200)",
                     "local copy, else the hub's EdinburghNLP/xsum", "BBC articles: research use"),
    "xsum-lead": TaskInfo(load_xsum_lead, "rouge", f"XSum with each article cut to its first ~{XSUM_LEAD_WORDS} words "
                          "(CPU-sized; same documents and splits)", "as xsum", "BBC articles: research use"),
    "wmt22-de-en": TaskInfo(_wmt_loader("de-en", 22), "bleu", "WMT22 German→English (test; train = WMT21)", *_WMT),
    "wmt22-en-de": TaskInfo(_wmt_loader("en-de", 22), "bleu", "WMT22 English→German (test; train = WMT21)", *_WMT),
    "wmt21-de-en": TaskInfo(_wmt_loader("de-en", 21), "bleu", "WMT21 newstest German→English (train/dev side)", *_WMT),
    "wmt21-en-de": TaskInfo(_wmt_loader("en-de", 21), "bleu", "WMT21 newstest English→German (train/dev side)", *_WMT),
    "alpaca": TaskInfo(load_alpaca, "rouge", "Alpaca instructions, 5000-example subset (train 4499 / test 499)",
                       "local copy, else the hub's tatsu-lab/alpaca", "CC BY-NC 4.0 (non-commercial)"),
}

# name -> loader, the registry `load_rows` dispatches on
TASKS: dict[str, Callable[..., list[dict]]] = {name: info.loader for name, info in TASK_INFO.items()}


def task_metric(name_or_path: str) -> str:
    """The name of the metric family a dataset is scored with (`tirl.evaluation.families`): 'gsm8k' (answer
    accuracy), 'rouge', 'bleu' (BLEU + chrF), 'valid_set' (many-answer tasks).

    Built-in tasks have their own (`TASK_INFO`); a local file or cached `datasets` dataset gets 'rouge' against its
    reference (the completion unless a reference field is given), the generic text-overlap score.
    """
    info = TASK_INFO.get(name_or_path)
    return info.metric if info is not None else "rouge"
