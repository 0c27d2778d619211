"""Shared prompts: the GRPO update and decoding compute and read each prompt once per group, with the same numbers."""

from __future__ import annotations

import pytest
import torch

from alignlab.config import GPTConfig
from alignlab.model.cache import KVCache, Packing
from alignlab.model.completion import completion_logits, grouped_completion_logits
from alignlab.model.gpt import GPT
from alignlab.trainers.logps import policy_logps

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


def test_grouped_logits_with_a_one_token_prompt():
    """No prompt part is left once the last prompt token moves to the continuation pass."""
    model = _model()
    torch.manual_seed(3)
    ids = torch.cat([torch.randint(0, 300, (2, 1)).repeat_interleave(G, 0), torch.randint(0, 300, (2 * G, C))], 1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, -2:] = False
    kept = mask[:, 1:]
    assert torch.allclose(completion_logits(model, ids, mask, C)[kept],
                          grouped_completion_logits(model, ids, mask, C, G)[kept], atol=1e-5)


def test_decoding_cache_attention_equals_attention_over_each_rows_keys():
    """Groups of G rows share a (left-padded) prompt stored once; after each decode step a row's
    attention equals SDPA over its prompt's real keys and its own keys so far. GQA rep 2."""
    torch.manual_seed(4)
    u, g, kv, rep, p, steps, d = 3, 4, 2, 2, 6, 5, 8
    config = GPTConfig(vocab_size=10, hidden_size=kv * rep * d, num_hidden_layers=1,
                       num_attention_heads=kv * rep, num_key_value_heads=kv)
    prompt_mask = torch.ones(u, p, dtype=torch.bool)
    prompt_mask[1, :2] = prompt_mask[2, :p] = False  # the third prompt part is all padding
    cache = KVCache(config, u * g, steps, group=g, prompt_len=p, prompt_mask=prompt_mask, device="cpu",
                    dtype=torch.float32)
    prompt_k, prompt_v = torch.randn(u, kv, p, d), torch.randn(u, kv, p, d)
    cache.update(0, prompt_k, prompt_v)
    cache.advance(p)
    row_k, row_v = torch.randn(u * g, kv, steps, d), torch.randn(u * g, kv, steps, d)
    for step in range(steps):
        q = torch.randn(u * g, kv * rep, 1, d)
        got = cache.attend(0, q, row_k[:, :, step:step + 1], row_v[:, :, step:step + 1])
        cache.advance(1)
        keys = torch.cat([prompt_k.repeat_interleave(g, 0), row_k[:, :, :step + 1]], 2)  # (B, K, P + s, D)
        values = torch.cat([prompt_v.repeat_interleave(g, 0), row_v[:, :, :step + 1]], 2)
        allowed = torch.cat([prompt_mask.repeat_interleave(g, 0), torch.ones(u * g, step + 1, dtype=torch.bool)], 1)
        expected = torch.nn.functional.scaled_dot_product_attention(
            q, keys.repeat_interleave(rep, 1), values.repeat_interleave(rep, 1), attn_mask=allowed[:, None, None])
        assert torch.allclose(got, expected, atol=1e-6)
    with pytest.raises(ValueError, match="one token per row and step"):
        cache.attend(0, q, row_k[:, :, :1], row_v[:, :, :1])


def test_packing_round_trip_keeps_each_rows_prefix():
    needed = torch.tensor([[True, True, False, False], [True, False, True, False], [False, False, False, False]])
    packing = Packing.prefix(needed)
    assert packing.index.tolist() == [0, 1, 4, 5, 6]  # row 1 keeps position 1: position 2 attends to it
    x = torch.arange(12.0).view(3, 4, 1)
    packed = packing.pack(x)
    assert packed.shape == (1, 5, 1)
    assert packing.unpack(packed).flatten().tolist() == [0, 1, 0, 0, 4, 5, 6, 0, 0, 0, 0, 0]


def test_grouped_generation_matches_transformers(byte_tok, tmp_path):
    """Rows in equal groups read their prompt once; greedy output equals transformers'."""
    transformers = pytest.importorskip("transformers")
    from alignlab.config import GenerationConfig
    from alignlab.data.batches import left_pad
    from alignlab.generation.engine import generate_hf, generate_native
    from alignlab.model.checkpoint import to_hf

    torch.manual_seed(5)
    model = GPT(GPTConfig(vocab_size=byte_tok.vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2)).eval()
    to_hf(model, tmp_path / "hf", byte_tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    prompts = [p for p in ([5, 17, 42, 99, 3], [8, 9], [100, 101, 102]) for _ in range(3)]
    ids, mask = left_pad(prompts, byte_tok.pad_id)
    cfg = GenerationConfig(max_new_tokens=16, temperature=0.0)
    ours = generate_native(model, ids, mask, cfg, None, stop_ids=[], pad_id=byte_tok.pad_id)
    theirs = generate_hf(hf, ids, mask, cfg, None, stop_ids=[], pad_id=byte_tok.pad_id)
    assert torch.equal(ours[0], theirs[0])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_left_padded_row_is_scored_at_its_own_positions_on_transformers_models(arch):
    """GPT-2 learns absolute positions: a left-padded row must be numbered from its first real token,
    as `generate` numbers it when sampling, or its log-probs (and a critic's or reward model's reading)
    belong to other positions. Rotary models must read the same either way."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from alignlab.model.heads import ValueModel

    config = (GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=300) if arch == "gpt2" else
              LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=300))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    row = torch.randint(1, 300, (1, 9))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), row], 1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)], 1)
    value = ValueModel.from_policy(model)
    torch.nn.init.normal_(value.score.weight)
    with torch.no_grad():
        alone = completion_logits(model, row, torch.ones_like(row, dtype=torch.bool), 5)
        torch.testing.assert_close(completion_logits(model, padded, mask, 5), alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(value.completion_values(padded, mask, 5),
                                   value.completion_values(row, torch.ones_like(row, dtype=torch.bool), 5),
                                   atol=1e-5, rtol=1e-5)
