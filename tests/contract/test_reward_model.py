"""Reward models: the seed's unit-test list, save/load, HF backbones, and HF parity."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alignlab.algorithms.bradley_terry import bradley_terry_loss
from alignlab.config import GPTConfig
from alignlab.data.batches import PreferenceCollator
from alignlab.data.preferences import read_preferences
from alignlab.model.checkpoint import atomic_dir
from alignlab.model.heads import RewardModel, load_reward_model, reward_model_from, save_reward_model
from alignlab.rewards.learned import RewardModelReward, compute_reward, score
from alignlab.tasks.study_plan.synthetic import preference_pairs

ARCH = GPTConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)


@pytest.fixture
def rm(byte_tok):
    torch.manual_seed(0)
    return RewardModel.new(dataclasses.replace(ARCH, vocab_size=byte_tok.vocab_size))


@pytest.fixture
def pairs():
    return read_preferences(preference_pairs(8, seed=0))


def test_reward_model_forward(rm, byte_tok):
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    rewards = rm(ids, mask)
    assert rewards.shape == (2,) and rewards.dtype == torch.float32 and torch.isfinite(rewards).all()
    # The head reads the last real token: padding after it changes nothing.
    alone = rm(ids[:1, :3], mask[:1, :3])
    assert torch.allclose(alone, rewards[:1], atol=1e-6)


def test_reward_data_collator(byte_tok, pairs):
    collator = PreferenceCollator(byte_tok, max_length=512)
    item = collator.tokenize(pairs[0])
    prompt = byte_tok.chat_prompt_ids(pairs[0].messages)
    assert item.chosen_ids[: len(prompt)] == prompt and item.rejected_ids[: len(prompt)] == prompt
    assert item.chosen_ids[-1] == byte_tok.eos_id
    assert byte_tok.decode(item.chosen_ids[len(prompt):]) == pairs[0].chosen


def test_reward_data_collator_batch(byte_tok, pairs):
    collator = PreferenceCollator(byte_tok, max_length=512)
    batch = collator.collate([collator.tokenize(p) for p in pairs[:3]])
    assert batch.n_pairs == 3 and batch.input_ids.shape[0] == 6
    lengths = batch.attention_mask.sum(-1)
    for row in range(6):  # right padding: real tokens first, pad ids after
        assert batch.attention_mask[row, : lengths[row]].all() and not batch.attention_mask[row, lengths[row]:].any()
        assert (batch.input_ids[row, lengths[row]:] == byte_tok.pad_id).all()
    assert batch.margin is None


def test_collator_truncates_the_prompt_from_the_left(byte_tok):
    pair = read_preferences([{"prompt": "x" * 300 + "END", "chosen": "good answer", "rejected": "bad"}])[0]
    collator = PreferenceCollator(byte_tok, max_length=64)
    item = collator.tokenize(pair)
    assert len(item.chosen_ids) == 64 and len(item.rejected_ids) <= 64
    text = byte_tok.decode(item.chosen_ids)
    assert text.endswith("good answer") and "END" in text and collator.prompt_truncated == 2
    assert collator.response_truncated == 0


def test_preference_dataset(tmp_path, pairs):
    from alignlab.data.preferences import write_preferences

    path = write_preferences(tmp_path / "pairs.jsonl.gz", pairs)
    again = read_preferences(f"{path}[2:5]")
    assert [p.chosen for p in again] == [p.chosen for p in pairs[2:5]]
    assert all(p.messages[-1]["role"] == "user" for p in again)


def test_dummy_preference_data(pairs):
    assert len(pairs) == 8
    again = read_preferences(preference_pairs(8, seed=0))
    assert [p.chosen for p in again] == [p.chosen for p in pairs]
    assert [p.chosen for p in read_preferences(preference_pairs(8, seed=1))] != [p.chosen for p in pairs]
    for pair in pairs:
        assert pair.prompt_text and pair.chosen != pair.rejected
        assert pair.chosen.count("\n") == 2 and all(line.startswith("-") for line in pair.chosen.splitlines())


def test_reward_model_training_step(rm, byte_tok, pairs):
    collator = PreferenceCollator(byte_tok, max_length=256)
    batch = collator.collate([collator.tokenize(p) for p in pairs])
    optimizer = torch.optim.AdamW(rm.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in rm.parameters()]
    chosen, rejected = rm(batch.input_ids, batch.attention_mask).chunk(2)
    loss = bradley_terry_loss(chosen, rejected)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and all(not torch.equal(a, b) for a, b in zip(before, rm.parameters(), strict=True))


def test_save_load_round_trip_identical_scores(rm, byte_tok, pairs, tmp_path):
    with atomic_dir(tmp_path / "rm") as tmp:
        save_reward_model(rm, byte_tok, tmp)
    loaded, tok = load_reward_model(str(tmp_path / "rm"))
    prompts, responses = [p.prompt_text for p in pairs], [p.chosen for p in pairs]
    assert score(loaded, tok, prompts, responses) == score(rm, byte_tok, prompts, responses)
    one = compute_reward(loaded, tok, prompts[0], tok.encode(responses[0]), "cpu")
    assert one == pytest.approx(score(rm, byte_tok, prompts[:1], responses[:1])[0], abs=1e-6)
    fn = RewardModelReward(loaded, tok)
    assert fn(prompts[:2], [[{"role": "assistant", "content": r}] for r in responses[:2]]) == \
        pytest.approx(score(rm, byte_tok, prompts[:2], responses[:2]), abs=1e-6)


def test_native_reward_model_loads_in_transformers(rm, byte_tok, pairs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    with atomic_dir(tmp_path / "rm") as tmp:
        save_reward_model(rm, byte_tok, tmp)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", dtype=torch.float32).eval()
    collator = PreferenceCollator(byte_tok, max_length=256)
    batch = collator.collate([collator.tokenize(p) for p in pairs[:3]])
    with torch.no_grad():
        ours = rm(batch.input_ids, batch.attention_mask)
        theirs = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long()).logits.squeeze(-1)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_reward_model_from_lm_checkpoint(tiny_gpt, byte_tok, tmp_path):
    from alignlab.model.checkpoint import to_hf

    to_hf(tiny_gpt, tmp_path / "lm", byte_tok)
    model, tok = reward_model_from(str(tmp_path / "lm"))
    assert model.native and model.pooling == "last"
    assert torch.equal(model.model.embed_tokens.weight, tiny_gpt.model.embed_tokens.weight)


def test_hf_backbone_reward_model_trains_one_step(tmp_path, pairs):
    """A BERT-family encoder from a local directory (random weights, built here)."""
    transformers = pytest.importorskip("transformers")
    from alignlab.data.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    tok.hf.chat_template = None  # encoders have none: "role: content" text + their special tokens
    config = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, pad_token_id=tok.pad_id)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    tok.save(tmp_path / "bert")
    model, loaded_tok = reward_model_from(str(tmp_path / "bert"))
    assert not model.native and model.pooling == "mean"
    collator = PreferenceCollator(loaded_tok, max_length=128)
    batch = collator.collate([collator.tokenize(p) for p in pairs[:4]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    head_before = model.score.weight.detach().clone()
    chosen, rejected = model(batch.input_ids, batch.attention_mask).chunk(2)
    bradley_terry_loss(chosen, rejected).backward()
    optimizer.step()
    assert not torch.equal(head_before, model.score.weight)
    with atomic_dir(tmp_path / "saved") as tmp:
        save_reward_model(model, loaded_tok, tmp)
    again, again_tok = load_reward_model(str(tmp_path / "saved"))
    with torch.no_grad():
        assert torch.allclose(again(batch.input_ids, batch.attention_mask),
                              model.eval()(batch.input_ids, batch.attention_mask), atol=1e-6)
