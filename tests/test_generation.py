"""tirl.generation: policy samples (`sample_completions`) and `tirl eval` samples come from the model's own distribution,
whatever the model's `generation_config` says (transformers 5.x fills unset options from it)."""

import copy
import json

import pytest
import torch

from tirl.evaluation.sampling import SamplingSettings, generation_settings, iter_samples
from tirl.generation import NEUTRAL, generation_config, left_pad, sample_completions, sampler_settings, truncate_at_eos
from tirl.trainers.rollouts import build_rollout

# a checkpoint's generation_config.json could set any of these; each one changes what `generate` samples
ISSUE = dict(repetition_penalty=1.5, min_p=0.1)
POLLUTED = dict(do_sample=True, temperature=0.3, top_k=3, top_p=0.5, min_p=0.1, typical_p=0.5, repetition_penalty=1.5,
                no_repeat_ngram_size=1, min_new_tokens=3, suppress_tokens=list(range(10, 60)), bad_words_ids=[[7]],
                sequence_bias={(9,): 5.0}, forced_eos_token_id=2, epsilon_cutoff=0.01, eta_cutoff=0.01, top_h=0.5,
                renormalize_logits=True, encoder_repetition_penalty=1.3, exponential_decay_length_penalty=(2, 1.5))
PROMPTS = ["12+3=", "7*8=", "100-1="]


def sharpened(model):
    """The tiny model with logits × 20 (its final norm scaled), so that min-p, top-p, ... cut real tokens."""
    with torch.no_grad():
        model.model.norm.weight.mul_(20.0)
    return model


def polluted(model, options=POLLUTED):
    """A copy of `model` whose generation config sets `options` (all of POLLUTED by default)."""
    dirty = copy.deepcopy(model)
    dirty.generation_config.update(**options)
    return dirty


def record_generate(model) -> list:
    """Make `model.generate` also return what it sampled from: per step, the raw logits and the processed scores."""
    real, steps = model.generate, []

    def generate(*args, **kwargs):
        out = real(*args, **kwargs, output_scores=True, output_logits=True, return_dict_in_generate=True)
        steps.extend(zip(out.logits, out.scores, strict=True))
        return out.sequences

    model.generate = generate
    return steps


def sample_rollouts(model, tok, seed=0, sampler="packed"):
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    torch.manual_seed(seed)
    return sample_completions(model, prompts, max_new_tokens=8, eos_token_ids=[tok.eos_token_id],
                              pad_token_id=tok.pad_token_id, sampler=sampler)


def sample_eval(model, tok, **kw):
    return [[s.token_ids for s in per_prompt] for _, batch in
            iter_samples(model, tok, PROMPTS, SamplingSettings(k=2, max_new_tokens=8, seed=1, progress=False, **kw))
            for per_prompt in batch]


def record_packed(monkeypatch) -> list:
    """Make the packed sampler also return what it sampled from: per step, the raw logits and the warped scores."""
    import tirl.generation as G

    real, steps = G.sampling_warpers, []

    def warpers(config):
        inner = real(config)

        def apply(input_ids, logits):
            scores = inner(input_ids, logits)
            steps.append((logits.clone(), scores.clone()))
            return scores

        return apply

    monkeypatch.setattr(G, "sampling_warpers", warpers)
    return steps


def no_generate(model):
    """`model.generate` (of a PEFT model's base too) fails: the packed sampler must never call it."""
    def refuse(*a, **k):
        raise AssertionError("the packed sampler called model.generate")

    model.generate = refuse
    if hasattr(model, "get_base_model"):
        model.get_base_model().generate = refuse


def lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))


def record_steps(dirty, sampler: str, monkeypatch) -> list:
    """The (logits, scores) of every sampling step `sampler` takes with `dirty`; the packed loop must not call
    `generate` at all."""
    if sampler == "generate":
        return record_generate(dirty)
    steps = record_packed(monkeypatch)
    no_generate(dirty)
    return steps


@pytest.mark.parametrize("sampler", ["packed", "generate"])
@pytest.mark.parametrize("wrap,options", [("plain", ISSUE), ("plain", POLLUTED), ("peft", POLLUTED)])
def test_policy_samples_ignore_the_models_generation_config(tiny, wrap, options, sampler, monkeypatch):
    """Every step of `sample_completions` samples from softmax(logits) itself (no processor touches the scores), the
    samples equal those of a model with a clean generation config, and the model's config is left as it was."""
    model, tok = tiny
    model = sharpened(model)
    dirty = polluted(model, options)
    if wrap == "peft":
        model, dirty = lora(model), lora(dirty)
    steps = record_steps(dirty, sampler, monkeypatch)
    assert sample_rollouts(dirty, tok, sampler=sampler) == sample_rollouts(model, tok, sampler=sampler)
    assert steps and all(torch.equal(logits, scores) for logits, scores in steps)
    config = (dirty.get_base_model() if wrap == "peft" else dirty).generation_config
    assert config.repetition_penalty == 1.5 and config.min_p == 0.1  # restored


@pytest.mark.parametrize("sampler", ["packed", "generate"])
@pytest.mark.parametrize("options", [ISSUE, POLLUTED])
def test_eval_samples_ignore_the_models_generation_config(tiny, options, sampler, monkeypatch):
    """`tirl eval`'s sampler (both passes): what a clean model samples, from unprocessed logits."""
    model, tok = tiny
    model = sharpened(model)
    dirty = polluted(model, options)
    steps = record_steps(dirty, sampler, monkeypatch)
    assert sample_eval(dirty, tok, sampler=sampler) == sample_eval(model, tok, sampler=sampler)
    assert (sample_eval(dirty, tok, greedy=True, sampler=sampler)
            == sample_eval(model, tok, greedy=True, sampler=sampler))
    assert steps and all(torch.equal(logits, scores) for logits, scores in steps)


@pytest.mark.parametrize("sampler", ["packed", "generate"])
def test_sampler_options_are_set_as_asked(tiny, sampler, monkeypatch):
    """Temperature, top-k and top-p still apply when asked for, and only they (the greedy pass is the argmax)."""
    model, tok = tiny
    dirty = polluted(model)
    steps = record_generate(dirty) if sampler == "generate" else record_packed(monkeypatch)
    sample_completions(dirty, [tok("1+1=")["input_ids"]], max_new_tokens=3, eos_token_ids=[tok.eos_token_id],
                       pad_token_id=tok.pad_token_id, temperature=0.5, top_k=4, sampler=sampler)
    assert len(steps) == 3
    for logits, scores in steps:
        kept = torch.isfinite(scores)
        assert int(kept.sum()) == 4 and torch.equal(kept, logits >= logits.topk(4).values[:, -1:])
        assert torch.allclose(scores[kept], logits[kept] / 0.5)


def test_generation_config_sets_every_option_and_records_it():
    config = generation_config(max_new_tokens=5, eos_token_id=2, pad_token_id=0, temperature=0.7, top_p=0.9)
    settings = sampler_settings(config)
    assert settings["do_sample"] is True and (settings["temperature"], settings["top_k"], settings["top_p"]) == (0.7, 0, 0.9)
    assert {k: settings[k] for k in NEUTRAL} == NEUTRAL
    assert settings["repetition_penalty"] == 1.0 and settings["min_p"] is None
    assert json.loads(json.dumps(settings)) == settings
    greedy = generation_settings(greedy=True)
    assert greedy["do_sample"] is False and greedy["num_beams"] == 1 and greedy["repetition_penalty"] == 1.0


def test_generation_config_is_restored_when_generate_fails(tiny):
    model, tok = tiny
    dirty = polluted(model)

    def broken(*a, **k):
        assert dirty.generation_config.repetition_penalty == 1.0  # ours, during the call
        raise RuntimeError("boom")

    dirty.generate = broken
    with pytest.raises(RuntimeError, match="boom"):
        sample_rollouts(dirty, tok, sampler="generate")
    assert dirty.generation_config.repetition_penalty == 1.5


def test_eval_records_the_sampler_and_matches_a_clean_model(tmp_path, monkeypatch):
    """`tirl eval` on a model whose generation config sets repetition_penalty=1.5, min_p=0.1, ... writes the same
    generations as on the clean model, and eval_config.json / metrics.json say what was sampled from."""
    import tirl.models
    from tirl.cli import main

    real_load = tirl.models.load
    runs = {}
    for name, dirty in (("clean", False), ("dirty", True)):
        def load(*a, dirty=dirty, **k):
            model, tok = real_load(*a, **k)
            return (polluted(model) if dirty else model), tok

        monkeypatch.setattr(tirl.models, "load", load)
        out = tmp_path / name
        assert main(["eval", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_examples", "2", "--samples", "2",
                     "--max_new_tokens", "6", "--no_progress", "--output_dir", str(out)]) == 0
        lines = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
        runs[name] = [(r["pass"], r["token_ids"]) for r in lines]
    assert runs["dirty"] == runs["clean"]
    config = json.loads((tmp_path / "dirty" / "eval_config.json").read_text())
    sampled, greedy = config["sampler"]["sampled"], config["sampler"]["greedy"]
    assert config["temperature"] == 1.0 and config["top_p"] == 1.0
    assert sampled["do_sample"] is True and sampled["top_k"] == 0 and greedy["do_sample"] is False
    for settings in (sampled, greedy):
        assert settings["repetition_penalty"] == 1.0 and settings["min_p"] is None and settings["num_beams"] == 1
    metrics = json.loads((tmp_path / "dirty" / "metrics.json").read_text())
    assert metrics["settings"]["sampler"] == config["sampler"]


def test_left_pad_and_truncate_at_eos():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_token_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert truncate_at_eos([5, 2, 6, 2], [2]) == ([5, 2], True)
    assert truncate_at_eos([5, 6], [2]) == ([5, 6], False)


def test_sample_completions_with_a_tiny_model(tiny):
    model, tok = tiny
    prompts = [tok("12+3=")["input_ids"], tok("7*8=")["input_ids"]]
    comps = sample_completions(model, prompts, max_new_tokens=6, eos_token_ids=[tok.eos_token_id],
                               pad_token_id=tok.pad_token_id)
    assert len(comps) == 2 and all(len(c) == 6 for c in comps)
    assert model.training  # mode restored (the fixture's model starts in training mode)
    r = build_rollout(prompts, comps, [tok.eos_token_id], tok.pad_token_id)
    assert r.input_ids[0, : len(prompts[0])].tolist() == prompts[0]
