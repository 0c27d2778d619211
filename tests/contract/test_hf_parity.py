"""The native GPT is Qwen2: same logits as transformers, same weights both ways."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alignlab.data.batches import left_pad
from alignlab.model.checkpoint import load_model, to_hf
from alignlab.model.gpt import GPT
from alignlab.model.hf import from_hf

transformers = pytest.importorskip("transformers")


def _hf_twin(model: GPT, directory) -> torch.nn.Module:
    """Save the native weights and load them into Qwen2ForCausalLM."""
    to_hf(model, directory, _tok(model))
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def _tok(model):
    from alignlab.data.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    assert model.config.vocab_size >= tok.vocab_size
    return tok


def _batch():
    seqs = [[5, 17, 42, 99, 3, 7, 250], [8, 9], [100, 101, 102, 103]]
    return left_pad(seqs, pad_id=0)


@pytest.mark.parametrize("tied", [False, True])
def test_hf_parity_logits_left_padded(tiny_arch, tmp_path, tied):
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(tiny_arch, vocab_size=300, tie_word_embeddings=tied)).eval()
    with torch.no_grad():  # non-zero biases and norms so every parameter matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf = _hf_twin(model, tmp_path / "hf")
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    ids, mask = _batch()
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits
    diff = (ours - theirs)[mask].abs().max().item()
    assert diff < 1e-5, diff
    # Padding is invisible: row 1 alone gives the same logits as inside the padded batch.
    with torch.no_grad():
        alone = model(torch.tensor([[8, 9]]))
    assert (alone[0] - ours[1, -2:]).abs().max().item() < 1e-5


def test_hf_parity_round_trip_exact(tiny_gpt, tmp_path):
    hf_dir = tmp_path / "hf"
    hf = _hf_twin(tiny_gpt, hf_dir)
    hf.save_pretrained(tmp_path / "resaved")  # written by transformers itself
    back = from_hf(tmp_path / "resaved")
    for (name, a), (name_b, b) in zip(tiny_gpt.state_dict().items(), back.state_dict().items(), strict=True):
        assert name == name_b
        assert torch.equal(a, b), name
    model, tok = load_model(str(hf_dir))
    assert isinstance(model, GPT) and tok.vocab_size == _tok(tiny_gpt).vocab_size


def test_hf_parity_sharded_checkpoint(tiny_gpt, tmp_path):
    hf = _hf_twin(tiny_gpt, tmp_path / "hf")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    back = from_hf(tmp_path / "sharded")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(back(ids), tiny_gpt(ids))
