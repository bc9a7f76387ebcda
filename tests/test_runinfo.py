"""tirl.jobs.runinfo: what run.json records — versions, the git commit (dirty or not), the command, data checksums."""

import subprocess
import sys
from importlib import metadata

import pytest

from tirl.jobs.runinfo import PACKAGES, git_commit, rows_checksum, run_record


def test_run_record_holds_the_sections_versions_and_command(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tirl", "train", "--max_steps", "3"])
    record = run_record(method="iqlearn", config={"iq_lambda": 0.01, "steps": (1, 2)})
    assert record["method"] == "iqlearn" and record["config"] == {"iq_lambda": 0.01, "steps": [1, 2]}
    assert record["command"] == ["tirl", "train", "--max_steps", "3"]
    assert set(PACKAGES) <= set(record["versions"]) and record["versions"]["torch"] == metadata.version("torch")


def test_git_commit_says_when_the_tree_has_changes(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    try:
        subprocess.run([*git, "init", "-q"], check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git")
    (tmp_path / "f.txt").write_text("a")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "f.txt").write_text("b")
    assert git_commit(tmp_path) == head + "-dirty"
    assert git_commit(tmp_path / "nowhere") is None


def test_rows_checksum_depends_on_the_rows_and_their_order_not_their_location():
    rows = [{"prompt": "p", "completion": "c", "location": "a.jsonl:1"}, {"prompt": "q", "completion": "d"}]
    moved = [{**rows[0], "location": "b.jsonl:7"}, rows[1]]
    assert rows_checksum(rows) == rows_checksum(moved)
    assert rows_checksum(rows) != rows_checksum(rows[::-1])
    assert rows_checksum(rows) != rows_checksum([{**rows[0], "completion": "C"}, rows[1]])
