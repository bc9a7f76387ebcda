"""What defines a run: the settings `tirl train --resume` must find unchanged (unless `--resume_with_changes`).

Every field of what run.json records a run by (the script's options, each registered method's config, TRL's model
options) defines the run, except those listed in `NOT_DEFINING`, each group with why. A new field, such as a new
objective option, therefore defines the run without anyone listing it; `tests/test_defining.py` checks that every
recorded field is one or the other and that the list names only fields that exist.
"""

from __future__ import annotations

from dataclasses import fields

from .options import TrainScriptArguments

NOT_DEFINING: dict[str, tuple[str, ...]] = {
    # how long it trains: a resumed run may train longer (or stop sooner) on the same objective
    "length": ("max_steps", "num_train_epochs"),
    # compared on their own terms when the run directory is planned (`rundir.plan_train_dir`): the method and model
    # by name, the training rows by their checksum
    "checked_apart": ("method", "model_name_or_path", "dataset", "dataset_config", "dataset_split",
                      "dataset_streaming", "num_train_examples", "prompt_field", "completion_field", "skip_bad_rows"),
    # what is logged, and where: never read by the loss or the optimizer
    "logging": ("logging_steps", "logging_strategy", "logging_first_step", "logging_nan_inf_filter", "log_level",
                "log_level_replica", "log_on_each_node", "report_to", "run_name", "project", "trackio_bucket_id",
                "trackio_space_id", "trackio_static_space_id", "disable_tqdm", "skip_memory_metrics",
                "include_num_input_tokens_seen", "debug"),
    # what is evaluated, when and how: evaluation changes no weight (`do_predict` is refused by `check_options`)
    "evaluation": ("eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "eval_accumulation_steps",
                   "per_device_eval_batch_size", "eval_do_concat_batches", "eval_use_gather_object",
                   "batch_eval_metrics", "bf16_full_eval", "fp16_full_eval", "prediction_loss_only",
                   "include_for_metrics", "metric_for_best_model", "greater_is_better", "eval_packing", "do_eval",
                   "do_train", "do_predict", "eval_dataset", "eval_split", "eval_fraction", "num_eval_examples"),
    # what is saved, where, and what is uploaded
    "saving": ("output_dir", "save_steps", "save_strategy", "save_total_limit", "save_on_each_node", "save_only_model",
               "load_best_model_at_end", "push_to_hub", "hub_always_push", "hub_model_id", "hub_private_repo",
               "hub_revision", "hub_strategy", "hub_token"),
    # how this command treats the run directory and the checkpoint it continues from
    "resuming": ("resume", "resume_with_changes", "overwrite", "resume_from_checkpoint", "ignore_data_skip",
                 "restore_callback_states_from_checkpoint"),
    # where and how it computes (devices, processes, memory, kernels, the sampling backend): the same objective at
    # another speed or memory
    "computation": ("use_cpu", "local_rank", "ddp_backend", "ddp_broadcast_buffers", "ddp_bucket_cap_mb",
                    "ddp_find_unused_parameters", "ddp_static_graph", "ddp_timeout", "fsdp", "fsdp_config",
                    "deepspeed", "accelerator_config", "parallelism_config", "dataloader_num_workers",
                    "dataloader_persistent_workers", "dataloader_pin_memory", "dataloader_prefetch_factor",
                    "dataloader_multiprocessing_context", "gradient_checkpointing", "gradient_checkpointing_kwargs",
                    "activation_checkpointing", "activation_checkpointing_kwargs", "activation_offloading",
                    "enable_jit_checkpoint", "torch_compile", "torch_compile_backend", "torch_compile_mode",
                    "torch_empty_cache_steps", "tf32", "use_liger_kernel", "liger_kernel_config", "iq_chunk_size",
                    "iq_head", "attn_implementation", "dataset_num_proc", "use_cache", "trust_remote_code",
                    "use_vllm", "vllm_mode", "vllm_model_impl", "vllm_server_base_url", "vllm_server_host",
                    "vllm_server_port", "vllm_server_timeout", "vllm_group_port", "vllm_gpu_memory_utilization",
                    "vllm_tensor_parallel_size", "vllm_max_model_length", "vllm_enable_sleep_mode",
                    "vllm_structured_outputs_regex"),
    # the finer settings of how rows are prepared, the model loaded, the adapter built and the optimizer run, beside
    # the defining ones (`max_length`, `packing`, the LoRA shape, the optimizer's): a resume takes them as given,
    # unchecked
    "rows_detail": ("shuffle_dataset", "dataset_kwargs", "dataset_text_field", "chat_template_path", "eos_token",
                    "pad_token", "packing_strategy", "padding_free", "pad_to_multiple_of", "truncation_mode",
                    "remove_unused_columns", "label_names", "length_column_name", "train_sampling_strategy",
                    "dataloader_drop_last", "dataloader_in_order", "wrap_in_chat_template"),
    "model_detail": ("dtype", "model_init_kwargs", "model_revision", "load_in_4bit", "load_in_8bit",
                     "bnb_4bit_quant_type", "bnb_4bit_quant_storage", "use_bnb_nested_quant"),
    "adapter_detail": ("use_dora", "use_rslora", "lora_modules_to_save", "lora_target_parameters", "lora_task_type"),
    "optimizer_detail": ("optim_args", "optim_target_modules", "lr_scheduler_kwargs", "label_smoothing_factor",
                         "neftune_noise_alpha", "auto_find_batch_size", "full_determinism", "router_aux_loss_coef",
                         "average_tokens_across_devices"),
}

# What a checkpoint restores on resume (optimizer.pt holds the optimizer's hyperparameters, scheduler.pt the schedule
# and its base learning rate): a resume cannot change these, even with --resume_with_changes.
RESTORED_ON_RESUME = ("optim", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
                      "lr_scheduler_type", "warmup_steps")


def not_defining() -> frozenset[str]:
    """Every name of `NOT_DEFINING`."""
    return frozenset(name for group in NOT_DEFINING.values() for name in group)


def recorded_classes() -> tuple[type, ...]:
    """The dataclasses run.json records a run by: the script's options, each registered method's config (once per
    class), TRL's model options."""
    from trl import ModelConfig

    from ..trainers.methods import METHODS

    return (TrainScriptArguments, *dict.fromkeys(m.config for m in METHODS.values()), ModelConfig)


def defining() -> tuple[str, ...]:
    """The names of the settings that define a run, sorted: every field of `recorded_classes` not in `NOT_DEFINING`."""
    names = {f.name for cls in recorded_classes() for f in fields(cls)}
    return tuple(sorted(names - not_defining()))


def defining_settings(script, config, model_args) -> dict:
    """The defining settings of a run, as run.json records them (JSON values)."""
    from ..files import jsonable

    return {name: jsonable(getattr(obj, name)) for name in defining()
            for obj in (script, config, model_args) if hasattr(obj, name)}
