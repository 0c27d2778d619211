"""The Bradley-Terry reward-model loss (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1).

P(chosen beats rejected) = sigmoid(r_c - r_r), so the loss is -log sigmoid(r_c - r_r - m),
with an optional per-pair margin m (Touvron et al. 2023, Llama 2, eq. 2) and an optional
centering term  c * mean((r_c + r_r)^2)  that keeps rewards near zero (Eisenstein et al. 2023;
TRL's `center_rewards_coefficient`). Pure functions; shapes use the letters of
`algorithms/common.py` (B = pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PairwiseStats:
    """Detached summaries of one batch of comparisons (all floats)."""

    accuracy: float  # fraction of pairs with r_c > r_r (ties count as wrong)
    margin: float  # mean of r_c - r_r
    chosen_mean: float
    rejected_mean: float


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                       margin: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of -log sigmoid(chosen - rejected - margin).

    Shapes: chosen (B,), rejected (B,), margin (B,) or None -> scalar.

    By hand: r_c - r_r = 0 gives -log(1/2) = ln 2 = 0.6931 (what an untrained model scores,
    and what the seed's run ended at); a difference of 2 gives -log sigmoid(2) = 0.1269.

    >>> round(bradley_terry_loss(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])).item(), 4)
    0.41
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def centering_penalty(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """mean((chosen + rejected)^2): zero when each pair's rewards are symmetric around 0.

    Shapes: chosen (B,), rejected (B,) -> scalar.

    >>> centering_penalty(torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 0.0])).item()
    2.0
    """
    return ((chosen + rejected) ** 2).mean()


def reward_model_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                      center_coefficient: float = 0.0) -> torch.Tensor:
    """Bradley-Terry loss plus `center_coefficient` x centering penalty (TRL's RewardTrainer loss)."""
    loss = bradley_terry_loss(chosen, rejected, margin)
    if center_coefficient:
        loss = loss + center_coefficient * centering_penalty(chosen, rejected)
    return loss


@torch.no_grad()
def pairwise_stats(chosen: torch.Tensor, rejected: torch.Tensor) -> PairwiseStats:
    """Accuracy, mean margin and mean rewards of a batch. Shapes: chosen (B,), rejected (B,)."""
    chosen, rejected = chosen.float(), rejected.float()
    return PairwiseStats(accuracy=(chosen > rejected).float().mean().item(),
                         margin=(chosen - rejected).mean().item(),
                         chosen_mean=chosen.mean().item(), rejected_mean=rejected.mean().item())
