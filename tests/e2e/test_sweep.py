"""`alignlab sweep` on a tiny random policy: every run trained, evaluated and reported; resume and errors."""

from __future__ import annotations

import json

import pytest

from alignlab.cli import main
from alignlab.errors import UserError
from alignlab.sweep import read_sweep, run_sweep

TINY = {"num_generations": 4, "run.batch_size": 8, "max_new_tokens": 12, "steps": 2, "run.progress": False,
        "run.eval_every": 1, "eval_prompts": 2, "eval_samples": 1, "run.save_every": 1, "preflight": False}


def _recipe(tmp_path, policy_dir, **extra) -> str:
    import yaml

    body = {"policy": str(policy_dir), "set": TINY, "seeds": [0, 1],
            "eval": {"samples": 1, "prompts": 3, "max_new_tokens": 12},
            "variants": [{"name": "naive reward", "set": {"reward.mode": "naive"}},
                         {"name": "sharp reward", "set": {"reward": {"mode": "sharp"}}}],
            "out_dir": str(tmp_path / "sweep"), **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    return str(path)


def test_sweep_runs_every_variant_and_seed_and_writes_one_report(tmp_path, policy_dir, capsys):
    recipe = _recipe(tmp_path, policy_dir)
    assert main(["sweep", recipe]) == 0
    out = tmp_path / "sweep"
    printed = capsys.readouterr().out
    assert "naive reward" in printed and "starting policy" in printed and "report:" in printed
    record = json.loads((out / "sweep.json").read_text())
    assert [r["variant"] for r in record["rows"]] == ["naive reward", "sharp reward"]
    assert {(r["slug"], r["seed"]) for r in record["runs"]} == {(s, k) for s in ("naive-reward", "sharp-reward")
                                                                for k in (0, 1)}
    for row in record["rows"]:
        assert row["seeds"] == [0, 1] and len(row["pass_rate_per_seed"]) == 2
        low, high = row["pass_rate_ci"]
        assert 0 <= low <= row["pass_rate"] <= high <= 1
    naive = json.loads((out / "naive-reward" / "seed1" / "result.json").read_text())
    assert naive["reward_mode"] == "naive" and naive["n"] == 3 and "reward.mode=naive" in naive["overrides"]
    config = (out / "naive-reward" / "seed1" / "config.yaml").read_text()
    assert "seed: 1" in config and "mode: naive" in config
    for run in ("naive-reward/seed0", "sharp-reward/seed1"):
        assert (out / run / "report.html").is_file() and (out / run / "eval_after" / "summary.json").is_file()
    assert (out / "before" / "summary.json").is_file()
    page = (out / "sweep.html").read_text()
    assert "data:image/png;base64," in page and "sharp reward" in page
    assert (out / "sweep_files" / "sweep.png").is_file() and "sweep_files/sweep.png" in (out / "sweep.md").read_text()

    # A finished sweep is not rerun by --resume: every result is read back as it was.
    stamp = (out / "sharp-reward" / "seed0" / "result.json").stat().st_mtime_ns
    assert main(["sweep", recipe, "--resume"]) == 0
    assert (out / "sharp-reward" / "seed0" / "result.json").stat().st_mtime_ns == stamp
    assert main(["sweep", recipe]) == 2  # exists, neither --resume nor --overwrite
    assert "--resume" in capsys.readouterr().err


def test_sweep_resumes_an_interrupted_run_from_its_checkpoint(tmp_path, policy_dir):
    sweep = read_sweep(_recipe(tmp_path, policy_dir, seeds=[0]))
    run_sweep(sweep, quiet=True)
    finished = json.loads((sweep.out_dir / "sharp-reward" / "seed0" / "result.json").read_text())
    # Simulate a crash after step 1 of one run: drop its result, final checkpoint and step 2.
    root = sweep.out_dir / "sharp-reward" / "seed0"
    import shutil

    (root / "result.json").unlink()
    shutil.rmtree(root / "checkpoints" / "final")
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["step_1"]
    shutil.rmtree(root / "eval_after")
    run_sweep(sweep, resume=True, quiet=True)
    again = json.loads((root / "result.json").read_text())
    assert again["pass_rate"] == finished["pass_rate"] and again["reward_last"] == finished["reward_last"]


def test_grid_crosses_the_variants_and_dry_run_writes_nothing(tmp_path, policy_dir, capsys):
    recipe = _recipe(tmp_path, policy_dir, grid={"temperature": [0.7, 0.3]}, seeds=[0])
    sweep = read_sweep(recipe)
    assert sweep.variants == ("naive reward (temperature=0.7)", "naive reward (temperature=0.3)",
                              "sharp reward (temperature=0.7)", "sharp reward (temperature=0.3)")
    assert sweep.runs[1].config.generation.temperature == 0.3 and sweep.runs[1].config.reward.mode == "naive"
    assert main(["sweep", recipe, "--dry-run", "steps=5"]) == 0
    assert "steps=5" in capsys.readouterr().out and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(("extra", "expected"), [
    ({"variants": [{"name": "x", "set": {"reward.mode": "greedy"}}]}, "variant 'x': reward.mode: expected one of"),
    ({"variants": [{"name": "x", "set": {"stepz": 3}}]}, "stepz: unknown key"),
    ({"variants": [{"name": "x"}, {"name": "X"}]}, "share the directory name 'x'"),
    ({"seeds": [0, 0]}, "seeds: expected a list of distinct integers"),
    ({"eval": {"samples": 0}}, "eval.samples: must be >= 1, got 0"),
    ({"grid": {"temperature": 0.3}}, "grid.temperature: expected a non-empty list"),
    ({"budget": 3}, "budget: unknown key"),
    ({"base": "missing.yaml"}, "base: no such GRPO recipe"),
])
def test_bad_sweep_recipes_are_one_line_errors_before_any_run(tmp_path, policy_dir, extra, expected):
    recipe = _recipe(tmp_path, policy_dir, **extra)
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace("[", r"\[")) as caught:
        read_sweep(recipe)
    assert str(caught.value).startswith(recipe) and not (tmp_path / "sweep").exists()
