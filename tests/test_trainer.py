"""IQLearnTrainer: SFT equivalence at λ=0, chunked == unchunked, training improves eval loss, LoRA, logging."""

import copy

import pytest
import torch
from trl import SFTConfig, SFTTrainer

from conftest import common_args, first_batch, trl_rows
from tirl import losses as L
from tirl.trainers import IQLearnConfig, IQLearnTrainer


def test_lambda_zero_equals_trl_sft_loss_and_gradients(tiny, tmp_path):
    model, tok = tiny
    model = model.double()  # the comparison is about the maths, not float32 rounding
    ds = trl_rows(tok)
    sft = SFTTrainer(copy.deepcopy(model), SFTConfig(**common_args(tmp_path)), train_dataset=ds, processing_class=tok)
    for chunk in (0, 64):
        iq = IQLearnTrainer(copy.deepcopy(model), IQLearnConfig(**common_args(tmp_path), iq_lambda=0.0, iq_chunk_size=chunk,
                                                      iq_value="logits"),
                            train_dataset=ds, processing_class=tok)
        batch = first_batch(sft)
        n = (batch["labels"][:, 1:] != -100).sum()
        l_sft = sft.compute_loss(sft.model, dict(batch), num_items_in_batch=n)
        l_iq = iq.compute_loss(iq.model, dict(batch), num_items_in_batch=n)
        assert abs(l_sft.item() - l_iq.item()) < 1e-6, chunk
        g_sft = torch.autograd.grad(l_sft, list(sft.model.parameters()))
        g_iq = torch.autograd.grad(l_iq, list(iq.model.parameters()))
        for a, b in zip(g_sft, g_iq, strict=True):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_chunked_and_full_logits_paths_agree(tiny, tmp_path):
    model, tok = tiny
    ds = trl_rows(tok)
    losses = []
    for chunk in (0, 37):
        tr = IQLearnTrainer(copy.deepcopy(model), IQLearnConfig(**common_args(tmp_path), iq_lambda=0.1, iq_chunk_size=chunk),
                            train_dataset=ds, processing_class=tok)
        losses.append(tr.compute_loss(tr.model, first_batch(tr)).item())
    assert abs(losses[0] - losses[1]) < 1e-5 * abs(losses[0])


@pytest.mark.slow
@pytest.mark.parametrize("method_lambda", [0.1])  # λ = 0 is MLE exactly (test_value_forms); MLE trains in test_cli
def test_short_training_lowers_eval_loss(tiny, tmp_path, method_lambda):
    """About 10 s of training of the tiny model on the generated task lowers the eval MLE and TD terms."""
    model, tok = tiny
    train, evald = trl_rows(tok, n=800), trl_rows(tok, n=48, split="test")
    cfg = IQLearnConfig(**common_args(tmp_path, max_steps=120, per_device_train_batch_size=8, learning_rate=3e-3,
                                      logging_steps=20), iq_lambda=method_lambda)
    tr = IQLearnTrainer(model, cfg, train_dataset=train, eval_dataset=evald, processing_class=tok)
    before = tr.evaluate()
    tr.train()
    after = tr.evaluate()
    assert after["eval_mle_loss"] < before["eval_mle_loss"] - 1.0
    assert after["eval_loss"] < before["eval_loss"]
    logged = {k for h in tr.state.log_history for k in h}
    assert {"loss", "mle_loss", "td_loss", "mean_reward", "mean_value", "entropy", "mean_token_accuracy"} <= logged
    if method_lambda > 0:
        assert after["eval_td_loss"] < before["eval_td_loss"]


def test_lora_trains_only_adapters(tiny, tmp_path):
    from peft import LoraConfig

    model, tok = tiny
    cfg = IQLearnConfig(**common_args(tmp_path, max_steps=3, learning_rate=1e-2), iq_lambda=0.1)
    tr = IQLearnTrainer(model, cfg, train_dataset=trl_rows(tok), processing_class=tok,
                        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train()
    changed = {n for n, p in tr.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_gradient_accumulation_matches_large_batch(tiny, tmp_path, reduction):
    """PDB=2 × GAS=2 gives the same loss and update as PDB=4 × GAS=1 (normalisation by num_items_in_batch, and by
    the global number of sequences for iq_reduction="sequence")."""
    model, tok = tiny
    model = model.double()
    ds = trl_rows(tok, n=8)
    params, losses = [], []
    for pdb, gas in ((4, 1), (2, 2)):
        cfg = IQLearnConfig(**common_args(tmp_path, max_steps=1, per_device_train_batch_size=pdb,
                                          gradient_accumulation_steps=gas, learning_rate=1e-2, optim="sgd",
                                          max_grad_norm=0.0, lr_scheduler_type="constant"),
                            iq_lambda=0.2, iq_reduction=reduction)
        tr = IQLearnTrainer(copy.deepcopy(model), cfg, train_dataset=ds, processing_class=tok)
        tr.train()
        params.append(torch.cat([p.detach().flatten() for p in tr.model.parameters()]))
        losses.append(next(h["loss"] for h in tr.state.log_history if "loss" in h))
    assert losses[0] == pytest.approx(losses[1], rel=1e-9)
    assert torch.allclose(params[0], params[1], atol=1e-9)


def test_sequence_reduction_eval_loss_is_the_mean_of_row_means(tiny, tmp_path):
    """Evaluation with iq_reduction="sequence" (Trainer counts each eval batch alone): the float64 mean over rows of
    each row's token mean, the same for any eval batch size."""
    model, tok = tiny
    model = model.double()
    ds = trl_rows(tok, n=6)
    results = []
    for bs in (6, 4):
        cfg = IQLearnConfig(**common_args(tmp_path, per_device_eval_batch_size=bs), iq_lambda=0.0, iq_reduction="sequence")
        tr = IQLearnTrainer(copy.deepcopy(model), cfg, train_dataset=ds, eval_dataset=ds, processing_class=tok)
        results.append(tr.evaluate()["eval_loss"])
    batch = tr.data_collator([tr.eval_dataset[i] for i in range(6)])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    qv = L.qv_from_logits(logits, batch["labels"])
    oracle = torch.stack([-qv.logprob[b][qv.mask[b]].mean() for b in range(6)])
    assert results[0] == pytest.approx(oracle.mean().item(), rel=1e-6)
    # batches of 4 and 2 rows, each loss a mean over its own rows; Trainer weighs batch losses by their rows
    assert results[1] == pytest.approx(((4 * oracle[:4].mean() + 2 * oracle[4:].mean()) / 6).item(), rel=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="iq_lambda must be a finite number >= 0, got -1.0"):
        IQLearnConfig(output_dir="/tmp/x", iq_lambda=-1.0, use_cpu=True)
    with pytest.raises(ValueError, match=r"iq_gamma must be a finite number in \[0, 1\], got 1.5"):
        IQLearnConfig(output_dir="/tmp/x", iq_gamma=1.5, use_cpu=True)
    assert IQLearnConfig(output_dir="/tmp/x").use_cpu  # no GPU here: switched on automatically


@pytest.mark.parametrize("native", [True, False])
def test_an_unset_bf16_on_a_cpu_follows_whether_the_cpu_computes_bf16_natively(native, monkeypatch):
    """TRL turns bf16 on by default; emulated on a CPU without bf16 instructions it trains several times slower, so an
    unset bf16 is on only where the CPU has them. What a user sets is kept."""
    from tirl import hardware
    from tirl.jobs.eval import EvalSettings
    from tirl.trainers import GAILConfig, OnlineIQLearnConfig

    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    for config_class in (IQLearnConfig, OnlineIQLearnConfig, GAILConfig):
        assert config_class(output_dir="/tmp/x").bf16 is native
        assert config_class(output_dir="/tmp/x", bf16=True).bf16 is True
        assert config_class(output_dir="/tmp/x", bf16=False).bf16 is False
    assert EvalSettings().bf16 is native
    assert EvalSettings(bf16=True).bf16 is True and EvalSettings(bf16=False).bf16 is False


def test_the_metric_store_averages_each_logging_step_and_starts_afresh():
    from tirl.trainers.metrics import MetricStore

    m = MetricStore()
    m.add("train", mle_loss=1.0, td_loss=4.0)
    m.add("train", mle_loss=3.0, td_loss=8.0)
    m.train_tokens += 10
    m.set("train", num_tokens=m.train_tokens)
    m.add("eval", mle_loss=5.0)
    assert m.pop("train") == {"mle_loss": 2.0, "td_loss": 6.0, "num_tokens": 10.0}
    assert m.pop("train") == {} and m.pop("eval") == {"eval_mle_loss": 5.0}


def test_local_counts_are_of_the_actions_the_losses_see():
    from tirl.trainers.counts import local_counts

    expert = torch.tensor([[-100, 5, 6, -100], [-100, -100, -100, -100], [7, -100, -100, 9]])  # position 0 is no action
    policy = torch.tensor([[-100, -100, 3, 4]])
    counts = local_counts([expert], [policy])
    assert {k: int(v) for k, v in counts.items()} == {"sequences": 2, "policy_tokens": 2, "policy_sequences": 1}
