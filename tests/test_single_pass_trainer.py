"""The trainers' single-pass head (`iq_head="auto"`): a few training steps give the losses, logged statistics and
parameters of the two-pass head (`iq_head="two_pass"`), in float64, in every value form, reduction and λ, with
gradient accumulation and with a frozen LM head (LoRA); evaluation and the other cases keep the two-pass head."""

import copy

import pytest
import torch
from datasets import Dataset

from tirl.data import load_rows, to_trl
from tirl.qv import head as qv_head
from tirl.trainers import IQLearnConfig, IQLearnTrainer

LOGGED = ("loss", "mle_loss", "td_loss", "mean_reward", "mean_value", "entropy", "mean_token_accuracy")


def trl_rows(tokenizer, n=16, split="train", seed=0):
    return Dataset.from_list(to_trl(load_rows("arithmetic", split=split, limit=n, seed=seed), tokenizer))


def common_args(tmp_path, **kw):
    args = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
        per_device_eval_batch_size=8, max_steps=3, report_to="none", use_cpu=True, bf16=False,
        gradient_checkpointing=False, save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True,
        learning_rate=1e-2, optim="sgd", max_grad_norm=0.0, lr_scheduler_type="constant", iq_chunk_size=7,
    )
    args.update(kw)
    return args


class Calls(list):
    """What each call stored (a list), and whether autocast was on at each call (`autocast`)."""

    def __init__(self):
        super().__init__()
        self.autocast: list[bool] = []


@pytest.fixture
def single_pass_calls(monkeypatch):
    """Each call of the single-pass loss through the trainer's head, with what its autograd node stores (the
    gradients of hidden, weight, bias and v_ψ formed in forward)."""
    calls = Calls()
    real = qv_head.single_pass_iq_loss

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        node = out.loss.grad_fn
        calls.append(None if node is None else node.present)
        calls.autocast.append(torch.is_autocast_enabled("cpu"))
        return out

    monkeypatch.setattr(qv_head, "single_pass_iq_loss", spy)
    return calls


def train_both(model, tok, tmp_path, calls, peft_config=None, **kw):
    """Train copies of `model` with the single-pass and the two-pass head; (log history, parameters) of each."""
    ds = trl_rows(tok)
    runs = {}
    for head in ("auto", "two_pass"):
        calls.clear()
        cfg = IQLearnConfig(**common_args(tmp_path / head, **kw), iq_head=head)
        tr = IQLearnTrainer(copy.deepcopy(model), cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config)
        tr.train()
        steps = cfg.max_steps * cfg.gradient_accumulation_steps
        assert len(calls) == (steps if head == "auto" else 0), head  # the path under test was taken, or not
        logs = [h for h in tr.state.log_history if "loss" in h]
        runs[head] = (logs, {n: p.detach().clone() for n, p in tr.model.named_parameters()}, list(calls))
    runs["initial"] = {n: p.detach().clone() for n, p in IQLearnTrainer(
        copy.deepcopy(model), cfg, train_dataset=ds, processing_class=tok, peft_config=peft_config).model.named_parameters()}
    return runs


def assert_same_training(runs, tol=1e-9):
    (logs_a, params_a, _), (logs_b, params_b, _) = runs["auto"], runs["two_pass"]
    assert len(logs_a) == len(logs_b) > 0
    for a, b in zip(logs_a, logs_b, strict=True):
        for key in LOGGED:
            assert a[key] == pytest.approx(b[key], rel=tol, abs=tol), key
    assert params_a.keys() == params_b.keys()
    for name, p in params_a.items():
        assert torch.allclose(p, params_b[name], rtol=0, atol=tol), name
    assert any(not torch.equal(p, runs["initial"][name]) for name, p in params_a.items())  # training moved them


CASES = {
    # form, reduction, λ, extra config
    "logits-token": ("logits", "token", 0.2, {}),
    "logits-sequence": ("logits", "sequence", 0.2, {}),
    "logits-mle": ("logits", "token", 0.0, {}),
    "logits-stopgrad-entropy": ("logits", "token", 0.3, {"iq_stop_grad_next": True, "entropy_coef": 0.05,
                                                         "iq_gamma": 1.0}),
    "reference-sequence": ("reference", "sequence", 0.3, {}),
    # λ warms up from 0: v_ψ gets no gradient at the first step, as with the two-pass head (AdamW counts a zero one)
    "head-token-warmup-adamw": ("head", "token", 0.3, {"iq_lambda_warmup_steps": 2, "optim": "adamw_torch",
                                                       "learning_rate": 1e-3}),
    "head-sequence-one-micro-batch": ("head", "sequence", 0.3, {"per_device_train_batch_size": 4,
                                                                "gradient_accumulation_steps": 1}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_single_pass_trains_like_the_two_pass_head(tiny, tmp_path, single_pass_calls, case):
    """Three optimizer steps of two accumulated micro-batches (num_items_in_batch and the global sequence count), the
    float64 tiny model: the same logged losses and statistics and the same parameters (LM head, backbone, v_ψ)."""
    form, reduction, lam, extra = CASES[case]
    model, tok = tiny
    runs = train_both(model.double(), tok, tmp_path, single_pass_calls, iq_value=form, iq_reduction=reduction,
                      iq_lambda=lam, **extra)
    assert_same_training(runs)
    present = runs["auto"][2]
    assert all(p is not None and p[0] and p[1] for p in present)  # hidden and LM-head gradients formed in forward
    if form == "head":
        # v_ψ's gradient is formed once λ > 0 (the warm-up's first step has λ = 0)
        assert any(p[3] for p in present)
        if "iq_lambda_warmup_steps" in extra:
            assert not any(p[3] for p in present[:2])


def test_frozen_lm_head_gets_no_gradient_and_lora_trains_alike(tiny, tmp_path, single_pass_calls):
    """LoRA freezes the LM head: the single-pass head forms no weight gradient, and the adapters train as with the
    two-pass head."""
    from peft import LoraConfig

    model, tok = tiny
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    runs = train_both(model.double(), tok, tmp_path, single_pass_calls, peft_config=lora, iq_lambda=0.2)
    assert_same_training(runs)
    assert all(p[0] and not p[1] for p in runs["auto"][2])  # grad_hidden yes, grad_W no


def test_evaluation_and_the_other_cases_keep_the_two_pass_head(tiny, tmp_path, single_pass_calls):
    """Evaluation (no gradient) and iq_head="two_pass", fp16 or iq_chunk_size=0 do not use the single-pass head;
    evaluation gives the two-pass head's numbers whatever iq_head says."""
    model, tok = tiny
    ds = trl_rows(tok)
    results = {}
    for head in ("auto", "two_pass"):
        cfg = IQLearnConfig(**common_args(tmp_path / head), iq_head=head, iq_lambda=0.2)
        tr = IQLearnTrainer(copy.deepcopy(model), cfg, train_dataset=ds, eval_dataset=ds, processing_class=tok)
        results[head] = tr.evaluate()
        assert not single_pass_calls
        with torch.no_grad():
            assert not tr.use_fused_head()
        assert tr.use_fused_head() == (head == "auto")
    assert results["auto"]["eval_loss"] == results["two_pass"]["eval_loss"]
    tr.args.iq_head = "auto"
    tr.args.fp16 = True  # (set after construction: fp16 needs a GPU)
    assert not tr.use_fused_head()
    tr.args.fp16, tr.args.iq_chunk_size = False, 0
    assert not tr.use_fused_head()


def test_config_rejects_an_unknown_head(tmp_path):
    with pytest.raises(ValueError, match="iq_head must be one of auto, two_pass"):
        IQLearnConfig(**common_args(tmp_path), iq_head="one_pass")


def test_bf16_autocast_trains_close_to_the_two_pass_head(tiny, tmp_path, single_pass_calls):
    """Under bf16 autocast (float32 weights, as TRL trains by default) both heads run their matmuls in bf16 and their
    softmax maths in float32: the same losses to bf16 rounding, and parameter updates in the same direction."""
    model, tok = tiny
    runs = train_both(model, tok, tmp_path, single_pass_calls, bf16=True, iq_lambda=0.2, iq_value="head")
    assert single_pass_calls.autocast and all(single_pass_calls.autocast)
    (logs_a, params_a, _), (logs_b, params_b, _) = runs["auto"], runs["two_pass"]
    for a, b in zip(logs_a, logs_b, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-3)
    initial = runs["initial"]
    step_a = torch.cat([(params_a[n] - initial[n]).flatten() for n in initial])
    step_b = torch.cat([(params_b[n] - initial[n]).flatten() for n in initial])
    assert torch.nn.functional.cosine_similarity(step_a, step_b, dim=0) > 0.999
    assert (step_a - step_b).norm() < 1e-2 * step_b.norm()
