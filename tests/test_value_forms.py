"""Value forms (`iq_value`, `tirl.losses.ValueForm`): logits, reference, head; the λ warm-up; entropy-regularised MLE.

The properties: λ = 0 is MLE in every form; at the start reference-V has V ≡ 0 and r_t = log π_θ0, and the
zero-initialised head gives r_t = log π; the chunked head equals full logits in every form; resume keeps the head and
the cached reference values; rewards are read in the run's own form; the entropy term's chunked gradient equals
autograd's on full logits.
"""

import copy
import os

import pytest
import torch
from trl import SFTConfig, SFTTrainer

from conftest import common_args as shared_args
from conftest import first_batch, trl_rows
from tirl import losses as L
from tirl.qv import inputs, reference
from tirl.qv.value_head import FILENAME as VALUE_HEAD_FILE
from tirl.qv.value_head import get_value_head
from tirl.trainers import IQLearnConfig, IQLearnTrainer, OnlineIQLearnConfig, OnlineIQLearnTrainer

FORMS = ("logits", "reference", "head")


def common_args(tmp_path, **kw):
    return shared_args(tmp_path, **{"per_device_eval_batch_size": 8, **kw})


def make(model, tok, tmp_path, **kw):
    ds = trl_rows(tok, n=16)
    return IQLearnTrainer(copy.deepcopy(model), IQLearnConfig(**common_args(tmp_path, **kw)), train_dataset=ds,
                          eval_dataset=ds, processing_class=tok)


# --------------------------------------------------------------------------------------------------------------------
# The pure functions


def test_reference_form_keeps_the_policy_and_moves_v():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11, dtype=torch.float64)
    labels = torch.tensor([[-100, -100, 3, 4, 5, 2], [-100, 7, 8, 2, -100, -100]])
    qv = L.qv_from_logits(logits, labels)
    ref = torch.randn(2, 5, dtype=torch.float64)
    rq = L.REFERENCE.apply(qv, ref)
    assert torch.equal(rq.logprob, qv.logprob)
    assert torch.allclose(rq.v, (qv.lse - ref) * qv.mask)
    assert torch.allclose(rq.q, (qv.logit - ref) * qv.mask)
    # r_t = ℓ[a] − LSE_θ0(s_t) − γ(LSE_θ(s_{t+1}) − LSE_θ0(s_{t+1})): with ref = LSE_θ, r_t = log π
    same = L.REFERENCE.apply(qv, qv.lse)
    rw = L.token_rewards(same, iq_gamma=0.9, eos_token_ids=(2,))
    assert torch.allclose(rw.reward * rw.td_mask, qv.logprob * rw.td_mask)


def test_head_form_is_log_pi_plus_value():
    torch.manual_seed(1)
    logits = torch.randn(1, 5, 7, dtype=torch.float64)
    labels = torch.tensor([[-100, 1, 2, 3, 6]])
    qv = L.qv_from_logits(logits, labels)
    value = torch.randn(1, 4, dtype=torch.float64)
    hv = L.HEAD.apply(qv, value)
    assert torch.allclose(hv.q, qv.logprob + value * qv.mask)
    assert torch.allclose(hv.v, value * qv.mask)
    with pytest.raises(ValueError, match="form's input has shape"):
        L.HEAD.apply(qv, torch.zeros(1, 3))


def test_each_form_says_what_it_reads():
    assert [f.name for f in L.VALUE_FORMS.values()] == list(FORMS)
    assert [(f.input, f.input_trained) for f in L.VALUE_FORMS.values()] == [
        (None, False), ("reference_lse", False), ("value_head", True)]
    # how a run provides each input: one `ValueInput` per form, found by the form's `input`
    kinds = [inputs.value_input_of(name) for name in FORMS]
    assert [k.key for k in kinds] == [None, "reference_lse", "value_head"]
    assert [k.column for k in kinds] == [None, reference.COLUMN, None] and inputs.VALUE_COLUMNS == (reference.COLUMN,)
    assert [k.reads_starting_model for k in kinds] == [False, True, False]
    assert [k.reads_hidden for k in kinds] == [False, False, True]
    assert L.value_form("head") is L.HEAD and L.value_form(L.HEAD) is L.HEAD
    with pytest.raises(ValueError, match="iq_value must be one of logits, reference, head, got 'critic'"):
        L.value_form("critic")


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_entropy_term_chunked_gradient_equals_full_logits(lam):
    torch.manual_seed(2)
    B, T, D, V = 2, 7, 5, 13
    hidden = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (B, T))
    labels[:, :2] = -100
    labels[1, -1] = -100

    o = L.Objective.mle(iq_lambda=lam, iq_gamma=0.9, eos_token_ids=(3,), entropy_coef=0.2)

    def loss_full():
        qv = L.qv_from_logits(hidden @ weight.t(), labels, entropy_grad=True)
        return L.iq_loss_from_qv(qv, o).loss

    def loss_chunked():
        qv = L.qv_from_hidden(hidden, weight, labels, chunk_size=3)
        return L.iq_loss_from_qv(qv, o).loss

    a, b = loss_full(), loss_chunked()
    ga = torch.autograd.grad(a, (hidden, weight))
    gb = torch.autograd.grad(b, (hidden, weight))
    assert torch.allclose(a, b, atol=1e-10)
    for x, y in zip(ga, gb, strict=True):
        assert torch.allclose(x, y, atol=1e-10)
    # the entropy term pushes towards higher entropy: the loss is lower than without it
    plain = L.iq_loss_from_qv(L.qv_from_logits(hidden @ weight.t(), labels),
                              L.Objective.mle(iq_lambda=lam, iq_gamma=0.9, eos_token_ids=(3,))).loss
    assert a < plain


def test_entropy_coef_needs_a_differentiable_entropy():
    qv = L.qv_from_logits(torch.randn(1, 4, 5, requires_grad=True), torch.tensor([[-100, 1, 2, 3]]))
    with pytest.raises(ValueError, match="entropy_grad"):
        L.iq_loss_from_qv(qv, L.Objective.mle(entropy_coef=0.1))


def test_reference_collator_lays_values_out_like_input_ids():
    base = lambda exs: {"input_ids": torch.nn.utils.rnn.pad_sequence(  # noqa: E731
        [torch.tensor(e["input_ids"]) for e in exs], batch_first=True), "attention_mask": torch.ones(len(exs), 4)}
    c = reference.ReferenceValueCollator(base)
    out = c([{"input_ids": [1, 2, 3, 4], reference.COLUMN: [0.5, 1.5, 2.5, 0.0]},
             {"input_ids": [5, 6], reference.COLUMN: [7.0, 0.0]}])
    assert out[reference.COLUMN].tolist() == [[0.5, 1.5, 2.5, 0.0], [7.0, 0.0, 0.0, 0.0]]


def test_reference_values_cache_round_trip(tmp_path):
    values = [[0.0, 1.5, -2.0], [3.25]]
    path = tmp_path / "v.safetensors"
    reference.save_values(path, values, key="abc")
    assert reference.load_values(path, "abc") == values
    assert reference.load_values(path, "other") is None  # another model or other rows: recomputed
    assert reference.load_values(tmp_path / "missing.safetensors", "abc") is None


# --------------------------------------------------------------------------------------------------------------------
# Trainers


@pytest.mark.parametrize("form", FORMS)
def test_lambda_zero_is_mle_in_every_form(tiny, tmp_path, form):
    model, tok = tiny
    model = model.double()
    ds = trl_rows(tok, n=16)
    sft = SFTTrainer(copy.deepcopy(model), SFTConfig(**common_args(tmp_path / "sft")), train_dataset=ds,
                     processing_class=tok)
    batch = first_batch(sft)
    n = (batch["labels"][:, 1:] != -100).sum()
    l_sft = sft.compute_loss(sft.model, dict(batch), num_items_in_batch=n)
    g_sft = torch.autograd.grad(l_sft, list(sft.model.parameters()))
    for chunk in (0, 37):
        iq = make(model, tok, tmp_path / f"{form}-{chunk}", iq_lambda=0.0, iq_chunk_size=chunk, iq_value=form)
        b = first_batch(iq)
        assert torch.equal(b["input_ids"], batch["input_ids"])
        l_iq = iq.compute_loss(iq.model, b, num_items_in_batch=n)
        # TRL's loss is computed in float32, tirl's in the model's float64
        assert abs(l_sft.item() - l_iq.item()) < 1e-6, (form, chunk)
        params = [p for name, p in iq.model.named_parameters() if "tirl_value_head" not in name]
        g_iq = torch.autograd.grad(l_iq, params)
        for a, c in zip(g_sft, g_iq, strict=True):
            assert torch.allclose(a, c, atol=1e-6, rtol=1e-5)
        # and across forms, in float64, exactly the same objective
        mle = make(model, tok, tmp_path / f"mle-{chunk}", iq_lambda=0.0, iq_chunk_size=chunk)
        assert abs(mle.compute_loss(mle.model, first_batch(mle), num_items_in_batch=n).item() - l_iq.item()) < 1e-12


@pytest.mark.parametrize("form", ["reference", "head"])
def test_at_the_start_v_is_zero_and_the_reward_is_log_pi(tiny, tmp_path, form):
    model, tok = tiny
    tr = make(model, tok, tmp_path, iq_value=form, iq_lambda=0.1)
    qv = tr.compute_qv(tr.model, first_batch(tr))
    assert qv.v.abs().max() < 1e-5
    rw = L.token_rewards(qv, iq_gamma=0.99, eos_token_ids=tr.eos_token_ids)
    assert torch.allclose(rw.reward * rw.td_mask, qv.logprob * rw.td_mask, atol=1e-5)
    # logits-V starts far from zero: the offset the other forms remove
    lt = make(model, tok, tmp_path / "logits", iq_value="logits")
    logits_qv = lt.compute_qv(lt.model, first_batch(lt))
    assert logits_qv.v[logits_qv.mask].abs().mean() > 1.0


@pytest.mark.parametrize("form", FORMS)
def test_chunked_head_equals_full_logits_in_every_form(tiny, tmp_path, form):
    model, tok = tiny
    model = model.double()
    if form == "head":  # a non-zero head, so its gradient path is exercised
        from tirl.qv.value_head import add_value_head

        head = add_value_head(model)
        with torch.no_grad():
            head.linear.weight.normal_(0, 0.3)
            head.linear.bias.fill_(0.2)
    out = []
    for chunk in (0, 37):
        tr = make(model, tok, tmp_path / str(chunk), iq_value=form, iq_lambda=0.3, iq_chunk_size=chunk)
        loss = tr.compute_loss(tr.model, first_batch(tr))
        out.append((loss, torch.autograd.grad(loss, list(tr.model.parameters()))))
    (la, ga), (lb, gb) = out
    assert abs(la.item() - lb.item()) < 1e-9
    for a, b in zip(ga, gb, strict=True):
        assert torch.allclose(a, b, atol=1e-9)


def test_head_trains_and_is_saved_beside_the_model(tiny, tmp_path):
    model, tok = tiny
    tr = make(model, tok, tmp_path, iq_value="head", iq_lambda=0.5, max_steps=3, learning_rate=1e-2)
    tr.train()
    head = get_value_head(tr.model)
    assert head.linear.weight.abs().sum() > 0  # moved from its zero initialisation
    tr.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / VALUE_HEAD_FILE).is_file()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "final" / "model.safetensors"), framework="pt") as f:
        assert not any("tirl_value_head" in k for k in f.keys())  # noqa: SIM118  (safe_open is not a dict) the policy file stays a plain causal LM


@pytest.mark.parametrize("form", ["head", "reference"])
def test_resume_keeps_the_head_and_the_cached_reference_values(tiny, tmp_path, form, monkeypatch):
    model, tok = tiny
    # a constant learning rate, so a 2-step run followed by a resume to 4 follows the 4-step run exactly
    kw = dict(iq_value=form, iq_lambda=0.5, max_steps=4, learning_rate=1e-2, save_strategy="steps", save_steps=2,
              lr_scheduler_type="constant")
    full = make(model, tok, tmp_path / "full", **kw)
    full.train()
    first = make(model, tok, tmp_path / "resumed", **{**kw, "max_steps": 2})
    first.train()
    cache = list((tmp_path / "resumed" / reference.CACHE_DIR).glob("*.safetensors")) if form == "reference" else []
    if form == "reference":
        assert cache  # train and eval values were written

        def boom(*a, **k):
            raise AssertionError("reference values recomputed instead of read from the run's cache")

        monkeypatch.setattr(reference, "compute_reference_values", boom)
    resumed = make(model, tok, tmp_path / "resumed", **kw)
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    if form == "head":
        assert os.path.isfile(tmp_path / "resumed" / "checkpoint-2" / VALUE_HEAD_FILE)
        assert torch.allclose(get_value_head(full.model).linear.weight, get_value_head(resumed.model).linear.weight,
                              atol=1e-6)


def test_lambda_warmup_ramps_from_mle(tiny, tmp_path):
    model, tok = tiny
    tr = make(model, tok, tmp_path, iq_lambda=0.4, iq_lambda_warmup_steps=4)
    tr.model.train()
    seen = []
    for step in (0, 1, 2, 4, 9):
        tr.state.global_step = step
        seen.append(tr.objective_now().iq_lambda)
    assert seen == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.4])
    tr.model.eval()
    assert tr.objective_now().iq_lambda == 0.4  # evaluation reports the objective itself


def test_config_rejects_unknown_forms(tmp_path):
    with pytest.raises(ValueError, match="iq_value must be one of logits, reference, head"):
        IQLearnConfig(**common_args(tmp_path), iq_value="critic")
    with pytest.raises(ValueError, match="iq_lambda_warmup_steps must be a whole number >= 0"):
        IQLearnConfig(**common_args(tmp_path), iq_lambda_warmup_steps=-1)
    with pytest.raises(ValueError, match="entropy_coef must be a finite number >= 0"):
        IQLearnConfig(**common_args(tmp_path), entropy_coef=-0.1)


def test_online_reference_values_cover_policy_rows(tiny, tmp_path):
    model, tok = tiny
    ds = trl_rows(tok, n=8)
    args = OnlineIQLearnConfig(**common_args(tmp_path), iq_value="reference", iq_alpha=0.5, max_new_tokens=8,
                               iq_lambda=0.1)
    tr = OnlineIQLearnTrainer(copy.deepcopy(model), args, train_dataset=ds, processing_class=tok)
    batch = first_batch(tr)
    entry = tr.sampler.rollout_for(tr.model, batch, step=0).entry
    assert reference.COLUMN in entry.extras  # recorded when the samples were drawn
    mixed = tr.sampler.mix(batch, entry)
    assert mixed[reference.COLUMN].shape == mixed["input_ids"].shape
    mixed.pop("is_expert")
    qv = tr.compute_qv(tr.model, mixed)
    assert qv.mask[-1].any()  # policy rows take part
    assert qv.v.abs().max() < 1e-5  # the model is still the reference: V ≡ 0 on expert and policy rows
    tr.train()  # and a step runs end to end


@pytest.mark.slow
@pytest.mark.parametrize("form", ["head", "reference"])
def test_rewards_are_read_in_the_runs_own_form(tmp_path, form):
    from tirl.cli import main as cli
    from tirl.models import tiny_model
    from tirl.rewards import RewardModel, RewardScorer, load_reward_model, score, training_run

    out = tmp_path / "run"
    rc = cli(["train", "--model", "tiny-llama", "--dataset", "arithmetic", "--num_train_examples", "16",
              "--max_steps", "3", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--iq_value", form,
              "--iq_lambda", "0.5", "--iq_gamma", "0.9", "--eval_strategy", "no", "--save_strategy", "no",
              "--report_to", "none", "--seed", "0", "--output_dir", str(out), "--disable_tqdm", "true"])
    assert rc == 0
    rm = load_reward_model(str(out))
    assert rm.objective == L.Objective.from_run(training_run(str(out)))  # the whole objective the run trained with
    assert rm.objective.iq_value.name == form and rm.objective.iq_gamma == 0.9 and rm.objective.iq_lambda == 0.5
    prompt, completion = "What is 2 + 3?", "2 + 3 = 5\n#### 5"
    scorer = RewardScorer(str(out))
    (R,) = scorer([prompt], [completion])
    (s,) = score(rm, [(prompt, completion)])
    assert pytest.approx(s.reward) == R
    # the values are the form's own: LSE − LSE_θ0 (the starting model rebuilt from the run's seed), or the head's
    if form == "reference":
        logits_form = L.Objective.mle(iq_gamma=0.9)
        (plain,) = score(RewardModel(rm.model, rm.tokenizer, logits_form), [(prompt, completion)])
        start, _ = tiny_model("tiny-llama", seed=0)
        (s0,) = score(RewardModel(start, rm.tokenizer, logits_form), [(prompt, completion)])
        expected = [a - b for a, b in zip(plain.values, s0.values, strict=True)]
        assert s.values == pytest.approx(expected, abs=1e-4)
    else:
        assert get_value_head(rm.model) is not None
        assert any(abs(v) > 1e-6 for v in s.values)  # the trained head, not logsumexp (≈ 3–5 for tiny models)
        assert max(abs(v) for v in s.values) < 2.0
