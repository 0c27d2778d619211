"""Crash safety through real `alignlab` processes: SIGKILL at seeded random moments, resume each time,
and the final weights equal an uninterrupted run's byte for byte; SIGINT / SIGTERM checkpoint and stop.

Every process runs with one torch thread (float reductions then happen in one order in every run).
A kill may land anywhere: during start-up, mid-step, mid-checkpoint (a half-written checkpoint is a
hidden temporary directory that resume ignores and removes) or while the ledger or metrics are
being appended.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

KILLS = 4  # SIGKILLs per trainer
GRPO = ["grpo", "num_generations=4", "run.batch_size=8", "max_new_tokens=12", "steps=10", "run.save_every=1",
        "run.keep_checkpoints=2", "run.log_every=1", "run.eval_every=5", "eval_prompts=2", "eval_samples=1",
        "optim.lr=1e-3", "preflight=false", "run.progress=false", "num_iterations=2", "beta=0.04"]
RM = ["train-rm", "dummy_pairs=48", "steps=12", "run.batch_size=4", "run.save_every=1", "run.eval_every=6",
      "run.log_every=1", "run.progress=false", "max_length=48", "tokenizer.kind=byte"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "alignlab", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _weights(run: Path) -> bytes:
    return (run / "checkpoints" / "final" / "model.safetensors").read_bytes()


def _newest_step(run: Path) -> int:
    steps = [int(p.name[5:]) for p in (run / "checkpoints").glob("step_*")] if (run / "checkpoints").exists() else []
    return max(steps, default=0)


def _killed_run(args: list[str], run: Path, cwd: Path, seed: int, step_time: float) -> tuple[int, int]:
    """Run to the end, SIGKILLed KILLS times; returns (kills, kills mid-training). The first kill lands
    at a seeded moment of start-up; each later one once the run has saved a checkpoint newer than the
    one it resumed from, a seeded fraction of a step later (so inside the next step or its checkpoint)."""
    rng = random.Random(seed)
    kills = mid_training = 0
    proc = _start([*args, f"run.out_dir={run}"], cwd)
    while kills < KILLS:
        if kills == 0:
            time.sleep(rng.uniform(0.2, 1.5))
        else:
            resumed_from = _newest_step(run)
            while _newest_step(run) <= resumed_from and proc.poll() is None:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.5 * step_time))
        if proc.poll() is not None:
            break
        mid_training += _newest_step(run) > 0 and not (run / "checkpoints" / "final").exists()
        proc.kill()
        proc.wait()
        kills += 1
        proc = _start([*args, f"run.out_dir={run}", "--resume"], cwd)
    code, err = _finish(proc)
    assert code == 0, err
    return kills, mid_training


def _step_time(run: Path) -> float:
    """Median seconds between logged steps of a finished run."""
    import json

    times = [json.loads(line)["time"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    return gaps[len(gaps) // 2] if gaps else 0.2


@pytest.mark.slow
@pytest.mark.parametrize(("name", "args", "seed"), [("grpo", GRPO, 1), ("train-rm", RM, 2)])
def test_sigkill_at_random_moments_then_resume_gives_the_same_weights(name, args, seed, tmp_path, policy_dir):
    args = [*args, f"model.path={policy_dir}"] if name == "grpo" else args
    code, err = _finish(_start([*args, f"run.out_dir={tmp_path / 'straight'}"], tmp_path))
    assert code == 0, err
    kills, mid = _killed_run(args, tmp_path / "killed", tmp_path, seed, _step_time(tmp_path / "straight"))
    print(f"{name}: {kills} SIGKILLs ({mid} mid-training, after a checkpoint), final weights identical")
    assert kills == KILLS and mid >= KILLS - 1
    assert _weights(tmp_path / "killed") == _weights(tmp_path / "straight")
    assert not list((tmp_path / "killed" / "checkpoints").glob(".*"))  # no half-written checkpoint left
    steps = [line for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(steps) == len(set(steps)) and len(steps) == int(next(a for a in args if a.startswith("steps="))[6:])


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_checkpoint_and_stop_cleanly(signum, code, tmp_path, policy_dir):
    args = [*GRPO, f"model.path={policy_dir}", "steps=40"]
    run = tmp_path / "run"
    proc = _start([*args, f"run.out_dir={run}"], tmp_path)
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("step_*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signum)
    returned, err = _finish(proc)
    assert returned == code, err
    line = err.strip().splitlines()[-1]
    assert f"{signal.Signals(signum).name} after step" in line and "checkpoint saved" in line and "--resume" in line
    step = int(line.split("after step ")[1].split(":")[0])
    assert (run / "checkpoints" / f"step_{step}" / "state.json").is_file() and step < 40
    code, err = _finish(_start([*args, f"run.out_dir={run}", "--resume"], tmp_path))
    assert code == 0, err
    straight = tmp_path / "straight"
    code, err = _finish(_start([*args, f"run.out_dir={straight}"], tmp_path))
    assert code == 0, err
    assert _weights(run) == _weights(straight)
