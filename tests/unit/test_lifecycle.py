"""The one run lifecycle (`trainers/lifecycle.py`) on a toy model: the run is opened before the trainer's
summary and spec, the closing summary sees the last step's metrics once, after the final checkpoint and still under
the run's lock, and a resume goes through the same function."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file
from torch import nn

from alignlab.config import OptimConfig, PretrainConfig, RunConfig
from alignlab.folder_lock import LOCK
from alignlab.runtime import resolve_runtime
from alignlab.trainers.lifecycle import RunOptions, run_training
from alignlab.trainers.loop import TrainSpec


def _config(tmp_path, steps: int) -> PretrainConfig:
    run = RunConfig(out_dir=str(tmp_path / "run"), steps=steps, save_every=1, keep_checkpoints=10, log_every=1,
                    eval_every=2, progress=False, device="cpu")
    return PretrainConfig(run=run, optim=OptimConfig(lr=0.1, warmup_steps=0))


def _train(cfg, events: list, options: RunOptions, source):
    """run_training on nn.Linear(3, 1), recording what the lifecycle asks of the trainer and when."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)

    def compute_loss(n: int):
        return ((model(torch.ones(1, 3)) - n) ** 2).sum(), {"target": float(n)}

    def describe(run):
        events.append(("describe", (run.root / "manifest.json").is_file()))  # the run exists before its summary
        return f"toy: 4 parameters -> {run.root}"

    def build(run):
        events.append(("build", run.root.name))

        def close(last: dict) -> None:
            final = (run.root / "checkpoints" / "final" / "state.json").is_file()
            finished = (run.root / LOCK).read_text() == ""  # True once finish released the lock
            events.append(("close", last, final, finished))

        return TrainSpec(model, source, compute_loss,
                         lambda d: save_file(model.state_dict(), str(d / "model.safetensors")),
                         evaluate=lambda: {"loss": 1.0}, close=close)

    return run_training(cfg, resolve_runtime("cpu"), options, build=build, describe=describe)


def _metrics(root) -> list[dict]:
    return [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]


def _logged(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("step", "time")}


def test_run_options_default_to_a_plain_new_run():
    assert RunOptions() == RunOptions(resume=False, overwrite=False, quiet=False, allow_changes=False)


def test_run_training_opens_describes_builds_trains_and_closes_once(tmp_path, capsys, step_counter):
    events = []
    root = _train(_config(tmp_path, steps=3), events, RunOptions(), step_counter())
    assert root == tmp_path / "run"
    assert [e[0] for e in events] == ["describe", "build", "close"]
    assert events[0] == ("describe", True)
    _, last, final_saved, finished = events[2]
    assert final_saved and not finished  # after the final checkpoint, still under the run's lock
    records = _metrics(root)
    assert [r["step"] for r in records] == [0, 1, 2, 3]  # step-0 evaluation, then every step (log_every=1)
    assert last["target"] == 3.0 and _logged(records[-1]) == last  # the last step's metrics, as logged
    assert capsys.readouterr().out.splitlines() == [f"toy: 4 parameters -> {root}"]


def test_resume_goes_through_the_same_lifecycle(tmp_path, capsys, step_counter):
    _train(_config(tmp_path, steps=2), [], RunOptions(quiet=True), step_counter())
    events = []
    root = _train(_config(tmp_path, steps=4), events, RunOptions(resume=True), step_counter())  # more steps: allowed
    assert [e[0] for e in events] == ["describe", "build", "close"]
    assert events[2][1]["target"] == 4.0 and events[2][2] and not events[2][3]  # final saved, lock still held
    assert capsys.readouterr().out.splitlines() == [
        "resume changes: run.steps: 2 -> 4",
        f"toy: 4 parameters -> {root}",
        f"resuming from {root / 'checkpoints' / 'final'} (step 2)",
    ]
    assert [r["step"] for r in _metrics(root)] == [0, 1, 2, 3, 4]  # no second step-0 evaluation, no step twice
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["resumes"][0]["changed"] == {"run.steps": [2, 4]}
