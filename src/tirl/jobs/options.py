"""The options of `tirl train` that are not the trainer config's: what to train on and how to treat the run directory
(`TrainScriptArguments`), and the embedded default job's task. Beside `train.py` so that what defines a run
(`tirl.jobs.defining`) can read them without importing the job."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainScriptArguments:
    """What to train on and how to treat the run directory; the optimisation options are the trainer config's. The
    help of each option is `tirl train --help`'s (`tirl.cli.train_help`)."""

    method: str = "iqlearn"  # a key of `tirl.trainers.methods.METHODS`
    # a built-in task, a local file or directory, or a hub dataset id; None: the demo's. The aliases are `trl sft`'s
    # names, so its command lines and YAML files run unchanged
    dataset: str | None = field(default=None, metadata={"aliases": ["--dataset_name"]})
    dataset_config: str | None = None  # a hub dataset's configuration (`datasets.load_dataset(name, config)`)
    dataset_split: str = field(default="train", metadata={"aliases": ["--dataset_train_split"]})
    dataset_streaming: bool = False  # stream a hub dataset: only the first --num_train_examples rows are read
    eval_dataset: str | None = None
    eval_split: str = field(default="test", metadata={"aliases": ["--dataset_test_split"]})
    eval_fraction: float = 0.05
    wrap_in_chat_template: bool = False  # a user's plain-string prompt/completion rows as a conversation
    num_train_examples: int | None = None
    num_eval_examples: int | None = 64
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    skip_bad_rows: bool = False
    resume: bool = False
    # let a resumed run change what defines it (`tirl.jobs.defining`); recorded per segment
    resume_with_changes: bool = False
    overwrite: bool = False


# the embedded default job's task
DEFAULT_DATASET = "gsm8k"
