"""Trainers: TRL trainer subclasses whose `compute_loss` calls into `tirl.losses` / `tirl.losses.gail`."""

from .gail_config import GAILConfig
from .gail_trainer import GAILTrainer
from .iqlearn_config import IQLearnConfig
from .iqlearn_trainer import IQLearnTrainer
from .online_iqlearn_config import OnlineIQLearnConfig
from .online_iqlearn_trainer import OnlineIQLearnTrainer
from .rollout_config import RolloutConfig
from .rollout_trainer import RolloutTrainer

__all__ = [
    "GAILConfig",
    "GAILTrainer",
    "IQLearnConfig",
    "IQLearnTrainer",
    "OnlineIQLearnConfig",
    "OnlineIQLearnTrainer",
    "RolloutConfig",
    "RolloutTrainer",
]
