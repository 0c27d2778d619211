"""What attention reads besides the new tokens, and which tokens a forward computes at all.

`KVCache` (generation): one sequence per group of rows sharing a prompt (GRPO's groups, N samples
per prompt): the prompt's keys and values, written once, then the tokens the group's rows feed,
side by side per step. A decode step attends with one product per group over that sequence, a
bias letting each row see the prompt and its own tokens only; the prompt is stored and read once
per group instead of once per row (the shared-prefix or "cascade" idea of Ye et al. 2024,
FlashInfer, here as one masked product). On small hardware a decode step is bound by memory
traffic and per-operator cost, which is what this saves.

`PrefixKV` (training): the prompts' keys and values with their gradient, computed once per group
and repeated for the continuations.

`Packing`: the kept positions of a right-padded (B, T) batch, so linears skip the padding.

Left out: paged storage, and decoding more than one new token per row and step.
"""

from __future__ import annotations

import torch

from alignlab.config import GPTConfig


class KVCache:
    """Keys and values of every layer for decoding B rows in groups of G consecutive rows sharing a prompt.

    keys, values (L, U, K, P + G * N, D), U = B / G groups: positions [0, P) hold the group's prompt
    (written by one forward over the U prompts, `Decoder.forward(..., keys_only=True)`, through
    `update`); the token row g of a group feeds at decode step s sits at P + s * G + g (`attend`).
    `prompt_mask` (U, P) bool marks real prompt tokens (None: no padding).
    `length` counts the prompt and the steps fed so far.
    """

    replayable = False  # writes in place: a layer run twice would write twice (no activation checkpointing)

    def __init__(self, config: GPTConfig, batch: int, max_new: int, *, group: int, prompt_len: int,
                 prompt_mask: torch.Tensor | None, device, dtype):
        if batch % group:
            raise ValueError(f"batch {batch} is not a multiple of the group size {group}")
        shape = (config.num_hidden_layers, batch // group, config.num_key_value_heads,
                 prompt_len + group * max_new, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)  # (L, U, K, P + G * N, D)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.prompt_mask, self.group, self.prompt_len, self.length = prompt_mask, group, prompt_len, 0
        self._bias: torch.Tensor | None = None

    @property
    def decoding(self) -> bool:
        """True once the prompt part is written: new tokens then go through `attend`."""
        return self.length >= self.prompt_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """The prompt pass: store the U prompts' keys and values (U, K, P, D) and return them."""
        self.keys[layer, :, :, :self.prompt_len] = k
        self.values[layer, :, :, :self.prompt_len] = v
        return k, v

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write one new token's keys and values (B, K, 1, D) per row; attend q (B, H, 1, D) -> (B, H, 1, D)."""
        u, kv, capacity, d = self.keys.shape[1:]
        start = self.prompt_len + (self.length - self.prompt_len) * self.group
        end = start + self.group
        if k.shape[2] != 1 or end > capacity:
            raise ValueError(f"the cache takes one token per row and step, {capacity - self.prompt_len} in all")
        self.keys[layer, :, :, start:end] = k.view(u, self.group, kv, d).transpose(1, 2)  # (U, K, G, D)
        self.values[layer, :, :, start:end] = v.view(u, self.group, kv, d).transpose(1, 2)
        return grouped_attention(q, self.keys[layer, :, :, :end], self.values[layer, :, :, :end],
                                 self.bias()[..., :end])

    def bias(self) -> torch.Tensor:
        """(U, 1, G, 1, P + G * N) additive mask: 0 where row g may look (real prompt tokens, its own
        tokens), -inf elsewhere. Built once per cache."""
        if self._bias is None:
            u, _, capacity, _ = self.keys.shape[1:]
            g, p = self.group, self.prompt_len
            rows = torch.arange(capacity - p, device=self.keys.device) % g  # (G * N,) row of each fed token
            seen = rows[None, :] == torch.arange(g, device=self.keys.device)[:, None]  # (G, G * N)
            prompt = (self.prompt_mask if self.prompt_mask is not None
                      else torch.ones(u, p, dtype=torch.bool, device=self.keys.device))  # (U, P)
            allowed = torch.cat([prompt[:, None].expand(u, g, p), seen[None].expand(u, g, capacity - p)], -1)
            zero = torch.zeros((), dtype=self.keys.dtype, device=self.keys.device)
            self._bias = torch.where(allowed, zero, float("-inf"))[:, None, :, None]  # (U, 1, G, 1, P + G * N)
        return self._bias

    def advance(self, steps: int) -> None:
        self.length += steps


def grouped_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One query per row against its group's key sequence, all G rows x rep query heads of a group
    and kv head in one product; `bias` decides which keys each row sees. Equal to
    scaled_dot_product_attention over each row's own keys (up to float rounding). Grouped-query
    attention: query head h uses kv head h // rep.

    Shapes: q (B, H, 1, D); keys, values (U, K, S, D); bias (U, 1, G, 1, S); B = U * G, H = K * rep
    -> (B, H, 1, D).
    """
    b, h, _, d = q.shape
    u, kv, s, _ = keys.shape
    g, rep = b // u, h // kv
    q = q.reshape(u, g, kv, rep, d).transpose(1, 2).reshape(u, kv, g * rep, d) * d ** -0.5  # (U, K, G * rep, D)
    scores = (q @ keys.transpose(-1, -2)).view(u, kv, g, rep, s) + bias  # (U, K, G, rep, S)
    weights = scores.float().softmax(-1).to(values.dtype)  # float32 softmax, as SDPA does for half types
    out = weights.view(u, kv, g * rep, s) @ values  # (U, K, G * rep, D)
    return out.view(u, kv, g, rep, d).transpose(1, 2).reshape(b, h, 1, d)


class PrefixKV:
    """Keys and values of shared prompts, kept with their gradient, for continuations that attend to them.

    Training-time counterpart of `KVCache` (which writes in place and so cannot carry gradients):
    a first forward over the B / G distinct prompts records each layer's keys and values; `expand(G)`
    repeats them for the G continuations of each prompt; a second forward over the continuations
    concatenates its keys and values behind them. The result equals one forward over
    prompt + continuation rows, while the prompt tokens are computed once per group.
    """

    decoding = False  # attention reads `update`'s keys and values

    def __init__(self):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0
        self.recording = True

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.recording:
            self.keys.append(k)  # (B / G, K, P, D)
            self.values.append(v)
            return k, v
        return torch.cat([self.keys[layer], k], 2), torch.cat([self.values[layer], v], 2)  # (B, K, P + T, D)

    def advance(self, steps: int) -> None:
        self.length += steps

    @property
    def replayable(self) -> bool:
        """True once expanded: `update` only reads, so a layer may be run again (activation
        checkpointing recomputes it in the backward pass) with the same result."""
        return not self.recording

    def expand(self, group_size: int) -> None:
        """Repeat every recorded prompt for `group_size` consecutive continuation rows; stop recording."""
        self.keys = [k.repeat_interleave(group_size, 0) for k in self.keys]
        self.values = [v.repeat_interleave(group_size, 0) for v in self.values]
        self.recording = False


class Packing:
    """The kept positions of a (B, T) layout, so that linears and norms skip the rest (right padding).

    Tokens travel packed as (1, N, *) through everything that treats tokens independently and are
    unpacked to (B, T, *), zeros elsewhere, only for attention. Causal attention makes this exact for
    the kept tokens when every kept token's predecessors in its row are kept too (a prefix of each
    row), which `Packing.prefix` guarantees.
    """

    def __init__(self, keep: torch.Tensor):
        self.shape = tuple(keep.shape)  # (B, T)
        self.index = keep.flatten().nonzero().squeeze(1)  # (N,)

    @classmethod
    def prefix(cls, needed: torch.Tensor) -> Packing:
        """Keep positions up to each row's last needed one. needed (B, T) bool."""
        positions = torch.arange(needed.shape[1], device=needed.device)  # (T,)
        last = torch.where(needed, positions, -1).amax(-1, keepdim=True)  # (B, 1)
        return cls(positions <= last)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, *) -> (1, N, *)."""
        return x.flatten(0, 1).index_select(0, self.index)[None]

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(1, N, *) -> (B, T, *), zeros at dropped positions."""
        flat = x.new_zeros((self.shape[0] * self.shape[1], *x.shape[2:])).index_copy(0, self.index, x[0])
        return flat.view(*self.shape, *x.shape[2:])
