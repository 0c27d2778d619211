"""The demo's plumbing at toy size: cached base policy, before/after evaluations, GRPO run, report.

The full-size demo (its pass-rate targets) is measured by hand with `make demo`; see the README.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab import demo
from alignlab.config import GRPOConfig, SFTConfig, load_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY_ARCH = ["model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_hidden_layers=1",
             "model.arch.num_attention_heads=2", "model.arch.num_key_value_heads=1"]


@pytest.mark.slow
def test_demo_runs_end_to_end_and_caches_its_base(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "BASE", [*demo.BASE, *TINY_ARCH, "steps=4", "synthetic_per_prompt=1",
                                       "tokenizer.vocab_size=300", "run.progress=false"])
    monkeypatch.setattr(demo, "POLICY", [*demo.POLICY, "run.batch_size=16", "max_new_tokens=8", "eval_prompts=2",
                                         "run.save_every=0"])
    monkeypatch.setattr(demo, "EVAL", demo.EvalConfig(samples=1, max_new_tokens=8))
    run = demo.run_demo(str(tmp_path / "demo"), steps=2, progress=False)
    out = capsys.readouterr().out
    assert "before (base)" in out and "after (GRPO)" in out and "report:" in out
    for name in ("report.html", "report.md", "eval_before/summary.json", "eval_after/samples.jsonl",
                 "rollouts.jsonl.gz", "checkpoints/final/model.safetensors"):
        assert (run / name).is_file(), name
    assert json.loads((run / "eval_after" / "summary.json").read_text())["n_samples"] == 37  # 37 prompts x 1
    assert "base policy: cached" not in out
    demo.run_demo(str(tmp_path / "demo"), steps=1, progress=False)
    assert "base policy: cached" in capsys.readouterr().out


def test_recipes_match_the_demo():
    """recipes/*study_plan.yaml are the demo's settings, so a user can rerun it step by step."""
    sft_recipe = load_config(SFTConfig, RECIPES / "sft_study_plan.yaml", ["run.out_dir=x"])
    assert sft_recipe == load_config(SFTConfig, None, [*demo.BASE, "run.out_dir=x"])
    grpo_recipe = load_config(GRPOConfig, RECIPES / "grpo_study_plan.yaml", ["run.out_dir=x", "model.path=m"])
    policy = [*demo.POLICY, f"steps={demo.STEPS}", "run.out_dir=x", "model.path=m"]
    assert grpo_recipe == load_config(GRPOConfig, None, policy)
    naive = load_config(GRPOConfig, RECIPES / "grpo_study_plan_naive.yaml", ["run.out_dir=x", "model.path=m"])
    assert naive.reward.mode == "naive" and naive.optim == grpo_recipe.optim


def test_smollm2_recipes_match_its_demo():
    """recipes/smollm2_*.yaml are `alignlab demo --model smollm2`'s settings (arms b and d)."""
    from alignlab import demo_smollm2

    sft_recipe = load_config(SFTConfig, RECIPES / "smollm2_sft.yaml", ["run.out_dir=x"])
    assert sft_recipe == load_config(SFTConfig, None, [*demo_smollm2.SFT, "run.out_dir=x"])
    grpo_recipe = load_config(GRPOConfig, RECIPES / "smollm2_grpo.yaml", ["run.out_dir=x", "model.path=m"])
    assert grpo_recipe == load_config(GRPOConfig, None, [*demo_smollm2.GRPO, "run.out_dir=x", "model.path=m"])
