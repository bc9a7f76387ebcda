"""tirl.files: writes are atomic (a failed write leaves the old file and no temporary), files get the permissions a
plain `open` gives, and paths from configs or data cannot leave their directory."""

import json
import os
from dataclasses import dataclass

import pytest

from tirl.files import jsonable, safe_path, share_file_modes, write_atomic, write_json_atomic, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    write_text_atomic(path, "old\n")

    def half_then_crash(tmp):
        with open(tmp, "w") as f:
            f.write("new, but only half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_crash)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "sub" / "a.txt", "x")  # parent directories are made
        (tmp_path / "w.safetensors").write_bytes(b"")
        os.chmod(tmp_path / "w.safetensors", 0o600)  # as safetensors leaves them
        share_file_modes(tmp_path)
    finally:
        os.umask(umask)
    assert (tmp_path / "sub" / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644


def test_json_is_written_from_dataclasses_and_paths(tmp_path):
    @dataclass
    class Settings:
        name: str
        where: object

    write_json_atomic(tmp_path / "s.json", {"settings": Settings("a", tmp_path), "steps": (1, 2)})
    assert json.loads((tmp_path / "s.json").read_text()) == {"settings": {"name": "a", "where": str(tmp_path)},
                                                             "steps": [1, 2]}
    assert jsonable({1: None}) == {"1": None}


def test_written_paths_cannot_escape_the_output_directory(tmp_path):
    assert safe_path(tmp_path, "metrics.json") == (tmp_path / "metrics.json").resolve()
    assert safe_path(tmp_path, "eval/generations.jsonl").parent.name == "eval"
    for bad in ("../outside.json", "/etc/passwd", "eval/../../x"):
        with pytest.raises(ValueError, match="outside the output directory"):
            safe_path(tmp_path, bad)
    (tmp_path / "link").symlink_to("/tmp")
    with pytest.raises(ValueError, match="it resolves outside the output directory"):
        safe_path(tmp_path, "link/x.json")
