"""Direct Preference Optimization (Rafailov et al. 2023) and two variants, as pure functions.

With sequence log-probs of the chosen and rejected replies under the policy (pi) and the frozen
reference (ref), the implicit rewards are r_c = beta * (pi_c - ref_c), r_r = beta * (pi_r - ref_r)
and the preference logit is delta = (pi_c - ref_c) - (pi_r - ref_r). Per pair:
- sigmoid (DPO, eq. 7), with label smoothing eps (conservative DPO: the label is wrong with
  probability eps): -(1 - eps) * log sigmoid(beta * delta) - eps * log sigmoid(-beta * delta)
- hinge (SLiC): relu(1 - beta * delta)
- ipo (Azar et al. 2023, eq. 17): (delta - 1 / (2 * beta))^2, where delta is built from log-probs
  averaged over reply tokens (TRL's convention, confirmed with the IPO authors): the trainer passes
  `lengths` for it.
The loss is the mean over pairs. With eps = 0 each equals TRL 1.16's DPOTrainer on the same log-probs.

Shapes: every input (B,) float (one value per pair); `lengths` (2B,) or None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.algorithms.common import token_logps


@dataclass(frozen=True)
class DPOResult:
    """loss: scalar; chosen_rewards / rejected_rewards: (B,) implicit rewards (detached);
    accuracy: share of pairs with r_c > r_r; margin: mean r_c - r_r."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    accuracy: float
    margin: float


def sigmoid_loss(delta: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """(B,) DPO loss; see the module docstring."""
    return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


def hinge_loss(delta: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """(B,) SLiC hinge loss."""
    return torch.relu(1 - beta * delta)


def ipo_loss(delta: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """(B,) IPO squared loss around 1 / (2 beta)."""
    return (delta - 1 / (2 * beta)) ** 2


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"sigmoid": sigmoid_loss, "hinge": hinge_loss, "ipo": ipo_loss}


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, lengths: torch.Tensor | None = None) -> DPOResult:
    """The `loss_type` loss of B pairs of summed reply log-probs; IPO divides each log-ratio by its
    reply length (`lengths`: chosen then rejected, (2B,)) when given."""
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected  # (B,)
    if loss_type == "ipo" and lengths is not None:
        chosen_len, rejected_len = lengths.to(chosen_ratio.dtype).clamp(min=1).chunk(2)
        chosen_ratio, rejected_ratio = chosen_ratio / chosen_len, rejected_ratio / rejected_len
    loss = LOSSES[loss_type](chosen_ratio - rejected_ratio, beta, label_smoothing).mean()
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return DPOResult(loss, chosen_rewards, rejected_rewards, (chosen_rewards > rejected_rewards).float().mean().item(),
                     (chosen_rewards - rejected_rewards).mean().item())


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, reply_mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probs of the reply tokens of each row (the prompt and padding contribute nothing).

    Position t's logits predict token t + 1. Shapes: logits (B, T, V), input_ids (B, T) long,
    reply_mask (B, T) bool (True on reply tokens) -> (B,).
    """
    per_token = token_logps(logits[:, :-1], input_ids[:, 1:])  # (B, T - 1)
    return (per_token * reply_mask[:, 1:]).sum(-1)
