"""A whole training job: model + data + trainer + run directory. `tirl train` is a thin parser over `run`.

The run directory (`output_dir`) gets the trained model and tokenizer, TRL/transformers checkpoints, TensorBoard logs
(with `report_to=tensorboard`), `run.json` (config, versions, git commit, data checksums), `metrics.json`,
`training_curves.png` and `summary.md`.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DataError, load_rows, to_trl
from ..files import safe_path, share_file_modes, write_json_atomic, write_text_atomic
from . import rundir
from .runinfo import rows_checksum, run_record


@dataclass(frozen=True)
class Method:
    """A `--method`: its config and trainer (named in `tirl.trainers`, imported only when a run starts, so that
    `tirl train --help` stays fast), the options it fixes (a different value given is refused, `fix_method`), and the
    defaults `tirl train --method M` starts from where they differ from the config class's."""

    config: str
    trainer: str
    fixed: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)


# the MLE family reads no TD term: its V is the plain logits form (nothing to precompute)
_TOKEN_LOSS = {"iq_value": "logits"}
METHODS: dict[str, Method] = {
    "iqlearn": Method("IQLearnConfig", "IQLearnTrainer"),
    "mle": Method("IQLearnConfig", "IQLearnTrainer", {"iq_lambda": 0.0, "loss_type": "nll"}, _TOKEN_LOSS),
    "gem": Method("IQLearnConfig", "IQLearnTrainer", {"iq_lambda": 0.0, "loss_type": "gem"}, _TOKEN_LOSS),
    "dft": Method("IQLearnConfig", "IQLearnTrainer", {"iq_lambda": 0.0, "loss_type": "dft"}, _TOKEN_LOSS),
    "iqlearn-online": Method("OnlineIQLearnConfig", "OnlineIQLearnTrainer"),
    "gail": Method("GAILConfig", "GAILTrainer"),
}


def method_classes(method: str) -> tuple[type, type]:
    """The (config class, trainer class) of a `--method`."""
    if method not in METHODS:
        raise OptionError(f"--method: unknown method {method!r}; choose from {', '.join(METHODS)}")
    from .. import trainers

    spec = METHODS[method]
    return getattr(trainers, spec.config), getattr(trainers, spec.trainer)


def fix_method(method: str, config, given: set[str] = frozenset()) -> None:
    """Set the options `method` fixes (`Method.fixed`) on `config`; one of them given (`given`: option names) with
    another value is an `OptionError`. The one place a method's fixed options are applied."""
    for name, value in METHODS[method].fixed.items():
        if name in given and getattr(config, name) != value:
            raise OptionError(f"--method {method} trains with {name}={value}; drop --{name} or use --method "
                              f"{'iqlearn' if name == 'iq_lambda' else method}")
        setattr(config, name, value)
    from ..trainers.arguments import check_objective

    check_objective(config)


@dataclass
class TrainScriptArguments:
    """What to train on and how to treat the run directory; the optimisation options are the trainer config's. The
    help of each option is `tirl train --help`'s (`tirl.cli.train_help`)."""

    method: str = "iqlearn"  # a key of `METHODS`
    dataset: str | None = None  # a built-in task, a local file or directory, or a hub dataset id; None: the demo's
    dataset_split: str = "train"
    eval_dataset: str | None = None
    eval_split: str = "test"
    eval_fraction: float = 0.05
    num_train_examples: int | None = None
    num_eval_examples: int | None = 64
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    skip_bad_rows: bool = False
    resume: bool = False
    overwrite: bool = False
    trust_remote_code_model: bool = False


# the embedded default job's task
DEFAULT_DATASET = "gsm8k"


class OptionError(ValueError):
    """An option value that cannot work, found before any work starts; the message names the option."""


def check_options(config) -> None:
    """Refuse option values that TRL/transformers would accept but that cannot do what they say."""
    if config.max_steps == 0:
        # transformers takes max_steps <= 0 as "use num_train_epochs", and a 0 there still runs a step
        raise OptionError("--max_steps 0 would train nothing: give the number of optimizer steps, or -1 to train for "
                          "--num_train_epochs")


def _load_rows(option: str, name: str, **kwargs) -> list[dict]:
    try:
        return load_rows(name, **kwargs)
    except DataError as e:
        raise DataError(f"{option}: {e}") from None


def load_train_eval_rows(script: TrainScriptArguments, seed: int) -> tuple[list[dict], list[dict], dict]:
    """Training and evaluation rows, plus a description of where they came from (for run.json)."""
    name = script.dataset or DEFAULT_DATASET
    common = {"seed": seed, "skip_bad_rows": script.skip_bad_rows, "prompt_field": script.prompt_field,
              "completion_field": script.completion_field}
    train = _load_rows("--dataset", name, split=script.dataset_split, limit=script.num_train_examples, **common)
    eval_rows: list[dict] = []
    if script.eval_dataset:
        eval_rows = _load_rows("--eval_dataset", script.eval_dataset, split=script.eval_split,
                               limit=script.num_eval_examples, **common)
    elif os.path.exists(name):
        if script.eval_fraction > 0 and len(train) >= 20:
            shuffled = train[:]
            random.Random(seed).shuffle(shuffled)
            k = max(1, int(round(len(shuffled) * script.eval_fraction)))
            eval_rows, train = shuffled[:k], shuffled[k:]
            if script.num_eval_examples is not None:
                eval_rows = eval_rows[: script.num_eval_examples]
    else:
        try:
            eval_rows = load_rows(name, split=script.eval_split, limit=script.num_eval_examples, **common)
        except (DataError, ValueError) as e:
            print(f"[tirl] no evaluation split for {name!r} ({e}); training without evaluation")
    info = {
        "train": {"source": name, "split": script.dataset_split, "rows": len(train), "sha256": rows_checksum(train)},
        "eval": {"source": script.eval_dataset or name, "rows": len(eval_rows), "sha256": rows_checksum(eval_rows)},
    }
    return train, eval_rows, info


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict
    log_history: list[dict]
    logging_dir: str | None


def run(script: TrainScriptArguments, config, model_args) -> TrainResult:
    """Train `model_args.model_name_or_path` (TRL's `ModelConfig`) on `script.dataset` with `config` (the method's
    config class, `method_classes`).

    Everything that can be checked is checked before anything is written: the options, the data, the output
    directory (reuse, `--resume`/`--overwrite`, links, writability) and the model. A run that then fails before its
    first checkpoint leaves no directory behind; a full disk is a `RunDirError` naming the device, the file and the
    last complete checkpoint.
    """
    from .. import models

    config_class, trainer_class = method_classes(script.method)
    if not isinstance(config, config_class):
        raise TypeError(f"--method {script.method} needs a {config_class.__name__}, got {type(config).__name__}")
    check_options(config)
    fix_method(script.method, config)
    model_name = model_args.model_name_or_path or "smollm2-135m"

    train_rows, eval_rows, data_info = load_train_eval_rows(script, config.seed)
    run_dir = rundir.plan_train_dir(config.output_dir, resume=script.resume, overwrite=script.overwrite,
                                    method=script.method, model=model_name, train_sha256=data_info["train"]["sha256"])
    t0 = time.time()
    try:
        model, tokenizer = models.load(
            model_name, dtype=model_args.dtype if model_args.dtype not in (None, "auto") else None,
            seed=config.seed, trust_remote_code=script.trust_remote_code_model,
        )
    except models.ModelNotAvailableError as e:
        raise models.ModelNotAvailableError(f"--model: {e}") from None
    print(f"[tirl] model {model_name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters "
          f"(loaded in {time.time() - t0:.1f} s)")
    print(f"[tirl] data: {len(train_rows)} training rows from {data_info['train']['source']!r}, "
          f"{len(eval_rows)} evaluation rows")

    # every process has checked the directory before the main one changes it
    main = config.process_index == 0
    _barrier(config)
    if main:
        rundir.prepare(run_dir)
    _barrier(config)
    try:
        return _train(script, config, model_args, trainer_class, model, tokenizer, model_name,
                      train_rows, eval_rows, data_info, run_dir)
    except BaseException as e:
        from ..trainers.checkpoints import PARTIAL_PREFIX

        message = (rundir.write_failure(e, run_dir.path, staging_prefix=PARTIAL_PREFIX)
                   if isinstance(e, (OSError, RuntimeError)) else None)
        if isinstance(e, pickle.UnpicklingError) and run_dir.resume_from:
            # transformers reads optimizer.pt, scheduler.pt and rng_state.pth with torch.load(weights_only=True),
            # which refuses anything but tensors and plain containers
            detail = next((line.strip() for line in str(e).splitlines() if "WeightsUnpickler error" in line),
                          str(e).splitlines()[0] if str(e) else "")
            message = (f"--resume: {run_dir.resume_from} holds a pickle that torch.load(weights_only=True) refuses to "
                       f"load (optimizer.pt, scheduler.pt or rng_state.pth; {detail}); the file may have been altered, "
                       "and training did not start")
        if main:
            rundir.remove_failed_run(run_dir)
        if message:
            raise rundir.RunDirError(message) from None
        raise


def _barrier(config) -> None:
    if config.world_size > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()


def _sources(rows: list[dict]) -> list[str]:
    """Where each row came from (`FILE:LINE`, else its id), for warnings about rows the trainer drops."""
    return [str(r.get("location") or r["id"]) for r in rows]


def _train(script, config, model_args, trainer_class, model, tokenizer, model_name: str, train_rows: list[dict],
           eval_rows: list[dict], data_info: dict, run_dir: rundir.RunDir) -> TrainResult:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import get_peft_config

    from ..plots import plot_training_curves
    from ..trainers.dataset_report import SOURCE_COLUMN

    class ShareFileModes(TrainerCallback):
        """Checkpoint weights get the permissions of the checkpoint's other files (safetensors writes 0600)."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                share_file_modes(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    output_dir = run_dir.path
    train_ds = Dataset.from_list(to_trl(train_rows, tokenizer)).add_column(SOURCE_COLUMN, _sources(train_rows))
    eval_ds = (Dataset.from_list(to_trl(eval_rows, tokenizer)).add_column(SOURCE_COLUMN, _sources(eval_rows))
               if eval_rows else None)
    if eval_ds is None:
        config.eval_strategy = "no"

    record = run_record(method=script.method, model=model_name, script=script, model_args=model_args,
                        config=config, data=data_info)
    if run_dir.resume_from:
        previous = rundir.read_run_json(output_dir) or {}
        record["resumed_from"] = [*previous.get("resumed_from", []), run_dir.resume_from]
    if config.process_index == 0:
        write_json_atomic(safe_path(output_dir, "run.json"), record)

    trainer = trainer_class(
        model=model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[ShareFileModes()],
    )
    resume_from = run_dir.resume_from
    if script.resume:
        print(f"[tirl] resuming from {resume_from}" if resume_from else "[tirl] --resume: no checkpoint yet, starting fresh")

    metrics: dict = {}
    # the "before" evaluation runs inside the training loop (eval_on_start): a plain `evaluate()` before `train()`
    # leaves transformers' DDP wrapping undone in multi-process runs, so the processes would train unsynchronised
    trainer.args.eval_on_start = eval_ds is not None and resume_from is None
    t1 = time.time()
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    # the step-0 evaluation; a resumed run finds it in the log history restored from its checkpoint
    first_eval = next((h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == 0), None)
    if first_eval is not None:
        metrics["eval_before"] = {k: v for k, v in first_eval.items() if k.startswith("eval_")}
    metrics["train"] = train_output.metrics
    metrics["train_seconds"] = time.time() - t1
    if eval_ds is not None:
        metrics["eval_after"] = trainer.evaluate()
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(output_dir))
        share_file_modes(output_dir)
        write_json_atomic(safe_path(output_dir, "metrics.json"), {"method": script.method, "model": model_name, **metrics})
        plot_training_curves(trainer.state.log_history, safe_path(output_dir, "training_curves.png"), title=f"{script.method} · {model_name}")
        logging_dir = _tensorboard_dir(trainer)
        write_text_atomic(safe_path(output_dir, "summary.md"),
                          summary_markdown(script.method, model_name, config, metrics, output_dir, logging_dir))
    else:
        logging_dir = None
    return TrainResult(output_dir=output_dir, metrics=metrics, log_history=trainer.state.log_history,
                       logging_dir=logging_dir)


def _tensorboard_dir(trainer) -> str | None:
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "TensorBoardCallback":
            return getattr(cb, "logging_dir", None)
    return None


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    return str(x)


def summary_markdown(method: str, model: str, config, metrics: dict, output_dir: Path, logging_dir: str | None) -> str:
    before, after = metrics.get("eval_before", {}), metrics.get("eval_after", {})
    rows = [("eval loss", "eval_loss"), ("eval −log π (MLE term)", "eval_mle_loss"), ("eval TD term E[r²]", "eval_td_loss"),
            ("eval mean reward", "eval_mean_reward"), ("eval entropy", "eval_entropy"),
            ("eval token accuracy", "eval_mean_token_accuracy")]
    lines = [
        f"# tirl train: {method} on {model}",
        "",
        f"λ = {getattr(config, 'iq_lambda', 0.0)}, γ = {config.iq_gamma}, V = {config.iq_value}, steps = {metrics.get('train', {}).get('global_step', config.max_steps)}, "
        f"learning rate = {config.learning_rate}, training time = {metrics.get('train_seconds', 0):.0f} s",
        "",
        "| metric | before | after |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {_fmt(before.get(key))} | {_fmt(after.get(key))} |" for label, key in rows if key in before or key in after]
    lines += ["", "![training curves](training_curves.png)", "", f"- model and tokenizer: `{output_dir}`"]
    if logging_dir:
        lines.append(f"- TensorBoard logs: `{logging_dir}` (`tensorboard --logdir {logging_dir}`)")
    return "\n".join(lines) + "\n"
