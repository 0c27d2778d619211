"""`backend=trl`: the same GRPO recipe through TRL's GRPOTrainer, in alignlab's run directory."""

from __future__ import annotations

import gzip
import json

import pytest

from alignlab.backends.grpo import grpo
from alignlab.cli import main
from alignlab.config import GRPOConfig, load_config
from alignlab.errors import UserError

pytest.importorskip("trl")

RECIPE = "recipes/grpo_study_plan.yaml"
TINY = ["num_generations=4", "run.batch_size=8", "max_new_tokens=12", "steps=2", "run.progress=false",
        "run.eval_every=2", "eval_prompts=2", "eval_samples=1", "optim.lr=1e-3", "preflight=false",
        "run.save_every=0", "run.log_every=1"]


@pytest.mark.slow
def test_recipe_runs_through_trl_with_alignlab_metrics_ledger_and_report(tmp_path, policy_dir, capsys):
    hf_dir = tmp_path / "hf"
    assert main(["export", str(policy_dir), "--to", "hf", str(hf_dir)]) == 0 or hf_dir.is_dir()
    out = tmp_path / "run"
    code = main(["grpo", RECIPE, "backend=trl", f"model={hf_dir}", f"run.out_dir={out}", *TINY])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and "eval/pass_rate" in records[0]  # the baseline, before any update
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("reward_mean", "reward_std", "pass_rate", "completion_length_mean", "lr", "grad_norm"):
        assert key in steps[0], key
    assert steps[0]["lr"] == pytest.approx(1e-3 / 5)  # alignlab's warm-up (1 of 5 steps), not TRL's schedule
    assert any("eval/pass_rate" in r and r["step"] == 2 for r in records)
    with gzip.open(out / "rollouts.jsonl.gz", "rt", encoding="utf-8") as handle:
        ledger = [json.loads(line) for line in handle]
    assert len(ledger) == 2 * 8 and {r["step"] for r in ledger} == {1, 2}
    native_keys = {"step", "group", "prompt", "completion", "reward", "parts", "passed", "failed", "reasons",
                   "degenerate", "truncated", "tokens"}  # one record builder for every engine
    assert all(set(r) == native_keys and 0 < r["tokens"] <= 12 for r in ledger), ledger[0]
    assert "backend: trl" in (out / "config.yaml").read_text()
    final = out / "checkpoints" / "final"
    assert (final / "model.safetensors").is_file() and json.loads((final / "state.json").read_text())["step"] == 2
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()
    assert main(["generate", str(final), "--prompt", "plan?", "max_new_tokens=4"]) == 0


def test_what_trl_cannot_do_is_an_error_before_a_run_directory(tmp_path, policy_dir):
    cfg = load_config(GRPOConfig, RECIPE, [*TINY, "backend=trl", f"model.path={policy_dir}", "model.engine=native",
                                           "stop_strings=[END]", "lora.r=4", f"run.out_dir={tmp_path / 'run'}"])
    with pytest.raises(UserError, match="model.engine.*stop_strings.*lora"):
        grpo(cfg, quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_trl_hands_the_task_columns_to_alignlab_rewards(tmp_path, policy_dir):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(4)), encoding="utf-8")
    out = tmp_path / "run"
    cfg = load_config(GRPOConfig, None, [*TINY, "backend=trl", "task=gsm8k", f"data={data}", "steps=1",
                                         f"model.path={policy_dir}", f"run.out_dir={out}", "run.eval_every=0"])
    grpo(cfg, quiet=True)
    with gzip.open(out / "rollouts.jsonl.gz", "rt", encoding="utf-8") as handle:
        ledger = [json.loads(line) for line in handle]
    assert len(ledger) == 8 and {r["answer"] for r in ledger} <= {"1", "2", "3", "4"}
    assert all(r["reward"] in (-1.0, -0.5, 1.0) for r in ledger)
