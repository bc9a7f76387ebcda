"""Loaders of the real datasets in ../shared/data (skipped when it is absent) and the task registry."""

import json
import re

import pytest

from tirl.data import TASK_INFO, TASKS, DataError, load_rows, load_wmt, task_metric
from tirl.data.tasks import _split_rank

ROW_KEYS = {"id", "prompt", "completion", "reference"}


def _check_rows(rows):
    """Rows of a file-backed task: the four fields, plus where each was read (`FILE:LINE`)."""
    assert rows and all(set(r) == ROW_KEYS | {"location"} for r in rows)
    assert all(isinstance(r[k], str) and r[k].strip() for r in rows for k in ROW_KEYS)
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(re.fullmatch(r".+:[1-9][0-9]*", r["location"]) for r in rows)


def test_registry_and_metric_families():
    assert set(TASKS) == set(TASK_INFO) >= {"gsm8k", "arithmetic", "xsum", "wmt22-de-en", "wmt22-en-de",
                                            "wmt21-de-en", "wmt21-en-de", "alpaca"}
    assert task_metric("gsm8k") == task_metric("arithmetic") == "gsm8k"
    assert task_metric("xsum") == task_metric("alpaca") == "rouge"
    assert task_metric("wmt22-de-en") == task_metric("wmt21-en-de") == "bleu"
    assert task_metric("my_file.jsonl") == "rouge"


def test_docs_data_table_is_the_registry():
    """docs/data.md lists each built-in task with where its data comes from and its licence, as the registry says."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    rows = [f"| `{name}` | {t.description} | {t.source} | {t.licence} |" for name, t in TASK_INFO.items()]
    assert all(row in text for row in rows), [row for row in rows if row not in text]


def test_load_rows_passes_each_loader_its_own_options():
    rows = load_rows("arithmetic", split="test", limit=7, seed=3)
    assert len(rows) == 7 and rows == load_rows("arithmetic", split="test", limit=7, seed=3)
    assert rows != load_rows("arithmetic", split="test", limit=7, seed=4)


def test_xsum_split_800_200_by_id(shared_data):
    train, test = load_rows("xsum", split="train"), load_rows("xsum", split="test")
    _check_rows(train)
    _check_rows(test)
    assert (len(train), len(test)) == (800, 200)
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    # the documented rule: the 200 ids with the smallest sha256(str(id)) are the test split
    ids = [json.loads(line)["id"] for line in (shared_data / "xsum" / "test_1000.jsonl").read_text().splitlines()]
    expected_test = set(sorted(ids, key=lambda i: _split_rank(str(i)))[:200])
    assert {int(r["id"].removeprefix("xsum-")) for r in test} == expected_test
    first = test[0]
    assert first["prompt"].startswith("Summarize the following BBC news article in one sentence.\n\n")
    assert first["completion"] == first["reference"] and "\n" not in first["reference"]
    assert load_rows("xsum", split="validation") == train
    with pytest.raises(DataError, match="no split 'dev'"):
        load_rows("xsum", split="dev")


@pytest.mark.parametrize(("name", "test_rows", "train_rows", "src", "tgt"), [
    ("wmt22-de-en", 1984, 1000, "German", "English"),
    ("wmt22-en-de", 2037, 1002, "English", "German"),
])
def test_wmt22_test_and_wmt21_train_side(shared_data, name, test_rows, train_rows, src, tgt):
    test, train = load_rows(name, split="test"), load_rows(name, split="train")
    _check_rows(test)
    _check_rows(train)
    assert (len(test), len(train)) == (test_rows, train_rows)
    assert test[0]["prompt"].startswith(f"Translate the following {src} text into {tgt}.")
    pair = name.split("-", 1)[1]
    # line i of the source and reference-A files is row i
    src_file = shared_data / "wmt22" / "sources" / f"generaltest2022.{pair}.src.{pair[:2]}"
    ref_file = shared_data / "wmt22" / "references" / f"generaltest2022.{pair}.ref.A.{pair[3:]}"
    assert test[5]["prompt"].endswith(src_file.read_text(encoding="utf-8").splitlines()[5].strip())
    assert test[5]["reference"] == ref_file.read_text(encoding="utf-8").splitlines()[5].strip()
    assert train[0]["id"].startswith("wmt21-") and train == load_rows(f"wmt21-{pair}", split="train")
    with pytest.raises(DataError, match="no split 'test'"):
        load_rows(f"wmt21-{pair}", split="test")


def test_wmt_misaligned_files_are_reported(tmp_path, monkeypatch):
    for d in ("gsm8k", "wmt22/sources", "wmt22/references", "wmt21_newstest/sources", "wmt21_newstest/references"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "wmt22/sources/generaltest2022.de-en.src.de").write_text("eins\nzwei\n")
    (tmp_path / "wmt22/references/generaltest2022.de-en.ref.A.en").write_text("one\n")
    (tmp_path / "wmt21_newstest/sources/newstest2021.de-en.src.de").write_text("eins\n\ndrei\n")
    (tmp_path / "wmt21_newstest/references/newstest2021.de-en.ref.A.en").write_text("one\ntwo\nthree\n")
    monkeypatch.setenv("TIRL_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="has 2 lines but .* has 1"):
        load_wmt("de-en", year=22, split="test")
    with pytest.raises(DataError, match=r"newstest2021.de-en.src.de:2: empty segment"):
        load_wmt("de-en", year=21, split="train")
    rows = load_wmt("de-en", year=21, split="train", skip_bad_rows=True)
    assert [r["reference"] for r in rows] == ["one", "three"]


def test_alpaca_fixed_split(shared_data):
    train, test = load_rows("alpaca", split="train"), load_rows("alpaca", split="test")
    _check_rows(train)
    _check_rows(test)
    assert (len(train), len(test)) == (4499, 499)  # 4500 + 500, less the two entries with an empty output
    assert train[0]["id"] == "alpaca-0" and test[0]["id"] == "alpaca-4500"
    # instruction + blank line + input when there is an input; the instruction alone otherwise
    data = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    assert train[0]["prompt"] == data[0]["instruction"].strip() + "\n\n" + data[0]["input"].strip()
    no_input = next(i for i, d in enumerate(data[:4500]) if not d["input"].strip() and d["output"].strip())
    assert next(r for r in train if r["id"] == f"alpaca-{no_input}")["prompt"] == data[no_input]["instruction"].strip()
    assert not any(r["id"] in ("alpaca-2335", "alpaca-4658") for r in train + test)


def test_gsm8k_rows_and_bad_split():
    rows = load_rows("gsm8k", split="test")
    _check_rows(rows)
    assert len(rows) == 1319 and rows[0]["reference"] == "18"
    with pytest.raises(DataError, match="no split 'validation'"):
        load_rows("gsm8k", split="validation")


@pytest.mark.parametrize("name,online", [
    ("xsum", "Hugging Face Hub dataset EdinburghNLP/xsum"),
    ("xsum-lead", "Hugging Face Hub dataset EdinburghNLP/xsum"),
    ("alpaca", "Hugging Face Hub dataset tatsu-lab/alpaca"),
    ("wmt22-de-en", "sacreBLEU's download of wmt21 de-en"),  # its train split is WMT21's
    ("wmt21-en-de", "sacreBLEU's download of wmt21 en-de"),
])
def test_without_a_local_copy_or_network_each_task_names_its_source_in_one_line(name, online, tmp_path, monkeypatch):
    """No data folder (`$TIRL_DATA_DIR` empty), no hub (the tests run with HF_HUB_OFFLINE=1) and no network: one line
    naming where the data would come from and the variable that points at a local copy."""
    monkeypatch.setenv("TIRL_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as e:
        load_rows(name, split="train")
    message = str(e.value)
    assert "\n" not in message and online in message and "$TIRL_DATA_DIR" in message and "no local copy" in message


def test_preferences_without_a_local_copy_name_the_hub_dataset(tmp_path, monkeypatch):
    from tirl.data.preferences import load_preferences

    monkeypatch.setenv("TIRL_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"Anthropic/hh-rlhf .*\$TIRL_DATA_DIR"):
        load_preferences("hh_rlhf")


def test_gsm8k_is_packaged_and_equals_the_official_files(tmp_path, monkeypatch):
    """The demo's task needs no data folder: GSM8k ships in the package, and its rows are those of the official files
    (when the local copy is here to compare with)."""
    from tirl.data import local_data_dir
    from tirl.jobs.runinfo import rows_checksum

    shared = local_data_dir()
    monkeypatch.setenv("TIRL_DATA_DIR", str(tmp_path))
    packaged = {split: load_rows("gsm8k", split=split) for split in ("train", "test")}
    assert len(packaged["train"]) == 7473 and len(packaged["test"]) == 1319
    if shared is None or not (shared / "gsm8k").is_dir():
        pytest.skip("no local GSM8k copy to compare the packaged one with (../shared/data/gsm8k)")
    from tirl.data import read_records
    from tirl.data.tasks import CALCULATOR_ANNOTATION

    for split, rows in packaged.items():
        records, _ = read_records(shared / "gsm8k" / f"{split}.jsonl")
        assert [r["prompt"] for r in rows] == [rec["question"] for _, rec in records]
        assert [r["completion"] for r in rows] == [CALCULATOR_ANNOTATION.sub("", rec["answer"]) for _, rec in records]
    assert rows_checksum(packaged["test"]) == rows_checksum(load_rows("gsm8k", split="test"))


def test_xsum_lead_keeps_whole_sentences_up_to_the_word_budget(shared_data):
    from tirl.data.tasks import XSUM_LEAD_WORDS, lead

    assert lead("a b c\nd e\nf g h i", 5) == "a b c\nd e"
    assert lead("a b c d e f g", 3) == "a b c"  # a first sentence longer than the budget is cut
    full = {r["id"].removeprefix("xsum-"): r for r in load_rows("xsum", split="test", limit=None)}
    short = load_rows("xsum-lead", split="test", limit=None)
    assert len(short) == len(full) == 200
    for r in short:
        f = full[r["id"].removeprefix("xsum-lead-")]
        assert r["reference"] == f["reference"]
        body = r["prompt"].split("\n\n", 1)[1]
        assert len(body.split()) <= XSUM_LEAD_WORDS and f["prompt"].startswith(r["prompt"][: len(r["prompt"]) - 1])
