"""Bradley-Terry loss by hand, its invariants, and parity with TRL's RewardTrainer."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlab.algorithms.bradley_terry import (
    bradley_terry_loss,
    centering_penalty,
    pairwise_stats,
    reward_model_loss,
)
from alignlab.algorithms.common import wilson_interval


def test_loss_by_hand():
    # diffs [0, 2, -1]: -log sigmoid = [ln 2, ln(1 + e^-2), ln(1 + e)] = [0.6931, 0.1269, 1.3133].
    chosen, rejected = torch.tensor([0.5, 2.0, -1.0]), torch.tensor([0.5, 0.0, 0.0])
    expected = (math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.e)) / 3  # 0.7111
    assert math.isclose(bradley_terry_loss(chosen, rejected).item(), expected, rel_tol=1e-6)


def test_margin_shifts_the_difference():
    # diff 2 with margin 2 is diff 0: ln 2.
    loss = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([1.0]), torch.tensor([2.0]))
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)


def test_shift_invariance_and_centering():
    chosen, rejected = torch.tensor([1.0, -0.5]), torch.tensor([0.0, 0.5])
    shifted = bradley_terry_loss(chosen + 7.0, rejected + 7.0)
    assert torch.allclose(shifted, bradley_terry_loss(chosen, rejected))
    # centering: ((1 + 0)^2 + (-0.5 + 0.5)^2) / 2 = 0.5
    assert centering_penalty(chosen, rejected).item() == 0.5
    total = reward_model_loss(chosen, rejected, center_coefficient=0.1)
    assert math.isclose(total.item(), bradley_terry_loss(chosen, rejected).item() + 0.05, rel_tol=1e-6)


def test_two_half_batches_average_to_the_whole():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(8), torch.randn(8)
    halves = (bradley_terry_loss(chosen[:4], rejected[:4]) + bradley_terry_loss(chosen[4:], rejected[4:])) / 2
    assert torch.allclose(halves, bradley_terry_loss(chosen, rejected))


def test_pairwise_stats_and_wilson():
    stats = pairwise_stats(torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 1.0, 1.0]))
    assert stats.accuracy == 0.5  # the tie counts as wrong
    assert stats.margin == 0.25  # (1 - 1 + 1 + 0) / 4
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and math.isclose(high, 0.2775, abs_tol=1e-4)
    assert wilson_interval(5, 0) == (0.0, 1.0)


@pytest.mark.parametrize("with_margin,center", [(False, None), (True, None), (True, 0.01)])
def test_parity_with_trl_reward_trainer(with_margin, center):
    trl = pytest.importorskip("trl")
    torch.manual_seed(1)
    logits = torch.randn(8, 1, requires_grad=True)  # rows [0, 4) chosen, [4, 8) rejected
    margin = torch.rand(4) if with_margin else None
    fake_self = SimpleNamespace(
        model=SimpleNamespace(training=True), args=SimpleNamespace(center_rewards_coefficient=center),
        accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(8, 3, dtype=torch.long), "attention_mask": torch.ones(8, 3)}
    if with_margin:
        inputs["margin"] = margin
    theirs = trl.RewardTrainer.compute_loss(fake_self, lambda **kw: SimpleNamespace(logits=logits), inputs)
    (their_grad,) = torch.autograd.grad(theirs, logits)
    chosen, rejected = logits.squeeze(-1).chunk(2)
    ours = reward_model_loss(chosen, rejected, margin, center or 0.0)
    (our_grad,) = torch.autograd.grad(ours, logits)
    assert torch.allclose(ours, theirs, atol=1e-7) and torch.allclose(our_grad, their_grad, atol=1e-7)
