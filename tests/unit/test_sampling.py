"""Next-token choice: filters by hand, greedy, and seeded randomness."""

from __future__ import annotations

import math

import torch

from alignlab.generation.sampling import filter_top_k, filter_top_p, sample_next_token

NEG = float("-inf")


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 4.0, 2.0, 3.0]])
    assert filter_top_k(logits, 2).tolist() == [[NEG, 4.0, NEG, 3.0]]
    assert torch.equal(filter_top_k(logits, 0), logits)


def test_top_p_smallest_set_reaching_p():
    # probs = [0.5, 0.25, 0.125, 0.125]: mass before each = [0, 0.5, 0.75, 0.875].
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))
    kept = filter_top_p(logits, 0.6)  # 0.5 < 0.6 so the second token is needed, not the third
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    only_best = filter_top_p(logits, 0.1)
    assert torch.isfinite(only_best).tolist() == [[True, False, False, False]]


def test_top_p_respects_original_order():
    logits = torch.log(torch.tensor([[0.125, 0.5, 0.125, 0.25]]))
    assert torch.isfinite(filter_top_p(logits, 0.6)).tolist() == [[False, True, False, True]]


def test_greedy_ignores_generator():
    logits = torch.tensor([[0.1, 0.9, 0.3], [2.0, -1.0, 0.0]])
    a = sample_next_token(logits, torch.Generator().manual_seed(1), temperature=0.0)
    b = sample_next_token(logits, torch.Generator().manual_seed(2), temperature=0.0)
    assert a.tolist() == b.tolist() == [1, 0]


def test_sampling_follows_the_distribution():
    # probs [0.7, 0.2, 0.1]: 20k draws land within 1.5% of each.
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, 3)
    draws = sample_next_token(logits, torch.Generator().manual_seed(0), temperature=1.0)
    freq = torch.bincount(draws, minlength=3).float() / draws.numel()
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015), freq


def test_temperature_sharpens():
    logits = torch.log(torch.tensor([[0.6, 0.4]])).expand(20000, 2)
    draws = sample_next_token(logits, torch.Generator().manual_seed(0), temperature=0.5)
    # At T = 0.5 the odds square: 0.36 / (0.36 + 0.16) = 0.692.
    share = (draws == 0).float().mean().item()
    assert math.isclose(share, 0.692, abs_tol=0.015), share


def test_same_seed_same_draws_different_seed_differs():
    logits = torch.zeros(64, 50)
    a = sample_next_token(logits, torch.Generator().manual_seed(5))
    b = sample_next_token(logits, torch.Generator().manual_seed(5))
    c = sample_next_token(logits, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_filtered_tokens_are_never_drawn():
    logits = (torch.arange(10.0) * 0.1).expand(5000, 10)  # nearly flat: 7, 8, 9 all get drawn
    draws = sample_next_token(logits, torch.Generator().manual_seed(0), temperature=1.0, top_k=3)
    assert set(draws.tolist()) == {7, 8, 9}
