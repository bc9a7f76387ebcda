"""tirl.trainers.arguments: the option groups of the configs; each objective setting is checked once, by Objective."""

import dataclasses

import pytest

from tirl.losses import DEFAULTS, Objective
from tirl.trainers import GAILConfig, IQLearnConfig, OnlineIQLearnConfig
from tirl.trainers.arguments import QVArguments, TDArguments, TokenLossArguments


def test_every_objective_setting_is_an_option_whose_default_is_the_objectives(tmp_path):
    settings = {f.name for f in dataclasses.fields(Objective)} - {"eos_token_ids"}
    offline = {f.name for f in dataclasses.fields(IQLearnConfig)}
    online = {f.name for f in dataclasses.fields(OnlineIQLearnConfig)}
    assert settings - offline == {"iq_alpha", "iq_policy_terms"} and settings <= offline | online
    # one place holds the defaults: a config made with none given describes `Objective()` in every setting it has
    for config in (IQLearnConfig, OnlineIQLearnConfig, GAILConfig):
        made = config(output_dir=str(tmp_path))
        for name in settings & {f.name for f in dataclasses.fields(config)}:
            default = getattr(DEFAULTS, name)
            assert getattr(made, name) == (default.name if name == "iq_value" else default), (config.__name__, name)


def test_the_groups_declare_each_option_once():
    names = [f.name for group in (QVArguments, TDArguments, TokenLossArguments) for f in dataclasses.fields(group)]
    assert len(names) == len(set(names))
    for config in (IQLearnConfig, OnlineIQLearnConfig, GAILConfig):
        declared = [f.name for f in dataclasses.fields(config)]
        assert len(declared) == len(set(declared)), config.__name__


def test_configs_build_the_objective_they_describe(tmp_path):
    config = IQLearnConfig(output_dir=str(tmp_path), iq_lambda=0.3, iq_value="head", iq_reduction="sequence",
                           iq_lambda_warmup_steps=5)
    o = Objective.from_config(config, eos_token_ids=[2, 3])
    assert (o.iq_lambda, o.iq_value.name, o.iq_reduction, o.iq_lambda_warmup_steps, o.eos_token_ids) == (
        0.3, "head", "sequence", 5, (2, 3))
    assert o.iq_alpha == 0.0  # offline: no policy samples
    gail = Objective.from_config(GAILConfig(output_dir=str(tmp_path), iq_gamma=0.9, iq_reduction="sequence"))
    assert gail.iq_lambda == 0.0 and gail.loss_type == "nll"  # GAIL's expert term is plain MLE
    assert (gail.iq_gamma, gail.iq_reduction) == (0.9, "sequence")  # its returns' γ and policy-gradient mean
    online = Objective.from_config(OnlineIQLearnConfig(output_dir=str(tmp_path), iq_alpha=0.3, iq_policy_terms="td"))
    assert (online.iq_alpha, online.iq_policy_terms) == (0.3, "td")


@pytest.mark.parametrize("config", [IQLearnConfig, OnlineIQLearnConfig, GAILConfig])
def test_each_config_checks_the_objective_and_the_head_where_it_is_made(config, tmp_path):
    with pytest.raises(ValueError, match=r"iq_gamma must be a finite number in \[0, 1\], got 2"):
        config(output_dir=str(tmp_path), iq_gamma=2.0)
    with pytest.raises(ValueError, match="iq_chunk_size must be >= 0"):
        config(output_dir=str(tmp_path), iq_chunk_size=-1)


def test_gem_with_fp16_and_the_chunked_head_is_refused(tmp_path):
    with pytest.raises(ValueError, match="loss_type='gem' forms its gradient in the chunked head's forward pass"):
        IQLearnConfig(output_dir=str(tmp_path), loss_type="gem", iq_lambda=0.0, fp16=True, use_cpu=False)


def test_the_token_losses_are_trls_names_plus_gem():
    from trl import SFTConfig

    trl_choices = next(f for f in dataclasses.fields(SFTConfig) if f.name == "loss_type").metadata["choices"]
    ours = next(f for f in dataclasses.fields(IQLearnConfig) if f.name == "loss_type").metadata["choices"]
    assert {"nll", "dft"} <= set(trl_choices) and set(ours) == {"nll", "dft", "gem"}
