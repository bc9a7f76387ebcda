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
