"""tirl.losses.gail: GAIL's maths by hand — reward, balanced BCE, returns, advantages, PPO-clip, shaping, the KL
estimate, and the EOS mask shared with the IQLearn losses."""

import math

import pytest
import torch

from reference import EOS
from tirl import losses as L
from tirl.losses import gail as A


def test_reward_is_log_d_minus_log_one_minus_d():
    x = torch.tensor([-8.0, -2.0, 0.0, 0.5, 8.0], dtype=torch.float64)
    d = torch.sigmoid(x)
    assert torch.allclose(A.discriminator_reward(x), torch.log(d) - torch.log1p(-d), atol=1e-9)
    assert torch.isfinite(A.discriminator_reward(torch.tensor([1e4]))).all()  # no log(0) for a saturated D


def test_discriminator_loss_is_balanced_bce_on_hand_values():
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    expert = torch.tensor([[True, True, False], [False, False, False]])
    policy = torch.tensor([[False, False, False], [True, True, False]])
    # expert: −log σ(0), −log σ(2);  policy: −log(1 − σ(1)), −log(1 − σ(0))
    e = (math.log(2) + math.log1p(math.exp(-2))) / 2
    p = (math.log1p(math.exp(1)) + math.log(2)) / 2
    assert A.discriminator_loss(logits, expert, policy).item() == pytest.approx(0.5 * (e + p), abs=1e-6)
    stats = A.discriminator_stats(logits, expert, policy)
    # expert: D(0) = ½ is a tie (½ right), D(2) > ½ right -> 0.75; policy: D(1) > ½ wrong, tie -> 0.25
    assert stats.expert_accuracy.item() == pytest.approx(0.75) and stats.policy_accuracy.item() == pytest.approx(0.25)
    assert stats.accuracy.item() == pytest.approx(0.5)
    assert stats.expert_reward.item() == pytest.approx(1.0) and stats.policy_reward.item() == pytest.approx(0.5)


def test_discounted_returns_hand_checked_and_stop_at_mask():
    r = torch.tensor([[1.0, 2.0, 3.0, 9.0, 4.0]])
    mask = torch.tensor([[True, True, True, False, True]])
    g = A.discounted_returns(r, mask, gamma=0.5)
    # positions 0..2: 1 + .5·2 + .25·3 = 2.75, 2 + .5·3 = 3.5, 3; masked 0; the next segment restarts: 4
    assert g.tolist() == [[2.75, 3.5, 3.0, 0.0, 4.0]]


def test_advantages_are_centred_and_scaled_over_the_mask():
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    adv = A.advantages(returns, mask, normalize=True)
    assert adv[0, 3] == 0
    assert adv[mask].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert adv[mask].square().mean().item() == pytest.approx(1.0, abs=1e-4)
    assert A.advantages(returns, mask, normalize=False)[mask].tolist() == [-1.0, 0.0, 1.0]


def test_ppo_clip_gradient_is_minus_ratio_times_advantage_unless_clipped():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=torch.float64))
    new = torch.log(torch.tensor([[0.5, 0.8, 0.8, 0.2]], dtype=torch.float64)).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    per_token, clipped = A.ppo_clip_loss(new, old, adv, mask, clip_eps=0.2)
    (grad,) = torch.autograd.grad(per_token.sum(), new)
    ratio = torch.exp(new - old).detach()
    # token 0: ρ = 1 (the REINFORCE case): −A; token 1: ρ = 1.6 > 1.2 with A > 0: clipped, 0;
    # token 2: ρ = 1.6 with A < 0: not clipped (min picks the unclipped), −ρA; token 3: ρ = 0.4 < 0.8 with A < 0: clipped
    assert clipped.tolist() == [[False, True, False, True]]
    expected = torch.tensor([[-1.0, 0.0, ratio[0, 2].item(), 0.0]], dtype=torch.float64)
    assert torch.allclose(grad, expected, atol=1e-12)


def test_shaped_rewards_and_kl_estimate():
    r = torch.tensor([[1.0, 1.0]])
    old = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -2.0]])
    shaped = A.shaped_rewards(r, old, ref, kl_coef=0.1, entropy_coef=0.01)
    assert torch.allclose(shaped, torch.tensor([[1.0 - 0.1 * 0.5 + 0.01, 1.0 + 0.02]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    kl = A.kl_estimate(old, ref, mask)
    assert kl[0, 1] == 0 and kl[0, 0] > 0
    with pytest.raises(ValueError, match="kl_coef > 0 needs the reference log-probabilities"):
        A.shaped_rewards(r, old, None, kl_coef=0.1)


def test_mask_after_eos_matches_the_loss_conventions():
    labels = torch.full((2, 8), -100)
    labels[0, 2:7] = torch.tensor([5, EOS, 6, 7, 8])  # EOS then template tokens
    labels[1, 3:8] = torch.tensor([5, 6, 7, 8, 9])  # truncated: kept whole
    actions, mask = L.shift_labels(labels)
    kept = A.mask_after_eos(actions, mask, EOS)
    assert kept.sum(-1).tolist() == [2, 5]
    qv = L.qv_from_logits(torch.randn(2, 8, 12), labels)
    _, td_mask = L.next_values(qv, EOS)
    assert torch.equal(kept[0], td_mask[0])  # row 0: the TD mask drops exactly the after-EOS tokens
    assert A.mask_after_eos(actions, mask, None).equal(mask)
