"""Datasets for `tirl`: named tasks, local files, generated tasks, and conversion to TRL's formats."""

from .arithmetic import generate as generate_arithmetic
from .io import DataError, ReadReport, iter_records, read_records
from .tasks import (
    METRIC_FAMILIES,
    TASK_INFO,
    TASKS,
    TaskInfo,
    gsm8k_final_answer,
    load_alpaca,
    load_gsm8k,
    load_local,
    load_rows,
    load_wmt,
    load_xsum,
    shared_data_dir,
    task_metric,
    to_trl,
)

__all__ = [
    "METRIC_FAMILIES",
    "TASKS",
    "TASK_INFO",
    "TaskInfo",
    "DataError",
    "ReadReport",
    "generate_arithmetic",
    "gsm8k_final_answer",
    "iter_records",
    "load_alpaca",
    "load_gsm8k",
    "load_local",
    "load_rows",
    "load_wmt",
    "load_xsum",
    "read_records",
    "shared_data_dir",
    "task_metric",
    "to_trl",
]
