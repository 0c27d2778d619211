"""Next-token cross-entropy, the loss of pretraining and supervised fine-tuning.

Left out: packing and loss masks by role, which live in data/batches.py (the loss only sees
a bool mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.algorithms.common import masked_mean


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of predicting labels[b, t] from logits[b, t] over kept tokens.

    Labels are already shifted (labels[:, t] is the token after input[:, t]); padding is
    excluded by `mask`, so padding never changes the loss.

    Shapes: logits (B, T, V), labels (B, T) long, mask (B, T) bool or None -> scalar.

    >>> logits = torch.zeros(1, 2, 4)  # uniform over 4 tokens: loss = ln 4
    >>> round(next_token_loss(logits, torch.tensor([[1, 2]])).item(), 4)
    1.3863
    """
    per_token = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none")
    per_token = per_token.view(labels.shape)  # (B, T)
    if mask is None:
        return per_token.mean()
    return masked_mean(per_token, mask)
