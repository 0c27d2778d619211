"""A task named by its file, through the command line (`--task tests/e2e/exact_words_task.py:TASK`,
`task=...` in a recipe): eval samples and judges with it; GRPO records the file among the run's inputs,
so a changed file is a changed run on --resume; a sweep's worker processes (--jobs 2) read it
themselves, and so does `alignlab report` in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from alignlab.cli import main

FILE = Path(__file__).with_name("exact_words_task.py")
SPEC = f"{FILE}:TASK"
TINY = {"num_generations": 4, "run.batch_size": 8, "max_new_tokens": 12, "steps": 2, "run.progress": False,
        "run.eval_every": 2, "eval_prompts": 2, "eval_samples": 1, "run.save_every": 1, "preflight": False}


def test_eval_on_a_task_file(tmp_path, policy_dir):
    ev = tmp_path / "eval"
    assert main(["eval", str(policy_dir), "--task", SPEC, "--samples", "2", "--max-new-tokens", "12",
                 "--out", str(ev)]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["task"] == "exact-words" and summary["n_prompts"] == 4 and summary["n_samples"] == 8
    assert list(summary["rule_failures"]) == ["word_count"]
    assert summary["task_spec"] == f"{FILE.resolve()}:TASK"  # what a fresh process needs to judge it again
    fresh = subprocess.run([sys.executable, "-c", "import sys; from alignlab.eval.sampling_eval import "
                            "read_evaluation; s, samples = read_evaluation(sys.argv[1]); print(len(samples))", str(ev)],
                           capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == "8"


def test_a_grpo_run_records_its_task_file_and_resumes_only_with_the_same_file(tmp_path, policy_dir, capsys):
    mine = tmp_path / "my_task.py"  # a copy under a name of its own (a task name belongs to one file)
    mine.write_text(FILE.read_text(encoding="utf-8").replace('Task("exact-words"', 'Task("exact-words-mine"'),
                    encoding="utf-8")
    run = tmp_path / "run"
    argv = ["grpo", f"task={mine}:TASK", f"model.path={policy_dir}", *(f"{k}={v}" for k, v in TINY.items()),
            f"run.out_dir={run}"]
    assert main(argv) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert str(mine.resolve()) in manifest["data"]
    mine.write_text(mine.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    capsys.readouterr()
    assert main([*argv, "steps=3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"data file {mine.resolve()} (contents changed" in err, err


def test_a_sweep_with_two_worker_processes_reads_the_task_file_in_each(tmp_path, policy_dir):
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(yaml.safe_dump({
        "policy": str(policy_dir), "seeds": [0], "set": {"task": SPEC, **TINY},
        "eval": {"samples": 1, "max_new_tokens": 12},
        "variants": [{"name": "naive", "set": {"reward.mode": "naive"}},
                     {"name": "sharp", "set": {"reward.mode": "sharp"}}],
        "out_dir": str(tmp_path / "sweep")}))
    assert main(["sweep", str(recipe), "--jobs", "2"]) == 0
    out = tmp_path / "sweep"
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["naive", "sharp"]
    for slug in ("naive", "sharp"):
        root = out / slug / "seed0"
        assert json.loads((root / "eval_after" / "summary.json").read_text())["task"] == "exact-words"
        assert str(FILE.resolve()) in json.loads((root / "manifest.json").read_text())["data"]
    # A fresh process reads the run's task file from its config before judging the evaluations again.
    report = subprocess.run([sys.executable, "-m", "alignlab", "report", str(out / "sharp" / "seed0"),
                             "--before", str(out / "before")], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
