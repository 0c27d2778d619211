"""Choosing the next token from logits: greedy, temperature, top-k, top-p, with an explicit generator.

Sampling uses the exponential-race form of the categorical draw (argmax of p / E with
E ~ Exp(1)), which is exact, needs no cumulative sum and keeps all work on the device.
Temperature 0 means greedy and never touches the generator, so it ignores the seed.

Left out: repetition penalties and other logits processors (rewards, not decoding, are how
alignlab discourages repetition).
"""

from __future__ import annotations

import torch


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row. logits (B, V) -> (B, V) with the rest at -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2019): the smallest set of tokens with mass >= p.

    The most likely token always survives, so a row never becomes empty.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: torch.Tensor,
    generator: torch.Generator | None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """logits (B, V) -> token ids (B,) long.

    >>> sample_next_token(torch.tensor([[0.0, 3.0, 1.0]]), None, temperature=0.0).tolist()
    [1]
    """
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    logits = filter_top_p(filter_top_k(logits, top_k), top_p)
    probs = logits.softmax(-1)  # (B, V)
    # E = -log(U), U ~ Uniform(0, 1): 3-4x cheaper on CPU than Tensor.exponential_.
    uniform = torch.rand(probs.shape, generator=generator, device=probs.device)
    race = uniform.clamp_min_(1e-30).log_().neg_()
    return (probs / race).argmax(-1)
