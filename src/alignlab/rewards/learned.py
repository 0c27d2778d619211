"""A trained reward model as a reward: batched scoring, the seed's `compute_reward`, and a
callable with TRL's reward signature.

Scoring renders each (prompt, response) exactly as training did (`PreferenceCollator`):
chat prompt, response, end-of-turn token. Batches are sorted by length so padding stays small.

Left out: ensembles and reward normalisation across batches (GRPO normalises per group).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignlab.data.batches import PreferenceCollator, right_pad
from alignlab.data.tokenizer import Tokenizer
from alignlab.model.heads import RewardModel


def _as_messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


@torch.inference_mode()
def score_ids(rm: RewardModel, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64) -> list[float]:
    """Rewards of already tokenized sequences, in input order."""
    rm.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    rewards = [0.0] * len(sequences)
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        ids, mask = right_pad([sequences[i] for i in rows], pad_id)
        values = rm(ids.to(rm.device), mask.to(rm.device)).tolist()
        for row, value in zip(rows, values, strict=True):
            rewards[row] = value
    return rewards


def score(rm: RewardModel, tokenizer: Tokenizer, prompts: Sequence, responses: Sequence[str],
          batch_size: int = 64, max_length: int = 1024) -> list[float]:
    """One reward per (prompt, response) pair; prompts are strings or chat message lists."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    collator = PreferenceCollator(tokenizer, max_length)
    seqs = [collator.sequence(_as_messages(p), r) for p, r in zip(prompts, responses, strict=True)]
    return score_ids(rm, seqs, tokenizer.pad_id, batch_size)


def compute_reward(rm: RewardModel, tokenizer: Tokenizer, prompt, response_ids, device=None) -> float:
    """The seed's RLHF hook: the reward of generated token ids answering `prompt`.

    The end-of-turn token is appended when the ids do not end with a stop id, as every
    training sequence does; penalising truncated responses is the caller's decision.
    """
    ids = [int(i) for i in (response_ids.tolist() if torch.is_tensor(response_ids) else response_ids)]
    if device is not None and torch.device(device) != rm.device:
        rm.to(device)
    if tokenizer.hf.chat_template is None:  # encoders score text with their own special tokens
        return score(rm, tokenizer, [prompt], [tokenizer.decode(ids)])[0]
    if not ids or ids[-1] not in tokenizer.stop_ids:
        ids.append(tokenizer.eos_id)
    sequence = PreferenceCollator(tokenizer, max_length=1 << 30).prompt_ids(_as_messages(prompt)) + ids
    return score_ids(rm, [sequence], tokenizer.pad_id)[0]


class RewardModelReward:
    """A reward model with TRL's reward signature: `fn(prompts, completions, **kw) -> list[float]`."""

    def __init__(self, rm: RewardModel, tokenizer: Tokenizer, batch_size: int = 64, name: str = "reward_model"):
        self.rm, self.tokenizer, self.batch_size = rm, tokenizer, batch_size
        self.__name__ = name

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return score(self.rm, self.tokenizer, prompts, texts, self.batch_size)
