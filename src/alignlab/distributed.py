"""The process group of a multi-process run (`torchrun`), and the few collectives trainers need.

`torchrun --nproc_per_node N -m alignlab <command> ...` starts N copies of the command and sets
RANK, WORLD_SIZE and LOCAL_RANK in each. `Distributed.from_env` reads them; `init_distributed`
joins the process group (gloo on CPU, nccl on CUDA) only when WORLD_SIZE > 1, so a one-process
run creates no group and computes exactly what it always did. Every helper here is a no-op (or
the identity) in one process.

How a global batch is split (decisions 4 and 13 of docs/decisions.md): `run.batch_size` stays
the global batch; every rank reads the same data stream in the one-process order and keeps its
contiguous slice (`Distributed.shard`) of each micro-batch. The data position is then the same
on every rank and independent of the world size, which is what lets a checkpoint written by
rank 0 resume at any world size.

Left out: tensor / pipeline parallelism and elastic membership changes (a restarted torchrun
job resumes from the newest checkpoint instead).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from alignlab.errors import UserError

SUMMED = ("tokens",)  # metrics that are counts: summed over ranks; every other metric is averaged
MAXED = ("completion_length_max",)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"expected an integer, got {value!r} (set by torchrun)", key=name) from None


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: rank in [0, world_size), its local rank on the node, and the
    collective backend (None when there is no process group, i.e. one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise UserError(f"rank {self.rank}, local rank {self.local_rank} and world size {self.world_size} do "
                            "not fit together (expected 0 <= RANK < WORLD_SIZE); launch with torchrun",
                            key="WORLD_SIZE")

    @classmethod
    def from_env(cls) -> Distributed:
        """Rank, world size and local rank as torchrun sets them (one process when unset)."""
        return cls(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def shard(self, rows: int, key: str = "run.batch_size") -> slice:
        """This rank's contiguous slice of a global batch of `rows` rows; UserError (naming `key`) when
        the rows do not split evenly.

        >>> Distributed(rank=1, world_size=2).shard(8)
        slice(4, 8, None)
        """
        if rows % self.world_size:
            raise UserError(f"{rows} rows do not split evenly over {self.world_size} processes; use a multiple "
                            f"of the world size", key=key)
        size = rows // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def barrier(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.barrier()

    def sum(self, value: float) -> float:
        """The sum of `value` over ranks (the value itself in one process)."""
        if not self.enabled:
            return value
        total = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(total)
        return float(total.item())

    def mean_weight(self, count: int) -> float:
        """count x world size / (count summed over ranks): scale a rank's mean over its `count` items by
        this and the ranks' average (DDP's gradient average) is the mean over all items, the
        one-process number. Collective (1.0 in one process)."""
        if not self.enabled:
            return 1.0
        return count * self.world_size / max(self.sum(count), 1.0)

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any: keeps control flow the same everywhere."""
        return self.sum(float(bool(flag))) > 0 if self.enabled else bool(flag)

    def reduce_metrics(self, metrics: dict) -> dict:
        """Every rank's metrics -> the job's: counts (`SUMMED`) summed, maxima (`MAXED`) maxed, the rest
        averaged (means over equal shards average to the global mean). Every rank must report the
        same keys; the reduction runs in sorted key order."""
        if not self.enabled:
            return metrics
        keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_collective_device())
        peaks = values.clone()
        dist.all_reduce(values)
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
        out = dict(metrics)
        for i, key in enumerate(keys):
            if key in SUMMED:
                out[key] = values[i].item()
            elif key in MAXED:
                out[key] = peaks[i].item()
            else:
                out[key] = values[i].item() / self.world_size
        return out

    def dealt(self, rows: int) -> range:
        """This rank's rows when `rows` rows are dealt out in turn (rank, rank + world, ...): work split
        by rows whatever their count, such as sampling held-out or rollout rows.

        >>> list(Distributed(rank=1, world_size=2).dealt(5))
        [1, 3]
        """
        return range(self.rank, rows, self.world_size)

    def gather_dealt(self, values: list, rows: int) -> list:
        """Every rank's `values` for its `dealt(rows)` -> all `rows` values in row order, on every rank
        (collective; `values` itself in one process)."""
        owners = [list(Distributed(r, self.world_size).dealt(rows)) for r in range(self.world_size)]
        return in_order(self.gather(values), owners, rows)

    def gather(self, value) -> list:
        """[rank 0's value, rank 1's, ...] on every rank (picklable objects; [value] in one process)."""
        if not self.enabled:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


def _collective_device() -> torch.device:
    """Where small collective tensors live: the current CUDA device under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(device_type: str) -> Distributed:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1 (once per process; the
    group is destroyed at exit). `device_type` picks the backend: nccl for cuda, gloo otherwise."""
    here = Distributed.from_env()
    if not here.enabled:
        return here
    if dist.is_initialized():
        return Distributed(here.rank, here.world_size, here.local_rank, dist.get_backend())
    if device_type == "mps":
        raise UserError("multi-process runs need cuda or cpu (gloo), not mps", key="run.device")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        if here.local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {here.local_rank} has no GPU ({torch.cuda.device_count()} visible); start "
                            "at most one process per GPU (--nproc_per_node)", key="LOCAL_RANK")
        torch.cuda.set_device(here.local_rank)
    dist.init_process_group(backend=backend)
    atexit.register(_destroy)
    return Distributed(here.rank, here.world_size, here.local_rank, backend)


def _destroy() -> None:
    """Leave the process group at exit, after the other ranks have reached their exit too: a gloo rank
    tearing its connections down while a peer still finishes (rank 0 writes the final files) can
    abort that peer. A bounded wait, so a rank leaving on an error is not held for long."""
    if not dist.is_initialized():
        return
    if dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        except RuntimeError:  # a peer has failed or left: nothing to wait for
            pass
    dist.destroy_process_group()


def split_rows(rows: int, micro_batches: int, dist_: Distributed, group: int = 1,
               key: str = "run.batch_size") -> list[int]:
    """Indices of the rows this rank owns in a batch of `rows` split into `micro_batches` equal
    micro-batches: its contiguous slice of each, in order. `group` > 1 demands whole groups of that
    many consecutive rows per rank and micro-batch (GRPO: a prompt's completions stay together).

    >>> split_rows(8, 2, Distributed(rank=1, world_size=2))
    [2, 3, 6, 7]
    """
    micro = rows // micro_batches
    mine = dist_.shard(micro, key)
    if (mine.stop - mine.start) % group:
        raise UserError(f"each process gets {mine.stop - mine.start} rows of each micro-batch, not whole groups of "
                        f"num_generations={group}; make run.batch_size / (optim.grad_accum x processes) a multiple "
                        f"of num_generations", key=key)
    return [i * micro + j for i in range(micro_batches) for j in range(mine.start, mine.stop)]


def in_order(parts: Sequence[list], owners: Sequence[list[int]], rows: int) -> list:
    """Reassemble per-rank lists (`parts[r][k]` is row `owners[r][k]`) into one list of `rows` rows."""
    out = [None] * rows
    for part, owned in zip(parts, owners, strict=True):
        for value, index in zip(part, owned, strict=True):
            out[index] = value
    return out
