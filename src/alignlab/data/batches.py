"""Padding token sequences into batches (typed batch dataclasses join here as trainers need them).

Prompts are padded on the left so that every row's last real token sits in the last column,
which is where generation continues; targets are padded on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LMBatch:
    """Next-token prediction batch.

    input_ids  (B, T) long
    labels     (B, T) long, labels[:, t] is the token that follows input_ids[:, t]
    loss_mask  (B, T) bool or None, True where the label counts (None: every position)
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor | None = None


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, seq in enumerate(seqs):
        if seq:
            cols = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, cols] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, cols] = True
    return ids, mask


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids (B, T) long, mask (B, T) bool), padded on the left.

    >>> ids, mask = left_pad([[5, 6], [7]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [0, 7]], [[True, True], [False, True]])
    """
    return _pad(seqs, pad_id, left=True)


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids (B, T) long, mask (B, T) bool), padded on the right.

    >>> ids, mask = right_pad([[5, 6], [7]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [7, 0]], [[True, True], [True, False]])
    """
    return _pad(seqs, pad_id, left=False)
