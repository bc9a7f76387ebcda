"""tirl.losses.gem, and DFT: the diversity-preserving SFT baselines, each against its formula in float64."""

import copy

import pytest
import torch

from conftest import common_args, first_batch, trl_rows
from reference import logits_of, make_batch
from tirl import losses as L


def gem_formula(logits, labels, beta, h):
    """The GEM loss as Li et al. (ICLR 2025) publish it, written out row by row: over completion positions,
    −Σ_v q_v·w_v·(log p_y − log p_v), q = softmax(z/β) and w (1, or sigmoid(0.01·(z_v − z_y))) held constant, mean
    over positions."""
    total, n = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            z = logits[b, t].double()
            log_p = torch.log_softmax(z, -1)
            q = torch.softmax(z / beta, -1).detach()
            w = torch.ones_like(z) if h == "linear" else torch.sigmoid(0.01 * (z - z[y])).detach()
            total = total - (q * w * (log_p[y] - log_p)).sum()
            n += 1
    return total / n


@pytest.mark.parametrize("h", ["linear", "logsigmoid"])
@pytest.mark.parametrize("beta", [0.7, 0.3])
def test_gem_equals_the_published_formula_value_and_gradient_float64(h, beta):
    hid, W, b, labels = make_batch(bias=True)
    o = L.Objective.mle(loss_type="gem", gem_beta=beta, gem_h=h)
    ours = L.gem_loss(logits_of(hid, W, b), labels, o).loss
    oracle = gem_formula(logits_of(hid, W, b), labels, beta, h)
    assert abs(ours.item() - oracle.item()) < 1e-12
    for a, c in zip(torch.autograd.grad(ours, (hid, W, b)), torch.autograd.grad(oracle, (hid, W, b)), strict=True):
        assert torch.allclose(a, c, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 5, 1024])
@pytest.mark.parametrize("reduction", ["token", "sequence"])
@pytest.mark.parametrize("h", ["linear", "logsigmoid"])
def test_chunked_gem_equals_the_full_logits_loss(chunk, reduction, h):
    """The one-pass chunked head (gradient formed in forward from the closed form q⊙w − Σq⊙w·e_y) gives the full-logits
    loss's value, statistics and gradients; with a micro-batch split and the whole batch's counts too."""
    hid, W, b, labels = make_batch(B=4, T=14, bias=True, two_segments=True)
    o = L.Objective.mle(loss_type="gem", gem_h=h, iq_reduction=reduction, eos_token_ids=(2,))
    full = L.gem_loss(logits_of(hid, W, b), labels, o)
    ours = L.chunked_gem_loss(hid, W, labels, o, chunk_size=chunk, bias=b)
    for key in ("loss", "mle_loss", "td_loss", "mean_reward", "num_tokens"):
        assert abs(getattr(full, key).item() - getattr(ours, key).item()) < 1e-10, key
    for a, c in zip(torch.autograd.grad(full.loss, (hid, W, b)), torch.autograd.grad(ours.loss, (hid, W, b)),
                    strict=True):
        assert torch.allclose(a, c, atol=1e-12)
    actions = labels[:, 1:] != -100
    counts = L.Counts(tokens=int(actions.sum()), sequences=int(actions.any(-1).sum()))
    parts = sum(L.chunked_gem_loss(hid[s], W, labels[s], o, counts, chunk_size=chunk, bias=b).loss
                for s in (slice(0, 1), slice(1, 4)))
    assert abs(parts.item() - full.loss.item()) < 1e-10


def test_gem_linear_at_beta_one_has_the_cross_entropy_gradient():
    hid, W, _, labels = make_batch()
    gem = L.gem_loss(logits_of(hid, W), labels, L.Objective.mle(loss_type="gem", gem_h="linear", gem_beta=1.0)).loss
    mle = L.iq_loss(logits_of(hid, W), labels, L.MLE).loss
    for a, c in zip(torch.autograd.grad(gem, (hid, W)), torch.autograd.grad(mle, (hid, W)), strict=True):
        assert torch.allclose(a, c, atol=1e-12)


def test_gem_under_no_grad_and_bf16():
    hid, W, _, labels = make_batch(B=4, T=40, D=32, V=300, dtype=torch.float32)
    o = L.Objective.mle(loss_type="gem")
    with torch.no_grad():
        plain = L.chunked_gem_loss(hid, W, labels, o, chunk_size=48)
    assert not plain.loss.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = L.chunked_gem_loss(hid, W, labels, o, chunk_size=48)
    assert abs(low.loss.item() - plain.loss.item()) / abs(plain.loss.item()) < 2e-2


def test_gem_refuses_other_objectives():
    hid, W, _, labels = make_batch()
    with pytest.raises(ValueError, match="the GEM loss needs loss_type='gem'"):
        L.gem_loss(logits_of(hid, W), labels, L.MLE)


@pytest.mark.parametrize("chunk", [0, 37])
def test_dft_equals_trls_loss_type_dft_on_the_same_batch(tiny, tmp_path, chunk):
    """`--method dft` (loss_type="dft") gives TRL's SFTTrainer(loss_type="dft") loss and gradients on one batch."""
    from trl import SFTConfig, SFTTrainer

    from tirl.trainers import IQLearnConfig, IQLearnTrainer

    model, tok = tiny
    model = model.double()
    ds = trl_rows(tok, n=16)
    sft = SFTTrainer(copy.deepcopy(model), SFTConfig(**common_args(tmp_path / "trl", loss_type="dft")),
                     train_dataset=ds, processing_class=tok)
    batch = first_batch(sft)
    n = (batch["labels"][:, 1:] != -100).sum()
    l_trl = sft.compute_loss(sft.model, dict(batch), num_items_in_batch=n)
    g_trl = torch.autograd.grad(l_trl, list(sft.model.parameters()))
    ours = IQLearnTrainer(copy.deepcopy(model), IQLearnConfig(**common_args(tmp_path / "tirl", loss_type="dft",
                                                                            iq_lambda=0.0, iq_value="logits",
                                                                            iq_chunk_size=chunk)),
                          train_dataset=ds, processing_class=tok)
    l_ours = ours.compute_loss(ours.model, first_batch(ours), num_items_in_batch=n)
    assert abs(l_trl.item() - l_ours.item()) < 1e-6  # TRL's head computes in float32
    for a, c in zip(g_trl, torch.autograd.grad(l_ours, list(ours.model.parameters())), strict=True):
        assert torch.allclose(a, c, atol=1e-6, rtol=1e-5)


def test_gem_trains_through_the_trainer_and_lowers_the_held_out_loss(tiny, tmp_path):
    from tirl.trainers import IQLearnConfig, IQLearnTrainer

    model, tok = tiny
    ds = trl_rows(tok, n=64)
    tr = IQLearnTrainer(model, IQLearnConfig(**common_args(tmp_path, loss_type="gem", iq_lambda=0.0, max_steps=30,
                                                           learning_rate=3e-3, iq_value="logits")),
                        train_dataset=ds, eval_dataset=trl_rows(tok, n=16, split="test"), processing_class=tok)
    before = tr.evaluate()["eval_mle_loss"]
    tr.train()
    assert tr.evaluate()["eval_mle_loss"] < before - 0.5
