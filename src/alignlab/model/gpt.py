"""A compact decoder for the Qwen2 and Llama families, written to be read and to be fast.

Token embedding, RMSNorm, rotary position embedding (rotate-half form, configurable theta, optional
`linear` or `llama3` frequency scaling), grouped-query attention, a SwiGLU MLP, optional tied
embeddings. The two families differ only in their biases (`GPTConfig.architecture`): Qwen2 biases
q/k/v and never o_proj; Llama biases q/k/v/o together when `attention_bias` is set and the MLP when
`mlp_bias` is. Module and parameter names mirror `transformers`' `Qwen2ForCausalLM` and
`LlamaForCausalLM` one to one (the two use the same names), so a state dict moves between them
unchanged (`model/hf.py`). Attention runs through `scaled_dot_product_attention`; generation writes
keys and values into a preallocated `KVCache` (`model/cache.py`) instead of concatenating per
step, and reads a prompt shared by several rows once. Two options serve the GRPO update
(`model/hf.grouped_completion_logits`): `keys_only` (a prompt pass whose last layer only writes
keys and values) and `packing` (linears skip right padding).

Left out on purpose: sliding-window attention, the other rope scalings (dynamic, yarn, longrope:
length-dependent or with an attention factor), partial rotary dimensions and dropout;
`model/hf.py` refuses checkpoints that need them.

Shapes: B batch, T new tokens, S cached + new tokens, H query heads, K key/value heads,
D head dim, C hidden size, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from alignlab.config import GPTConfig
from alignlab.model.cache import KVCache, Packing

_SDPA_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa arrived in 2.5


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 like Qwen2RMSNorm."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)  # fused; no-op casts in fp32
        return self.weight * normed.to(x.dtype)


def _linear_scaling(inv_freq: torch.Tensor, config: GPTConfig) -> torch.Tensor:
    """Position interpolation (Chen et al. 2023): positions / factor, i.e. every frequency / factor."""
    return inv_freq / config.rope_factor


def _llama3_scaling(inv_freq: torch.Tensor, config: GPTConfig) -> torch.Tensor:
    """Llama 3.1's long-context scaling, step for step as transformers' `_compute_llama3_parameters`
    (same operations in the same order, so the float32 frequencies agree bit for bit): wavelengths
    shorter than original_max / high_freq_factor are kept, longer than original_max / low_freq_factor
    divided by the factor, and the band between blended linearly in original_max / wavelength."""
    factor, low, high = config.rope_factor, config.low_freq_factor, config.high_freq_factor
    old_context_len = config.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
    wavelen = 2 * math.pi / inv_freq  # (D/2,)
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


ROPE_SCALING = {"default": lambda inv_freq, config: inv_freq, "linear": _linear_scaling, "llama3": _llama3_scaling}


class Rotary(nn.Module):
    """cos/sin tables for RoPE (Su et al. 2021), rotate-half layout as in Qwen2 / LLaMA.

    `scaling` is the config whose `rope_type` rescales the frequencies (`ROPE_SCALING`); None is plain
    RoPE. `Rotary.of(config)` builds the one a config asks for.
    """

    def __init__(self, head_dim: int, theta: float, scaling: GPTConfig | None = None):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
        if scaling is not None:
            inv_freq = ROPE_SCALING[scaling.rope_type](inv_freq, scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @classmethod
    def of(cls, config: GPTConfig) -> Rotary:
        return cls(config.head_dim, config.rope_theta, config)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # (B, 1, T, D)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        c, llama = config.hidden_size, config.architecture == "llama"
        qkv_bias = config.attention_bias or not llama  # Qwen2 always biases q/k/v, never o_proj
        self.q_proj = nn.Linear(c, self.n_head * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(c, self.n_kv * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(c, self.n_kv * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, c, bias=llama and config.attention_bias)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int, packing: Packing | None = None):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if packing is not None:  # (1, N, *) kept tokens -> (B, T, *) for attention
            q, k, v = packing.unpack(q), packing.unpack(k), packing.unpack(v)
        b, t, _ = q.shape
        q = q.view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = v.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None and cache.decoding:
            return self.o_proj(cache.attend(layer, q, k, v).reshape(b, 1, -1))  # (B, 1, C)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, K, S, D)
        rep = self.n_head // self.n_kv  # grouped-query attention: kv head j serves heads j*rep..
        gqa = {"enable_gqa": True} if rep > 1 and _SDPA_GQA else {}  # no rep copies of the keys
        if rep > 1 and not gqa:
            k = k.repeat_interleave(rep, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(rep, dim=1)
        causal = mask is None and t > 1
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, **gqa)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(b, t, -1)  # (B, T, H * D)
        return self.o_proj(packing.pack(y) if packing is not None else y)  # (B, T, C) or (1, N, C)

    def write_keys(self, x, cos, sin, cache, layer: int):
        """Only the keys and values (B, K, T, D) of x, written to `cache` and returned: for a last
        layer whose outputs nothing reads."""
        b, t, _ = x.shape
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        return cache.update(layer, apply_rotary(k, cos, sin), v)


class MLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        c, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(c, f, bias=bias)
        self.up_proj = nn.Linear(c, f, bias=bias)
        self.down_proj = nn.Linear(f, c, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, cache, layer, packing=None, keys_only=False):
        if keys_only:  # through forward and returned, so that FSDP's hooks see the call and the tensors
            return self.self_attn.write_keys(self.input_layernorm(x), cos, sin, cache, layer)
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, packing)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The transformer body (`Qwen2Model` / `LlamaModel` in transformers): ids -> final normed hidden states."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = Rotary.of(config)
        # Activation checkpointing per layer (a training choice, not the architecture's): a layer's
        # activations are recomputed in the backward pass instead of kept, trading time for memory.
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, *,
                packing: Packing | None = None, keys_only: bool = False):
        """input_ids (B, T) -> hidden states (B, T, C).

        attention_mask (B, S) bool/int marks real tokens of the whole sequence seen so far
        (cache + new); None means no padding. position_ids (B, T) default to the count of
        real tokens before each position, which makes left padding invisible to the model.
        With `packing`, only its kept tokens run through the linears and the result is (1, N, C).
        With `keys_only`, the last layer only writes its keys and values into `cache` (a prompt
        whose continuation is computed later needs nothing else from it) and None is returned.
        """
        start = cache.length if cache is not None else 0
        if attention_mask is not None:
            attention_mask = attention_mask.bool()
        if position_ids is None:
            position_ids = _positions(attention_mask, start, input_ids.shape[1], input_ids.device)
        mask = _attention_mask(attention_mask, start, input_ids.shape[1], input_ids.device)
        x = self.embed_tokens(packing.pack(input_ids) if packing is not None else input_ids)  # (B, T, C)
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        last = len(self.layers) - 1
        # A layer is recomputed only when running it again cannot change a cache: no cache, or a
        # prompt cache that is only read (GRPO's continuations; the prompt pass itself is kept).
        replayable = cache is None or cache.replayable
        recompute = self.gradient_checkpointing and torch.is_grad_enabled() and replayable and not keys_only
        for i, layer in enumerate(self.layers):
            if recompute:  # non-reentrant: works with packing and with parameters that do not need grads (LoRA)
                x = checkpoint(layer, x, cos, sin, mask, cache, i, packing, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, i, packing, keys_only and i == last)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return None if keys_only else self.norm(x)


class GPT(nn.Module):
    """Qwen2- or Llama-architecture causal LM. `forward` returns logits; `hidden_states` the final normed features."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Qwen2's and Llama's initializer_range (0.02) for every matrix, zero biases.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding, by transformers' name for it."""
        return self.model.embed_tokens

    def hidden_states(self, input_ids, attention_mask=None, position_ids=None, cache=None, **options):
        """input_ids (B, T) -> final normed hidden states (B, T, C); see `Decoder.forward`."""
        return self.model(input_ids, attention_mask, position_ids, cache, **options)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        """input_ids (B, T) -> logits (B, T, V); see `hidden_states` for the arguments."""
        return self.lm_head(self.hidden_states(input_ids, attention_mask, position_ids, cache))

    def new_cache(self, batch: int, max_new: int, *, group: int = 1, prompt_len: int = 0,
                  prompt_mask: torch.Tensor | None = None) -> KVCache:
        """A decoding cache for `batch` rows in groups of `group` sharing a prompt (see `KVCache`)."""
        return KVCache(self.config, batch, max_new, group=group, prompt_len=prompt_len, prompt_mask=prompt_mask,
                       device=self.device, dtype=self.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _positions(attention_mask, start: int, t: int, device) -> torch.Tensor:
    """Position of each new token: the number of real tokens before it."""
    if attention_mask is None:
        return torch.arange(start, start + t, device=device)[None]  # (1, T)
    positions = attention_mask.long().cumsum(-1) - 1  # (B, S)
    return positions[:, start:start + t].clamp(min=0)  # (B, T)


def _attention_mask(attention_mask, start: int, t: int, device):
    """Boolean (B, 1, T, S) mask for SDPA, or None when plain causal attention is exact.

    Query i (absolute index start + i) sees key j when j <= start + i and key j is real.
    A padding query also sees itself, so its softmax never runs over an empty row (NaN).
    """
    if attention_mask is None or bool(attention_mask.all()):
        if t == 1 or start == 0:
            return None  # decode step over real keys only, or a plain causal prefill
        attention_mask = None
    s = start + t
    query = torch.arange(start, s, device=device)[:, None]  # (T, 1)
    key = torch.arange(s, device=device)[None, :]  # (1, S)
    allowed = key <= query  # (T, S)
    if attention_mask is None:
        return allowed[None, None]
    allowed = allowed[None] & attention_mask[:, None, :s]  # (B, T, S)
    allowed = allowed | (key == query)[None]
    return allowed[:, None]  # (B, 1, T, S)
