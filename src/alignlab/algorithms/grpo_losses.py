"""GRPO's loss family, TRL 1.16's `loss_type` set: importance weights, surrogates and aggregations.

`grpo_loss` (algorithms/grpo.py) composes three steps, each a dict of pure functions here:
1. `IMPORTANCE_LEVELS`: the importance weight pi / pi_old per token ("token", GRPO) or one per
   sequence ("sequence", GSPO: Zheng et al. 2025, arXiv 2507.18071, eq. 7: the geometric mean of the
   sequence's token ratios, exp(mean log ratio)).
2. `SURROGATES`: the per-token loss of each loss type. grpo, bnpo, dr_grpo, dapo and luspo share the
   clipped objective and differ only in step 3; cispo, sapo and vespo have their own.
3. `AGGREGATIONS`: how each loss type turns per-token losses into one scalar.

Each type's numbers match TRL 1.16's `GRPOTrainer._compute_loss` (tests/unit/test_loss_family.py
checks loss and gradient). `LossKnobs` holds the types' parameters under TRL GRPOConfig's names and
defaults. A sequence-level weight has shape (B, 1) and broadcasts over the tokens.

Left out on purpose: TRL's bias-corrected KL (`use_bias_correction_kl`, the k3 term times the ratio;
alignlab's KL term is the plain k3), vLLM importance-sampling corrections (VESPO's `importance_sampling_ratio`
input included), the off-policy sequence mask, entropy masks and bonuses. Shapes use the letters of
`algorithms/common.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

VESPO_LOG_W_MIN = math.log(1e-8)  # VESPO's floor on the log sequence weight (TRL's value)
VESPO_LOG_W_MAX = 20.0  # and its ceiling, also applied to each token's log ratio before summing


def _masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is True; `where` rather than multiply so padding garbage cannot leak in."""
    kept = torch.where(mask, values, torch.zeros_like(values))
    return kept.sum() if dim is None else kept.sum(dim)


def token_log_weights(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token log importance weight: log pi - log pi_old as it is (GRPO, Shao et al. 2024, eq. 3).

    Shapes: log_ratio (B, T), mask (B, T) bool -> (B, T).

    >>> token_log_weights(torch.tensor([[0.5, -0.25]]), torch.tensor([[True, True]])).tolist()
    [[0.5, -0.25]]
    """
    return log_ratio


def sequence_log_weights(log_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One log weight per sequence: the mean log ratio over its kept tokens (GSPO, Zheng et al. 2025, eq. 7).

    Length-normalised, so a long sequence's weight stays near 1; a sequence with no kept token gets 0
    (weight 1). Shapes: log_ratio (B, T), mask (B, T) bool -> (B, 1).

    By hand: log ratios [0.2, 0.4] and a padded 9.0 average to 0.3.

    >>> round(sequence_log_weights(torch.tensor([[0.2, 0.4, 9.0]]), torch.tensor([[True, True, False]])).item(), 4)
    0.3
    """
    mask = mask.bool()
    return (_masked_sum(log_ratio, mask, -1) / mask.sum(-1).clamp(min=1)).unsqueeze(-1)  # (B, 1)


IMPORTANCE_LEVELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "token": token_log_weights, "sequence": sequence_log_weights}


@dataclass(frozen=True)
class Surrogate:
    """A loss type's per-token loss, before the KL term, masking and aggregation.

    per_token_loss (B, T) or (B, 1) float: the policy term to minimise.
    clipped_mask (B, T) or (B, 1) bool, or None where the type clips nothing: tokens whose weight hit a clip.
    weight (B, 1) float or None: VESPO's detached sequence weight phi(w), for its metric.
    """

    per_token_loss: torch.Tensor
    clipped_mask: torch.Tensor | None
    weight: torch.Tensor | None = None


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, *, epsilon: float = 0.2,
                      epsilon_high: float | None = None, delta: float | None = None) -> Surrogate:
    """-min(r * A, clip(r, 1 - epsilon, 1 + epsilon_high) * A): the PPO clip of GRPO (Shao et al. 2024, eq. 3).

    `epsilon_high` > `epsilon` is DAPO's clip-higher (Yu et al. 2025); None = epsilon. `delta` caps the
    unclipped ratio too (INTELLECT-2's two-sided clip, Prime Intellect 2025, arXiv 2505.07291), so a
    token with A < 0 and a huge ratio cannot blow up the loss; None = no cap. The loss of grpo, bnpo,
    dr_grpo, dapo and luspo. `clipped_mask` marks tokens where the clip took the gradient away.

    Shapes: ratio (B, T) or (B, 1), advantages (B, 1) or (B, T) -> Surrogate of the broadcast shape.

    By hand: A = 1, r = e^0.5 = 1.6487, clipped to 1.2: loss -1.2. A = -1, r = 3, delta 2: -min(-2, -1.2) = 2.

    >>> round(clipped_surrogate(torch.tensor([[math.exp(0.5)]]), torch.tensor([[1.0]])).per_token_loss.item(), 4)
    -1.2
    >>> clipped_surrogate(torch.tensor([[3.0]]), torch.tensor([[-1.0]]), delta=2.0).per_token_loss.item()
    2.0
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    bounded = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    capped = ratio if delta is None else torch.clamp(ratio, max=delta)
    per_token_loss = -torch.min(capped * advantages, bounded * advantages)
    clipped_mask = ((capped < 1 - epsilon) & (advantages < 0)) | ((capped > 1 + epsilon_high) & (advantages > 0))
    return Surrogate(per_token_loss, clipped_mask)


def cispo_surrogate(ratio: torch.Tensor, logps: torch.Tensor, advantages: torch.Tensor, *,
                    epsilon_high: float) -> Surrogate:
    """-sg(min(r, epsilon_high)) * A * log pi: CISPO (MiniMax 2025, MiniMax-M1, arXiv 2506.13585, eq. 4).

    The weight is clipped and detached instead of the update being cut, so every token keeps a
    gradient A * w * grad log pi. Here `epsilon_high` is the cap on the weight itself (ScaleRL's
    epsilon_max, Khatri et al. 2025, arXiv 2510.13786, uses 5.0), not 1 + epsilon_high; there is no
    lower bound. `clipped_mask`: weights above the cap with A > 0 (TRL's `cispo_clip_ratio`).

    Shapes: ratio (B, T) or (B, 1), logps (B, T), advantages (B, 1) or (B, T) -> Surrogate (B, T).

    By hand: r = 2, log pi = -1, A = 1: -2 * 1 * (-1) = 2; with the cap at 1.5 the weight is 1.5.

    >>> r, lp, a = torch.tensor([[2.0]]), torch.tensor([[-1.0]]), torch.tensor([[1.0]])
    >>> cispo_surrogate(r, lp, a, epsilon_high=5.0).per_token_loss.item()
    2.0
    >>> cispo_surrogate(r, lp, a, epsilon_high=1.5).per_token_loss.item()
    1.5
    """
    weight = torch.clamp(ratio, max=epsilon_high).detach()
    clipped_mask = (ratio > epsilon_high) & (advantages > 0)
    return Surrogate(-weight * advantages * logps, clipped_mask)


def sapo_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, *, temperature_pos: float = 1.0,
                   temperature_neg: float = 1.05) -> Surrogate:
    """-(4 / tau) * sigmoid(tau * (r - 1)) * A: SAPO's soft gate (Gao et al. 2025, arXiv 2511.20347).

    A smooth gate replaces the hard clip: its slope in r is 1 on-policy (r = 1, the plain policy
    gradient) and fades as r leaves 1, at a rate set by the temperature tau (`temperature_pos` where
    A > 0, `temperature_neg` otherwise; the paper makes the negative one larger, so negative updates
    fade faster). Nothing is clipped, so `clipped_mask` is None.

    Shapes: ratio (B, T) or (B, 1), advantages (B, 1) or (B, T) -> Surrogate of the broadcast shape.

    By hand: r = 1 gives sigmoid(0) = 0.5, so A = 1 at tau 1 costs -(4 / 1) * 0.5 = -2.

    >>> sapo_surrogate(torch.tensor([[1.0]]), torch.tensor([[1.0]])).per_token_loss.item()
    -2.0
    """
    temperature = torch.where(advantages > 0, advantages.new_tensor(temperature_pos),
                              advantages.new_tensor(temperature_neg))
    gate = torch.sigmoid(temperature * (ratio - 1)) * 4 / temperature
    return Surrogate(-gate * advantages, None)


@torch.no_grad()
def vespo_weights(log_ratio: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, *, k_pos: float = 2.0,
                  lambda_pos: float = 3.0, k_neg: float = 3.0, lambda_neg: float = 2.0) -> torch.Tensor:
    """VESPO's sequence weight phi(w) = e^lambda * w^k * e^(-lambda * w) (arXiv 2602.10693), detached.

    w is the whole sequence's ratio, exp of the *sum* of its token log ratios (each clamped to
    [-20, 20], the sum to [log 1e-8, 20]), not GSPO's mean. phi(1) = 1, it peaks at w = k / lambda and
    falls smoothly on both sides: a soft, asymmetric stand-in for the clip. (k, lambda) are
    (k_pos, lambda_pos) where A >= 0, else (k_neg, lambda_neg); lambda is floored at 1e-4.

    Shapes: log_ratio (B, T), mask (B, T) bool, advantages (B, 1) -> (B, 1).

    By hand: log ratios [0.2, 0.3] sum to 0.5, w = 1.6487; A > 0: log phi = 3 + 2 * 0.5 - 3 * 1.6487
    = -0.9462, phi = 0.3882.

    >>> w = vespo_weights(torch.tensor([[0.2, 0.3]]), torch.tensor([[True, True]]), torch.tensor([[1.0]]))
    >>> round(w.item(), 4)
    0.3882
    """
    total = _masked_sum(log_ratio.clamp(-VESPO_LOG_W_MAX, VESPO_LOG_W_MAX), mask.bool(), -1).unsqueeze(-1)
    log_w = total.clamp(VESPO_LOG_W_MIN, VESPO_LOG_W_MAX)  # (B, 1)
    nonnegative = advantages >= 0
    k = torch.where(nonnegative, advantages.new_tensor(k_pos), advantages.new_tensor(k_neg))
    lam = torch.where(nonnegative, advantages.new_tensor(lambda_pos), advantages.new_tensor(lambda_neg)).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def vespo_surrogate(logps: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                    **gamma: float) -> Surrogate:
    """-phi(w) * A * log pi with phi from `vespo_weights` (its keywords pass through): the gradient is
    phi * A * grad log pi, a REINFORCE step weighted per sequence. Nothing is clipped.

    Shapes: logps (B, T), log_ratio (B, T), mask (B, T) bool, advantages (B, 1) -> Surrogate (B, T).

    By hand: on-policy phi(1) = 1, so log pi = -2 and A = 1 cost -1 * 1 * (-2) = 2.

    >>> vespo_surrogate(torch.tensor([[-2.0]]), torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool),
    ...                 torch.tensor([[1.0]])).per_token_loss.item()
    2.0
    """
    weight = vespo_weights(log_ratio, mask, advantages, **gamma)  # (B, 1)
    return Surrogate(-weight * advantages * logps, None, weight)


@dataclass(frozen=True)
class LossKnobs:
    """The loss types' parameters, under TRL GRPOConfig's names and with its defaults; each type reads its own."""

    epsilon: float = 0.2  # clip below 1 - epsilon (clipped types)
    epsilon_high: float | None = None  # clip above 1 + epsilon_high; cispo: the weight cap itself. None = epsilon
    delta: float | None = None  # INTELLECT-2 cap on the unclipped ratio (clipped types); None = off
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0


@dataclass(frozen=True)
class PolicyTerms:
    """What the surrogates read: logps, log_ratio (B, T); ratio (B, T) or (B, 1), the importance weight at the
    chosen level; advantages (B, 1) or (B, T); mask (B, T) bool."""

    logps: torch.Tensor
    log_ratio: torch.Tensor
    ratio: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor


def _clipped(terms: PolicyTerms, knobs: LossKnobs) -> Surrogate:
    return clipped_surrogate(terms.ratio, terms.advantages, epsilon=knobs.epsilon, epsilon_high=knobs.epsilon_high,
                             delta=knobs.delta)


def _cispo(terms: PolicyTerms, knobs: LossKnobs) -> Surrogate:
    cap = knobs.epsilon if knobs.epsilon_high is None else knobs.epsilon_high  # TRL's fallback, odd as it is
    return cispo_surrogate(terms.ratio, terms.logps, terms.advantages, epsilon_high=cap)


def _sapo(terms: PolicyTerms, knobs: LossKnobs) -> Surrogate:
    return sapo_surrogate(terms.ratio, terms.advantages, temperature_pos=knobs.sapo_temperature_pos,
                          temperature_neg=knobs.sapo_temperature_neg)


def _vespo(terms: PolicyTerms, knobs: LossKnobs) -> Surrogate:
    # VESPO builds its own whole-sequence weight from the token log ratios, whatever the importance level.
    return vespo_surrogate(terms.logps, terms.log_ratio, terms.mask, terms.advantages, k_pos=knobs.vespo_k_pos,
                           lambda_pos=knobs.vespo_lambda_pos, k_neg=knobs.vespo_k_neg,
                           lambda_neg=knobs.vespo_lambda_neg)


SURROGATES: dict[str, Callable[[PolicyTerms, LossKnobs], Surrogate]] = {
    "grpo": _clipped, "bnpo": _clipped, "dr_grpo": _clipped, "dapo": _clipped, "luspo": _clipped,
    "cispo": _cispo, "sapo": _sapo, "vespo": _vespo}
CLIPPED_TYPES = frozenset(k for k, v in SURROGATES.items() if v is _clipped)  # the types `delta` applies to


def grpo_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, max_completion_length: int | None) -> torch.Tensor:
    """Mean over each sequence's kept tokens, then over sequences (Shao et al. 2024, eq. 3); grpo and sapo.

    Long completions weigh less per token, the length bias Dr. GRPO removes. Shapes: (B, T), (B, T) bool -> scalar.

    >>> grpo_aggregate(torch.tensor([[1.0, 3.0], [4.0, 9.0]]), torch.tensor([[True, True], [True, False]]), None).item()
    3.0
    """
    mask = mask.bool()
    return (_masked_sum(per_token_loss, mask, -1) / mask.sum(-1).clamp(min=1)).mean()


def dr_grpo_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor,
                      max_completion_length: int | None) -> torch.Tensor:
    """Sum over kept tokens / (B * max_completion_length): a constant normaliser (Liu et al. 2025, Dr. GRPO).

    Shapes: (B, T), (B, T) bool -> scalar.

    >>> dr_grpo_aggregate(torch.tensor([[1.0, 3.0], [4.0, 9.0]]), torch.tensor([[True, True], [True, False]]), 4)
    tensor(1.)
    """
    if max_completion_length is None:
        raise ValueError("loss_type 'dr_grpo' needs max_completion_length (the generation limit, not T); pass it")
    return _masked_sum(per_token_loss, mask.bool()) / (per_token_loss.size(0) * max_completion_length)


def dapo_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, max_completion_length: int | None) -> torch.Tensor:
    """Sum over kept tokens / number of kept tokens in the batch (Yu et al. 2025, DAPO token-level loss).

    The aggregation of dapo, cispo and vespo, whose denominator in TRL is the token count of the whole
    generation batch (`BATCH_TOKEN_TYPES`: a trainer splitting that batch reweights each part by its
    count), and of bnpo, whose denominator is the local batch's count (no reweighting; TRL's choice).
    Shapes: (B, T), (B, T) bool -> scalar.

    >>> dapo_aggregate(torch.tensor([[1.0, 3.0], [4.0, 9.0]]), torch.tensor([[True, True], [True, False]]), None)
    tensor(2.6667)
    """
    mask = mask.bool()
    return _masked_sum(per_token_loss, mask) / mask.sum().clamp(min=1)


def luspo_aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor,
                    max_completion_length: int | None) -> torch.Tensor:
    """Sum over each sequence's kept tokens, then mean over sequences (LUSPO, arXiv 2602.05261).

    With a sequence-level weight each sequence's loss is its GSPO term times its length, undoing the
    length normalisation of the GSPO weight. Shapes: (B, T), (B, T) bool -> scalar.

    >>> luspo_aggregate(torch.tensor([[1.0, 3.0], [4.0, 9.0]]), torch.tensor([[True, True], [True, False]]), None)
    tensor(4.)
    """
    return _masked_sum(per_token_loss, mask.bool(), -1).mean()


Aggregation = Callable[[torch.Tensor, torch.Tensor, "int | None"], torch.Tensor]
AGGREGATIONS: dict[str, Aggregation] = {
    "grpo": grpo_aggregate, "sapo": grpo_aggregate, "dr_grpo": dr_grpo_aggregate, "dapo": dapo_aggregate,
    "bnpo": dapo_aggregate, "cispo": dapo_aggregate, "vespo": dapo_aggregate, "luspo": luspo_aggregate}
# Types TRL normalises by the whole generation batch's kept tokens: a micro-batch's loss must be rescaled
# by (its kept tokens) / (the batch's kept tokens per micro-batch). The others are local, like bnpo.
BATCH_TOKEN_TYPES = frozenset({"dapo", "cispo", "vespo"})
LOSS_TYPES = tuple(SURROGATES)
