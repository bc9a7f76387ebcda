"""Datasets for `tirl`: built-in tasks, a user's files and hub datasets, generated tasks, and TRL's formats.

    tasks        the built-in tasks (`TASK_INFO`: loader, metric family, source, licence)
    sources      where a built-in task's files come from: packaged, a local copy, or online (hub, sacreBLEU)
    user_data    a user's local file or directory, or a hub dataset id, in TRL's formats
    rows         `load_rows` (any of the above) and `to_trl`
    io           reading JSONL/JSON/CSV with errors that name the file and line
    arithmetic, many_answer, grammar   tasks generated in code; preferences: chosen/rejected pairs
"""

from .arithmetic import generate as generate_arithmetic
from .io import DataError, ReadReport, iter_records, read_records
from .rows import is_builtin, load_rows, to_trl
from .sources import DATA_DIR_ENV, local_data_dir
from .tasks import (
    TASK_INFO,
    TASKS,
    TaskInfo,
    gsm8k_final_answer,
    load_alpaca,
    load_gsm8k,
    load_wmt,
    load_xsum,
    task_metric,
)
from .user_data import load_hub, load_local

__all__ = [
    "DATA_DIR_ENV",
    "TASKS",
    "TASK_INFO",
    "TaskInfo",
    "DataError",
    "ReadReport",
    "generate_arithmetic",
    "gsm8k_final_answer",
    "is_builtin",
    "iter_records",
    "load_alpaca",
    "load_gsm8k",
    "load_hub",
    "load_local",
    "load_rows",
    "load_wmt",
    "load_xsum",
    "local_data_dir",
    "read_records",
    "task_metric",
    "to_trl",
]
