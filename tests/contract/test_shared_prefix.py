"""The shared-prompt update: each prompt computed once per group gives the full forward's logits and gradients."""

from __future__ import annotations

import torch

from alignlab.config import GPTConfig
from alignlab.model.gpt import GPT
from alignlab.model.hf import completion_logits, grouped_completion_logits
from alignlab.trainers.rollouts import policy_logps

G, P, C = 4, 7, 5


def _batch():
    """3 prompts (two left-padded) x G completions (two right-padded), rows grouped like GRPO's."""
    torch.manual_seed(0)
    prompts = torch.randint(0, 300, (3, P))
    prompt_mask = torch.ones(3, P, dtype=torch.bool)
    prompt_mask[1, :3] = prompt_mask[2, :1] = False
    completion_mask = torch.ones(3 * G, C, dtype=torch.bool)
    completion_mask[0, 3:] = completion_mask[5, 1:] = False
    ids = torch.cat([prompts.repeat_interleave(G, 0), torch.randint(0, 300, (3 * G, C))], 1)
    mask = torch.cat([prompt_mask.repeat_interleave(G, 0), completion_mask], 1)
    return ids, mask, completion_mask


def _model():
    torch.manual_seed(1)
    return GPT(GPTConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2))


def test_grouped_logits_and_gradients_equal_the_full_forward():
    model, (ids, mask, kept) = _model(), _batch()
    full = completion_logits(model, ids, mask, C)
    shared = grouped_completion_logits(model, ids, mask, C, G)
    assert torch.allclose(full[kept], shared[kept], atol=1e-5)
    full_grads = torch.autograd.grad(full[kept].logsumexp(-1).sum(), list(model.parameters()))
    shared_grads = torch.autograd.grad(shared[kept].logsumexp(-1).sum(), list(model.parameters()))
    for a, b in zip(full_grads, shared_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert all(g.abs().sum() > 0 for g in shared_grads)


def test_policy_logps_shares_only_true_groups():
    model, (ids, mask, kept) = _model(), _batch()
    plain, _ = policy_logps(model, ids, mask, ids[:, -C:], 0.7)
    grouped, _ = policy_logps(model, ids, mask, ids[:, -C:], 0.7, group_size=G)
    assert torch.allclose(plain[kept], grouped[kept], atol=1e-5)
    shuffled = torch.cat([ids[1:], ids[:1]])  # groups now mix prompts: the full forward must be used
    shuffled_mask = torch.cat([mask[1:], mask[:1]])
    a, _ = policy_logps(model, shuffled, shuffled_mask, shuffled[:, -C:], 0.7)
    b, _ = policy_logps(model, shuffled, shuffled_mask, shuffled[:, -C:], 0.7, group_size=G)
    assert torch.equal(a, b)


def test_generation_prefills_each_distinct_prompt_once(byte_tok):
    """Repeated prompts (GRPO groups, N samples per prompt) share one prefill; greedy output per prompt
    is the same as generating that prompt alone."""
    from alignlab.config import GenerationConfig
    from alignlab.generation.engine import generate

    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=byte_tok.vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)).eval()
    greedy = GenerationConfig(max_new_tokens=12, temperature=0.0)
    rows = ["plan a", "plan a", "a longer second prompt", "a longer second prompt", "a longer second prompt", "x"]
    together = generate(model, byte_tok, rows, greedy).texts
    alone = {p: generate(model, byte_tok, [p], greedy).texts[0] for p in set(rows)}
    assert together == [alone[p] for p in rows]
