"""Group Relative Policy Optimization maths: advantages and the loss, `grpo_loss`, over TRL 1.16's loss types.

GRPO (Shao et al. 2024, DeepSeekMath, eq. 3) samples G completions per prompt and uses each
completion's reward relative to its group as the advantage, so no value model is needed. Variants:
- Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): no division by the group std
  (`scale="none"`) and a constant loss normaliser, removing the length and difficulty biases.
- DAPO (Yu et al. 2025): asymmetric clipping (`epsilon_high` > `epsilon`, "clip-higher") and a
  token-level mean over the whole batch.
- The rest of TRL 1.16's `loss_type` set (bnpo, cispo, sapo, luspo, vespo), sequence-level importance
  weights (`importance_sampling_level="sequence"`, GSPO) and INTELLECT-2's `delta`: the per-type pieces
  live in `algorithms/grpo_losses.py`, which says what each computes; `grpo_loss` composes them.
Numbers match TRL 1.16's `GRPOTrainer` (advantage block of `_generate_and_score_completions`, and
`_compute_loss`), which the unit tests check on identical inputs.

Layout: rewards (B,) hold B / G groups as consecutive blocks of G, i.e. prompt 0's G completions,
then prompt 1's, and so on (TRL's `repeat_interleave` layout).

Left out on purpose: TRL's bias-corrected KL (`use_bias_correction_kl`, on by default in TRL 1.16:
alignlab's KL term is the plain k3 estimate, not k3 times the importance ratio), the off-policy
sequence mask (`off_policy_mask_threshold`), entropy masks and bonuses, vLLM importance correction,
gradient accumulation scaling and the rescaling of micro-batches (the trainer's job; see
`BATCH_TOKEN_TYPES`). Pure functions; shapes use the letters of `algorithms/common.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignlab.algorithms.common import kl_k3, masked_mean
from alignlab.algorithms.grpo_losses import (
    AGGREGATIONS,
    BATCH_TOKEN_TYPES,
    IMPORTANCE_LEVELS,
    LOSS_TYPES,
    SURROGATES,
    LossKnobs,
    PolicyTerms,
    clipped_surrogate,
    dapo_aggregate,
    dr_grpo_aggregate,
    grpo_aggregate,
)

__all__ = ["AGGREGATIONS", "BATCH_TOKEN_TYPES", "LOSS_TYPES", "GRPOLossResult", "GRPOTerms", "clipped_objective",
           "dapo_aggregate", "dr_grpo_aggregate", "group_advantages", "grpo_aggregate", "grpo_loss",
           "zero_spread_fraction"]

STD_EPS = 1e-4  # TRL adds 1e-4 to the std (not inside a sqrt), so a zero-spread group gets advantage 0


def _nanstd(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Unbiased (Bessel) std over non-NaN entries; NaN where fewer than two are present (TRL's `nanstd`)."""
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=dim)
    count = (~torch.isnan(values)).sum(dim=dim).to(values.dtype)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(count, float("nan")))
    return torch.sqrt(variance * correction)


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


def _kl_term(logps: torch.Tensor, ref_logps: torch.Tensor | None, beta: float) -> torch.Tensor | None:
    """k3 KL to the reference per token (B, T), or None when beta is 0 (no reference is needed then)."""
    if beta == 0.0:
        return None
    if ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps (the reference model's per-token log-probs); "
                         "pass them or set beta=0")
    return kl_k3(logps, ref_logps)  # (B, T)


def clipped_objective(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, *,
                      epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
                      ref_logps: torch.Tensor | None = None) -> GRPOTerms:
    """PPO-style clipped surrogate per token (Shao et al. 2024, eq. 3), DAPO's clip-higher, optional k3 KL.

    The token-level clipped types' per-token loss, for callers that want the pieces; `grpo_loss` is the entry point.

    Shapes: logps (B, T), old_logps (B, T), advantages (B,) or (B, T), ref_logps (B, T) or None -> GRPOTerms.

    By hand: A = 1 and logps - old_logps = 0.5 give ratio e^0.5 = 1.6487, clipped to 1.2, loss -1.2.

    >>> terms = clipped_objective(torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([1.0]))
    >>> round(terms.per_token_loss.item(), 4), terms.clipped_mask.item()
    (-1.2, True)
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1), broadcast over T
    ratio = torch.exp(logps - old_logps)  # (B, T)
    surrogate = clipped_surrogate(ratio, advantages, epsilon=epsilon, epsilon_high=epsilon_high)
    per_token_kl = _kl_term(logps, ref_logps, beta)
    per_token_loss = surrogate.per_token_loss
    if per_token_kl is not None:
        per_token_loss = per_token_loss + beta * per_token_kl
    return GRPOTerms(per_token_loss, ratio, surrogate.clipped_mask, per_token_kl)


@dataclass(frozen=True)
class GRPOLossResult:
    """The scalar to minimise and detached per-batch summaries.

    Summaries are means over kept tokens, or over sequences for a (B, 1) sequence-level quantity (TRL's
    convention). `clip_fraction` is, per type: the PPO clip region (clipped types), weights above the cap
    with A > 0 (cispo; TRL's `cispo_clip_ratio`), 0.0 where nothing is clipped (sapo, vespo).
    """

    loss: torch.Tensor  # scalar, differentiable
    clip_fraction: float  # fraction of kept tokens (or sequences) in the clipped region
    kl_mean: float | None  # mean k3 KL to the reference; None when beta is 0
    ratio_mean: float  # mean importance weight (1.0 on the first pass over a batch)
    extra: dict[str, float] = field(default_factory=dict)  # type-specific readings, e.g. vespo_phi_mean


def _summary_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over kept tokens of (B, T) values; over sequences of (B, 1) ones, as TRL logs them."""
    if values.size(-1) == 1 and mask.size(-1) != 1:
        return values.float().mean().item()
    return masked_mean(values.float(), mask).item()


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              epsilon: float = 0.2, epsilon_high: float | None = None, beta: float = 0.0,
              ref_logps: torch.Tensor | None = None, loss_type: str = "grpo",
              max_completion_length: int | None = None, importance_sampling_level: str = "token",
              delta: float | None = None, sapo_temperature_pos: float = 1.0, sapo_temperature_neg: float = 1.05,
              vespo_k_pos: float = 2.0, vespo_lambda_pos: float = 3.0, vespo_k_neg: float = 3.0,
              vespo_lambda_neg: float = 2.0) -> GRPOLossResult:
    """The GRPO loss: importance weight at `importance_sampling_level`, the `loss_type`'s surrogate, plus
    beta * k3 KL, aggregated by `AGGREGATIONS[loss_type]` (algorithms/grpo_losses.py has each piece).

    Parameters keep TRL GRPOConfig's names and defaults; `epsilon_high` None means epsilon (for cispo it
    is the cap on the weight itself). Shapes: logps (B, T), old_logps (B, T), advantages (B,) or (B, T),
    mask (B, T) bool, ref_logps (B, T) or None -> GRPOLossResult.

    By hand: on-policy (ratio 1), one kept token of two, A = 2: the clipped loss is -1 * 2 = -2.

    >>> result = grpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([2.0]), torch.tensor([[True, False]]))
    >>> result.loss.item(), result.clip_fraction, result.ratio_mean
    (-2.0, 0.0, 1.0)
    """
    if loss_type not in SURROGATES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {loss_type!r}")
    if importance_sampling_level not in IMPORTANCE_LEVELS:
        raise ValueError(f"importance_sampling_level must be 'token' or 'sequence'; got {importance_sampling_level!r}")
    mask = mask.bool()
    advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, T)
    log_ratio = logps - old_logps  # (B, T)
    ratio = torch.exp(IMPORTANCE_LEVELS[importance_sampling_level](log_ratio, mask))  # (B, T) or (B, 1)
    knobs = LossKnobs(epsilon, epsilon_high, delta, sapo_temperature_pos, sapo_temperature_neg, vespo_k_pos,
                      vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg)
    surrogate = SURROGATES[loss_type](PolicyTerms(logps, log_ratio, ratio, advantages, mask), knobs)
    per_token_kl = _kl_term(logps, ref_logps, beta)
    per_token_loss = surrogate.per_token_loss.expand_as(logps)  # a (B, 1) sequence term covers its tokens
    if per_token_kl is not None:
        per_token_loss = per_token_loss + beta * per_token_kl
    loss = AGGREGATIONS[loss_type](per_token_loss, mask, max_completion_length)
    with torch.no_grad():
        clipped = surrogate.clipped_mask
        extra = {} if surrogate.weight is None else {"vespo_phi_mean": _summary_mean(surrogate.weight, mask)}
        return GRPOLossResult(
            loss=loss, clip_fraction=0.0 if clipped is None else _summary_mean(clipped, mask),
            kl_mean=None if per_token_kl is None else masked_mean(per_token_kl, mask).item(),
            ratio_mean=_summary_mean(ratio, mask), extra=extra)
