"""Per-row random streams: a sampled completion depends on its row seed alone, not on the batch around it."""

from __future__ import annotations

import pytest
import torch

from alignlab.config import EvalConfig, GenerationConfig
from alignlab.eval.sampling_eval import evaluate
from alignlab.generation.engine import generate, sample_rows
from alignlab.generation.sampling import RowStreams, derive_seed, sample_next_token
from alignlab.tasks.registry import get_task

PROMPTS = ["plan a", "study plan for go", "three bullets", "x"]


def test_row_streams_depend_on_each_row_seed_alone():
    seeds = [derive_seed(0, 0, i) for i in range(3)]
    streams = RowStreams(seeds)
    u = torch.cat([streams.uniform(1000, "cpu") for _ in range(4)], 1)  # 4 steps, (B, 4V)
    assert u.shape == (3, 4000) and 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.02 and abs(u.std().item() - 12 ** -0.5) < 0.02  # uniform's moments
    alone = RowStreams(seeds[1:2])
    assert torch.equal(torch.cat([alone.uniform(1000, "cpu") for _ in range(4)], 1), u[1:2])  # the batch is irrelevant
    assert derive_seed(0, 0, 1) != derive_seed(0, 1, 0) and 0 <= derive_seed(-1) < 2 ** 63


def test_sampling_with_row_streams_and_greedy():
    logits = torch.randn(2, 50)
    a = sample_next_token(logits, RowStreams([1, 2]), 1.0)
    b = sample_next_token(logits, RowStreams([1, 2]), 1.0)
    assert torch.equal(a, b)
    assert torch.equal(sample_next_token(logits, RowStreams([1, 2]), 0.0), logits.argmax(-1))  # greedy: no draw


def test_a_row_samples_the_same_completion_in_any_batch(tiny_gpt, byte_tok):
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0)
    seeds = [derive_seed(7, i) for i in range(len(PROMPTS))]
    whole = generate(tiny_gpt, byte_tok, PROMPTS, cfg, row_seeds=seeds).texts
    one_by_one = [generate(tiny_gpt, byte_tok, [prompt], cfg, row_seeds=[seed]).texts[0]
                  for prompt, seed in zip(PROMPTS, seeds, strict=True)]
    reversed_batch = generate(tiny_gpt, byte_tok, PROMPTS[::-1], cfg, row_seeds=seeds[::-1]).texts[::-1]
    assert whole == one_by_one == reversed_batch
    other = generate(tiny_gpt, byte_tok, PROMPTS, cfg, row_seeds=[s + 1 for s in seeds]).texts
    assert other != whole


def test_sampled_evaluation_does_not_depend_on_the_batch_size(tiny_gpt, byte_tok):
    task, examples = get_task("study-plan"), [{"prompt": p} for p in PROMPTS[:2]]
    big, _ = evaluate(tiny_gpt, byte_tok, task, examples, EvalConfig(3, 1.0, 12, seed=5, batch_size=6))
    small, _ = evaluate(tiny_gpt, byte_tok, task, examples, EvalConfig(3, 1.0, 12, seed=5, batch_size=2))
    assert [s.completion for s in big] == [s.completion for s in small]


def test_sample_rows_is_evaluations_one_loop_and_restores_the_training_mode(tiny_gpt, byte_tok):
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0)
    seeds = [derive_seed(3, "held-out", i) for i in range(len(PROMPTS))]
    tiny_gpt.train()
    by_three = sample_rows(tiny_gpt, byte_tok, PROMPTS, cfg, seeds, 3)
    assert tiny_gpt.training  # sampled in eval mode, handed back as it was
    tiny_gpt.eval()
    by_one = sample_rows(tiny_gpt, byte_tok, PROMPTS, cfg, seeds, 1)
    assert not tiny_gpt.training
    whole = generate(tiny_gpt, byte_tok, PROMPTS, cfg, row_seeds=seeds)
    assert by_three.texts == by_one.texts == whole.texts
    assert by_three.truncated == [bool(t) for t in whole.truncated.tolist()]
    with pytest.raises(ValueError, match="3 row seeds for 4 prompts"):
        sample_rows(tiny_gpt, byte_tok, PROMPTS, cfg, seeds[:3], 2)


def test_the_race_is_the_exponential_race_and_finished_rows_draw_nothing():
    logits = torch.randn(6, 3000) * 3
    seeds = [derive_seed(4, i) for i in range(6)]
    streams = [torch.Generator().manual_seed(s) for s in seeds]
    for _ in range(5):  # argmax p / E, E = -log U: the textbook form, token for token
        u = torch.stack([torch.rand(3000, generator=g) for g in streams])
        expected = (logits.softmax(-1) / u.clamp_min(1e-30).log().neg()).argmax(-1)
        assert torch.equal(sample_next_token(logits, RowStreams(seeds), 1.0), expected)
        seeds = [s + 1 for s in seeds]
        streams = [torch.Generator().manual_seed(s) for s in seeds]
    rows = RowStreams(seeds)
    active = torch.tensor([True, False, True, True, False, True])
    first = sample_next_token(logits, rows, 1.0, active=active)
    assert torch.equal(first[active], sample_next_token(logits, RowStreams(seeds), 1.0)[active])
    for row, on in enumerate(active.tolist()):  # a finished row's stream did not move
        fresh = torch.Generator().manual_seed(seeds[row]).get_state()
        assert torch.equal(rows.generators[row].get_state(), fresh) is not on
