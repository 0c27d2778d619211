"""Logits and log-probabilities of completions: only the positions that predict completion tokens
are projected onto the vocabulary (that projection is the largest tensor of a small model's step).

- `completion_logits`: any causal LM (native GPT or transformers; transformers' `logits_to_keep`).
- `grouped_completion_logits`: the native GPT on GRPO's layout (groups of rows sharing a prompt).
- `grouped_completion_hidden`: the hidden states behind it, packed (for `trainers/logps.py`'s
  memory-lean log-probs, which project them chunk by chunk).

Shapes: B rows, P prompt tokens, n completion tokens, C hidden size, V vocabulary, N real tokens.
"""

from __future__ import annotations

import torch

from alignlab.model.cache import Packing, PrefixKV
from alignlab.model.gpt import GPT
from alignlab.model.hf import hf_forward


def completion_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int) -> torch.Tensor:
    """Logits that predict the last `n` tokens of each row, without the vocabulary projection of the rest.

    Position t's logits predict token t + 1, so the last n tokens are predicted by positions
    -n-1 .. -2. Projecting only those keeps the (B, T, V) tensor to (B, n, V), which matters for
    a 150k vocabulary. Shapes: input_ids (B, T) long, attention_mask (B, T) bool -> (B, n, V).
    """
    if isinstance(model, GPT):
        hidden = model.hidden_states(input_ids, attention_mask)[:, -n - 1:-1]  # (B, n, C)
        return model.lm_head(hidden)  # (B, n, V)
    out = hf_forward(model, input_ids, attention_mask, logits_to_keep=n + 1)
    return out.logits[:, :-1]  # (B, n, V)


def grouped_completion_hidden(model: GPT, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int,
                              group_size: int) -> tuple[torch.Tensor, Packing]:
    """The final hidden states (1, N, C) of `grouped_completion_logits`'s kept positions, and their `Packing`."""
    p = input_ids.shape[1] - n
    prefix = None
    if p > 1:
        prefix = PrefixKV()
        model.hidden_states(input_ids[::group_size, :p - 1], attention_mask[::group_size, :p - 1], cache=prefix,
                            keys_only=True)
        prefix.expand(group_size)
    packing = Packing.prefix(attention_mask[:, p:])  # position j predicts completion token j
    hidden = model.hidden_states(input_ids[:, p - 1:-1], attention_mask[:, :-1], cache=prefix,
                                 packing=packing)  # (1, N, C)
    return hidden, packing


def grouped_completion_logits(model: GPT, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int,
                              group_size: int) -> torch.Tensor:
    """`completion_logits` for rows that come in groups of `group_size` sharing one prompt (GRPO's
    layout), with three savings that leave the numbers as they are (up to float rounding):

    - each prompt is computed once: its keys and values, gradient included, are repeated for the
      group's completions (`PrefixKV`), so the prompt's share of the work drops by (G - 1) / G;
    - the prompt but its last token computes only keys and values in the last layer (nothing
      reads its outputs there); the last prompt token goes with the completion, as the position
      whose logits predict completion token 0;
    - the completion's right padding never enters the linears (`Packing`); its logits are 0.

    Shapes: input_ids (B, P + n) long with B a multiple of G, attention_mask (B, P + n) bool -> (B, n, V).
    """
    hidden, packing = grouped_completion_hidden(model, input_ids, attention_mask, n, group_size)
    return packing.unpack(model.lm_head(hidden))  # (B, n, V)
