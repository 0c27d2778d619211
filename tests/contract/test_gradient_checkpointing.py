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


def test_grouped_completions_are_recomputed_with_the_plain_gradients(tiny_gpt):
    """GRPO's path (each prompt computed once for its group, continuations reading its keys): the
    continuation pass is checkpointed too (each layer runs again in the backward pass), same gradients."""
    from alignlab.model.completion import grouped_completion_logits

    torch.manual_seed(2)
    ids = torch.randint(0, tiny_gpt.config.vocab_size, (4, 10))
    ids[1] = ids[0]
    ids[3] = ids[2]
    ids[:, :6] = ids[[0, 0, 2, 2], :6]  # two groups of 2 sharing a 6-token prompt
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[1, -2:] = False  # a shorter continuation

    def grads(model):
        calls = []
        hook = model.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
        model.zero_grad(set_to_none=True)
        model.train()
        logits = grouped_completion_logits(model, ids, mask, 4, 2)  # (B, 4, V)
        logits.float().logsumexp(-1).sum().backward()
        hook.remove()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, len(calls)

    plain, plain_calls = grads(tiny_gpt)
    checkpointed = copy.deepcopy(tiny_gpt)
    set_gradient_checkpointing(checkpointed, True)
    recomputed, calls = grads(checkpointed)
    _assert_same(plain, recomputed)
    assert calls == plain_calls + 1  # the continuation pass's layer ran again; the prompt pass did not


@pytest.mark.parametrize("group_size", [None, 2])
def test_lean_logps_equal_the_logits_path_with_their_gradients(tiny_gpt, group_size):
    """Under checkpointing the policy's log-probs come chunk by chunk from the hidden states (no (B, n, V)
    logits kept): same log-probs, entropy and gradients at every real completion token."""
    from alignlab.trainers.logps import packed_completion_logps, policy_logps

    torch.manual_seed(3)
    ids = torch.randint(0, tiny_gpt.config.vocab_size, (4, 11))
    ids[:, :6] = ids[[0, 0, 2, 2], :6]  # two groups of 2 sharing a 6-token prompt
    mask = torch.ones(4, 11, dtype=torch.bool)
    mask[2, :1] = mask[3, :1] = False  # a left-padded prompt
    mask[1, -2:] = False  # a shorter completion
    completion = ids[:, -5:]
    real = mask[:, -5:]

    def run(model, lean):
        model.zero_grad(set_to_none=True)
        model.train()
        if lean:
            logps, entropy = packed_completion_logps(model, ids, mask, completion, 0.7, group_size=group_size,
                                                     entropy=True, lean=True, chunk=3)
        else:
            logps, entropy = policy_logps(model, ids, mask, completion, 0.7, entropy=True, group_size=group_size)
        (logps * real * torch.arange(1.0, 6.0)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logps.detach(), entropy, grads

    plain_logps, plain_entropy, plain_grads = run(tiny_gpt, lean=False)
    checkpointed = copy.deepcopy(tiny_gpt)
    set_gradient_checkpointing(checkpointed, True)
    lean_logps, lean_entropy, lean_grads = run(checkpointed, lean=True)
    assert torch.allclose(plain_logps[real], lean_logps[real], atol=1e-6)
    assert torch.allclose(plain_entropy[real], lean_entropy[real], atol=1e-5)
    assert (lean_logps[~real] == 0).all()
    _assert_same(plain_grads, lean_grads)
    via_policy, _ = policy_logps(checkpointed, ids, mask, completion, 0.7, group_size=group_size)  # takes the lean path
    assert torch.allclose(via_policy[real], plain_logps[real], atol=1e-6) and (via_policy[~real] == 0).all()


def test_grouped_logps_skip_the_padded_logits_bit_for_bit(tiny_gpt):
    """GRPO's grouped path projects only the real completion tokens ((N, V) logits, no padded (B, n, V)
    copy): log-probs and every gradient equal the padded logits path's exactly, so no run's trajectory
    moves; the entropy (a logged reading, -sum p log p there) agrees to rounding."""
    from alignlab.algorithms.common import entropy_from_logits, token_logps
    from alignlab.model.completion import grouped_completion_logits
    from alignlab.trainers.logps import policy_logps

    torch.manual_seed(5)
    ids = torch.randint(0, tiny_gpt.config.vocab_size, (4, 12))
    ids[:, :6] = ids[[0, 0, 2, 2], :6]
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[2, :2] = mask[3, :2] = False
    mask[1, -3:] = mask[2, -1:] = False
    completion, real = ids[:, -6:], mask[:, -6:]
    weights = torch.arange(1.0, 7.0) * real

    def run(packed: bool):
        tiny_gpt.zero_grad(set_to_none=True)
        if packed:
            logps, entropy = policy_logps(tiny_gpt, ids, mask, completion, 0.7, entropy=True, group_size=2)
        else:
            logits = grouped_completion_logits(tiny_gpt, ids, mask, 6, 2) / 0.7
            logps, entropy = token_logps(logits, completion), entropy_from_logits(logits.detach())
        (logps * weights).sum().backward()
        return logps.detach(), entropy, {n: p.grad.clone() for n, p in tiny_gpt.named_parameters()}

    old_logps, old_entropy, old_grads = run(packed=False)
    new_logps, new_entropy, new_grads = run(packed=True)
    assert torch.equal(old_logps[real], new_logps[real])
    assert torch.allclose(old_entropy[real], new_entropy[real], atol=1e-5)
    assert (new_logps[~real] == 0).all() and (new_entropy[~real] == 0).all()
    assert all(torch.equal(old_grads[n], new_grads[n]) for n in old_grads)
