"""Shared tensor maths and the shape letters every algorithm's `Shapes:` block uses.

    B  batch (sequences)        T  tokens per sequence
    V  vocabulary size          G  completions per prompt (GRPO group size)

Masks are bool with True = keep. Everything here is a pure function of tensors, or of counts (the
evaluation statistics: Wilson intervals, pass@k, verdict rates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def verdict_rates(passed: Sequence[bool], degenerate: Sequence[bool]) -> dict[str, float]:
    """Pass rate with its Wilson bounds and the degenerate rate of judged samples: the figures every
    evaluation reports (`eval`'s summary, the trainers' held-out check). At least one sample.

    >>> {k: round(v, 4) for k, v in verdict_rates([True] * 8 + [False] * 2, [False] * 9 + [True]).items()}
    {'pass_rate': 0.8, 'pass_rate_low': 0.4902, 'pass_rate_high': 0.9433, 'degenerate_rate': 0.1}
    """
    n = len(passed)
    if n == 0 or len(degenerate) != n:
        raise ValueError(f"verdict_rates needs one degenerate flag per sample and at least one sample, got "
                         f"{n} and {len(degenerate)}")
    low, high = wilson_interval(sum(passed), n)
    return {"pass_rate": sum(passed) / n, "pass_rate_low": low, "pass_rate_high": high,
            "degenerate_rate": sum(degenerate) / n}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` are correct (Chen et al. 2021, eq. 1).

    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which avoids the
    huge binomials (the product form of the paper's numpy snippet).

    >>> round(pass_at_k(5, 1, 1), 12)  # 1 - (1 - 1/5)
    0.2
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"expected 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every draw of k samples contains a correct one
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def token_logps(logits: torch.Tensor, ids: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Log-probability of each chosen token: logits[ids] - logsumexp(logits).

    Never builds the full (B, T, V) log-softmax copy; `chunk_size` rows of B at a time bound the
    logsumexp workspace further (same numbers, one chunk's memory). Differentiable.

    Shapes: logits (B, T, V), ids (B, T) long -> (B, T).

    By hand: logits [0, ln 3] give probabilities [1/4, 3/4], so token 1 has log(3/4) = -0.2877.

    >>> round(token_logps(torch.tensor([[[0.0, math.log(3.0)]]]), torch.tensor([[1]])).item(), 4)
    -0.2877
    """
    step = logits.size(0) if chunk_size is None else max(1, chunk_size)
    parts = []
    for start in range(0, logits.size(0), step):
        chunk = logits[start:start + step]  # (b, T, V)
        chosen = chunk.gather(-1, ids[start:start + step].unsqueeze(-1)).squeeze(-1)  # (b, T)
        parts.append(chosen - torch.logsumexp(chunk, dim=-1))  # (b, T)
    return torch.cat(parts, dim=0)  # (B, T)


class _RowLogps(torch.autograd.Function):
    """`token_logps` of (N, V) rows with a hand-written backward that makes one vocabulary-sized
    tensor where autograd makes five (sub, exp, mul, a zero-filled scatter, their sum).

    Forward keeps p = exp(logits - logsumexp) for the backward (autograd's logsumexp keeps the logits
    instead: the same size) and reads the entropy off it at no extra exp or logsumexp. The backward computes, in
    autograd's order, the same float operations autograd does for `chosen - logsumexp(logits)`:
    -g * p everywhere, plus g at the chosen token, so the gradient is identical to the last bit
    (tested). Shapes: logits (N, V), ids (N,) long -> logps (N,), entropy (N,) (detached; empty when
    not asked for)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, ids: torch.Tensor, want_entropy: bool):
        lse = torch.logsumexp(logits, dim=-1)  # (N,)
        logps = logits.gather(-1, ids[:, None])[:, 0] - lse  # (N,)
        probs, spread = None, logits.new_zeros(0)
        if want_entropy:  # H = -sum(p * log p): every term >= 0, no cancellation
            log_probs = logits - lse[:, None]  # (N, V)
            probs = log_probs.exp()
            spread = -torch.linalg.vecdot(probs, log_probs)
            del log_probs
        elif ctx.needs_input_grad[0]:
            probs = (logits - lse[:, None]).exp_()  # (N, V)
        ctx.save_for_backward(probs if ctx.needs_input_grad[0] else None, ids)
        ctx.mark_non_differentiable(spread)
        return logps, spread

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _unused):
        probs, ids = ctx.saved_tensors
        out = probs * (-grad)[:, None]  # d(-logsumexp) (N, V), a new tensor: p stays for a second backward
        rows = torch.arange(ids.shape[0], device=ids.device)
        out.index_put_((rows, ids), grad, accumulate=True)  # + d(chosen)
        return out, None, None


def row_token_logps(logits: torch.Tensor, ids: torch.Tensor, *, entropy: bool = False):
    """(logps, entropy or None) of the chosen token of each row of `logits`: the numbers and gradient of
    `token_logps` bit for bit, with a leaner backward (`_RowLogps`); the entropy (detached) equals
    `entropy_from_logits` to rounding. Shapes: logits (N, V), ids (N,) long -> (N,), (N,) or None.

    >>> logps, spread = row_token_logps(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1]), entropy=True)
    >>> round(logps.item(), 4), round(spread.item(), 4)  # log(3/4); -(1/4 ln 1/4 + 3/4 ln 3/4)
    (-0.2877, 0.5623)
    """
    logps, spread = _RowLogps.apply(logits, ids, entropy)
    return logps, (spread if entropy else None)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution, in nats: logsumexp(l) - sum(p * l).

    Shapes: logits (B, T, V) -> (B, T).

    By hand: two equal logits give a fair coin, entropy ln 2 = 0.6931.

    >>> round(entropy_from_logits(torch.zeros(1, 1, 2)).item(), 4)
    0.6931
    """
    probs = torch.softmax(logits, dim=-1)  # (B, T, V)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)  # (B, T)


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || reference): exp(d) - d - 1 with d = ref_logps - logps.

    Unbiased for tokens sampled from the policy and always >= 0 (e^d >= 1 + d), zero where the two
    agree (Schulman 2020, "Approximating KL divergence"; the estimator of Shao et al. 2024, eq. 4).

    Shapes: logps (B, T), ref_logps (B, T) -> (B, T).

    By hand: d = 1 gives e - 2 = 0.7183; d = 0 gives 0.

    >>> [round(x, 4) for x in kl_k3(torch.tensor([0.0, -1.0]), torch.tensor([1.0, -1.0])).tolist()]
    [0.7183, 0.0]
    """
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1
