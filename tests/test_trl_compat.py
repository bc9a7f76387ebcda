"""Every private part of TRL, transformers and torch that tirl still touches, and why; each test fails when one goes.

tirl uses public APIs where TRL or transformers offer them. These are the debts where they do not; a version
upgrade that breaks one names it here, at once, instead of as a wrong result somewhere else.

    private part                                        used by                 why it remains
    Trainer._save_checkpoint                            trainers/base.py        atomic checkpoints: no public hook
                                                                                writes a checkpoint elsewhere first
    Trainer._get_output_dir(trial)                      trainers/base.py        where _save_checkpoint writes; the
                                                                                override redirects it to the staging dir
    Trainer._issue_warnings_after_load                  trainers/base.py        a resume must not warn that a tied
                                                                                weight (lm_head) is missing
    Trainer._load_optimizer_and_scheduler               trainers/base.py        a resumed optimizer.pt that loads but
                                                                                does not fit is one line, not torch's
                                                                                error: no public hook around the load
    Trainer._set_signature_columns_if_needed,           trainers/base.py        the reference-value column must survive
      Trainer._signature_columns                                                Trainer's column removal
    _BaseTrainer._tag_names, _name, _paper              trainers/*_trainer.py   TRL's model card reads these class
                                                                                attributes; there is no other way in
    PreTrainedModel._keys_to_ignore_on_save             qv/value_head.py        keeps the value head out of
                                                                                model.safetensors (a plain causal LM)
    torch.nn.Module._modules                            trainers/discriminator  a truncated trunk view that shares
                                                                                layers without changing the original
    argparse.ArgumentParser._actions                    cli/train.py            the option names of TRL's parser, to
      (TrlParser's base class)                                                  name a bad option in a config's error
    torch.cpu._is_avx512_bf16_supported,                hardware.py             whether a CPU computes bf16 natively
      torch.cpu._is_amx_tile_supported                                          (the bf16 default): no public query
    trl.data_utils._tokenize (tests only)               tests/test_sampling.py  the oracle of prompt tokenisation
    Trainer._save_rng_state (tests only)                tests/test_robustness   a crash injected part-way through
                                                                                writing a checkpoint

The public parts tirl leans on in a way TRL could change quietly are checked too (the vLLM options mapped by name onto
VLLMGeneration, the reference-model preparation, the ZeRO-3 head gather, Trainer.get_batch_samples).
"""

import dataclasses
import inspect

import torch
import transformers
import trl
from transformers import PreTrainedModel, Trainer
from trl import SFTTrainer


def source(obj) -> str:
    return inspect.getsource(obj)


def test_atomic_checkpoints_can_redirect_where_trainer_saves():
    assert callable(getattr(Trainer, "_save_checkpoint", None))
    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    assert list(inspect.signature(Trainer._get_output_dir).parameters) == ["self", "trial"]
    # the override of _get_output_dir only works while _save_checkpoint asks it where to write
    assert "self._get_output_dir(" in source(Trainer._save_checkpoint)
    assert "_save_checkpoint" in source(SFTTrainer)  # TRL writes the model card there, then calls Trainer's
    # the crash test of tests/test_robustness.py fails this step: after the model and optimizer, before the trainer state
    assert "self._save_rng_state(" in source(Trainer._save_checkpoint)


def test_resume_warnings_pass_through_one_method():
    assert list(inspect.signature(Trainer._issue_warnings_after_load).parameters) == ["self", "load_result"]
    assert "self._issue_warnings_after_load(load_result)" in source(Trainer._load_from_checkpoint)
    # torch's load_state_dict result is a namedtuple: the override replaces its missing keys
    assert hasattr(torch.nn.Module().load_state_dict({}, strict=False), "_replace")


def test_a_resumed_optimizer_state_loads_through_one_method():
    assert list(inspect.signature(Trainer._load_optimizer_and_scheduler).parameters) == ["self", "checkpoint"]
    assert "self._load_optimizer_and_scheduler(resume_from_checkpoint)" in source(Trainer._prepare_for_training)


def test_the_reference_value_column_survives_column_removal():
    assert callable(getattr(SFTTrainer, "_set_signature_columns_if_needed", None))
    assert "self._signature_columns" in source(SFTTrainer._set_signature_columns_if_needed)
    assert "self._signature_columns" in source(Trainer._remove_unused_columns)


def test_the_model_card_reads_the_trainer_class_attributes():
    owner = next(c for c in SFTTrainer.__mro__ if "_tag_names" in vars(c) and c is not SFTTrainer)  # trl's _BaseTrainer
    text = source(owner)
    for name in ("self._tag_names", "self._name", "self._paper"):
        assert name in text, name


def test_the_value_head_can_be_kept_out_of_model_safetensors():
    assert hasattr(PreTrainedModel, "_keys_to_ignore_on_save")
    assert "_keys_to_ignore_on_save" in source(PreTrainedModel.save_pretrained)


def test_a_module_keeps_its_children_in_modules():
    m = torch.nn.Sequential(torch.nn.Linear(1, 1))
    assert isinstance(m._modules, dict) and m._modules["0"] is m[0]


def test_the_parser_lists_its_options_in_actions():
    from tirl.cli.train import build_parser

    parser = build_parser("iqlearn")
    assert isinstance(parser, trl.TrlParser)
    assert any("--iq_lambda" in a.option_strings and a.dest == "iq_lambda" for a in parser._actions)


def test_the_tokenisation_oracle_of_the_tests_exists():
    from trl.data_utils import _tokenize

    assert callable(_tokenize)


# --------------------------------------------------------------------------------------------------------------------
# Public parts used in ways a release could change without a deprecation


def test_every_vllm_option_maps_onto_trls_vllm_backend():
    from trl.generation.vllm_generation import VLLMGeneration

    from tirl.trainers.arguments import VLLMArguments, vllm_generation_kwargs
    from tirl.trainers.gail_config import GAILConfig

    ours = {f.name: f for f in dataclasses.fields(VLLMArguments)}
    kwargs = vllm_generation_kwargs(GAILConfig(output_dir="/tmp/tirl-compat", use_cpu=True))
    takes = set(inspect.signature(VLLMGeneration.__init__).parameters)
    inspect.signature(VLLMGeneration.__init__).bind_partial(None, **kwargs)  # raises on a name TRL does not take
    # written out field by field: the same names, defaults and help as GRPOConfig's, and none of TRL's missing
    trls = {f.name: f for f in dataclasses.fields(trl.GRPOConfig)
            if f.name == "use_vllm" or (f.name.startswith("vllm_") and f.name.removeprefix("vllm_") in takes)}
    assert set(ours) == set(trls)
    for name, f in ours.items():
        assert f.default == trls[name].default, name
        assert f.metadata["help"] == trls[name].metadata["help"], name


def test_the_reference_is_prepared_with_grpos_helpers():
    from trl.models import prepare_deepspeed, prepare_fsdp, unwrap_model_for_generation
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    assert list(inspect.signature(prepare_deepspeed).parameters)[:2] == ["model", "accelerator"]
    assert list(inspect.signature(prepare_fsdp).parameters)[:2] == ["model", "accelerator"]
    assert callable(unwrap_model_for_generation) and callable(maybe_gather_lm_head_ctx)
    assert "prepare_deepspeed(self.ref_model" in source(trl.GRPOTrainer.__init__)


def test_trainer_counts_and_hands_over_the_micro_batches_of_a_step():
    assert list(inspect.signature(Trainer.get_batch_samples).parameters) == ["self", "epoch_iterator", "num_batches",
                                                                             "device"]
    for name in ("get_tp_size", "get_cp_size", "get_sp_size", "compute_loss_context_manager"):
        assert callable(getattr(Trainer, name)), name
    assert transformers.__version__ and trl.__version__


def test_the_cpu_bf16_query_is_still_there():
    """tirl.hardware asks torch whether the CPU has AVX512-BF16 or AMX; gone, every CPU would train in float32."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        assert isinstance(getattr(torch.cpu, name)(), bool)
