"""The documented workflows run: every ```bash block of the README and of docs/ is run as a user would paste it,
on the tiny models, so a command the documentation shows cannot silently break.

A `tirl` on the PATH stands in for the real one and swaps what would take minutes for what takes seconds: a model
that is not a directory becomes `tiny-llama`, a task that needs files or the hub becomes `arithmetic` (the generated
tasks stay), and training, sampling and scoring get small lengths. Everything else is the documented command. It runs
in a child forked from one warm process (tests/forkserver.py), which spares each command the 5 s of importing torch,
transformers and TRL and changes nothing else it sees. Lines
that install, benchmark or call other programs (`make`, `pip`, `lm_eval`, `.venv/bin/python benchmarks/...`) are
left out; blocks that are not meant to be pasted are fenced as ```text.
"""

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli, warm_server

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = ("make", "pip", "lm_eval", ".venv/bin/python", "python", "bash", "accelerate", "tensorboard", "wait")
GENERATED = {"arithmetic", "pick-two", "between", "sum-pairs", "countdown"}

# what each command gets appended (later options win in argparse) or has replaced
WRAPPER = r'''#!PYTHON
"""`tirl` for the documentation tests: the documented command, made small (tests/test_docs.py)."""
import os, sys
GENERATED = GENERATED_SET
args = sys.argv[1:]
command = args[:2] if args[:2] == ["rewards", "analyse"] else args[:1]
out = []
i = 0
while i < len(args):
    a = args[i]
    out.append(a)
    if a in ("--model", "--model_name_or_path") and i + 1 < len(args):
        i += 1
        out.append(args[i] if os.path.exists(args[i]) else "tiny-llama")
    elif a == "--models":
        while i + 1 < len(args) and not args[i + 1].startswith("--"):
            i += 1
            out.append(args[i] if os.path.exists(args[i]) else "tiny-llama")
    elif a in ("--dataset", "--dataset_name") and i + 1 < len(args):
        i += 1
        out.append(args[i] if args[i] in GENERATED or os.path.exists(args[i]) else "arithmetic")
    elif a == "--samples" and i + 1 < len(args):
        i += 1
        out.append(str(min(int(args[i]), 2)))
    i += 1
extra = {
    ("train",): ["--max_steps", "2", "--num_train_examples", "16", "--num_eval_examples", "4", "--save_steps", "2",
                 "--report_to", "none", "--disable_tqdm", "true", "--per_device_train_batch_size", "4"],
    ("eval",): ["--num_examples", "2", "--max_new_tokens", "4", "--batch_size", "4", "--no_progress"],
    ("rewards",): ["--num_examples", "2"],
    ("rewards", "analyse"): ["--num_examples", "2", "--samples", "2", "--max_new_tokens", "4", "--preference",
                             "demonstrations", "--num_pairs", "4"],
}.get(tuple(command), [])
if "--help" in out or "-h" in out:
    extra = []
if tuple(command) == ("train",) and not any(a in out for a in ("--model", "--model_name_or_path")):
    extra += ["--model", "tiny-llama", "--dataset", "arithmetic"]  # the embedded default job, made small
server = os.environ.get("TIRL_TEST_SERVER")
if server:  # the warm server of tests/forkserver.py; it declines a command whose environment differs from its own
    sys.path.insert(0, TESTS_DIR)
    from forkserver import FRESH, client
    code = client(server, [*out, *extra])
    if code != FRESH:
        sys.exit(code)
os.execv(sys.executable, [sys.executable, "-m", "tirl.cli", *out, *extra])
'''


def blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, text) of each ```bash block of a page."""
    out, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            out.append((start, "\n".join(body)))
        i += 1
    return out


def runnable(block: str) -> str:
    """The block without the lines that install, benchmark or call other programs."""
    kept, skipping = [], False
    for line in block.splitlines():
        words = shlex.split(line, comments=True) if line.strip() else []
        if not skipping and words and (words[0] in NOT_RUN or words[-1] == "&"):
            skipping = line.rstrip().endswith("\\")
            continue
        if skipping:
            skipping = line.rstrip().endswith("\\")
            continue
        kept.append(line)
    return "\n".join(kept)


CASES = [(page, start, text) for page in PAGES for start, text in blocks(page) if runnable(text).strip()]


def environment(work: Path) -> dict[str, str]:
    """What every block runs with: the stand-in first on the PATH, no hub, the warm server's socket."""
    return {**os.environ, "PATH": f"{work / '.bin'}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TIRL_TEST_SERVER": warm_server()}


def reader_checkout(work: Path) -> Path:
    """`work` made into what a reader pastes the blocks in: the examples beside, the stand-in `tirl` on the PATH."""
    (work / "examples").symlink_to(ROOT / "examples")
    bin_dir = work / ".bin"
    bin_dir.mkdir()
    tirl = bin_dir / "tirl"
    tirl.write_text(WRAPPER.replace("PYTHON", sys.executable).replace("GENERATED_SET", repr(GENERATED))
                    .replace("TESTS_DIR", repr(str(Path(__file__).parent))))
    tirl.chmod(tirl.stat().st_mode | stat.S_IEXEC)
    return work


def test_every_page_has_its_commands_found():
    assert any("tirl train" in text for _, text in blocks(ROOT / "README.md"))
    assert len(CASES) >= 5
    assert any(text == "\n".join(tour()) for page, _, text in CASES if page.name == "README.md")  # the tour runs


def tour() -> list[str]:
    """The commands of the README's tour, as written."""
    text = re.split(r"^## \w+-minute tour\n\n```bash\n", (ROOT / "README.md").read_text(), maxsplit=1, flags=re.M)[1]
    return text.split("```", 1)[0].strip().splitlines()


def tour_command(needle: str) -> list[str]:
    """The arguments of the tour's one command that contains `needle` (without `tirl` and the comment)."""
    (line,) = [line for line in tour() if needle in line]
    return shlex.split(line, comments=True)[1:]


@pytest.mark.slow
def test_the_tour_learns(tmp_path):
    """The tour's commands as the README writes them, not made small as above: its tiny models learn something
    visible (at TRL's default learning rate they learned nothing, and every pick-two evaluation scored 0%). The MLE
    run stands for both pick-two runs: the IQLearn one trains the same way with one more term, and running it too
    would double this test's minute and a half."""
    import json

    run_cli(*tour_command("--dataset arithmetic"), cwd=tmp_path)
    arithmetic = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    before, after = arithmetic["eval_before"], arithmetic["eval_after"]
    assert after["eval_loss"] < 0.7 * before["eval_loss"]
    assert after["eval_mean_token_accuracy"] > before["eval_mean_token_accuracy"] + 0.1

    run_cli(*tour_command("--method mle"), cwd=tmp_path)
    mle = json.loads((tmp_path / "runs" / "mle" / "metrics.json").read_text())
    assert mle["eval_after"]["eval_loss"] < 0.25 * mle["eval_before"]["eval_loss"]
    run_cli(*tour_command("--model runs/mle"), cwd=tmp_path)
    evaluation = json.loads((tmp_path / "runs" / "mle" / "eval" / "t1" / "metrics.json").read_text())
    assert evaluation["greedy"]["precision"] + evaluation["sampled"]["precision"] > 0, "no valid pick-two answer"


@pytest.mark.slow
def test_documented_commands_run(tmp_path):
    """Every block in page order, in one directory, as a reader pastes them: later blocks use what earlier ones made
    (the runs that the evaluation and reward pages load). One test, so that no pytest-xdist worker runs a block
    without the ones before it; a failure names its page and line."""
    work = reader_checkout(tmp_path)
    env = environment(work)
    for page, start, text in CASES:
        script = "set -euo pipefail\n" + runnable(text)
        proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        where = f"{page.relative_to(ROOT)}:{start}"
        assert proc.returncode == 0, (f"{where} failed ({proc.returncode}):\n{runnable(text)}\n"
                                      f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
        assert not re.search(r"^Traceback", proc.stderr, re.M), f"{where}:\n{proc.stderr[-3000:]}"
