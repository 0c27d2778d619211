"""Process-group helpers in one process (no group): shards, row ownership, the identity reductions."""

from __future__ import annotations

import pytest

from alignlab.distributed import Distributed, in_order, split_rows
from alignlab.errors import UserError


def test_one_process_by_default(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    here = Distributed.from_env()
    assert (here.rank, here.world_size, here.enabled, here.is_main) == (0, 1, False, True)
    assert here.shard(8) == slice(0, 8)
    assert here.reduce_metrics({"loss": 0.5, "tokens": 3}) == {"loss": 0.5, "tokens": 3}
    assert here.sum(4) == 4 and here.mean_weight(7) == 1.0 and here.gather("x") == ["x"]


def test_torchrun_environment_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    here = Distributed.from_env()
    assert (here.rank, here.world_size, here.local_rank, here.is_main) == (3, 4, 1, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(UserError, match="WORLD_SIZE"):
        Distributed.from_env()
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(UserError, match="RANK"):
        Distributed.from_env()


def test_each_rank_takes_its_slice_of_every_micro_batch():
    # 12 rows, 2 micro-batches of 6, 3 ranks: rank r owns rows [2r, 2r + 2) of each.
    owners = [split_rows(12, 2, Distributed(r, 3)) for r in range(3)]
    assert owners == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]
    assert sorted(i for owned in owners for i in owned) == list(range(12))
    parts = [[f"row{i}" for i in owned] for owned in owners]
    assert in_order(parts, owners, 12) == [f"row{i}" for i in range(12)]


def test_a_batch_that_does_not_split_is_refused_with_its_key():
    with pytest.raises(UserError, match=r"run.batch_size: 6 rows do not split evenly over 4"):
        Distributed(0, 4).shard(6)
    with pytest.raises(UserError, match="num_generations=4"):  # 2 rows per rank: half a group
        split_rows(8, 2, Distributed(1, 2), group=4)
    assert split_rows(16, 2, Distributed(1, 2), group=4) == [4, 5, 6, 7, 12, 13, 14, 15]
