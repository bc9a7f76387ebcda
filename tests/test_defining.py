"""tirl.jobs.defining: every setting run.json records either defines the run (a resume must keep it) or is listed, by
group, as not defining; a field added to a method's config defines the run without being listed anywhere."""

from collections import Counter
from dataclasses import dataclass, fields

import pytest

from tirl.jobs.defining import NOT_DEFINING, RESTORED_ON_RESUME, defining, not_defining, recorded_classes


def recorded_fields() -> dict[str, set[str]]:
    """{class name: its field names} for every dataclass `tirl train` records a run by: the script's options, each
    registered method's config and the command's model options (`tirl.cli.train.ModelArguments`)."""
    from tirl.cli.train import ModelArguments
    from tirl.jobs.train import TrainScriptArguments
    from tirl.trainers.methods import METHODS

    classes = [TrainScriptArguments, *(m.config for m in METHODS.values()), ModelArguments]
    return {cls.__name__: {f.name for f in fields(cls)} for cls in classes}


def test_every_recorded_field_defines_the_run_or_is_listed_as_not():
    both = set(defining()) & not_defining()
    neither = {f"{cls}.{name}" for cls, names in recorded_fields().items() for name in names
               if name not in defining() and name not in not_defining()}
    assert not both, f"in DEFINING and NOT_DEFINING: {sorted(both)}"
    assert not neither, f"in neither DEFINING nor NOT_DEFINING: {sorted(neither)}"


def test_not_defining_lists_each_field_once_and_only_fields_that_exist():
    repeated = [name for name, n in Counter(n for group in NOT_DEFINING.values() for n in group).items() if n > 1]
    assert not repeated, f"listed twice: {repeated}"
    existing = set().union(*recorded_fields().values())
    assert not not_defining() - existing, f"not a field of any recorded class: {sorted(not_defining() - existing)}"


@pytest.mark.parametrize("name", ["iq_lambda", "iq_value", "iq_gamma", "loss_type", "gem_beta", "iq_alpha",
                                  "gail_kl_coef", "temperature", "learning_rate", "lr_scheduler_type", "seed",
                                  "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
                                  "packing", "use_peft", "lora_r"])
def test_the_objective_optimizer_batch_rows_and_adapter_define_a_run(name):
    assert name in defining()


@pytest.mark.parametrize("name", ["max_steps", "num_train_epochs", "logging_steps", "report_to", "eval_steps",
                                  "save_steps", "output_dir", "resume", "resume_with_changes", "overwrite",
                                  "resume_from_checkpoint", "iq_chunk_size", "method", "model_name_or_path"])
def test_length_logging_evaluation_saving_and_resume_flags_may_change(name):
    assert name not in defining()


def test_what_a_checkpoint_restores_defines_the_run():
    assert set(RESTORED_ON_RESUME) <= set(defining())


def test_a_field_added_to_a_methods_config_defines_the_run(monkeypatch):
    from tirl.trainers import IQLearnConfig, IQLearnTrainer, methods

    @dataclass
    class WithANewTerm(IQLearnConfig):
        new_term_weight: float = 0.5

    monkeypatch.setitem(methods.METHODS, "new-term", methods.Method(WithANewTerm, IQLearnTrainer, "a new term"))
    assert WithANewTerm in recorded_classes()
    assert "new_term_weight" in defining()
