"""GPU checks, run wherever CUDA is present (skipped on CPU-only machines such as CI)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alignlab.config import GenerationConfig
from alignlab.data.batches import left_pad
from alignlab.generation.engine import generate_hf, generate_native
from alignlab.model.checkpoint import to_hf
from alignlab.model.gpt import GPT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def cuda_pair(tiny_arch, byte_tok, tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(tiny_arch, vocab_size=byte_tok.vocab_size)).eval()
    to_hf(model, tmp_path / "hf", byte_tok)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).cuda().eval()
    return model.cuda(), hf


def test_cuda_logits_and_greedy_match_transformers(cuda_pair, byte_tok):
    model, hf = cuda_pair
    ids, mask = left_pad([[5, 17, 42, 99, 3], [8, 9], [100, 101, 102]], byte_tok.pad_id)
    ids, mask = ids.cuda(), mask.cuda()
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits
    assert (ours - theirs)[mask].abs().max().item() < 1e-4
    cfg = GenerationConfig(max_new_tokens=16, temperature=0.0)
    a = generate_native(model, ids, mask, cfg, None, stop_ids=[256], pad_id=byte_tok.pad_id)
    b = generate_hf(hf, ids, mask, cfg, None, stop_ids=[256], pad_id=byte_tok.pad_id)
    assert torch.equal(a[0], b[0])


def test_cuda_sampling_reproduces_with_a_cuda_generator(cuda_pair, byte_tok):
    model, _ = cuda_pair
    ids, mask = left_pad([[1, 2, 3], [4]], byte_tok.pad_id)
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=0.9)

    def run(seed):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        return generate_native(model, ids.cuda(), mask.cuda(), cfg, gen, stop_ids=[], pad_id=0)[0]

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_cuda_bf16_pretrain_learns(tmp_path):
    from alignlab.config import PretrainConfig, load_config
    from alignlab.trainers.pretrain import pretrain

    cfg = load_config(PretrainConfig, None, [
        "tokenizer.kind=byte", "model.arch.hidden_size=64", "model.arch.num_hidden_layers=2",
        "block_size=64", "run.batch_size=8", "steps=40", "run.log_every=1", "run.device=cuda",
        "run.precision=bf16", "optim.lr=3e-3", "run.progress=false", f"run.out_dir={tmp_path / 'run'}"])
    import json

    run = pretrain(cfg, quiet=True)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 1.0
