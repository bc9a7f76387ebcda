"""A whole training job: model + data + trainer + run directory. `tirl train` is a thin parser over `run`.

The run directory (`output_dir`) gets the trained model and tokenizer, TRL/transformers checkpoints, TensorBoard logs
(with `report_to=tensorboard`), `run.json` (config, versions, git commit, data checksums), `metrics.json`,
`training_curves.png` and `summary.md`.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import random
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..data import DataError, is_builtin, load_rows, to_trl
from ..files import safe_path, share_file_modes, write_json_atomic, write_text_atomic
from . import rundir
from .defining import RESTORED_ON_RESUME, defining, defining_settings
from .options import DEFAULT_DATASET, TrainScriptArguments
from .runinfo import rows_checksum, run_record

if TYPE_CHECKING:
    from ..trainers.methods import Method


class OptionError(ValueError):
    """An option value that cannot work, found before any work starts; the message names the option."""


def registered_method(name: str) -> Method:
    """The `tirl.trainers.methods.Method` registered as `name`; imported here, when a run starts, so that importing
    this module stays fast."""
    from ..trainers.methods import METHODS

    if name not in METHODS:
        raise OptionError(f"--method: unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


def fix_method(method: str, config, given: Collection[str] = frozenset()) -> None:
    """Set the options `method` fixes (`Method.fixed`) on `config`; one of them given (`given`: option names) with
    another value is an `OptionError`. The one place a method's fixed options are applied."""
    for name, value in registered_method(method).fixed.items():
        if name in given and getattr(config, name) != value:
            raise OptionError(f"--method {method} trains with {name}={value}; drop --{name} or use --method "
                              f"{'iqlearn' if name == 'iq_lambda' else method}")
        setattr(config, name, value)
    from ..trainers.arguments import check_objective

    check_objective(config)


def check_options(script: TrainScriptArguments, config, model_args) -> None:
    """Refuse, in one line naming the option, values that TRL/transformers would accept (or fail on later, with a
    traceback) but that cannot do what they say, and options that `tirl train` has no use for."""
    if config.max_steps == 0:
        # transformers takes max_steps <= 0 as "use num_train_epochs", and a 0 there still runs a step
        raise OptionError("--max_steps 0 would train nothing: give the number of optimizer steps, or -1 to train for "
                          "--num_train_epochs")
    if config.max_steps < 0 and not config.num_train_epochs > 0:
        raise OptionError(f"--num_train_epochs {config.num_train_epochs:g} with --max_steps {config.max_steps} would "
                          "train nothing: give a positive number of epochs or of steps")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(config, name) < 1:
            raise OptionError(f"--{name} must be >= 1, got {getattr(config, name)}")
    if not (config.learning_rate >= 0 and math.isfinite(config.learning_rate)):
        raise OptionError(f"--learning_rate must be a finite number >= 0, got {config.learning_rate}")
    if not 0 <= script.eval_fraction < 1:
        raise OptionError(f"--eval_fraction must be in [0, 1), got {script.eval_fraction}")
    for name in ("num_train_examples", "num_eval_examples"):
        value = getattr(script, name)
        if value is not None and value < 1:
            raise OptionError(f"--{name} must be >= 1 (or unset for all rows), got {value}")
    name = script.dataset or DEFAULT_DATASET
    if script.dataset_config is not None and (is_builtin(name) or os.path.exists(name)):
        # `datasets.load_dataset`'s configuration name; a built-in task or a local file has none to select
        raise OptionError(f"--dataset_config {script.dataset_config!r} selects a configuration of a hub dataset; "
                          f"--dataset {name} is a {'built-in task' if is_builtin(name) else 'local path'}, which has "
                          "none: drop --dataset_config")
    if config.do_predict:
        raise OptionError("--do_predict: tirl train has no prediction step; evaluate the trained model with `tirl eval`")
    if config.push_to_hub:
        check_hub_for_push(config)
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not quantization_available():
        flag = "--load_in_4bit" if model_args.load_in_4bit else "--load_in_8bit"
        raise OptionError(f"{flag} loads the model through bitsandbytes, which needs a CUDA GPU and the bitsandbytes "
                          "package (pip install 'tirl[bitsandbytes]'); this machine has "
                          f"{'no CUDA GPU' if not torch_cuda() else 'no bitsandbytes'}")


def check_hub_for_push(config) -> None:
    """Refuse `--push_to_hub` in one line when the hub cannot take the upload: offline mode, no token, a token the hub
    refuses, or no connection. Otherwise the first upload fails at the first save, after training started, with a
    long traceback."""
    from huggingface_hub import constants, whoami
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    if constants.HF_HUB_OFFLINE:
        raise OptionError("--push_to_hub uploads to the Hugging Face hub, and HF_HUB_OFFLINE is set: unset it, or "
                          "drop --push_to_hub (the run directory holds everything the upload would)")
    try:
        whoami(token=config.hub_token, cache=True)
    except LocalTokenNotFoundError:
        raise OptionError("--push_to_hub needs a Hugging Face token: log in with `hf auth login`, set HF_TOKEN or "
                          "pass --hub_token") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = "the hub refuses the token" if status in (401, 403) else first
        raise OptionError(f"--push_to_hub: {constants.ENDPOINT}: {reason}") from None
    except Exception as e:  # connection refused, DNS failure, timeout, proxy errors: the hub cannot be reached
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OptionError(f"--push_to_hub: cannot reach the Hugging Face hub ({constants.ENDPOINT}: {first}); "
                          "train without --push_to_hub and upload the run directory later") from None


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def quantization_available() -> bool:
    """Whether 4/8-bit loading can work here: a CUDA GPU and the bitsandbytes package."""
    import importlib.util

    return torch_cuda() and importlib.util.find_spec("bitsandbytes") is not None


def load_model(model_name: str, config, model_args):
    """(model, tokenizer) of `--model` with TRL's model options applied as `trl sft` applies them: dtype, revision,
    attention implementation, 4/8-bit quantisation (`trl.get_quantization_config`), `trust_remote_code`."""
    from trl import get_quantization_config

    from .. import models

    try:
        return models.load(
            model_name, dtype=model_args.dtype if model_args.dtype not in (None, "auto") else None, seed=config.seed,
            trust_remote_code=config.trust_remote_code, revision=model_args.model_revision,
            attn_implementation=model_args.attn_implementation, quantization_config=get_quantization_config(model_args))
    except models.ModelNotAvailableError as e:
        raise models.ModelNotAvailableError(f"--model: {e}") from None


def _load_rows(option: str, name: str, **kwargs) -> list[dict]:
    try:
        return load_rows(name, **kwargs)
    except DataError as e:
        raise DataError(f"{option}: {e}") from None


def rows_per_run(config) -> int | None:
    """How many training rows a run with `max_steps` draws (steps × batch × accumulation × processes); None when
    epochs define its length."""
    if config.max_steps is None or config.max_steps <= 0:
        return None
    return config.max_steps * config.per_device_train_batch_size * config.gradient_accumulation_steps * \
        max(1, config.world_size)


def load_train_eval_rows(script: TrainScriptArguments, seed: int, used: int | None = None, text_field: str = "text",
                         ) -> tuple[list[dict], list[dict], dict]:
    """Training and evaluation rows, plus a description of where they came from (for run.json).

    Evaluation rows come from --eval_dataset, else the task's test split, else (a local file) a held-out part of the
    training rows: round(--eval_fraction × rows), at most --num_eval_examples; every held-out row is evaluated and
    every other row trained on. `used` (`rows_per_run`): a run that draws fewer rows than there are keeps that many,
    the first of one seeded shuffle of them (what a shuffled first epoch would draw; a longer run of the same seed
    keeps a superset, so it can resume a shorter one), so that nothing is prepared, such as the reference values, for
    rows it never sees. `run.json` records both counts and both checksums."""
    name = script.dataset or DEFAULT_DATASET
    common = {"seed": seed, "skip_bad_rows": script.skip_bad_rows, "prompt_field": script.prompt_field,
              "completion_field": script.completion_field, "text_field": text_field}
    hub = {"config": script.dataset_config, "streaming": script.dataset_streaming}
    train = _load_rows("--dataset", name, split=script.dataset_split, limit=script.num_train_examples, **common,
                       **hub)
    eval_rows: list[dict] = []
    held_out = 0
    if script.eval_dataset:
        eval_rows = _load_rows("--eval_dataset", script.eval_dataset, split=script.eval_split,
                               limit=script.num_eval_examples, **common)
    elif os.path.exists(name):
        if script.eval_fraction > 0 and len(train) >= 20:
            shuffled = train[:]
            random.Random(seed).shuffle(shuffled)
            k = max(1, int(round(len(shuffled) * script.eval_fraction)))
            if script.num_eval_examples is not None:
                k = min(k, script.num_eval_examples)
            eval_rows, train = shuffled[:k], shuffled[k:]
            held_out = k
    else:
        try:
            eval_rows = load_rows(name, split=script.eval_split, limit=script.num_eval_examples, **common, **hub)
        except (DataError, ValueError) as e:
            print(f"[tirl] no evaluation split for {name!r} ({e}); training without evaluation")
    available, available_sha = len(train), rows_checksum(train)
    if used is not None and used < available:
        train = train[:]
        random.Random(seed).shuffle(train)
        train = train[:used]
    info = {
        "train": {"source": name, "split": script.dataset_split, "config": script.dataset_config, "rows": len(train),
                  "sha256": rows_checksum(train), "rows_available": available, "sha256_available": available_sha},
        "eval": {"source": script.eval_dataset or name, "rows": len(eval_rows), "sha256": rows_checksum(eval_rows),
                 "held_out_from_train": held_out},
    }
    return train, eval_rows, info


def chat_rendering(script: TrainScriptArguments) -> bool | None:
    """How `to_trl` renders the run's plain-string rows: None for a built-in task (a conversation when the tokenizer
    has a chat template), else as the user asked (`wrap_in_chat_template`; `trl sft`'s plain text by default)."""
    return None if is_builtin(script.dataset or DEFAULT_DATASET) else script.wrap_in_chat_template


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict
    log_history: list[dict]
    logging_dir: str | None


@dataclass
class PreparedRun:
    """Everything `run` checks and loads before it writes anything: the options, the trainer to build, the model and
    its tokenizer, and the rows with where they came from (`load_train_eval_rows`)."""

    script: TrainScriptArguments
    config: object  # the method's config (`Method.config`), its fixed options set
    model_args: object  # TRL's `ModelConfig`
    trainer_class: type
    model: object
    tokenizer: object
    model_name: str
    train_rows: list[dict]
    eval_rows: list[dict]
    data_info: dict


def run(script: TrainScriptArguments, config, model_args, given: Collection[str] = frozenset()) -> TrainResult:
    """Train `model_args.model_name_or_path` (TRL's `ModelConfig`) on `script.dataset` with `config` (the config
    class of `script.method`, `tirl.trainers.methods.METHODS`). `given`: the option names the user set, which
    `fix_method` refuses to override.

    Everything that can be checked is checked before anything is written: the options, the data, the output
    directory (reuse, `--resume`/`--overwrite`, links, writability) and the model. A run that then fails before its
    first checkpoint leaves no directory behind; a full disk is a `RunDirError` naming the device, the file and the
    last complete checkpoint.
    """
    method = registered_method(script.method)
    if not isinstance(config, method.config):
        raise TypeError(f"--method {script.method} needs a {method.config.__name__}, got {type(config).__name__}")
    fix_method(script.method, config, given)
    check_options(script, config, model_args)
    model_name = model_args.model_name_or_path or "smollm2-135m"

    train_rows, eval_rows, data_info = load_train_eval_rows(script, config.seed, rows_per_run(config),
                                                            config.dataset_text_field)
    run_dir = rundir.plan_train_dir(config.output_dir, resume=script.resume, overwrite=script.overwrite,
                                    method=script.method, model=model_name,
                                    train_sha256=data_info["train"]["sha256_available"],
                                    checkpoint=config.resume_from_checkpoint,
                                    settings=defining_settings(script, config, model_args),
                                    allow_changes=script.resume_with_changes, restored=RESTORED_ON_RESUME)
    t0 = time.time()
    model, tokenizer = load_model(model_name, config, model_args)
    print(f"[tirl] model {model_name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters "
          f"(loaded in {time.time() - t0:.1f} s)")
    available = data_info["train"]["rows_available"]
    loaded = available + data_info["eval"]["held_out_from_train"]
    if script.num_train_examples is not None and loaded < script.num_train_examples:
        print(f"[tirl] --num_train_examples {script.num_train_examples}: {data_info['train']['source']!r} has only "
              f"{loaded} rows; all {loaded} are used")
    print(f"[tirl] data: {len(train_rows)} training rows from {data_info['train']['source']!r}"
          f"{f' (the {len(train_rows)} of {available} that --max_steps draws)' if available > len(train_rows) else ''}"
          f", {len(eval_rows)} evaluation rows")

    # every process has checked the directory before the main one changes it; the main one holds its lock throughout
    main = config.process_index == 0
    _barrier(config)
    with rundir.output_lock(run_dir.path, "train") if main else contextlib.nullcontext():
        if main:
            rundir.prepare(run_dir)
        _barrier(config)
        prepared = PreparedRun(script, config, model_args, method.trainer, model, tokenizer, model_name, train_rows,
                               eval_rows, data_info)
        return _run_in(run_dir, prepared)


def _run_in(run_dir: rundir.RunDir, prepared: PreparedRun) -> TrainResult:
    """`_train` in a prepared, locked run directory; a failure ends as `run` documents."""
    main = prepared.config.process_index == 0
    try:
        return _train(prepared, run_dir)
    except BaseException as e:
        from ..trainers.checkpoints import PARTIAL_PREFIX

        message = (rundir.write_failure(e, run_dir.path, staging_prefix=PARTIAL_PREFIX)
                   if isinstance(e, Exception) else None)
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


def _train(prepared: PreparedRun, run_dir: rundir.RunDir) -> TrainResult:
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

    script, config, model_args = prepared.script, prepared.config, prepared.model_args
    tokenizer, model_name, data_info = prepared.tokenizer, prepared.model_name, prepared.data_info
    train_rows, eval_rows = prepared.train_rows, prepared.eval_rows
    output_dir = run_dir.path
    chat = chat_rendering(script)
    field = config.dataset_text_field
    train_ds = Dataset.from_list(to_trl(train_rows, tokenizer, chat, field)).add_column(SOURCE_COLUMN,
                                                                                        _sources(train_rows))
    eval_ds = (Dataset.from_list(to_trl(eval_rows, tokenizer, chat, field)).add_column(SOURCE_COLUMN,
                                                                                       _sources(eval_rows))
               if eval_rows else None)
    if eval_ds is None:
        config.eval_strategy = "no"

    record = run_record(method=script.method, model=model_name, script=script, model_args=model_args,
                        config=config, data=data_info)
    record["defining"] = defining_settings(script, config, model_args)
    if run_dir.resume_from:
        record = resumed_record(rundir.read_run_json(output_dir) or {}, record, run_dir.resume_from)
    if config.process_index == 0:
        write_json_atomic(safe_path(output_dir, "run.json"), record)

    trainer = prepared.trainer_class(
        model=prepared.model,
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[ShareFileModes()],
    )
    trainer.model_card_info = {"base_model": model_name, "dataset": data_info["train"]["source"],
                               "dataset_split": None if os.path.exists(data_info["train"]["source"])
                               else data_info["train"]["split"], "dataset_rows": data_info["train"]["rows"]}
    absolute_adapter_base(trainer)
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
    # the steps taken, also when epochs set the length (config.max_steps is then -1)
    metrics["train"] = {**train_output.metrics, "global_step": train_output.global_step}
    metrics["train_seconds"] = time.time() - t1
    if eval_ds is not None:
        metrics["eval_after"] = trainer.evaluate()
    trainer.model_card_info["merged_adapter"] = save_trained_model(trainer, output_dir, model_name)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(output_dir))
        trainer.create_model_card(model_name=output_dir.name)  # with the evaluation after training
        share_file_modes(output_dir)
        write_json_atomic(safe_path(output_dir, "metrics.json"), {"method": script.method, "model": model_name, **metrics})
        plot_training_curves(trainer.state.log_history, safe_path(output_dir, "training_curves.png"), title=f"{script.method} · {model_name}")
        logging_dir = _tensorboard_dir(trainer)
        write_text_atomic(safe_path(output_dir, "summary.md"),
                          summary_markdown(script.method, model_name, config, metrics, output_dir, logging_dir,
                                           record))
    else:
        logging_dir = None
    return TrainResult(output_dir=output_dir, metrics=metrics, log_history=trainer.state.log_history,
                       logging_dir=logging_dir)


ADAPTER_DIR = "adapter"  # where a LoRA run on a built-in base keeps its adapter (`save_trained_model`)


def absolute_adapter_base(trainer) -> None:
    """A LoRA adapter records its base as the model was loaded; a local directory given as a relative path is
    recorded absolute, so the adapters of the run and of its checkpoints load from any working directory."""
    from accelerate.utils import is_peft_model

    model = trainer.accelerator.unwrap_model(trainer.model)
    if is_peft_model(model):
        for peft_config in model.peft_config.values():
            base = peft_config.base_model_name_or_path
            if base and os.path.isdir(base) and not os.path.isabs(base):
                peft_config.base_model_name_or_path = os.path.abspath(base)


def save_trained_model(trainer, output_dir: Path, model_name: str) -> bool:
    """Save the trained model into the run directory, loadable by `transformers.AutoModelForCausalLM.from_pretrained`
    as by `tirl.models.load`. A LoRA adapter on a built-in base (a model built in code from the run's seed, or the
    embedded SmolLM2 in this machine's cache) names a base that nothing but tirl can load, so the run directory gets
    the merged model, and the adapter goes to `adapter/` (which `tirl.models.load` puts back on its base). Sharded
    training (FSDP, DeepSpeed) saves the adapter alone: its weights are not whole on any process. Returns
    whether the run directory holds a merged model."""
    from accelerate.utils import is_peft_model

    from .. import models
    from ..trainers.reference_model import frozen_copy

    model = trainer.accelerator.unwrap_model(trainer.model)
    if not is_peft_model(model) or not models.is_builtin(model_name) or trainer.is_fsdp_enabled \
            or trainer.is_deepspeed_enabled:
        trainer.save_model(str(output_dir))
        return False
    trainer.save_model(str(output_dir / ADAPTER_DIR))
    if trainer.is_world_process_zero():
        merged = frozen_copy(model)  # a merged copy: the trainer's model stays as it is
        merged.save_pretrained(str(output_dir))
        trainer.value_input.save(merged, output_dir)  # what the value form keeps beside the weights
        # PEFT's blank card template: the run's README.md describes the adapter; and the adapter files of a run
        # resumed from an older tirl, which would make from_pretrained(run) look for the built-in base
        for stale in (ADAPTER_DIR + "/README.md", "adapter_config.json", "adapter_model.safetensors"):
            (output_dir / stale).unlink(missing_ok=True)
    return True


def resumed_record(previous: dict, now: dict, checkpoint: str) -> dict:
    """run.json of a resumed run: the run as it was started (its config, script and data, which the whole run is
    described by), plus one segment per resume with the settings that segment changed and its command line."""
    segment = {"resumed_from": checkpoint, "command": now["command"], "git_commit": now["git_commit"],
               "changed": {section: {k: v for k, v in (now.get(section) or {}).items()
                                     if (previous.get(section) or {}).get(k) != v}
                           for section in ("config", "script", "model_args")}}
    segment["changed"] = {k: v for k, v in segment["changed"].items() if v}
    if now.get("data") != previous.get("data"):  # a longer run draws more of the same rows
        segment["data"] = now.get("data")
    out = {**previous, "segments": [*previous.get("segments", []), segment],
           "resumed_from": [*previous.get("resumed_from", []), checkpoint]}
    return out or now


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


def summary_markdown(method: str, model: str, config, metrics: dict, output_dir: Path, logging_dir: str | None,
                     record: dict | None = None) -> str:
    """summary.md: the run's settings as it was started (from its run.json `record`; else `config`), each resumed
    segment with what it changed, and the evaluation before and after."""
    before, after = metrics.get("eval_before", {}), metrics.get("eval_after", {})
    started = (record or {}).get("config") or {}

    def setting(name: str, default=None):
        return started.get(name, getattr(config, name, default))

    rows = [("eval loss", "eval_loss"), ("eval −log π (MLE term)", "eval_mle_loss"), ("eval TD term E[r²]", "eval_td_loss"),
            ("eval mean reward", "eval_mean_reward"), ("eval entropy", "eval_entropy"),
            ("eval token accuracy", "eval_mean_token_accuracy")]
    lines = [
        f"# tirl train: {method} on {model}",
        "",
        f"λ = {setting('iq_lambda', 0.0)}, γ = {setting('iq_gamma')}, V = {setting('iq_value')}, "
        f"steps = {metrics.get('train', {}).get('global_step', config.max_steps)}, "
        f"learning rate = {setting('learning_rate')}, training time = {metrics.get('train_seconds', 0):.0f} s"
        + (" (the last segment)" if (record or {}).get("segments") else ""),
    ]
    names = defining()
    for segment in (record or {}).get("segments", []):
        changes = {k: v for section in segment.get("changed", {}).values() for k, v in section.items()
                   if k not in ("resume", "resume_with_changes", "resume_from_checkpoint")}
        shown = ", ".join(f"{k} = {v}" for k, v in changes.items() if k in names) or "no defining setting"
        lines.append(f"- resumed from `{Path(segment['resumed_from']).name}`: changed {shown}")
    lines += [
        "",
        "| metric | before | after |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {_fmt(before.get(key))} | {_fmt(after.get(key))} |" for label, key in rows if key in before or key in after]
    lines += ["", "![training curves](training_curves.png)", "", f"- model and tokenizer: `{output_dir}`"]
    if logging_dir:
        lines.append(f"- TensorBoard logs: `{logging_dir}` (`tensorboard --logdir {logging_dir}`)")
    return "\n".join(lines) + "\n"
