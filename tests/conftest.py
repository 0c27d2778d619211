"""Shared fixtures: tiny models and tokenizers built locally (never a hub download)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def tiny_arch():
    from alignlab.config import GPTConfig

    return GPTConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     rope_theta=10000.0, tie_word_embeddings=False)


@pytest.fixture
def byte_tok():
    from alignlab.data.tokenizer import byte_tokenizer

    return byte_tokenizer()


@pytest.fixture
def tiny_gpt(tiny_arch, byte_tok):
    """A random native GPT whose vocabulary fits the byte tokenizer."""
    import dataclasses

    from alignlab.model.gpt import GPT

    torch.manual_seed(0)
    return GPT(dataclasses.replace(tiny_arch, vocab_size=byte_tok.vocab_size)).eval()


@pytest.fixture
def policy_dir(tmp_path, tiny_gpt, byte_tok):
    """A random tiny native GPT with the byte tokenizer (its chat template included), saved as a checkpoint."""
    from alignlab.model.checkpoint import save_model

    path = tmp_path / "policy"
    path.mkdir()
    save_model(tiny_gpt, byte_tok, path)
    return path


class StepCounter:
    """A BatchSource of step numbers (1-based, in order): the toy data of the loop's and lifecycle's tests."""

    def __init__(self):
        self.n = 0

    def next_batch(self):
        self.n += 1
        return self.n

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


@pytest.fixture
def step_counter() -> type[StepCounter]:
    """The `StepCounter` class: a test makes one source per run from it."""
    return StepCounter
