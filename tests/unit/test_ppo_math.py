"""PPO's pure maths by hand: GAE, the KL-penalised reward, the clipped losses, whitening, the KL
controller, explained variance; and padding invariance for each."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.algorithms.ppo import (
    adaptive_kl_coef,
    explained_variance,
    gae,
    kl_penalized_rewards,
    policy_loss,
    value_loss,
    whiten,
)

T = torch.tensor


def _pad(x: torch.Tensor, value: float = 7.0, n: int = 2) -> torch.Tensor:
    """Append n padding positions holding junk: results on real tokens must not change."""
    return torch.cat([x, torch.full((x.shape[0], n), value, dtype=x.dtype)], 1)


def test_gae_by_hand():
    # gamma 1, lam 0.9; rewards [0, 0, 1], values [0.5, 0.6, 0.7], nothing after the last token:
    # delta = [0 + 0.6 - 0.5, 0 + 0.7 - 0.6, 1 + 0 - 0.7] = [0.1, 0.1, 0.3]
    # A2 = 0.3; A1 = 0.1 + 0.9 * 0.3 = 0.37; A0 = 0.1 + 0.9 * 0.37 = 0.433; R = A + V.
    rewards, values, mask = T([[0.0, 0.0, 1.0]]), T([[0.5, 0.6, 0.7]]), T([[True, True, True]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.9)
    assert advantages.tolist()[0] == pytest.approx([0.433, 0.37, 0.3])
    assert returns.tolist()[0] == pytest.approx([0.933, 0.97, 1.0])
    # gamma 0.9, lam 1: A_t = discounted return - V_t: A0 = 0.81 - 0.5 = 0.31, A1 = 0.9 - 0.6 = 0.3.
    advantages, _ = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    assert advantages.tolist()[0] == pytest.approx([0.31, 0.3, 0.3])


def test_gae_ignores_padding():
    rewards, values = T([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]]), T([[0.5, 0.6, 0.7], [0.1, 0.2, 0.3]])
    mask = T([[True, True, True], [True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=0.99, lam=0.95)
    padded_adv, padded_ret = gae(_pad(rewards), _pad(values), _pad(mask, False), gamma=0.99, lam=0.95)
    assert torch.allclose(padded_adv[:, :3], advantages) and torch.allclose(padded_ret[:, :3], returns)
    assert padded_adv[:, 3:].abs().sum() == 0 and advantages[1, 2] == 0 and returns[1, 2] == 0
    # row 1 ends at t = 1: delta1 = 2 + 0 - 0.2 = 1.8 (no value after it); delta0 = 0.99 * 0.2 - 0.1 = 0.098,
    # A0 = 0.098 + 0.99 * 0.95 * 1.8 = 1.7909
    assert advantages[1].tolist() == pytest.approx([0.098 + 0.99 * 0.95 * 1.8, 1.8, 0.0])


def test_score_lands_on_the_last_real_token_with_the_kl_penalty():
    # kl = logp - ref = [0.5, 0, -0.5] on real tokens; rewards = -0.1 * kl, plus the score 2 at t = 2.
    rewards, kl = kl_penalized_rewards(T([2.0]), T([[-1.0, -2.0, -3.0, 0.0]]), T([[-1.5, -2.0, -2.5, 5.0]]),
                                       T([[True, True, True, False]]), kl_coef=0.1)
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0.0, 2.05, 0.0]) and kl[0, 3] == 0
    with pytest.raises(ValueError, match="no real token"):
        kl_penalized_rewards(T([1.0]), T([[0.0]]), T([[0.0]]), T([[False]]), kl_coef=0.1)


def test_policy_loss_by_hand():
    # ratios [1, 2], advantages [1, 1], clip 0.2: -A r = [-1, -2], clipped [-1, -1.2], max -> [-1, -1.2]
    result = policy_loss(T([[0.0, math.log(2)]]), T([[0.0, 0.0]]), T([[1.0, 1.0]]), T([[True, True]]), clip=0.2)
    assert result.loss.item() == pytest.approx(-1.1) and result.clip_fraction == 0.5
    assert result.approx_kl == pytest.approx(0.5 * math.log(2) ** 2 / 2)
    # a negative advantage with ratio 2: -A r = 2 beats the clipped 1.2, so no clipping helps it
    negative = policy_loss(T([[math.log(2)]]), T([[0.0]]), T([[-1.0]]), T([[True]]), clip=0.2)
    assert negative.loss.item() == pytest.approx(2.0) and negative.clip_fraction == 0.0
    padded = policy_loss(_pad(T([[0.0, math.log(2)]])), _pad(T([[0.0, 0.0]])), _pad(T([[1.0, 1.0]])),
                         _pad(T([[True, True]]), False))
    assert padded.loss.item() == pytest.approx(-1.1)


def test_value_loss_by_hand():
    # V 1.0, old 0.5, R 2.0, clip 0.2: V_clip 0.7; errors 1.0 and 1.69 -> 0.5 * 1.69 = 0.845
    result = value_loss(T([[1.0]]), T([[0.5]]), T([[2.0]]), T([[True]]), clip_value=0.2)
    assert result.loss.item() == pytest.approx(0.845) and result.clip_fraction == 1.0
    padded = value_loss(_pad(T([[1.0]])), _pad(T([[0.5]])), _pad(T([[2.0]])), _pad(T([[True]]), False))
    assert padded.loss.item() == pytest.approx(0.845)


def test_whiten_explained_variance_and_the_kl_controller():
    # mean 2, unbiased variance 1: [1, 2, 3] -> [-1, 0, 1]; padding stays 0 and does not count
    assert whiten(_pad(T([[1.0, 2.0, 3.0]]), 100.0), _pad(T([[True] * 3]), False)).tolist()[0] == \
        pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0], abs=1e-6)
    assert whiten(T([[1.0, 2.0, 3.0]]), T([[True] * 3]), shift_mean=False).tolist()[0] == pytest.approx([1, 2, 3])
    returns, mask = T([[1.0, 2.0, 3.0]]), T([[True] * 3])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(T([[2.0, 2.0, 2.0]]), returns, mask) == pytest.approx(0.0)
    # KL 12 against a target of 6: error clipped to 0.2; 0.1 * (1 + 0.2 * 256 / 10000) = 0.100512
    assert adaptive_kl_coef(0.1, 12.0, 6.0, 10_000, 256) == pytest.approx(0.100512)
    assert adaptive_kl_coef(0.1, 3.0, 6.0, 10_000, 256) == pytest.approx(0.1 * (1 - 0.2 * 0.0256))
