"""Devices, precision, seeds and random generators: chosen here and nowhere else.

`resolve_runtime` turns the user's `device` / `precision` words into a `Runtime`; trainers
pass it down explicitly. CPU float32 is the path tests take. Autocast always goes through
`torch.amp.autocast(device_type=...)`.

Under `torchrun` (WORLD_SIZE > 1) `resolve_runtime` also joins the process group
(`distributed.py`): each process gets the device of its local rank (cuda:LOCAL_RANK) and the
`Distributed` it belongs to rides along in `Runtime.dist`. Seeds are NOT offset per rank:
initial weights must agree (DDP also broadcasts rank 0's), and sampling draws from per-row
streams keyed by global row index (`generation/sampling.py`), so no draw depends on the rank.

Left out: choosing among several GPUs in one process.
"""

from __future__ import annotations

import os
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignlab.distributed import Distributed, init_distributed
from alignlab.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Where tensors live, which autocast dtype (None = full precision) the forward uses, and the
    process group this process belongs to (one process by default)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    dist: Distributed = field(default_factory=Distributed)

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.amp.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a user's word: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.
    An unknown name, another device type (meta, xpu...) or a device this machine lacks is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"unknown device {name!r}; expected {DEVICE_NAMES}", key="device") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{name!r}: CUDA is not available on this machine; use device=cpu or device=auto",
                            key="device")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UserError(f"{name!r}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                            f"(cuda:0 to cuda:{count - 1}); expected {DEVICE_NAMES}", key="device")
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise UserError(f"{name!r}: MPS is not available on this machine; use device=cpu or device=auto",
                            key="device")
        if dev.index not in (None, 0):
            raise UserError(f"{name!r}: there is one MPS device (mps or mps:0)", key="device")
        return dev
    raise UserError(f"device type {dev.type!r} is not supported; expected {DEVICE_NAMES}", key="device")


def resolve_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """auto precision: bf16 autocast on CUDA (fp16 where bf16 is missing), fp16 on MPS, fp32 on CPU.
    Under torchrun, joins the process group and takes the local rank's GPU."""
    dev = resolve_device(device)
    group = init_distributed(dev.type)
    if group.enabled and dev.type == "cuda":
        dev = torch.device("cuda", group.local_rank)
    if precision == "auto":
        if dev.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp16" if dev.type == "mps" else "fp32"
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if amp is not None and dev.type == "cpu":
        raise UserError(f"precision={precision} autocast is not supported on CPU here; use "
                        "precision=fp32", key="precision")
    return Runtime(dev, amp, group)


def parse_dtype(name: str | None) -> torch.dtype | None:
    """'auto' / None -> None (keep what the weights have), else the torch dtype."""
    if name in (None, "auto"):
        return None
    return DTYPES[name]


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (CPU and every accelerator)."""
    random.seed(seed)
    torch.manual_seed(seed)


def cache_dir() -> Path:
    """Where alignlab keeps what it can rebuild (the demo's base policy, imported GGUF files):
    $ALIGNLAB_CACHE, else ~/.cache/alignlab."""
    return Path(os.environ.get("ALIGNLAB_CACHE") or Path.home() / ".cache" / "alignlab").expanduser()


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A private generator for one consumer (sampling, data order), so streams never interleave."""
    return torch.Generator(device=device).manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state, in types `torch.load(weights_only=True)` accepts."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if _mps_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and _mps_available():
        torch.mps.set_rng_state(state["mps"])
