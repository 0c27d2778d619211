"""The policy's log-probabilities of its completions, the one place every RL trainer gets them from.

`policy_logps` picks the cheapest exact path for the model and batch at hand:
- any causal LM: only the positions that predict completion tokens are projected onto the
  vocabulary (`model/completion.completion_logits`), giving (B, n, V) logits;
- the native GPT on GRPO's layout (rows in groups sharing a prompt, checked): each prompt once per
  group, and only the N real completion tokens' hidden states are projected, (N, V) logits with no
  padded (B, n, V) copy (`packed_completion_logps`: per-token numbers identical, bit for bit, to the
  padded path's, since every vocabulary reduction runs along a row);
- the native GPT with activation checkpointing on (a memory setting): the same packed path, lean:
  the real tokens are projected LEAN_CHUNK at a time and each chunk's logits are recomputed in the
  backward pass instead of kept.
Padded positions of the packed paths read 0 (every loss masks them).

Shapes: B rows, P prompt tokens, n completion tokens, V vocabulary, N real completion tokens.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from alignlab.algorithms.common import entropy_from_logits, row_token_logps, token_logps
from alignlab.model.cache import Packing
from alignlab.model.completion import completion_logits, grouped_completion_hidden
from alignlab.model.gpt import GPT

LEAN_CHUNK = 256  # tokens per vocabulary projection: 256 x 49,152 float32 logits are 50 MB


def _shares_prompts(input_ids, attention_mask, n: int, group_size: int) -> bool:
    """True when the rows come in groups of `group_size` with identical prompt tokens and masks."""
    if input_ids.shape[0] % group_size:
        return False
    p = input_ids.shape[1] - n
    ids = input_ids[:, :p].reshape(-1, group_size, p)  # (B / G, G, P)
    mask = attention_mask[:, :p].reshape(-1, group_size, p)
    return bool((ids == ids[:, :1]).all() and (mask == mask[:, :1]).all())


def policy_logps(model, input_ids, attention_mask, completion_ids, temperature: float, *, entropy: bool = False,
                 group_size: int | None = None):
    """Log-probs (B, C) of the completion tokens under `model` at the sampling temperature, and
    optionally the per-token entropy (B, C) (detached). TRL divides logits by the temperature too.

    With `group_size`, when the rows do come in groups of G sharing a prompt (checked), the native
    GPT computes each prompt once for its group and projects only the real completion tokens
    (`packed_completion_logps`). With activation checkpointing on, the native GPT never holds the
    logits either (`packed_completion_logps(lean=True)`). Padded positions then read 0."""
    n = completion_ids.shape[1]
    grouped = bool(group_size) and isinstance(model, GPT) and _shares_prompts(input_ids, attention_mask, n, group_size)
    lean = isinstance(model, GPT) and model.model.gradient_checkpointing and torch.is_grad_enabled()
    if grouped or lean:
        return packed_completion_logps(model, input_ids, attention_mask, completion_ids, temperature,
                                       group_size=group_size if grouped else None, entropy=entropy, lean=lean)
    logits = completion_logits(model, input_ids, attention_mask, n)  # (B, C, V)
    if temperature > 0:
        logits = logits / temperature
    logps = token_logps(logits, completion_ids)  # (B, C)
    if not entropy:
        return logps, None
    with torch.no_grad():
        return logps, entropy_from_logits(logits)


def packed_completion_logps(model: GPT, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            completion_ids: torch.Tensor, temperature: float, *, group_size: int | None = None,
                            entropy: bool = False, lean: bool = False, chunk: int = LEAN_CHUNK):
    """`token_logps` of the completion at `temperature` (and the detached entropy), from the hidden
    states of the real completion tokens only (`grouped_completion_hidden` when `group_size` is given,
    else the plain forward), projected onto the vocabulary as (N, V) logits. With `lean`, they are
    projected `chunk` tokens at a time and each chunk's logits are recomputed in the backward pass
    (`checkpoint`) instead of kept. Positions after a row's last real token get log-prob 0 and
    entropy 0 (every loss masks them).

    Shapes: input_ids (B, P + n) long, attention_mask (B, P + n) bool, completion_ids (B, n) long ->
    (logps (B, n), entropy (B, n) or None).
    """
    n = completion_ids.shape[1]
    if group_size:
        hidden, packing = grouped_completion_hidden(model, input_ids, attention_mask, n, group_size)  # (1, N, C)
    else:
        packing = Packing.prefix(attention_mask[:, -n:])
        hidden = packing.pack(model.hidden_states(input_ids, attention_mask)[:, -n - 1:-1])  # (1, N, C)
    ids = packing.pack(completion_ids.unsqueeze(-1))[0, :, 0]  # (N,)

    def project(h: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model.lm_head(h)  # (c, V)
        if temperature > 0:
            logits = logits.div_(temperature)  # in place: the projection's backward does not read its output
        lp, spread = row_token_logps(logits, i, entropy=entropy)  # (c,) each
        return lp, (spread if entropy else logits.new_zeros(0))

    step = chunk if lean else max(ids.shape[0], 1)
    recompute = lean and torch.is_grad_enabled()
    parts = [checkpoint(project, hidden[0, s:s + step], ids[s:s + step], use_reentrant=False) if recompute
             else project(hidden[0, s:s + step], ids[s:s + step]) for s in range(0, ids.shape[0], step)]
    logps = packing.unpack(torch.cat([lp for lp, _ in parts])[None, :, None])[..., 0]  # (B, n)
    if not entropy:
        return logps, None
    return logps, packing.unpack(torch.cat([e for _, e in parts])[None, :, None])[..., 0]
