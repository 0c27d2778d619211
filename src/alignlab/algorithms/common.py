"""Shared tensor maths and the shape letters every algorithm's `Shapes:` block uses.

    B  batch (sequences)        T  tokens per sequence
    V  vocabulary size          G  completions per prompt (GRPO group size)

Masks are bool with True = keep. Everything here is a pure function of tensors.
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is True; 0 when nothing is kept (never NaN).

    Shapes: values (...), mask (...) bool -> scalar.

    >>> masked_mean(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([True, True, False])).item()
    1.5
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
