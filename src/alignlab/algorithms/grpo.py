"""Group Relative Policy Optimization maths: advantages, the clipped objective, loss aggregation.

GRPO (Shao et al. 2024, DeepSeekMath, eq. 3) samples G completions per prompt and uses each
completion's reward relative to its group as the advantage, so no value model is needed. Variants:
- Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): no division by the group std
  (`scale="none"`) and a constant loss normaliser, removing the length and difficulty biases.
- DAPO (Yu et al. 2025): asymmetric clipping (`epsilon_high` > `epsilon`, "clip-higher") and a
  token-level mean over the whole batch.
Numbers match TRL 1.16's `GRPOTrainer` (advantage block of `_generate_and_score_completions`, and
`_compute_loss`), which the unit tests check on identical inputs.

Layout: rewards (B,) hold B / G groups as consecutive blocks of G, i.e. prompt 0's G completions,
then prompt 1's, and so on (TRL's `repeat_interleave` layout).

Left out on purpose: sequence-level importance sampling (GSPO), the other TRL loss types (bnpo,
cispo, sapo, vespo, luspo), entropy masks and bonuses, vLLM importance correction, gradient
accumulation scaling (the trainer's job). Pure functions; shapes use the letters of
`algorithms/common.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from alignlab.algorithms.common import kl_k3, masked_mean

STD_EPS = 1e-4  # TRL adds 1e-4 to the std (not inside a sqrt), so a zero-spread group gets advantage 0


def _nanstd(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Unbiased (Bessel) std over non-NaN entries; NaN where fewer than two are present (TRL's `nanstd`)."""
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=dim)
    count = (~torch.isnan(values)).sum(dim=dim).to(values.dtype)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(count, float("nan")))
    return torch.sqrt(variance * correction)


def _masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is True; `where` rather than multiply so padding garbage cannot leak in."""
    kept = torch.where(mask, values, torch.zeros_like(values))
    return kept.sum() if dim is None else kept.sum(dim)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group",
                     eps: float = STD_EPS) -> torch.Tensor:
    """Group-relative advantages: (r - group mean) / (std + eps).

    `scale` picks the std: "group" (each group's own; GRPO and TRL's default), "batch" (one std over
    all rewards; TRL's `scale_rewards="batch"`) or "none" (no division; Dr. GRPO). The std is the
    unbiased one (n - 1), as TRL computes it.

    Abstention: a NaN reward means "no score". It is left out of its group's mean and std and gets
    advantage 0, as does every completion whose advantage comes out NaN (e.g. a group with one
    scored member when scaling by the group std).

    Shapes: rewards (B,) as B / G consecutive groups of G -> (B,).

    By hand: rewards [1, 0] have mean 0.5 and std sqrt(0.5) = 0.7071, so [0.5, -0.5] / 0.7072.

    >>> [round(a, 4) for a in group_advantages(torch.tensor([1.0, 0.0]), 2).tolist()]
    [0.707, -0.707]
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (B,) with B a multiple of group_size={group_size}; "
                         f"got shape {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)  # (B / G, G)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)  # (B,)
    advantages = rewards - mean
    if scale == "group":
        std = _nanstd(grouped, dim=1).repeat_interleave(group_size) if group_size > 1 else torch.zeros_like(rewards)
        advantages = advantages / (std + eps)
    elif scale == "batch":
        single = rewards.numel() == 1  # TRL's special case; the result (advantage 0) is the same either way
        std = torch.zeros_like(rewards) if single else _nanstd(rewards.view(1, -1), dim=1).expand_as(rewards)
        advantages = advantages / (std + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'group', 'batch' or 'none'; got {scale!r}")
    return torch.nan_to_num(advantages, nan=0.0)


def zero_spread_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose scored rewards are all equal, so every advantage is 0: no learning signal.

    NaN (abstaining) rewards are ignored; a group with at most one scored reward counts as zero-spread.

    Shapes: rewards (B,) as consecutive groups of G -> float.

    >>> zero_spread_fraction(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2)
    0.5
    """
    grouped = rewards.view(-1, group_size)  # (B / G, G)
    scored = ~torch.isnan(grouped)
    high = torch.where(scored, grouped, torch.full_like(grouped, -float("inf"))).amax(dim=1)  # (B / G,)
    low = torch.where(scored, grouped, torch.full_like(grouped, float("inf"))).amin(dim=1)
    flat = (high == low) | (scored.sum(dim=1) <= 1)
    return flat.float().mean().item()


@dataclass(frozen=True)
class GRPOTerms:
    """Per-token pieces of the clipped objective, before masking and aggregation.

    per_token_loss (B, T) float: -min(ratio * A, clip(ratio) * A) [+ beta * k3].
    ratio (B, T) float: exp(logps - old_logps), the importance ratio.
    clipped_mask (B, T) bool: True where clipping removed the gradient (ratio below 1 - epsilon with
        A < 0, or above 1 + epsilon_high with A > 0; TRL's `clip_ratio/region_mean`).
    per_token_kl (B, T) float or None: k3 estimate of KL to the reference; None without one.
    """

    per_token_loss: torch.Tensor
    ratio: torch.Tensor
    clipped_mask: torch.Tensor
    per_token_kl: torch.Tensor | None


def clipped_objective(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, *,
                      epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
                      ref_logps: torch.Tensor | None = None) -> GRPOTerms:
    """PPO-style clipped surrogate per token (Shao et al. 2024, eq. 3), DAPO's clip-higher, optional k3 KL.

    Shapes: logps (B, T), old_logps (B, T), advantages (B,) or (B, T), ref_logps (B, T) or None -> GRPOTerms.

    By hand: A = 1 and logps - old_logps = 0.5 give ratio e^0.5 = 1.6487, clipped to 1.2, loss -1.2.

    >>> terms = clipped_objective(torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([1.0]))
    >>> round(terms.per_token_loss.item(), 4), terms.clipped_mask.item()
    (-1.2, True)
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1), broadcast over T
    ratio = torch.exp(logps - old_logps)  # (B, T)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    per_token_loss = -torch.min(ratio * advantages, clipped_ratio * advantages)  # (B, T)
    clipped_mask = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon_high) & (advantages > 0))
    per_token_kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs ref_logps (the reference model's per-token log-probs); "
                             "pass them or set beta=0")
        per_token_kl = kl_k3(logps, ref_logps)  # (B, T)
        per_token_loss = per_token_loss + beta * per_token_kl
    return GRPOTerms(per_token_loss, ratio, clipped_mask, per_token_kl)


def grpo_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, max_completion_length: int | None) -> torch.Tensor:
    """Mean over each sequence's kept tokens, then over sequences (Shao et al. 2024, eq. 3).

    Long completions weigh less per token, the length bias Dr. GRPO removes. Shapes: (B, T), (B, T) bool -> scalar.
    """
    mask = mask.bool()
    return (_masked_sum(per_token_loss, mask, -1) / mask.sum(-1).clamp(min=1)).mean()


def dr_grpo_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor,
                      max_completion_length: int | None) -> torch.Tensor:
    """Sum over kept tokens / (B * max_completion_length): a constant normaliser (Liu et al. 2025, Dr. GRPO).

    Shapes: (B, T), (B, T) bool -> scalar.
    """
    if max_completion_length is None:
        raise ValueError("loss_type 'dr_grpo' needs max_completion_length (the generation limit, not T); pass it")
    return _masked_sum(per_token_loss, mask.bool()) / (per_token_loss.size(0) * max_completion_length)


def dapo_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, max_completion_length: int | None) -> torch.Tensor:
    """Sum over kept tokens / number of kept tokens in the batch (Yu et al. 2025, DAPO token-level loss).

    TRL divides by the token count of the whole generation batch; for one micro-batch that is this
    batch's count. Split batches must be weighted by their token counts. Shapes: (B, T), (B, T) bool -> scalar.
    """
    mask = mask.bool()
    return _masked_sum(per_token_loss, mask) / mask.sum().clamp(min=1)


Aggregation = Callable[[torch.Tensor, torch.Tensor, "int | None"], torch.Tensor]
AGGREGATIONS: dict[str, Aggregation] = {"grpo": grpo_aggregate, "dr_grpo": dr_grpo_aggregate, "dapo": dapo_aggregate}


@dataclass(frozen=True)
class GRPOLossResult:
    """The scalar to minimise and detached per-batch summaries (masked means over kept tokens)."""

    loss: torch.Tensor  # scalar, differentiable
    clip_fraction: float  # fraction of kept tokens in the clipped region
    kl_mean: float | None  # mean k3 KL to the reference; None when beta is 0
    ratio_mean: float  # mean importance ratio (1.0 on the first pass over a batch)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None, loss_type: str = "grpo",
              max_completion_length: int | None = None) -> GRPOLossResult:
    """The GRPO loss: clipped objective per token, aggregated by `AGGREGATIONS[loss_type]`.

    Shapes: logps (B, T), old_logps (B, T), advantages (B,), mask (B, T) bool, ref_logps (B, T) or None.

    >>> result = grpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([2.0]), torch.tensor([[True, False]]))
    >>> result.loss.item(), result.clip_fraction, result.ratio_mean
    (-2.0, 0.0, 1.0)
    """
    if loss_type not in AGGREGATIONS:
        raise ValueError(f"loss_type must be one of {sorted(AGGREGATIONS)}; got {loss_type!r}")
    mask = mask.bool()
    terms = clipped_objective(logps, old_logps, advantages, epsilon=epsilon, epsilon_high=epsilon_high,
                              beta=beta, ref_logps=ref_logps)
    loss = AGGREGATIONS[loss_type](terms.per_token_loss, mask, max_completion_length)
    with torch.no_grad():
        clip_fraction = masked_mean(terms.clipped_mask.float(), mask).item()
        ratio_mean = masked_mean(terms.ratio, mask).item()
        kl_mean = None if terms.per_token_kl is None else masked_mean(terms.per_token_kl, mask).item()
    return GRPOLossResult(loss=loss, clip_fraction=clip_fraction, kl_mean=kl_mean, ratio_mean=ratio_mean)
