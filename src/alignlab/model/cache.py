"""What attention reads besides the new tokens, and which tokens a forward computes at all.

`KVCache` (generation): the keys and values of the prompts, one row per distinct prompt, written
once, and of the tokens each row has produced since, preallocated; a decode step attends over both
with `cascade_attention`, so a prompt shared by G rows (GRPO's groups, N samples per prompt) is
stored and read once, not G times (the "cascade" or shared-prefix attention of Ye et al. 2024,
FlashInfer). Decoding is memory-bound on small hardware: reading the prompt's keys once per group
instead of once per row is the saving.

`PrefixKV` (training): the prompts' keys and values with their gradient, computed once per group
and repeated for the continuations.

`Packing`: the kept positions of a right-padded (B, T) batch, so linears skip the padding.

Left out: paged storage, and rows-part attention over more than one new token per step (decoding
moves one token at a time).
"""

from __future__ import annotations

import torch

from alignlab.config import GPTConfig


class KVCache:
    """Keys and values of every layer for decoding a batch whose rows come in groups sharing a prompt.

    prompt part  (L, U, K, P, D): U = B / group distinct prompts of P tokens, written by one forward
                 over them (`Decoder.forward(..., keys_only=True)` through `update`); `prompt_mask`
                 (U, P) bool marks their real tokens (None: no padding)
    rows part    (L, B, K, N, D): the tokens fed after the prompt, one per decode step (`attend`)

    Row b belongs to prompt b // group. `length` counts prompt + row tokens seen so far.
    """

    def __init__(self, config: GPTConfig, batch: int, max_new: int, *, group: int, prompt_len: int,
                 prompt_mask: torch.Tensor | None, device, dtype):
        if batch % group:
            raise ValueError(f"batch {batch} is not a multiple of the group size {group}")
        layers, heads, dim = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
        prompt_shape = (layers, batch // group, heads, prompt_len, dim)
        self.prompt_keys = torch.zeros(prompt_shape, device=device, dtype=dtype)  # (L, U, K, P, D)
        self.prompt_values = torch.zeros(prompt_shape, device=device, dtype=dtype)
        self.keys = torch.zeros(layers, batch, heads, max_new, dim, device=device, dtype=dtype)  # (L, B, K, N, D)
        self.values = torch.zeros_like(self.keys)
        self.prompt_mask, self.group, self.prompt_len, self.length = prompt_mask, group, prompt_len, 0

    @property
    def decoding(self) -> bool:
        """True once the prompt part is written: new tokens then go through `attend`."""
        return self.length >= self.prompt_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """The prompt pass: store the U prompts' keys and values (U, K, P, D) and return them."""
        self.prompt_keys[layer], self.prompt_values[layer] = k, v
        return k, v

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write one new token's keys and values (B, K, 1, D) per row; attend q (B, H, 1, D) -> (B, H, 1, D)."""
        step = self.length - self.prompt_len
        if k.shape[2] != 1 or step >= self.keys.shape[3]:
            raise ValueError(f"the cache takes one token per step for {self.keys.shape[3]} steps")
        self.keys[layer, :, :, step] = k[:, :, 0]
        self.values[layer, :, :, step] = v[:, :, 0]
        return cascade_attention(q, self.prompt_keys[layer], self.prompt_values[layer], self.prompt_mask,
                                 self.keys[layer, :, :, :step + 1], self.values[layer, :, :, :step + 1])

    def advance(self, steps: int) -> None:
        self.length += steps


def cascade_attention(q, prompt_k, prompt_v, prompt_mask, row_k, row_v) -> torch.Tensor:
    """Softmax attention of one query per row over its group's prompt keys and its own keys.

    Equal to scaled_dot_product_attention over each row's [prompt keys, row keys] (up to float
    rounding), with the prompt part read once per group: the G * rep query heads of a group that
    share a kv head are one (G * rep, D) block against that prompt's keys. One softmax runs over
    both parts' scores, so no log-sum-exp merge is needed. Grouped-query attention: query head h
    uses kv head h // rep.

    Shapes: q (B, H, 1, D); prompt_k, prompt_v (U, K, P, D); prompt_mask (U, P) bool or None;
    row_k, row_v (B, K, S, D); B = U * G, H = K * rep -> (B, H, 1, D).
    """
    b, h, _, d = q.shape
    u, kv, p, _ = prompt_k.shape
    g, rep = b // u, h // kv
    q = q.reshape(b, kv, rep, d) * d ** -0.5  # (B, K, rep, D)
    own = q @ row_k.transpose(-1, -2)  # (B, K, rep, S)
    if p == 0:
        return (own.softmax(-1) @ row_v).reshape(b, h, 1, d)
    grouped = q.view(u, g, kv, rep, d).transpose(1, 2).reshape(u, kv, g * rep, d)  # (U, K, G * rep, D)
    shared = grouped @ prompt_k.transpose(-1, -2)  # (U, K, G * rep, P)
    if prompt_mask is not None:
        shared = shared.masked_fill(~prompt_mask[:, None, None, :], float("-inf"))
    shared = shared.view(u, kv, g, rep, p).transpose(1, 2).reshape(b, kv, rep, p)  # (B, K, rep, P)
    weights = torch.cat([shared, own], -1).softmax(-1)  # (B, K, rep, P + S)
    on_prompt = weights[..., :p].reshape(u, g, kv, rep, p).transpose(1, 2).reshape(u, kv, g * rep, p)
    from_prompt = (on_prompt @ prompt_v).view(u, kv, g, rep, d).transpose(1, 2).reshape(b, kv, rep, d)
    return (from_prompt + weights[..., p:] @ row_v).reshape(b, h, 1, d)  # (B, H, 1, D)


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
