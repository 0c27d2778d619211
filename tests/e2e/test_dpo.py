"""`alignlab dpo` on a tiny policy: metrics, the cached reference, on-the-fly reference, exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from alignlab.cli import main
from alignlab.config import DPOConfig, load_config
from alignlab.trainers.dpo import REFERENCE, dpo


def _cfg(policy_dir, out, *extra):
    return load_config(DPOConfig, None, [f"model.path={policy_dir}", f"run.out_dir={out}", "dummy_pairs=24",
                                         "steps=4", "run.batch_size=4", "max_length=96", "run.eval_every=2",
                                         "run.save_every=2", "run.log_every=1", "run.progress=false",
                                         "optim.lr=1e-3", "optim.warmup_steps=0", *extra])


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_dpo_logs_preference_metrics_and_caches_the_reference(policy_dir, tmp_path):
    run = dpo(_cfg(policy_dir, tmp_path / "run"), quiet=True)
    baseline, *steps = _records(run)
    assert baseline["step"] == 0 and baseline["eval/margin"] == pytest.approx(0.0, abs=1e-5)  # policy == reference
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert key in steps[0], key
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0) before any update
    assert "eval/accuracy_low" in steps[1]
    cached = load_file(str(run / REFERENCE))
    assert cached["chosen"].shape[0] == 22  # 24 pairs, 10% held out (2)
    assert steps[-1]["eval/margin"] > 0.1  # held-out pairs: the preference generalises (lr 1e-3, 4 steps)
    assert main(["generate", str(run / "checkpoints" / "final"), "--prompt", "plan?", "max_new_tokens=4"]) == 0


@pytest.mark.parametrize("loss_type", ["hinge", "ipo"])
def test_reference_on_the_fly_matches_the_precomputed_one(policy_dir, tmp_path, loss_type):
    a = _records(dpo(_cfg(policy_dir, tmp_path / "a", f"loss_type={loss_type}", "steps=1"), quiet=True))
    b = _records(dpo(_cfg(policy_dir, tmp_path / "b", f"loss_type={loss_type}", "steps=1", "precompute_ref=false"),
                     quiet=True))
    assert a[1]["loss"] == pytest.approx(b[1]["loss"], rel=1e-4) and not (tmp_path / "b" / REFERENCE).exists()


def test_resume_is_exact(policy_dir, tmp_path):
    straight = dpo(_cfg(policy_dir, tmp_path / "straight"), quiet=True)
    partial = tmp_path / "partial"
    dpo(_cfg(policy_dir, partial, "steps=2"), quiet=True)
    shutil.rmtree(partial / "checkpoints" / "final")
    resumed = dpo(_cfg(policy_dir, partial), resume=True, quiet=True)
    weights = [(r / "checkpoints" / "final" / "model.safetensors").read_bytes() for r in (straight, resumed)]
    assert weights[0] == weights[1]


def test_recipes_load():
    from alignlab.sweep import read_sweep

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    cfg = load_config(DPOConfig, recipes / "dpo_study_plan.yaml")
    assert cfg.loss_type == "sigmoid" and cfg.optim.lr == 2e-5 and cfg.run.steps == 100
    sweep = read_sweep(recipes / "mitigations.yaml")
    assert len(sweep.runs) == 16 and sweep.policy == "demo"


HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"


@pytest.mark.skipif(not HH.is_file(), reason="HH-RLHF test split not in ../shared/data")
def test_dpo_hh_recipe_runs_on_hh_pairs(policy_dir, tmp_path):
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "dpo_hh.yaml"
    cfg = load_config(DPOConfig, recipe, [f"model.path={policy_dir}", f"data={HH}[:12]", f"eval_data={HH}[12:20]",
                                          "steps=2", "run.batch_size=4", "max_length=128", "eval_batch_size=4",
                                          "run.eval_every=2", "run.progress=false", f"run.out_dir={tmp_path / 'hh'}"])
    records = _records(dpo(cfg, quiet=True))
    assert records[-1]["step"] == 2 and "eval/accuracy_low" in records[-1]
