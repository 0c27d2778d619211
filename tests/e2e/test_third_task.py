"""A third task in one file (`exact_words_task.py`: "answer in exactly N words") plus its
`register_task` line works in every command that takes a task: grpo (with its preflight and
held-out evaluation), ppo, eval (pass@k), check, compare, the report, sweep and probe-reward."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import yaml

from alignlab.cli import main
from alignlab.tasks.registry import TASKS


def _register() -> None:
    """Import exact_words_task.py (beside this file), which registers "exact-words", once per process
    (pytest's doctest collection may have imported it already)."""
    if "exact-words" not in TASKS:
        path = Path(__file__).with_name("exact_words_task.py")
        spec = importlib.util.spec_from_file_location("exact_words_task", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["exact_words_task"] = module
        spec.loader.exec_module(module)


_register()
TINY = ["num_generations=4", "run.batch_size=8", "max_new_tokens=12", "steps=2", "run.progress=false",
        "run.eval_every=2", "eval_prompts=2", "eval_samples=1", "run.save_every=2"]
EVAL = ["--samples", "2", "--max-new-tokens", "12"]


def test_the_registry_and_the_help_list_it(capsys):
    assert "exact-words" in TASKS
    try:
        main(["eval", "--help"])
    except SystemExit:
        pass
    assert "exact-words" in capsys.readouterr().out


def test_grpo_ppo_eval_check_compare_report_on_the_third_task(tmp_path, policy_dir, capsys):
    run = tmp_path / "grpo"
    assert main(["grpo", "task=exact-words", f"model.path={policy_dir}", *TINY, f"run.out_dir={run}"]) == 0
    printed = capsys.readouterr().out
    assert "preflight:" in printed and "reward probe" in printed  # the preflight probed the task's reward
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "eval/pass_rate" in records[0] and "eval/pass_rate" in records[-1]
    with gzip.open(run / "rollouts.jsonl.gz", "rt") as handle:
        ledger = [json.loads(line) for line in handle]
    assert len(ledger) == 16 and all(set(r["failed"]) <= {"word_count"} for r in ledger)

    ppo_run = tmp_path / "ppo"
    assert main(["ppo", "task=exact-words", f"model.path={policy_dir}", "steps=1", "run.batch_size=4",
                 "generation.max_new_tokens=8", "run.eval_every=1", "eval_prompts=2", "run.progress=false",
                 f"run.out_dir={ppo_run}"]) == 0
    assert "eval/pass_rate" in (ppo_run / "metrics.jsonl").read_text()

    ev = tmp_path / "eval"
    assert main(["eval", str(run / "checkpoints" / "final"), "--task", "exact-words", *EVAL, "--out", str(ev)]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["task"] == "exact-words" and summary["n_samples"] == 2 * 4 and summary["n_prompts"] == 4
    assert set(summary["pass_at_k"]) == {"1", "2"} and list(summary["rule_failures"]) == ["word_count"]
    assert summary["pass_at_k"]["1"] == summary["pass_rate"]
    sample = json.loads((ev / "samples.jsonl").read_text().splitlines()[0])
    assert sample["n"] == 4  # the example's column travels with the sample

    done = tmp_path / "done.jsonl"
    done.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "Describe the moon in exactly 3 words.", "completion": "pale silver coin", "n": 3},
        {"prompt": "Describe the moon in exactly 3 words.", "completion": "pale coin", "n": 3}]))
    capsys.readouterr()
    assert main(["check", str(done), "--task", "exact-words"]) == 0
    assert "pass rate: 50.0% (1/2" in capsys.readouterr().out

    assert main(["compare", str(ev), str(run), "--task", "exact-words", *EVAL, "--out", str(tmp_path / "cmp")]) == 0
    assert "pass@2" in capsys.readouterr().out
    assert main(["report", str(run), "--after", str(ev)]) == 0
    assert (run / "report.html").is_file()


def test_sweep_and_probe_on_the_third_task(tmp_path, policy_dir, capsys):
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(yaml.safe_dump({
        "policy": str(policy_dir), "seeds": [0],
        "set": {"task": "exact-words", **{k: yaml.safe_load(v) for k, v in (item.split("=") for item in TINY)},
                "preflight": False},
        "eval": {"samples": 1, "max_new_tokens": 12},
        "variants": [{"name": "naive", "set": {"reward.mode": "naive"}},
                     {"name": "sharp", "set": {"reward.mode": "sharp"}}],
        "out_dir": str(tmp_path / "sweep")}))
    assert main(["sweep", str(recipe)]) == 0
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["naive", "sharp"]
    assert json.loads((tmp_path / "sweep" / "before" / "summary.json").read_text())["task"] == "exact-words"

    capsys.readouterr()
    assert main(["probe-reward", "--task", "exact-words", "--modes", "naive,sharp", "--prompts", "3"]) == 0
    printed = capsys.readouterr().out
    assert "exploitable by: " in printed and "one short" in printed  # the naive reward pays any words
    assert "verdict: robust" in printed  # the sharp one counts them
