"""OnlineIQLearnTrainer: α = 0 is offline IQLearn, flagged policy rows with their masks, exact accumulation, training
lowers the eval loss, resume keeps the samples, LoRA. (The loss: test_losses_online.py; rollouts: test_rollouts.py;
the sampler: test_sampler.py; the command: test_cli.py.)"""

import copy

import pytest
import torch

from conftest import common_args, trl_rows
from reference import fixed_completions
from tirl import losses as L
from tirl.trainers import IQLearnConfig, IQLearnTrainer, OnlineIQLearnConfig, OnlineIQLearnTrainer
from tirl.trainers.rollouts import prompts_from_batch


def test_trainer_alpha_zero_is_offline_iqlearn(tiny, tmp_path):
    """With α = 0 nothing is sampled and one SGD step gives exactly the offline trainer's parameters."""
    model, tok = tiny
    model = model.double()
    ds = trl_rows(tok, n=8)
    step = dict(max_steps=1, optim="sgd", learning_rate=1e-2, max_grad_norm=0.0, lr_scheduler_type="constant")
    off = IQLearnTrainer(copy.deepcopy(model), IQLearnConfig(**common_args(tmp_path, **step), iq_lambda=0.2),
                         train_dataset=ds, processing_class=tok)
    on = OnlineIQLearnTrainer(copy.deepcopy(model), OnlineIQLearnConfig(**common_args(tmp_path, **step), iq_lambda=0.2,
                                                                        iq_alpha=0.0), train_dataset=ds, processing_class=tok)
    off.train()
    on.train()
    for a, b in zip(off.model.parameters(), on.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    assert len(on.sampler.buffer) == 0


def test_trainer_mixes_flagged_policy_rows_with_correct_masks(tiny, tmp_path):
    model, tok = tiny
    cfg = OnlineIQLearnConfig(**common_args(tmp_path, max_steps=1), iq_alpha=0.5, max_new_tokens=12)
    tr = OnlineIQLearnTrainer(model, cfg, train_dataset=trl_rows(tok), processing_class=tok)
    seen = {}
    original = tr.compute_loss

    def spy(model, inputs, *a, **k):
        seen.update({k2: v.clone() for k2, v in inputs.items() if isinstance(v, torch.Tensor)})
        seen["expert_batch"] = {k2: v.clone() for k2, v in expert_batch.items()}
        return original(model, inputs, *a, **k)

    tr.compute_loss = spy
    expert_batch = dict(next(iter(tr.get_train_dataloader())))
    n_items = (expert_batch["labels"][:, 1:] != -100).sum()
    tr.training_step(tr.model, dict(expert_batch), n_items)
    B = expert_batch["input_ids"].shape[0]
    assert seen["is_expert"].tolist() == [True] * B + [False] * 2  # round(0.5 × 4) policy rows
    Le = expert_batch["input_ids"].shape[1]
    assert torch.equal(seen["input_ids"][:B, :Le], expert_batch["input_ids"])  # expert rows untouched
    assert torch.equal(seen["labels"][:B, :Le], expert_batch["labels"])
    prompts = prompts_from_batch(expert_batch["input_ids"], expert_batch["attention_mask"], expert_batch["labels"])
    entry = tr.sampler.buffer.get(0)
    for i in range(2):
        row_ids, row_labels, row_mask = seen["input_ids"][B + i], seen["labels"][B + i], seen["attention_mask"][B + i]
        n_prompt = int((row_labels == -100).int().argmin())  # first completion position
        assert row_ids[:n_prompt].tolist() in prompts  # the prompt of one of the batch's rows
        completion = row_labels[row_labels != -100].tolist()
        assert 1 <= len(completion) <= 12
        assert tok.eos_token_id not in completion[:-1]  # nothing after the first EOS is an action
        assert entry.rollout.ended[i].item() == (completion[-1] == tok.eos_token_id)
        assert int(row_mask.sum()) == n_prompt + len(completion)  # padding after it is not attended
    logged = tr.metrics.values("train")
    assert logged["policy_fraction"][-1] == pytest.approx(2 / (B + 2))
    assert {"reward/expert_mean", "reward/policy_mean", "time/generation"} <= set(logged)


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_online_gradient_accumulation_matches_large_batch(tiny, tmp_path, reduction):
    """PDB=2 × GAS=2 gives the same loss and update as PDB=4 × GAS=1 for online IQLearn (the policy terms are means
    over the policy rows of the whole accumulated batch), and the logged value_gap is the float64 one of each batch."""
    model, tok = tiny
    model = model.double()
    ds = trl_rows(tok, n=8)
    runs = []
    for pdb, gas in ((4, 1), (2, 2)):
        cfg = OnlineIQLearnConfig(**common_args(tmp_path, max_steps=1, per_device_train_batch_size=pdb,
                                                gradient_accumulation_steps=gas, learning_rate=1e-2, optim="sgd",
                                                max_grad_norm=0.0, lr_scheduler_type="constant"),
                                  iq_lambda=0.2, iq_alpha=0.5, iq_gamma=0.9, iq_reduction=reduction, iq_value="logits",
                                  num_policy_samples=pdb, max_new_tokens=8)
        tr = OnlineIQLearnTrainer(copy.deepcopy(model), cfg, train_dataset=ds, processing_class=tok)
        tr.sampler.generate = lambda model, prompts: fixed_completions(prompts, tok.eos_token_id)
        seen = []
        original = tr.compute_loss

        def spy(model, inputs, *a, original=original, seen=seen, **k):
            seen.append({k2: v.clone() for k2, v in inputs.items() if isinstance(v, torch.Tensor)})
            return original(model, inputs, *a, **k)

        tr.compute_loss = spy
        tr.train()
        log = next(h for h in tr.state.log_history if "loss" in h)
        # value_gap oracle: E_π[V − γV'] − E_E[V − γV'] per micro-batch (token means, float64, the step's weights),
        # averaged over the micro-batches like every logged metric
        gaps = []
        for batch in seen:
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            qv = L.qv_from_logits(logits, batch["labels"])
            v_next, td_mask = L.next_values(qv, (tok.eos_token_id,))
            gap = (qv.v - 0.9 * v_next) * td_mask
            expert = batch["is_expert"][:, None] & qv.mask
            policy = ~batch["is_expert"][:, None] & qv.mask
            gaps.append(gap[policy].sum() / policy.sum() - gap[expert].sum() / expert.sum())
        assert len(seen) == gas and all(int((~b["is_expert"]).sum()) == pdb for b in seen)
        assert log["value_gap"] == pytest.approx(float(sum(gaps) / len(gaps)), rel=1e-9, abs=1e-9)
        runs.append((log["loss"], torch.cat([p.detach().flatten() for p in tr.model.parameters()])))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-9)
    assert torch.allclose(runs[0][1], runs[1][1], atol=1e-9)


@pytest.mark.slow
def test_short_online_training_lowers_eval_loss(tiny, tmp_path):
    """About 30 s of online IQLearn (α = 0.1, fresh samples each step) on the generated task lowers the eval loss."""
    model, tok = tiny
    train, evald = trl_rows(tok, n=800), trl_rows(tok, n=48, split="test")
    cfg = OnlineIQLearnConfig(**common_args(tmp_path, max_steps=120, per_device_train_batch_size=8, learning_rate=3e-3,
                                            logging_steps=20), iq_lambda=0.1, iq_alpha=0.1, max_new_tokens=16)
    tr = OnlineIQLearnTrainer(model, cfg, train_dataset=train, eval_dataset=evald, processing_class=tok)
    before = tr.evaluate()
    tr.train()
    after = tr.evaluate()
    assert after["eval_loss"] < before["eval_loss"] - 1.0
    assert after["eval_mle_loss"] < before["eval_mle_loss"] - 1.0
    train_logs = [h for h in tr.state.log_history if "policy_fraction" in h]
    assert train_logs and all(h["policy_fraction"] == pytest.approx(1 / 9) for h in train_logs)
    assert all(h["time/generation"] > 0 for h in train_logs)


def test_resume_restores_the_sample_buffer(tiny, tmp_path):
    model, tok = tiny
    ds = trl_rows(tok)
    kw = common_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    cfg = OnlineIQLearnConfig(**kw, iq_alpha=0.5, max_new_tokens=10, generate_every=4)
    tr = OnlineIQLearnTrainer(copy.deepcopy(model), cfg, train_dataset=ds, processing_class=tok)
    tr.train()
    saved = tr.sampler.buffer.get(0)
    assert (tmp_path / "checkpoint-2" / "tirl_sample_buffer" / "rank-0.json").is_file()

    cfg2 = OnlineIQLearnConfig(**{**kw, "max_steps": 3}, iq_alpha=0.5, max_new_tokens=10, generate_every=4)
    tr2 = OnlineIQLearnTrainer(copy.deepcopy(model), cfg2, train_dataset=ds, processing_class=tok)
    calls = []
    tr2.sampler.generate = lambda *a, **k: calls.append(1) or pytest.fail("resumed run regenerated instead of reusing")
    tr2.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    restored = tr2.sampler.buffer.get(0)
    assert restored.step == saved.step == 0 and restored.uses == saved.uses + 1
    assert torch.equal(restored.rollout.input_ids.cpu(), saved.rollout.input_ids.cpu())
    assert not calls


def test_lora_online_trains_only_adapters(tiny, tmp_path):
    from peft import LoraConfig

    model, tok = tiny
    cfg = OnlineIQLearnConfig(**common_args(tmp_path, max_steps=3, learning_rate=1e-2), iq_alpha=0.5, max_new_tokens=8)
    tr = OnlineIQLearnTrainer(model, cfg, train_dataset=trl_rows(tok), processing_class=tok,
                              peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                     task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train()
    changed = {n for n, p in tr.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)
    assert any("policy_fraction" in h for h in tr.state.log_history)


