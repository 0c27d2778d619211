"""Hand-checked numbers for the pretraining loss and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from alignlab.algorithms.sft import next_token_loss
from alignlab.config import OptimConfig
from alignlab.trainers.loop import build_optimizer, lr_at


def test_next_token_loss_by_hand():
    # Row logits [ln 3, 0] give p = [0.75, 0.25]; labels [0, 1] cost -ln .75 and -ln .25.
    logits = torch.tensor([[[math.log(3.0), 0.0], [math.log(3.0), 0.0]]])
    labels = torch.tensor([[0, 1]])
    expected = (-math.log(0.75) - math.log(0.25)) / 2  # 0.8370
    assert math.isclose(next_token_loss(logits, labels).item(), expected, rel_tol=1e-6)


def test_padding_never_changes_the_loss():
    torch.manual_seed(0)
    logits, labels = torch.randn(1, 3, 7), torch.randint(0, 7, (1, 3))
    padded_logits = torch.cat([logits, torch.randn(1, 2, 7) * 50], dim=1)
    padded_labels = torch.cat([labels, torch.zeros(1, 2, dtype=torch.long)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    padded = next_token_loss(padded_logits, padded_labels, mask)
    assert torch.allclose(padded, next_token_loss(logits, labels))


def test_cosine_schedule_by_hand():
    cfg = OptimConfig(lr=1.0, warmup_steps=1, min_lr_ratio=0.0, schedule="cosine")
    # steps 1..5 decay over span 3: progress 0, 1/3, 2/3, 1, 1 -> (1 + cos(pi p)) / 2.
    got = [round(lr_at(s, cfg, 5), 4) for s in range(5)]
    assert got == [1.0, 1.0, 0.75, 0.25, 0.0]


def test_constant_schedule_and_min_ratio():
    assert lr_at(50, OptimConfig(lr=0.5, warmup_steps=0, schedule="constant"), 100) == 0.5
    cfg = OptimConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.1, schedule="cosine")
    assert math.isclose(lr_at(99, cfg, 100), 0.1)


def test_fused_adamw_takes_the_same_step_to_rounding():
    """optim.fused builds torch's fused kernel; a step agrees with the default one to float rounding, with
    the same decay groups (matrices decay, vectors do not)."""
    steps = {}
    for fused in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
        optimizer = build_optimizer(model, OptimConfig(lr=1e-2, fused=fused))
        assert bool(optimizer.defaults.get("fused")) is fused
        for _ in range(3):
            model(torch.ones(2, 8)).pow(2).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        steps[fused] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.allclose(steps[True], steps[False], atol=1e-6)
