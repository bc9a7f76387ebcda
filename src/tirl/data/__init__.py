"""Datasets for `tirl`: named tasks, local files, generated tasks, and conversion to TRL's formats."""

from .arithmetic import generate as generate_arithmetic
from .io import DataError, ReadReport, iter_records, read_records
from .tasks import TASKS, gsm8k_final_answer, load_gsm8k, load_local, load_rows, shared_data_dir, to_trl

__all__ = [
    "TASKS",
    "DataError",
    "ReadReport",
    "generate_arithmetic",
    "gsm8k_final_answer",
    "iter_records",
    "load_gsm8k",
    "load_local",
    "load_rows",
    "read_records",
    "shared_data_dir",
    "to_trl",
]
