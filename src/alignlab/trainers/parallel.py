"""How the loop's model trains across processes: as is (one process), DDP replicas, or FSDP shards.

Trainers write `compute_loss(batch)` against their own model and call it however they like
(`model(...)`, `model.hidden_states(...)`, a reward head...). So that every such call takes part
in gradient synchronisation, the loop does not wrap the model alone but a `LossModule` whose
`forward(batch)` *is* `compute_loss(batch)` and whose one child is the model: DDP (or FSDP) then
sees one forward per micro-batch and syncs every parameter the loss touched.

- `Single`: one process; calls `compute_loss` directly (bit-identical to a run without this module).
- `Replicated`: `DistributedDataParallel`; gradients are averaged over ranks during the backward of
  the last micro-batch of a step, `no_sync()` on the others (accumulation costs no traffic). Each
  rank's loss is a mean over an equal shard, so the average is the one-process gradient.
- `Sharded` (`run.fsdp=true`): FSDP2 `fully_shard` (FULL_SHARD: parameters, gradients and optimizer
  state split over ranks) on each repeated block and on the root. Generation and evaluation call
  the model outside a training forward, so the loop gathers the whole model around them
  (`full_parameters`: the memory of one full copy while it lasts); a checkpoint gathers a full
  state dict, rank 0 writes it, and the optimizer state is saved whole, keyed by parameter name.

Left out: hybrid sharding across nodes, CPU offload of parameters, mixed-precision policies
(autocast still applies), and activation checkpointing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from alignlab.distributed import Distributed


class LossModule(nn.Module):
    """`forward(batch) = compute_loss(batch)` with the model as its only child (see the module doc)."""

    def __init__(self, model: nn.Module, compute_loss: Callable[[Any], tuple[torch.Tensor, dict]]):
        super().__init__()
        self.model = model
        self.compute_loss = compute_loss

    def forward(self, batch):
        return self.compute_loss(batch)


class Single:
    """One process: nothing to synchronise."""

    sharded = False

    def __init__(self, model: nn.Module, compute_loss):
        self.model, self.compute_loss = model, compute_loss

    def loss(self, batch) -> tuple[torch.Tensor, dict]:
        return self.compute_loss(batch)

    def sync(self, final: bool):
        """Context for a micro-batch's forward and backward; `final` = the step's last micro-batch."""
        return nullcontext()

    def full_parameters(self):
        """Context in which the model's parameters are whole on every rank (generation, evaluation)."""
        return nullcontext()

    def grad_norm(self, clip: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)


class Replicated(Single):
    """DDP over the `LossModule`: every rank holds the whole model, gradients are all-reduced."""

    def __init__(self, model: nn.Module, compute_loss, device: torch.device):
        super().__init__(model, compute_loss)
        from torch.nn.parallel import DistributedDataParallel

        # No buffer sync per forward: our buffers (RoPE tables) are derived, never trained (the
        # keyword changed name in torch 2.13). Unused parameters would be a trainer bug, so DDP's
        # extra graph walk stays off.
        quiet_buffers = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                         inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
        self.ddp = DistributedDataParallel(LossModule(model, compute_loss),
                                           device_ids=[device] if device.type == "cuda" else None,
                                           find_unused_parameters=False, **quiet_buffers)

    def loss(self, batch):
        return self.ddp(batch)

    def sync(self, final: bool):
        return nullcontext() if final else self.ddp.no_sync()


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP shards one by one: every child of every nn.ModuleList."""
    return [block for module in model.modules() if isinstance(module, nn.ModuleList) for block in module]


class Sharded(Single):
    """FSDP2 FULL_SHARD over the `LossModule`; parameters become DTensors sharded on dim 0."""

    sharded = True

    def __init__(self, model: nn.Module, compute_loss, device: torch.device, world_size: int):
        super().__init__(model, compute_loss)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world_size,))
        for block in _blocks(model):
            fully_shard(block, mesh=mesh)
        self.root = fully_shard(LossModule(model, compute_loss), mesh=mesh)
        # FSDP2 picks its root at the first forward; ours may be a generation or an evaluation that
        # enters a block directly, so settle the root now (no public call for this in torch 2.13).
        self.root._get_fsdp_state()._lazy_init()

    def loss(self, batch):
        return self.root(batch)

    def sync(self, final: bool):
        # FSDP2: skip the reduce-scatter of gradients on all but the last micro-batch
        self.root.set_requires_gradient_sync(final)
        return nullcontext()

    @contextmanager
    def full_parameters(self) -> Iterator[None]:
        """Gather every shard for the duration, and keep blocks whole between forwards: generation
        runs under `torch.inference_mode`, where FSDP must not (re)allocate parameters."""
        from torch.distributed.fsdp import FSDPModule

        sharded = [m for m in self.root.modules() if isinstance(m, FSDPModule)]
        for module in sharded:
            module.unshard()
            module.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for module in sharded:
                module.set_reshard_after_forward(True, recurse=False)
                module.reshard()

    def grad_norm(self, clip: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def full_state_dict(self) -> dict:
        """The whole model's weights (names as the bare model's) on rank 0, {} elsewhere. Collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k.removeprefix("model."): v for k, v in state.items()}

    def full_optimizer_state(self, optimizer) -> dict:
        """The optimizer state, unsharded and keyed by parameter name, on rank 0. Collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.root, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_full(self, weights: dict, optimizer=None, optimizer_state: dict | None = None) -> None:
        """Every rank: load full weights (bare names) and optionally a `full_optimizer_state`."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.root, {f"model.{k}": v for k, v in weights.items()}, options=options)
        if optimizer_state is not None:
            set_optimizer_state_dict(self.root, optimizer, optimizer_state, options=options)

    @contextmanager
    def saving(self) -> Iterator[None]:
        """Every rank: gather the full weights; inside, rank 0's `model.state_dict()` returns them,
        so the trainer's own `save_model` writes an ordinary (unsharded) checkpoint."""
        state = self.full_state_dict()
        self.model.state_dict = lambda *args, **kwargs: dict(state)  # the instance attribute shadows the method
        try:
            yield
        finally:
            del self.model.state_dict


def parallel_for(model: nn.Module, compute_loss, group: Distributed, device: torch.device, fsdp: bool) -> Single:
    """The wrapper a run needs: one process, DDP, or FSDP (`run.fsdp`)."""
    if not group.enabled:
        return Single(model, compute_loss)
    if fsdp:
        return Sharded(model, compute_loss, device, group.world_size)
    return Replicated(model, compute_loss, device)
