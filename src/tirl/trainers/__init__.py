"""Trainers: TRL `SFTTrainer` subclasses whose `compute_loss` calls into `tirl.losses`, one config per trainer.

    IQLearnConfig / IQLearnTrainer              offline IQLearn (TD-regularised MLE); `iq_lambda=0` is TRL's SFT, and
                                                the token-loss baselines (entropy-MLE, DFT, GEM)
    OnlineIQLearnConfig / OnlineIQLearnTrainer  IQLearn on expert rows mixed with the model's own samples
    GAILConfig / GAILTrainer                    discriminator reward + PPO-clip policy gradient + MLE

`METHODS` (`tirl.trainers.methods`) registers each `tirl train --method` once: its config, its trainer, its help line
and the options it fixes.

The trainers share a small base (`TirlTrainer`: Q and V, loss normalisation, metrics, checkpoints) and are built by
composition: the online ones own a `RolloutSampler`, GAIL a discriminator and a frozen reference policy. The configs
are flat siblings composed of the option groups in `tirl.trainers.arguments`, each holding only its trainer's options.
"""

from .arguments import QVArguments, SamplingArguments, TDArguments, TokenLossArguments, VLLMArguments
from .base import CheckpointStateError, NonFiniteLossError, TirlTrainer
from .checkpoints import PARTIAL_PREFIX
from .dataset_report import SOURCE_COLUMN, NoTrainableTokensError
from .gail_config import GAILConfig
from .gail_trainer import GAILTrainer
from .iqlearn_config import IQLearnConfig
from .iqlearn_trainer import IQLearnTrainer
from .methods import METHODS, Method
from .online_iqlearn_config import OnlineIQLearnConfig
from .online_iqlearn_trainer import OnlineIQLearnTrainer
from .sampler import RolloutSampler

__all__ = [
    "PARTIAL_PREFIX",
    "SOURCE_COLUMN",
    "GAILConfig",
    "GAILTrainer",
    "IQLearnConfig",
    "IQLearnTrainer",
    "METHODS",
    "Method",
    "NoTrainableTokensError",
    "CheckpointStateError",
    "NonFiniteLossError",
    "OnlineIQLearnConfig",
    "OnlineIQLearnTrainer",
    "QVArguments",
    "RolloutSampler",
    "SamplingArguments",
    "TDArguments",
    "TirlTrainer",
    "TokenLossArguments",
    "VLLMArguments",
]
