"""Padding token sequences into batches (typed batch dataclasses join here as trainers need them).

Prompts are padded on the left so that every row's last real token sits in the last column,
which is where generation continues; targets are padded on the right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from alignlab.runtime import make_generator


@dataclass(frozen=True)
class LMBatch:
    """Next-token prediction batch.

    input_ids  (B, T) long
    labels     (B, T) long, labels[:, t] is the token that follows input_ids[:, t]
    loss_mask  (B, T) bool or None, True where the label counts (None: every position)
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor | None = None

    def to(self, device) -> LMBatch:
        mask = self.loss_mask.to(device) if self.loss_mask is not None else None
        return LMBatch(self.input_ids.to(device), self.labels.to(device), mask)


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, seq in enumerate(seqs):
        if seq:
            cols = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, cols] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, cols] = True
    return ids, mask


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids (B, T) long, mask (B, T) bool), padded on the left.

    >>> ids, mask = left_pad([[5, 6], [7]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [0, 7]], [[True, True], [False, True]])
    """
    return _pad(seqs, pad_id, left=True)


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids (B, T) long, mask (B, T) bool), padded on the right.

    >>> ids, mask = right_pad([[5, 6], [7]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [7, 0]], [[True, True], [True, False]])
    """
    return _pad(seqs, pad_id, left=False)


@dataclass(frozen=True)
class PreferenceBatch:
    """B comparisons, chosen and rejected stacked so one forward scores both.

    input_ids       (2B, T) long, right-padded; rows [0, B) chosen, [B, 2B) rejected
    attention_mask  (2B, T) bool, True on real tokens
    margin          (B,) float or None, per-pair preference strength
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    margin: torch.Tensor | None = None

    @property
    def n_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    def to(self, device) -> PreferenceBatch:
        margin = self.margin.to(device) if self.margin is not None else None
        return PreferenceBatch(self.input_ids.to(device), self.attention_mask.to(device), margin)


@dataclass(frozen=True)
class TokenizedPair:
    """One comparison as token ids, ready to batch."""

    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float | None = None


class PreferenceCollator:
    """Pairs -> token ids -> `PreferenceBatch`, keeping the response whole when it can.

    A sequence is the prompt rendered with the chat template (ending with the assistant
    header) followed by the response and the end-of-turn token. Tokenizers without a chat
    template (encoders) get "role: content" lines and their own special tokens ([CLS] ... [SEP]).
    When a sequence is too long, the prompt is cut from the left (its end, which the response
    answers, survives); a response longer than 3/4 of the budget is cut from the right. Both
    are counted in `prompt_truncated` / `response_truncated` so a run can report them.
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.chat = tokenizer.hf.chat_template is not None
        self.n_sequences = self.prompt_truncated = self.response_truncated = 0

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        if self.chat:
            return self.tokenizer.chat_prompt_ids(messages)
        return self.tokenizer.encode(self._plain_prompt(messages))

    @staticmethod
    def _plain_prompt(messages: list[dict]) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"

    def _keep(self, n_prompt: int, n_reply: int, budget: int) -> tuple[int, int]:
        """How many prompt tokens (from the end) and reply tokens (from the start) fit the budget."""
        self.n_sequences += 1
        if n_reply > budget * 3 // 4 and n_prompt + n_reply > budget:
            n_reply = max(budget * 3 // 4, budget - n_prompt)
            self.response_truncated += 1
        if n_prompt + n_reply > budget:
            n_prompt = budget - n_reply
            self.prompt_truncated += 1
        return n_prompt, n_reply

    def sequence(self, messages: list[dict], response: str) -> list[int]:
        """Token ids of prompt + response within max_length."""
        if not self.chat:
            return self._encoder_sequence(messages, response)
        return self.reply_sequence(messages, response)[0]

    def reply_sequence(self, messages: list[dict], response: str) -> tuple[list[int], int]:
        """(token ids of prompt + response within max_length, index of the first reply token): the
        chat-template path, for a policy whose reply log-probs are needed (DPO)."""
        prompt = self.prompt_ids(messages)
        reply = self.tokenizer.encode(response)
        if self.tokenizer.eos_id is not None:
            reply = reply + [self.tokenizer.eos_id]
        keep_prompt, keep_reply = self._keep(len(prompt), len(reply), self.max_length)
        return prompt[len(prompt) - keep_prompt:] + reply[:keep_reply], keep_prompt

    def _encoder_sequence(self, messages: list[dict], response: str) -> list[int]:
        """The tokenizer's own pair format ([CLS] prompt [SEP] reply [SEP] for BERT) via its
        post-processor, truncated the same way."""
        backend = self.tokenizer.hf.backend_tokenizer
        # Some tokenizer.json files carry their own truncation (sentence-transformers' MiniLM
        # truncates at 128); lengths are decided here, so the backend must not cut silently.
        backend.no_truncation()
        backend.no_padding()
        prompt = backend.encode(self._plain_prompt(messages), add_special_tokens=False)
        reply = backend.encode(response, add_special_tokens=False)
        budget = self.max_length - backend.num_special_tokens_to_add(is_pair=True)
        keep_prompt, keep_reply = self._keep(len(prompt.ids), len(reply.ids), budget)
        if keep_reply < len(reply.ids):
            reply.truncate(keep_reply)
        if keep_prompt < len(prompt.ids):
            prompt.truncate(keep_prompt, direction="left")
        return backend.post_process(prompt, reply, add_special_tokens=True).ids

    def tokenize(self, pair) -> TokenizedPair:
        messages = pair.messages
        return TokenizedPair(self.sequence(messages, pair.chosen), self.sequence(messages, pair.rejected),
                             pair.margin)

    def collate(self, items: Sequence[TokenizedPair]) -> PreferenceBatch:
        seqs = [item.chosen_ids for item in items] + [item.rejected_ids for item in items]
        ids, mask = right_pad(seqs, self.tokenizer.pad_id)
        margins = [item.margin for item in items]
        margin = None if all(m is None for m in margins) else torch.tensor(
            [m or 0.0 for m in margins], dtype=torch.float32)
        return PreferenceBatch(ids, mask, margin)

    def stats(self) -> dict:
        n = max(self.n_sequences, 1)
        return {"prompt_truncated_frac": self.prompt_truncated / n,
                "response_truncated_frac": self.response_truncated / n}


class ShuffledBatches:
    """Epochs of seeded shuffles over pre-tokenized items, `collate`d into batches on `device`.

    The state (generator, current order, position) is the data position a checkpoint saves,
    so a resumed run draws exactly the batches the uninterrupted one would have.

    `part` (a slice of the batch, `Distributed.shard`) keeps one process's rows: every process
    draws the same global batches in the same order and collates only its slice, so the state
    is the same on every rank and does not depend on the number of processes.
    """

    def __init__(self, items: Sequence, collate: Callable, batch_size: int, seed: int, device="cpu",
                 part: slice | None = None):
        self.items, self.collate, self.batch, self.device = items, collate, batch_size, device
        self.part = part or slice(None)
        self.generator = make_generator(seed)
        self.order: list[int] = []
        self.position = 0

    def next_batch(self):
        picked = []
        while len(picked) < self.batch:
            if self.position >= len(self.order):
                self.order = torch.randperm(len(self.items), generator=self.generator).tolist()
                self.position = 0
            picked.append(self.items[self.order[self.position]])
            self.position += 1
        return self.collate(picked[self.part]).to(self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = list(state["order"]), state["position"]
