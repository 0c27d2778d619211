"""GRPO maths by hand, their invariants, and parity with TRL's GRPOTrainer on identical inputs."""

from __future__ import annotations

import inspect
import math
import textwrap
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlab.algorithms.common import entropy_from_logits, kl_k3, row_token_logps, token_logps
from alignlab.algorithms.grpo import (
    AGGREGATIONS,
    clipped_objective,
    group_advantages,
    grpo_loss,
    zero_spread_fraction,
)

E_HALF, E_MINUS_HALF = math.exp(0.5), math.exp(-0.5)  # 1.6487, 0.6065


def test_group_advantages_by_hand():
    # groups [1, 0] and [0, 1]: means 0.5, unbiased std sqrt((0.25 + 0.25) / 1) = 0.70711;
    # TRL adds eps outside: 0.5 / (0.70711 + 1e-4) = 0.70700.
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    got = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    assert torch.allclose(got, torch.tensor([a, -a, -a, a]), atol=1e-6)


def test_batch_and_none_scaling_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    # group means [0.5, 0.5, 0, 0] -> centred [0.5, -0.5, 0, 0]; batch mean 0.25,
    # batch unbiased var (0.75^2 + 3 * 0.25^2) / 3 = 0.25 -> std 0.5, so divide by 0.5001.
    batch = group_advantages(rewards, 2, scale="batch")
    assert torch.allclose(batch, torch.tensor([0.5, -0.5, 0.0, 0.0]) / 0.5001, atol=1e-6)
    # Dr. GRPO: centred only.
    assert torch.equal(group_advantages(rewards, 2, scale="none"), torch.tensor([0.5, -0.5, 0.0, 0.0]))
    with pytest.raises(ValueError, match="scale"):
        group_advantages(rewards, 2, scale="rank")


def test_nan_rewards_abstain():
    # group [1, 0, NaN]: mean 0.5, std 0.70711 over the two scored -> [0.707, -0.707, 0];
    # group [2, NaN, 4]: mean 3, std sqrt(2) = 1.41421 -> [-1 / 1.41431, 0, 1 / 1.41431].
    got = group_advantages(torch.tensor([1.0, 0.0, math.nan, 2.0, math.nan, 4.0]), 3)
    a, b = 0.5 / (math.sqrt(0.5) + 1e-4), 1 / (math.sqrt(2) + 1e-4)
    assert torch.allclose(got, torch.tensor([a, -a, 0.0, -b, 0.0, b]), atol=1e-6)
    # a lone scored reward has no std: its advantage is 0, not NaN
    assert torch.equal(group_advantages(torch.tensor([math.nan, 3.0]), 2), torch.zeros(2))


def test_zero_spread_fraction():
    # groups [1, 1] flat, [0, 1] spread, [2, NaN] one scored (flat), [3, 3] flat -> 3 / 4
    assert zero_spread_fraction(torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, math.nan, 3.0, 3.0]), 2) == 0.75
    assert zero_spread_fraction(torch.tensor([0.0, 1.0, 1.0, 0.0]), 2) == 0.0


def test_clipped_objective_by_hand():
    # log-ratios [0.5, -0.5] per row -> ratio [e^0.5, e^-0.5] = [1.6487, 0.6065]; clip range [0.8, 1.2].
    # A = +1: min(1.6487, 1.2) = 1.2 (clipped); min(0.6065, 0.8) = 0.6065 (kept)  -> loss [-1.2, -0.6065]
    # A = -1: min(-1.6487, -1.2) = -1.6487 (kept); min(-0.6065, -0.8) = -0.8 (clipped) -> loss [1.6487, 0.8]
    logps = torch.tensor([[0.5, -0.5], [0.5, -0.5]])
    terms = clipped_objective(logps, torch.zeros(2, 2), torch.tensor([1.0, -1.0]))
    assert torch.allclose(terms.per_token_loss, torch.tensor([[-1.2, -E_MINUS_HALF], [E_HALF, 0.8]]), atol=1e-6)
    assert terms.clipped_mask.tolist() == [[True, False], [False, True]]
    assert terms.per_token_kl is None
    # DAPO clip-higher: epsilon_high 0.28 lets the first token reach 1.28
    high = clipped_objective(logps, torch.zeros(2, 2), torch.tensor([1.0, -1.0]), epsilon_high=0.28)
    assert math.isclose(high.per_token_loss[0, 0].item(), -1.28, rel_tol=1e-6)
    # grpo aggregation: rows (-1.2 - 0.6065) / 2 = -0.9033 and (1.6487 + 0.8) / 2 = 1.2244; mean 0.1605
    result = grpo_loss(logps, torch.zeros(2, 2), torch.tensor([1.0, -1.0]), torch.ones(2, 2, dtype=torch.bool))
    expected = ((-1.2 - E_MINUS_HALF) / 2 + (E_HALF + 0.8) / 2) / 2
    assert math.isclose(result.loss.item(), expected, rel_tol=1e-6)
    assert result.clip_fraction == 0.5
    assert math.isclose(result.ratio_mean, (E_HALF + E_MINUS_HALF) / 2, rel_tol=1e-6)


def test_clipped_tokens_get_no_gradient():
    # ratio 1.6487 with A = 1 is clipped: gradient 0; ratio 0.6065 is not: d(-ratio)/dlogp = -0.6065
    logps = torch.tensor([[0.5, -0.5]], requires_grad=True)
    terms = clipped_objective(logps, torch.zeros(1, 2), torch.tensor([1.0]))
    (grad,) = torch.autograd.grad(terms.per_token_loss.sum(), logps)
    assert torch.allclose(grad, torch.tensor([[0.0, -E_MINUS_HALF]]), atol=1e-6)


def test_kl_k3():
    torch.manual_seed(0)
    logps, ref = torch.randn(4, 6), torch.randn(4, 6)
    assert (kl_k3(logps, ref) >= 0).all()
    assert torch.equal(kl_k3(logps, logps), torch.zeros(4, 6))
    # d = ref - logp = 1: e - 1 - 1 = 0.7183
    assert math.isclose(kl_k3(torch.tensor(0.0), torch.tensor(1.0)).item(), math.e - 2, rel_tol=1e-6)
    # with beta the loss adds beta * k3: zero ratio-term (A = 0) leaves 0.1 * 0.7183
    result = grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1, dtype=torch.bool),
                       beta=0.1, ref_logps=torch.ones(1, 1))
    assert math.isclose(result.loss.item(), 0.1 * (math.e - 2), rel_tol=1e-6)
    assert math.isclose(result.kl_mean, math.e - 2, rel_tol=1e-6)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1, dtype=torch.bool), beta=0.1)


def test_aggregations_by_hand():
    per_token_loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])  # 99 is padding
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert AGGREGATIONS["grpo"](per_token_loss, mask, None).item() == 3.0  # rows 6 / 3 = 2 and 4 / 1 = 4
    assert AGGREGATIONS["dr_grpo"](per_token_loss, mask, 4).item() == 1.25  # 10 / (2 * 4)
    assert AGGREGATIONS["dapo"](per_token_loss, mask, None).item() == 2.5  # 10 / 4 kept tokens
    with pytest.raises(ValueError, match="max_completion_length"):
        AGGREGATIONS["dr_grpo"](per_token_loss, mask, None)


def _random_batch(seed: int, batch: int = 6, tokens: int = 5):
    generator = torch.Generator().manual_seed(seed)
    logps = -torch.rand(batch, tokens, generator=generator) * 3
    old_logps = logps + 0.4 * torch.randn(batch, tokens, generator=generator)
    ref_logps = logps + 0.4 * torch.randn(batch, tokens, generator=generator)
    advantages = torch.randn(batch, generator=generator)
    lengths = torch.randint(1, tokens + 1, (batch,), generator=generator)
    mask = torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T), every row keeps >= 1 token
    return logps, old_logps, ref_logps, advantages, mask


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_padding_never_changes_the_loss(loss_type, beta):
    logps, old_logps, ref_logps, advantages, mask = _random_batch(1)
    kwargs = dict(beta=beta, loss_type=loss_type, max_completion_length=8, epsilon_high=0.28)
    clean = grpo_loss(logps, old_logps, advantages, mask, ref_logps=ref_logps, **kwargs)
    generator = torch.Generator().manual_seed(9)

    def garbage(x: torch.Tensor) -> torch.Tensor:  # junk in every masked position, plus three all-padding columns
        junk = 7.0 * torch.randn(x.shape, generator=generator)
        return torch.cat([torch.where(mask, x, junk), 5.0 * torch.randn(6, 3, generator=generator)], dim=1)

    wide_mask = torch.cat([mask, torch.zeros(6, 3, dtype=torch.bool)], 1)
    padded = grpo_loss(garbage(logps), garbage(old_logps), advantages, wide_mask, ref_logps=garbage(ref_logps),
                       **kwargs)
    assert torch.allclose(clean.loss, padded.loss, atol=1e-6)
    assert math.isclose(clean.clip_fraction, padded.clip_fraction) and clean.clip_fraction > 0


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_two_half_batches_equal_the_whole(loss_type):
    logps, old_logps, ref_logps, advantages, mask = _random_batch(2)
    kw = dict(loss_type=loss_type, max_completion_length=5, beta=0.04)
    whole = grpo_loss(logps, old_logps, advantages, mask, ref_logps=ref_logps, **kw).loss
    halves = [grpo_loss(logps[s], old_logps[s], advantages[s], mask[s], ref_logps=ref_logps[s], **kw).loss
              for s in (slice(0, 3), slice(3, 6))]
    if loss_type == "dapo":  # token-level mean: weight each half by its token count
        counts = mask[:3].sum(), mask[3:].sum()
        assert counts[0] != counts[1]  # otherwise the plain average would pass too
        combined = (halves[0] * counts[0] + halves[1] * counts[1]) / (counts[0] + counts[1])
    else:  # per-sequence mean and B * L normaliser: equal-sized halves average
        combined = (halves[0] + halves[1]) / 2
    assert torch.allclose(combined, whole, atol=1e-6)


def test_token_logps_and_entropy():
    torch.manual_seed(3)
    logits, ids = torch.randn(5, 4, 11) * 3, torch.randint(0, 11, (5, 4))
    reference = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logps(logits, ids), reference, atol=1e-6)
    assert torch.allclose(token_logps(logits, ids, chunk_size=2), token_logps(logits, ids), atol=1e-7)
    probs = logits.softmax(-1)
    assert torch.allclose(entropy_from_logits(logits), -(probs * probs.log()).sum(-1), atol=1e-5)


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_row_token_logps_equals_autograd_to_the_bit(temperature):
    """The hand-written backward gives autograd's gradient bit for bit (through the projection too),
    survives a second backward (retain_graph), and needs no grad to run."""
    torch.manual_seed(4)
    h, w, ids, g = torch.randn(37, 16), torch.randn(301, 16), torch.randint(0, 301, (37,)), torch.randn(37)
    grads = []
    for fused in (False, True):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        logits = torch.nn.functional.linear(hh, ww).div_(temperature)
        if fused:
            logps, spread = row_token_logps(logits, ids, entropy=True)
            assert torch.allclose(spread, entropy_from_logits(logits.detach()), atol=1e-5)
            assert not spread.requires_grad
        else:
            logps = token_logps(logits[None], ids[None])[0]
        (logps * g).sum().backward(retain_graph=True)
        first = (hh.grad.clone(), ww.grad.clone())
        hh.grad = ww.grad = None
        (logps * g).sum().backward()
        assert torch.equal(hh.grad, first[0]) and torch.equal(ww.grad, first[1])  # p untouched by a backward
        grads.append((logps.detach(), *first))
    for plain, fused in zip(*grads, strict=True):
        assert torch.equal(plain, fused)
    with torch.no_grad():
        logps, spread = row_token_logps(torch.randn(3, 7), torch.tensor([0, 1, 6]))
    assert logps.shape == (3,) and spread is None


def _trl_advantages(rewards: torch.Tensor, group_size: int, scale: str) -> torch.Tensor:
    """Run TRL's own advantage block, cut from `_generate_and_score_completions`, on a stand-in `self`."""
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    source = inspect.getsource(trl_grpo.GRPOTrainer._generate_and_score_completions)
    start_marker, end_marker = 'if self.multi_objective_aggregation == "sum_then_normalize":', \
        "advantages = torch.nan_to_num(advantages, nan=0.0)"
    if start_marker not in source or end_marker not in source:
        pytest.skip("this TRL version computes advantages elsewhere")
    start = source.index(start_marker)
    start = source.rindex("\n", 0, start) + 1
    block = textwrap.dedent(source[start:source.index(end_marker) + len(end_marker)])
    stand_in = SimpleNamespace(multi_objective_aggregation="sum_then_normalize", scale_rewards=scale,
                               reward_weights=torch.ones(1), reward_funcs=[None])
    namespace = dict(self=stand_in, rewards_per_func=rewards.unsqueeze(1), unscorable_mask=torch.isnan(rewards),
                     num_generations=group_size, device="cpu", torch=torch, nanstd=trl_grpo.nanstd)
    exec(block, namespace)
    return namespace["advantages"]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantage_parity_with_trl(scale):
    torch.manual_seed(4)
    rewards = torch.randn(12)
    rewards[[2, 7, 8]] = math.nan  # abstentions, incl. a group (9..11) with two scored
    rewards[3:6] = 1.0  # one zero-spread group
    theirs = _trl_advantages(rewards, 3, scale)
    ours = group_advantages(rewards, 3, scale=scale)
    assert torch.allclose(ours, theirs, atol=1e-6), (ours, theirs)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_parity_with_trl(loss_type, beta):
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    logps, old_logps, ref_logps, advantages, mask = _random_batch(5, batch=8, tokens=7)
    logps.requires_grad_(True)
    max_completion_length = 9
    stand_in = SimpleNamespace(  # exactly what `_compute_loss` reads on this path
        _get_per_token_logps_and_entropies=lambda model, *args, **kwargs: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28, use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_completion_length,
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics={"train": defaultdict(list)},
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        accelerator=SimpleNamespace(num_processes=1, reduce=lambda x, reduction: x, gather=lambda x: x))
    inputs = {"prompt_ids": torch.zeros(8, 2, dtype=torch.long), "prompt_mask": torch.ones(8, 2, dtype=torch.long),
              "completion_ids": torch.zeros(8, 7, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old_logps, "ref_per_token_logps": ref_logps,
              "num_items_in_batch": mask.sum().float()}
    theirs = trl_grpo.GRPOTrainer._compute_loss(stand_in, None, inputs)
    (their_grad,) = torch.autograd.grad(theirs, logps)
    ours = grpo_loss(logps, old_logps, advantages, mask, epsilon=0.2, epsilon_high=0.28, beta=beta,
                     ref_logps=ref_logps, loss_type=loss_type, max_completion_length=max_completion_length)
    (our_grad,) = torch.autograd.grad(ours.loss, logps)
    assert torch.allclose(ours.loss, theirs, atol=1e-6), (ours.loss, theirs)
    assert torch.allclose(our_grad, their_grad, atol=1e-7)
    assert our_grad.abs().sum() > 0
    metrics = stand_in._metrics["train"]
    assert math.isclose(ours.clip_fraction, metrics["clip_ratio/region_mean"][0], abs_tol=1e-6)
    assert ours.clip_fraction > 0
    if beta:
        assert math.isclose(ours.kl_mean, metrics["kl"][0], rel_tol=1e-5)
    else:
        assert ours.kl_mean is None and "kl" not in metrics
