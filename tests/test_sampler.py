"""tirl.trainers.sampler: samples drawn per micro-batch slot, reused between regenerations, with what a later phase needs
recorded when they are drawn (π_old, reference values); TRL's vLLM backend wired by its own signature."""

import pytest
import torch

from conftest import common_args, first_batch, trl_rows
from reference import fixed_completions
from tirl import losses as L
from tirl.trainers import GAILConfig, GAILTrainer, IQLearnConfig, OnlineIQLearnConfig, OnlineIQLearnTrainer


def test_recorders_run_when_samples_are_drawn_and_not_when_they_are_reused(tiny, tmp_path):
    model, tok = tiny
    cfg = OnlineIQLearnConfig(**common_args(tmp_path), iq_alpha=0.5, max_new_tokens=8, generate_every=2,
                              iq_value="logits")
    tr = OnlineIQLearnTrainer(model, cfg, train_dataset=trl_rows(tok, n=8), processing_class=tok)
    s = tr.sampler
    s.generate = lambda model, prompts: fixed_completions(prompts, tok.eos_token_id)
    calls = []
    s.record = {"seen": lambda model, rollout: calls.append(rollout.num_rows) or torch.zeros(rollout.num_rows, 1)}
    batch = first_batch(tr)
    for step in (0, 1, 2, 3, 4):
        s.draw_step(tr.model, [batch], step)
    assert calls == [2, 2, 2]  # steps 0, 2 and 4 drew; steps 1 and 3 reused the slot's samples
    entry = s.buffer.get(0)
    assert entry.step == 4 and entry.uses == 1 and "seen" in entry.extras
    expert, sample = s.next_batch(tr.model, batch, 4)  # taken from what draw_step drew, not drawn again
    assert sample.entry is entry and sample.drawn_early and calls == [2, 2, 2]
    assert expert["is_expert"].tolist() == [True] * batch["input_ids"].shape[0] + [False, False]


@pytest.mark.parametrize("generate_every", [1, 2])
def test_gail_records_pi_old_at_sampling_time_and_the_loss_writes_nothing_back(tiny, tmp_path, generate_every):
    """Reused samples (generate_every > 1) carry log π_old of the policy that drew them, recorded when drawn; fresh
    ones need none (π_old is π itself, detached). The training step leaves the buffer as the sampler wrote it."""
    model, tok = tiny
    tr = GAILTrainer(model, GAILConfig(**common_args(tmp_path), max_new_tokens=12, generate_every=generate_every),
                     train_dataset=trl_rows(tok, n=8), processing_class=tok)
    batch = first_batch(tr)
    tr.sampler.draw_step(tr.model, [batch], 0)
    entry = tr.sampler.buffer.get(0)
    assert ("old_logprob" in entry.extras) == (generate_every > 1)
    if generate_every > 1:
        r = entry.rollout
        with torch.no_grad():
            logits = tr.model(input_ids=r.input_ids, attention_mask=r.attention_mask).logits
        expected = L.qv_from_logits(logits, r.labels).logprob
        assert entry.extras["old_logprob"].shape == expected.shape
        assert torch.allclose(entry.extras["old_logprob"], expected, atol=1e-5)
    before = {k: v.clone() for k, v in entry.extras.items()}
    n_items = (batch["labels"][:, 1:] != -100).sum()
    tr.training_step(tr.model, dict(batch), n_items)
    assert entry.extras.keys() == before.keys()
    assert all(torch.equal(entry.extras[k], v) for k, v in before.items())


def test_config_validation_and_vllm_refusal(tiny, tmp_path):
    with pytest.raises(ValueError, match="packing"):
        OnlineIQLearnConfig(output_dir=str(tmp_path), packing=True)
    with pytest.raises(ValueError, match=r"iq_alpha must be a finite number in \[0, 1\], got 1.5"):
        OnlineIQLearnConfig(output_dir=str(tmp_path), iq_alpha=1.5)
    with pytest.raises(ValueError, match="generate_every must be >= 1, got 0"):
        OnlineIQLearnConfig(output_dir=str(tmp_path), generate_every=0)
    model, tok = tiny
    with pytest.raises((ImportError, RuntimeError), match="vllm|GPU"):
        OnlineIQLearnTrainer(model, OnlineIQLearnConfig(**common_args(tmp_path), use_vllm=True),
                             train_dataset=trl_rows(tok, n=8), processing_class=tok)
    # an offline config is converted as SFTTrainer converts TrainingArguments (its settings kept); anything that is
    # not TrainingArguments is refused
    trainer = OnlineIQLearnTrainer(model, IQLearnConfig(**common_args(tmp_path), iq_lambda=0.3),
                                   train_dataset=trl_rows(tok, n=8), processing_class=tok)
    assert type(trainer.args) is OnlineIQLearnConfig and trainer.args.iq_lambda == 0.3
    with pytest.raises(TypeError, match="OnlineIQLearnConfig"):
        OnlineIQLearnTrainer(model, common_args(tmp_path), train_dataset=trl_rows(tok, n=8), processing_class=tok)


def test_vllm_path_is_wired_like_trl(tiny, tmp_path, monkeypatch):
    """No GPU or vLLM here: a stand-in for TRL's `VLLMGeneration` checks that we pass arguments its real signature
    accepts, and that its completions become rollouts. The real vLLM path is untested."""
    import importlib
    import inspect

    vg = importlib.import_module("trl.generation.vllm_generation")
    generation = importlib.import_module("trl.generation")
    import_utils = importlib.import_module("trl.import_utils")

    real_signature = inspect.signature(vg.VLLMGeneration.__init__)
    seen = {}

    class FakeVLLM:
        def __init__(self, *args, **kwargs):
            real_signature.bind(self, *args, **kwargs)  # raises on any argument TRL does not take
            seen["init"] = kwargs

        def sync_weights(self):
            seen["synced"] = seen.get("synced", 0) + 1

        def generate(self, prompts, images, num_generations):
            seen["prompts"] = prompts
            return prompts, [[7, 8, tok.eos_token_id, 9]] * len(prompts), None, None

    monkeypatch.setattr(import_utils, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(generation, "VLLMGeneration", FakeVLLM, raising=False)  # exported only with vLLM
    model, tok = tiny
    cfg = OnlineIQLearnConfig(**common_args(tmp_path, max_steps=1), use_vllm=True, vllm_mode="server", iq_alpha=0.5,
                              max_new_tokens=5)
    tr = OnlineIQLearnTrainer(model, cfg, train_dataset=trl_rows(tok), processing_class=tok)
    assert seen["init"]["mode"] == "server" and seen["init"]["max_completion_length"] == 5
    assert (seen["init"]["repetition_penalty"], seen["init"]["min_p"], seen["init"]["top_k"]) == (1.0, 0.0, 0)
    tr.train()
    assert seen["synced"] == 1 and len(seen["prompts"]) == 2
    r = tr.sampler.buffer.get(0).rollout
    assert r.ended.all() and (r.labels != -100).sum(-1).tolist() == [3, 3]  # cut after the EOS
