"""Activation checkpointing per decoder layer gives the plain run's gradients (native and transformers)."""

from __future__ import annotations

import copy

import pytest
import torch

from alignlab.model.hf import causal_lm_logits, set_gradient_checkpointing


def _grads(model, ids, mask):
    model.zero_grad(set_to_none=True)
    model.train()
    logits = causal_lm_logits(model, ids, mask)  # (B, T, V)
    (logits.float().logsumexp(-1) * mask).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _batch(vocab: int):
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, :4] = False  # a left-padded row
    return ids, mask


def _assert_same(plain: dict, recomputed: dict):
    assert plain.keys() == recomputed.keys() and plain
    for name in plain:
        assert torch.allclose(plain[name], recomputed[name], atol=1e-6, rtol=1e-5), name


def test_native_gradients_equal_the_plain_run(tiny_gpt):
    ids, mask = _batch(tiny_gpt.config.vocab_size)
    plain = _grads(tiny_gpt, ids, mask)
    checkpointed = copy.deepcopy(tiny_gpt)
    set_gradient_checkpointing(checkpointed, True)
    assert checkpointed.model.gradient_checkpointing
    _assert_same(plain, _grads(checkpointed, ids, mask))
    with torch.no_grad():  # generation and evaluation never recompute
        assert torch.equal(causal_lm_logits(checkpointed, ids, mask), causal_lm_logits(tiny_gpt, ids, mask))


def test_transformers_gradients_equal_the_plain_run():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    ids, mask = _batch(64)
    plain = _grads(model, ids, mask)
    checkpointed = copy.deepcopy(model)
    set_gradient_checkpointing(checkpointed, True)
    assert checkpointed.model.gradient_checkpointing  # the LlamaModel inside
    _assert_same(plain, _grads(checkpointed, ids, mask))


def test_the_config_key_reaches_a_trainer(tmp_path):
    from alignlab.cli import main

    args = ["sft", "tokenizer.kind=byte", "synthetic_per_prompt=1", "steps=1", "run.batch_size=2", "max_length=32",
            "model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_hidden_layers=1",
            "model.arch.num_attention_heads=2", "model.arch.num_key_value_heads=1", "run.progress=false",
            "model.gradient_checkpointing=true", f"run.out_dir={tmp_path / 'run'}"]
    assert main(args) == 0
