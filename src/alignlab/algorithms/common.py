"""Shared tensor maths and the shape letters every algorithm's `Shapes:` block uses.

    B  batch (sequences)        T  tokens per sequence
    V  vocabulary size          G  completions per prompt (GRPO group size)

Masks are bool with True = keep. Everything here is a pure function of tensors.
"""

from __future__ import annotations

import math

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is True; 0 when nothing is kept (never NaN).

    Shapes: values (...), mask (...) bool -> scalar.

    >>> masked_mean(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([True, True, False])).item()
    1.5
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); 95% by default.

    Better than the normal interval near 0 and 1 and for small n, where pass rates live.
    (0, 1) when total is 0.

    >>> [round(x, 4) for x in wilson_interval(8, 10)]
    [0.4902, 0.9433]
    """
    if total <= 0:
        return 0.0, 1.0
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
