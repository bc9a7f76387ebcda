"""tirl: fine-tune language models by inverse reinforcement learning (IQLearn, online IQLearn, GAIL) on top of TRL."""

# Importing tirl changes nothing global (environment, logging, hub settings): those are the caller's. The `tirl`
# command sets what it wants at its own entry point (tirl.cli.main).

__version__ = "0.1.0"


def __getattr__(name):
    # trainers import TRL/transformers (seconds); keep `import tirl` and `tirl --help` fast
    if name in ("IQLearnConfig", "IQLearnTrainer"):
        from . import trainers

        return getattr(trainers, name)
    raise AttributeError(name)


__all__ = ["IQLearnConfig", "IQLearnTrainer", "__version__"]
