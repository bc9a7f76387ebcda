"""Datasets: the generated task, GSM8k from the shared folder, local files and their errors."""

import json

import pytest

from tirl.data import DataError, generate_arithmetic, gsm8k_final_answer, load_local, load_rows, to_trl
from tirl.models import char_tokenizer


def test_arithmetic_is_deterministic_disjoint_and_correct():
    a = generate_arithmetic(300, seed=1)
    assert a == generate_arithmetic(300, seed=1)
    test = generate_arithmetic(100, seed=7, split="test")
    assert not {r["prompt"] for r in a} & {r["prompt"] for r in test}
    for r in a[:50]:
        assert r["completion"].endswith(f"#### {r['reference']}")
        # every worked step is arithmetic that checks out
        for line in r["completion"].splitlines()[:-1]:
            lhs, rhs = line.split(" = ")[0].split()[-3:], line.split(" = ")[1].split()[0]
            x, op, y = lhs
            assert eval(f"{x}{op.replace('/', '//')}{y}") == int(rhs)


def test_gsm8k_from_shared_data(shared_data):
    rows = load_rows("gsm8k", split="train")
    assert len(rows) == 7473
    first = rows[0]
    assert first["prompt"].startswith("Natalia sold clips") and first["reference"] == "72"
    assert "<<" not in first["completion"] and first["completion"].endswith("#### 72")
    test = load_rows("gsm8k", split="test", limit=10, seed=0)
    assert len(test) == 10 and test == load_rows("gsm8k", split="test", limit=10, seed=0)
    assert gsm8k_final_answer("so\n#### 1,234") == "1234"


def test_to_trl_formats():
    rows = [{"id": "0", "prompt": "q", "completion": "a", "reference": "a"}]
    conv = to_trl(rows, char_tokenizer())
    assert conv == [{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}]

    class Plain:
        chat_template = None

    assert to_trl(rows, Plain()) == [{"prompt": "q\n", "completion": "a"}]


def write(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() + b"\n" for line in lines))
    return path


def test_local_jsonl_errors_name_file_and_line(tmp_path):
    ok = json.dumps({"prompt": "p", "completion": "c"})
    cases = {
        "bad_json.jsonl": ([ok, "{oops"], ":2: invalid JSON"),
        "missing.jsonl": ([ok, ok, json.dumps({"prompt": "p"})], ":3: missing field(s) ['completion']"),
        "empty_completion.jsonl": ([json.dumps({"prompt": "p", "completion": "   "})], ":1: empty completion"),
        "not_utf8.jsonl": ([ok, b'{"prompt": "\xff", "completion": "c"}\n'], ":2: not valid UTF-8"),
        "wrong_type.jsonl": ([json.dumps({"prompt": 3, "completion": "c"})], ":1: 'prompt' and 'completion' must be strings"),
    }
    for name, (lines, expected) in cases.items():
        path = write(tmp_path / name, lines)
        with pytest.raises(DataError) as err:
            load_local(path)
        assert f"{path}{expected}" in str(err.value), (name, str(err.value))


def test_empty_file_and_skip_bad_rows(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no rows"):
        load_local(empty)
    ok = json.dumps({"prompt": "p", "completion": "c"})
    path = write(tmp_path / "mixed.jsonl", [ok, "{oops", json.dumps({"prompt": "p"}), ok])
    rows, report = load_local(path, skip_bad_rows=True)
    assert len(rows) == 2 and len(report.skipped) == 2
    assert report.skipped[0][0] == f"{path}:2" and report.skipped[1][0] == f"{path}:3"
    assert "2 skipped" in report.summary()


def test_custom_fields_csv_and_messages(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("question,answer\nwhat,that\n")
    rows, _ = load_local(csv_path, prompt_field="question", completion_field="answer")
    assert rows[0]["prompt"] == "what" and rows[0]["completion"] == "that"
    msgs = write(tmp_path / "m.jsonl", [json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
                                        json.dumps({"messages": [{"role": "user", "content": "hi"}]})])
    with pytest.raises(DataError, match=":2: 'messages' has no non-empty assistant turn"):
        load_local(msgs)


def test_unknown_dataset_name_is_clear():
    with pytest.raises(DataError, match="not a built-in task"):
        load_rows("definitely-not-a-dataset-xyz")


# ---------------------------------------------------------------------------------------------------------------------
# A bad row is that row alone, named FILE:LINE in every format; counts add up to the file's rows


def test_csv_with_one_bad_byte_skips_that_row_alone(tmp_path):
    """5,000 rows with one Latin-1 byte at line 2502: the error names that line and the byte's offset in the file;
    skipping drops that row only (Python's CSV reader alone stops at the first decoding error)."""
    lines = [b"prompt,completion\n"] + [f"question {i},answer {i}\n".encode() for i in range(2, 5002)]
    lines[2501] = b"question caf\xe9,answer\n"  # line 2502
    path = tmp_path / "big.csv"
    path.write_bytes(b"".join(lines))
    offset = path.read_bytes().index(b"\xe9")
    with pytest.raises(DataError) as err:
        load_local(path)
    assert str(err.value).startswith(f"{path}:2502: not valid UTF-8") and f"at byte {offset} of the file" in str(err.value)
    rows, report = load_local(path, skip_bad_rows=True)
    assert len(rows) == 4999 and [loc for loc, _ in report.skipped] == [f"{path}:2502"]
    assert len(rows) + len(report.skipped) == 5000
    assert rows[2499]["prompt"] == "question 2501" and rows[2500]["prompt"] == "question 2503"
    assert report.summary().startswith(f"{path}: 4999 rows, 1 skipped")


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_non_utf8_row_is_named_and_skipped_alone_in_every_format(tmp_path, fmt):
    bad = "caf\udce9"  # written as the single byte 0xe9
    rows = [("p1", "c1"), (bad, "c2"), ("p3", "c3")]
    if fmt == "jsonl":
        text = "".join(json.dumps({"prompt": p, "completion": c}, ensure_ascii=False) + "\n" for p, c in rows)
    elif fmt == "json":
        text = "[\n" + ",\n".join(json.dumps({"prompt": p, "completion": c}, ensure_ascii=False) for p, c in rows) + "\n]\n"
    else:
        text = "prompt,completion\n" + "".join(f"{p},{c}\n" for p, c in rows)
    path = tmp_path / f"d.{fmt}"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    line = 3 if fmt in ("json", "csv") else 2
    offset = path.read_bytes().index(b"\xe9")
    with pytest.raises(DataError, match=rf"^{path}:{line}: not valid UTF-8 .* at byte {offset} of the file"):
        load_local(path)
    kept, report = load_local(path, skip_bad_rows=True)
    assert [r["prompt"] for r in kept] == ["p1", "p3"] and [loc for loc, _ in report.skipped] == [f"{path}:{line}"]
    assert [r["location"] for r in kept] == [f"{path}:{line - 1}", f"{path}:{line + 1}"]


def test_csv_row_with_wrong_field_count_is_that_row_alone(tmp_path):
    path = write(tmp_path / "d.csv", ["prompt,completion", "a,b", "c,d,e", '"multi', 'line",f', "g,h"])
    with pytest.raises(DataError, match=rf"^{path}:3: 3 fields where the header has 2"):
        load_local(path)
    rows, report = load_local(path, skip_bad_rows=True)
    assert [r["prompt"] for r in rows] == ["a", "multi\nline", "g"] and report.skipped[0][0] == f"{path}:3"
    assert [r["location"] for r in rows] == [f"{path}:2", f"{path}:4", f"{path}:6"]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_byte_order_mark_is_read_like_excel_writes_it(tmp_path, fmt):
    rows = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    if fmt == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    elif fmt == "json":
        text = json.dumps(rows)
    else:
        text = "prompt,completion\r\np1,c1\r\np2,c2\r\n"
    path = tmp_path / f"bom.{fmt}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    for skip in (False, True):
        kept, report = load_local(path, skip_bad_rows=skip)
        assert [(r["prompt"], r["completion"]) for r in kept] == [("p1", "c1"), ("p2", "c2")] and not report.skipped


def test_json_array_rows_are_named_by_line(tmp_path):
    path = write(tmp_path / "d.json", ["[", json.dumps({"prompt": "p", "completion": "c"}) + ",", json.dumps({"prompt": "p"}), "]"])
    with pytest.raises(DataError, match=rf"^{path}:3: missing field"):
        load_local(path)
    broken = write(tmp_path / "broken.json", ["[", json.dumps({"prompt": "p", "completion": "c"}) + ",", '{"prompt" "p"}', "]"])
    with pytest.raises(DataError, match=rf"^{broken}:3: invalid JSON"):
        load_local(broken, skip_bad_rows=True)


def test_a_directory_without_data_is_one_line(tmp_path):
    with pytest.raises(DataError, match=rf"^{tmp_path}: datasets.load_dataset could not read it"):
        load_rows(str(tmp_path))


def test_location_is_not_part_of_the_checksum(tmp_path):
    from tirl.jobs.runinfo import rows_checksum

    a = write(tmp_path / "a.jsonl", [json.dumps({"prompt": "p", "completion": "c"})])
    b = write(tmp_path / "b.jsonl", ["", json.dumps({"prompt": "p", "completion": "c"})])
    ra, rb = load_local(a)[0], load_local(b)[0]
    assert ra[0]["location"] != rb[0]["location"] and rows_checksum(ra) == rows_checksum(rb)


def test_missing_file_and_unreachable_hub_dataset_are_one_line_at_once(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import tirl

    with pytest.raises(DataError, match=r"^data/trian.jsonl: no such file \(nor a built-in task"):
        load_rows("data/trian.jsonl")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=closed, HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(Path(tirl.__file__).parents[1]))
    code = "from tirl.data import load_rows\ntry:\n    load_rows('org/some-data')\nexcept Exception as e:\n    print(e)"
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "'org/some-data' is not a built-in task" in proc.stdout and f"hub cannot be reached to look for it as a dataset ({closed}: " in proc.stdout
    assert time.time() - t0 < 30 and "Retrying" not in proc.stderr
