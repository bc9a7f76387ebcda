"""Where a built-in task's files come from: packaged with tirl, a local copy, or their public home online.

- **Packaged** (`packaged`): GSM8k (MIT licence), the demo's task, ships inside the package (`tirl/data/files/`), so
  `make install demo` needs no data folder and no network. So do the small lists that select the rows of the online
  sources below exactly as the local copies hold them (XSum ids, Alpaca row hashes).
- **A local copy** (`local_copy`): `$TIRL_DATA_DIR` when set (and only it), else a `shared/data` folder beside the
  checkout (`../shared/data`, as in the project's CI), laid out as `docs/data.md` describes.
- **Online** when no local copy holds the task: the Hugging Face Hub by the dataset's canonical id
  (`hub_dataset`, through `datasets.load_dataset`), or sacreBLEU's download of the official WMT test sets
  (`sacrebleu_files`). Selection, splits and the rows' checksums are the local copy's.

With neither a local copy nor a reachable source, the error is one line naming the online source and
`$TIRL_DATA_DIR`. Nothing here switches the hub off or on: downloads follow the user's environment
(`HF_HUB_OFFLINE`, `HF_DATASETS_OFFLINE`), as with transformers and TRL.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .io import DataError

DATA_DIR_ENV = "TIRL_DATA_DIR"


def local_data_dir() -> Path | None:
    """The folder of local copies: `$TIRL_DATA_DIR` when set (None if it is not a directory), else `shared/data`
    beside the checkout or the working directory's parent."""
    if os.environ.get(DATA_DIR_ENV):
        path = Path(os.environ[DATA_DIR_ENV])
        return path if path.is_dir() else None
    here = Path(__file__).resolve()
    for candidate in [p / "shared" / "data" for p in here.parents] + [Path.cwd().parent / "shared" / "data"]:
        if candidate.is_dir():
            return candidate
    return None


def local_copy(subdir: str) -> Path | None:
    """`<local data dir>/<subdir>` when it exists, else None."""
    root = local_data_dir()
    return root / subdir if root is not None and (root / subdir).is_dir() else None


def packaged(relative: str) -> Path:
    """A file shipped in the package (`tirl/data/files/<relative>`)."""
    path = Path(str(resources.files("tirl.data").joinpath("files", relative)))
    if not path.is_file():
        raise DataError(f"{path}: missing from the installed package; reinstall tirl")
    return path


def unavailable(task: str, subdir: str, online: str, reason: str) -> DataError:
    """The one-line error of a task whose data is neither local nor reachable online."""
    where = f"${DATA_DIR_ENV}/{subdir}" if os.environ.get(DATA_DIR_ENV) else f"${DATA_DIR_ENV}/{subdir} (or ../shared/data/{subdir})"
    return DataError(f"the {task!r} task needs its data: no local copy in {where}, and {online} cannot be read "
                     f"({reason}); connect to the internet once (the download is cached) or set ${DATA_DIR_ENV}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def hub_dataset(task: str, subdir: str, repo_id: str, split: str, **kwargs) -> list[dict]:
    """The rows of a hub dataset (`datasets.load_dataset(repo_id, split=split, **kwargs)`), from the cache when the
    hub cannot be reached; a one-line `unavailable` error when neither works."""
    import datasets

    try:
        return list(datasets.load_dataset(repo_id, split=split, **kwargs))
    except Exception as e:  # connection errors, offline mode without a cache, a moved dataset: all one line
        online = f"the Hugging Face Hub dataset {repo_id}" + (f" ({kwargs})" if kwargs else "")
        raise unavailable(task, subdir, online, _first_line(e)) from None


def sacrebleu_files(task: str, subdir: str, test_set: str, langpair: str) -> tuple[Path, Path]:
    """(source file, reference-A file) of an official WMT test set, as sacreBLEU downloads and caches it
    (`sacrebleu -t wmt22 -l de-en`); a one-line `unavailable` error when it cannot be downloaded."""
    from sacrebleu.dataset import DATASETS

    try:
        ds = DATASETS[test_set]
        fields = ds.fieldnames(langpair)
        files = ds.get_files(langpair)
    except Exception as e:  # urllib errors without network, a langpair the set lacks
        raise unavailable(task, subdir, f"sacreBLEU's download of {test_set} {langpair}", _first_line(e)) from None
    ref = "ref:A" if "ref:A" in fields else "ref"
    return Path(files[fields.index("src")]), Path(files[fields.index(ref)])


__all__ = ["DATA_DIR_ENV", "hub_dataset", "local_copy", "local_data_dir", "packaged", "sacrebleu_files",
           "unavailable"]
