"""Trainers: TRL trainer subclasses whose `compute_loss` calls into `tirl.losses`."""

from .iqlearn_config import IQLearnConfig
from .iqlearn_trainer import IQLearnTrainer

__all__ = ["IQLearnConfig", "IQLearnTrainer"]
