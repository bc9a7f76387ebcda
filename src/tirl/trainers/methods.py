"""The methods of `tirl train --method`, one registration each: its config, its trainer, its line of `--help`, the
options it fixes and the defaults it starts from.

`tirl.jobs.train` builds a run from the entry (the config class parses the options, the trainer trains), the run's
defining settings are the fields of the registered configs (`tirl.jobs.defining`), and `tirl train --help` lists
the methods with their help lines (`tirl.cli.train_help.method_help`). Importing this module imports every trainer
(TRL and transformers, seconds): `tirl.jobs.train` imports it when a run starts and `tirl.cli.train` when it
builds its parser, so that importing either stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .gail_config import GAILConfig
from .gail_trainer import GAILTrainer
from .iqlearn_config import IQLearnConfig
from .iqlearn_trainer import IQLearnTrainer
from .online_iqlearn_config import OnlineIQLearnConfig
from .online_iqlearn_trainer import OnlineIQLearnTrainer


@dataclass(frozen=True)
class Method:
    """A `--method`. `fixed`: options set on every run of it (given with another value, they are refused:
    `tirl.jobs.train.fix_method`). `defaults`: where `tirl train --method NAME` starts from other values than the
    config class's."""

    config: type  # a dataclass extending TRL's SFTConfig: the method's options
    trainer: type  # an SFTTrainer subclass built with that config
    help: str  # what it trains, in a few words: `tirl train --help` shows it after the method's name
    fixed: Mapping[str, object] = field(default_factory=dict)
    defaults: Mapping[str, object] = field(default_factory=dict)


# the MLE family reads no TD term: its V is the plain logits form (nothing to precompute)
_TOKEN_LOSS = {"iq_value": "logits"}

METHODS: dict[str, Method] = {
    "iqlearn": Method(IQLearnConfig, IQLearnTrainer, "offline IQLearn = MLE + λ·TD², docs/method.md §2"),
    "mle": Method(IQLearnConfig, IQLearnTrainer, "plain SFT; the same trainer with iq_lambda fixed at 0",
                  {"iq_lambda": 0.0, "loss_type": "nll"}, _TOKEN_LOSS),
    "gem": Method(IQLearnConfig, IQLearnTrainer, "the diversity-preserving SFT baseline GEM: loss_type gem, "
                  "iq_lambda 0", {"iq_lambda": 0.0, "loss_type": "gem"}, _TOKEN_LOSS),
    "dft": Method(IQLearnConfig, IQLearnTrainer, "the diversity-preserving SFT baseline DFT: loss_type dft, "
                  "iq_lambda 0", {"iq_lambda": 0.0, "loss_type": "dft"}, _TOKEN_LOSS),
    "iqlearn-online": Method(OnlineIQLearnConfig, OnlineIQLearnTrainer,
                             "IQLearn on expert rows mixed with the model's own samples"),
    "gail": Method(GAILConfig, GAILTrainer, "discriminator reward + policy gradient + MLE"),
}
