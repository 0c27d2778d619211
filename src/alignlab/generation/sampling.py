"""Choosing the next token from logits: greedy, temperature, top-k, top-p, with an explicit generator.

Sampling uses the exponential-race form of the categorical draw (argmax of p / E with
E ~ Exp(1)), which is exact, needs no cumulative sum and keeps all work on the device.
Temperature 0 means greedy and never touches the generator, so it ignores the seed.

The uniforms come either from a `torch.Generator` (one stream for the whole batch: a row's
draws then depend on where it sits in the batch) or from `RowStreams`: one generator per row,
seeded from the row's own seed, drawing V uniforms per decode step. A row's completion then
depends only on its seed, not on the batch size, the other rows or the rank that sampled it,
which is what makes a multi-process GRPO run draw the same completions as a one-process run.
(A counter-based hash of (seed, step, index) on int64 tensors was tried first: exact, but
3-4x slower than B small `uniform_` calls on the CPU.)

Left out: repetition penalties and other logits processors (rewards, not decoding, are how
alignlab discourages repetition).
"""

from __future__ import annotations

import hashlib

import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment (2^64 / golden ratio)
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def derive_seed(*keys: int | str) -> int:
    """A 63-bit seed from keys (run seed, a purpose such as "held-out", row index, ...), by chained
    splitmix64 (Steele et al. 2014), so that neighbouring keys give unrelated seeds. A text key is
    its UTF-8 bytes' BLAKE2b digest (8 bytes): the same on every machine and Python run.

    >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    True
    >>> derive_seed(7, "held-out", 0) != derive_seed(7, "preflight", 0)
    True
    """
    state = 0
    for key in keys:
        if isinstance(key, str):
            key = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")
        state = (state + _GOLDEN + (key & _MASK64)) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
        z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


def prompt_order_seed(seed: int, epoch: int) -> int:
    """The seed of the RL trainers' prompt order in `epoch` (`trainers/rl_data.take_examples`): its own
    keyed stream, unrelated to every other stream of the run and to the neighbouring epoch's.

    >>> prompt_order_seed(0, 1) == derive_seed(0, "rl prompt order", 1) != prompt_order_seed(1, 0)
    True
    """
    return derive_seed(seed, "rl prompt order", epoch)


class RowStreams:
    """One random stream per row: row b draws from a generator seeded with seeds[b] alone.

    Every decode step draws V uniforms for every unfinished row, so the t-th step of a row always
    reads the same numbers, whichever batch the row is in; a finished row draws nothing (its
    stream is never read again).
    """

    def __init__(self, seeds: list[int], device: torch.device | str = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]

    def uniform(self, vocab: int, device, active: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V) uniforms in [0, 1), row b from its own generator; rows not `active` (B,) hold 0.5
        without a draw."""
        out = torch.empty(len(self.generators), vocab, device=device)
        drawn = [True] * len(self.generators) if active is None else active.tolist()
        for row, generator, draw in zip(out, self.generators, drawn, strict=True):
            if draw:
                row.uniform_(generator=generator)
            else:
                row.fill_(0.5)
        return out


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
    generator: torch.Generator | RowStreams | None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """logits (B, V) -> token ids (B,) long. `generator` is one stream for the batch, or
    `RowStreams` (one per row), which then draws only for the `active` rows (B,) bool: the tokens
    of the others are meaningless (the caller discards them).

    >>> sample_next_token(torch.tensor([[0.0, 3.0, 1.0]]), None, temperature=0.0).tolist()
    [1]
    """
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    logits = filter_top_p(filter_top_k(logits, top_k), top_p)
    probs = logits.softmax(-1)  # (B, V)
    # The exponential race: argmax p / E with E = -log(U), U ~ Uniform(0, 1) (3-4x cheaper on CPU
    # than Tensor.exponential_). p / log(U) is exactly -(p / E), so its argmin is the same token
    # without a pass to negate.
    if isinstance(generator, RowStreams):
        uniform = generator.uniform(probs.shape[-1], probs.device, active)
    else:
        uniform = torch.rand(probs.shape, generator=generator, device=probs.device)
    return (probs / uniform.clamp_min_(1e-30).log_()).argmin(-1)
