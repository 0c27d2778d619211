"""The loop's guards on a toy model: a non-finite loss or gradient stops the run naming the step and
keeping the last good checkpoint, or (nan_policy=skip_step) skips the update; a reward that breaks
its contract is reported with the step."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from alignlab.config import OptimConfig, RunConfig
from alignlab.errors import NonFinite
from alignlab.rewards.base import RewardContractError
from alignlab.runs import Run
from alignlab.runtime import resolve_runtime
from alignlab.trainers.loop import Loop, TrainSpec


def _loop(tmp_path, source, compute_loss, policy="stop", steps=5):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    run_cfg = RunConfig(out_dir=str(tmp_path / "run"), steps=steps, save_every=1, keep_checkpoints=10, log_every=1,
                        eval_every=0, progress=False)
    run = Run.create(run_cfg.out_dir, run_cfg, quiet=True, progress=False)

    def save(directory):
        (directory / "weights.json").write_text(json.dumps(model.weight.tolist()))

    spec = TrainSpec(model, source, lambda n: compute_loss(model, n), save)
    optim = OptimConfig(lr=0.1, warmup_steps=0, nan_policy=policy)
    return Loop(spec, optim, run_cfg, resolve_runtime("cpu"), run), model


def _loss(bad_step: int | None = None, where: str = "loss"):
    def compute(model, n):
        x = torch.ones(1, 3)
        if n == bad_step and where == "grad":  # a finite loss whose gradient is infinite: sqrt at 0
            return torch.sqrt(model(x).sum() * 0), {}
        loss = (model(x) ** 2).sum()
        return (loss * float("nan") if n == bad_step else loss), {}
    return compute


@pytest.mark.parametrize(("where", "named"), [("loss", "loss nan in micro-batch 1 of 1"),
                                              ("grad", "first non-finite gradient: weight")])
def test_non_finite_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path, where, named, step_counter):
    loop, _ = _loop(tmp_path, step_counter(), _loss(bad_step=3, where=where))
    with pytest.raises(NonFinite) as caught:
        loop.train()
    message = str(caught.value)
    assert message.startswith("step 3: non-finite") and named in message and "step_2" in message
    assert "nan_policy=skip_step" in message
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step_1", "step_2"]  # nothing written for the bad step, no final


def test_skip_step_drops_only_the_bad_update(tmp_path, step_counter):
    loop, model = _loop(tmp_path, step_counter(), _loss(bad_step=3), policy="skip_step")
    loop.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[2]["skipped"] == 1 and records[2]["skipped_steps"] == 1 and "loss" not in records[2]
    assert torch.isfinite(model.weight).all()
    weights = {k: (tmp_path / "run" / "checkpoints" / f"step_{k}" / "weights.json").read_text() for k in (2, 3, 4)}
    assert weights[3] == weights[2] != weights[4]  # step 3 changed nothing, step 4 trained again


def test_a_broken_reward_is_reported_with_its_step(tmp_path, step_counter):
    loop, _ = _loop(tmp_path, step_counter(), _loss())
    source = loop.spec.source

    def next_batch():  # the reward runs while the source makes a batch (GRPO's RolloutSource)
        n = step_counter.next_batch(source)
        if n == 2:
            raise RewardContractError("reward function 'r' returned nan for completion 0: 'x'")
        return n

    source.next_batch = next_batch
    with pytest.raises(RewardContractError, match=r"^step 2: reward function 'r' returned nan"):
        loop.train()
