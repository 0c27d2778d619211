"""Progress a person can follow without a terminal: one plain line every N steps (issue: logs)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from alignlab.progress import PlainProgress


def test_plain_progress_prints_every_n_steps_and_the_last():
    stream = io.StringIO()
    progress = PlainProgress(total=5, every=2, stream=stream)
    for step in range(1, 6):
        progress.advance(step, f"loss {1 / step:.2f}")
    lines = stream.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["step 2/5", "step 4/5", "step 5/5"]
    assert lines[0].split(" | ")[1] == "loss 0.50" and lines[-1].endswith("eta 0s")
    assert all(" s/step | eta " in line for line in lines)


def test_a_resumed_run_counts_from_its_step():
    stream = io.StringIO()
    progress = PlainProgress(total=10, done=6, every=4, stream=stream)
    for step in range(7, 11):
        progress.advance(step)
    assert [line.split(" | ")[0] for line in stream.getvalue().splitlines()] == ["step 8/10", "step 10/10"]


def test_a_trainer_piped_to_a_file_prints_progress_lines(tmp_path):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(json.dumps({"model": {"arch": {"hidden_size": 32, "intermediate_size": 64,
                                                      "num_hidden_layers": 1, "num_attention_heads": 2,
                                                      "num_key_value_heads": 1}},
                                  "synthetic_per_prompt": 1, "max_length": 96,
                                  "run": {"steps": 4, "batch_size": 4, "log_every": 2, "eval_every": 0,
                                          "out_dir": str(tmp_path / "run")}}))
    done = subprocess.run([sys.executable, "-m", "alignlab", "sft", str(recipe)], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=600)
    assert done.returncode == 0, done.stderr
    steps = [line.split(" | ")[0] for line in done.stdout.splitlines() if line.startswith("step ")]
    assert steps == ["step 2/4", "step 4/4"], done.stdout
    assert "loss " in done.stdout and "eta " in done.stdout
