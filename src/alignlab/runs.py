"""The run directory, the unit of reproducibility, and the one place that writes and prints.

    runs/<name>/
      config.yaml        the fully resolved config
      manifest.json      config hash, versions, git commit, device, dtype, data hashes, seed
      metrics.jsonl      one JSON object per logged step
      tb/                TensorBoard events (when tensorboard is installed)
      samples/           generated samples
      checkpoints/step_N/, checkpoints/final/   (written atomically; see model/checkpoint.py)

Nothing is created until a trainer has validated its inputs, so a bad input never leaves a
half-made run behind. `quiet=True` silences all printing (tests); `progress=False` only the
progress bar (logs, CI).

In a multi-process run (torchrun) this is where the rank-0 guards live: every rank opens the
`Run` (all read checkpoints when resuming), but only rank 0 creates, writes, prunes and prints;
`Run.create` checks the directory on every rank before rank 0 touches it, so all ranks raise
the same error or none does.

Left out: experiment trackers other than TensorBoard.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from alignlab.config import config_hash, dump_yaml
from alignlab.distributed import Distributed
from alignlab.errors import UserError


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def checkpoint_step(directory: Path) -> int | None:
    """The step a complete checkpoint directory holds (from its state.json), or None."""
    try:
        return int(json.loads((directory / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


class Run:
    """An open run directory: logs metrics, lists and prunes checkpoints, shows progress."""

    def __init__(self, root: Path, *, quiet: bool = False, progress: bool = True):
        self.root = root
        self.main = Distributed.from_env().is_main  # only rank 0 writes and prints
        self.quiet, self.progress = quiet or not self.main, progress
        self._tb = None
        self._progress = None

    @classmethod
    def create(cls, out_dir: str | Path, config, *, resume: bool = False, overwrite: bool = False,
               data_files=(), device: str = "cpu", dtype="float32", quiet: bool = False,
               progress: bool = True):
        """The run directory at `out_dir` (written by rank 0); `dtype` a name or a torch.dtype."""
        root, group = Path(out_dir), Distributed.from_env()
        dtype = str(dtype).removeprefix("torch.")
        if root.exists() and any(root.iterdir()) and not (resume or overwrite):
            raise UserError("run directory already exists: pass --resume to continue it, "
                            "--overwrite to replace it, or choose another run.out_dir",
                            file=str(root))
        group.barrier()  # every rank has looked before rank 0 writes
        if not group.is_main:
            group.barrier()
            return cls(root, quiet=quiet, progress=progress)
        cls._write(root, config, resume, overwrite, data_files, device, dtype)
        group.barrier()
        return cls(root, quiet=quiet, progress=progress)

    @staticmethod
    def _write(root: Path, config, resume: bool, overwrite: bool, data_files, device: str, dtype: str) -> None:
        if overwrite and not resume and root.exists():
            shutil.rmtree(root)
        (root / "checkpoints").mkdir(parents=True, exist_ok=True)
        for stale in (root / "checkpoints").glob(".*"):  # a killed process's half-written checkpoint
            shutil.rmtree(stale, ignore_errors=True)
        (root / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
        manifest = {
            "config_hash": config_hash(config),
            "versions": {p: _version(p) for p in ("alignlab", "torch", "transformers", "tokenizers")},
            "python": sys.version.split()[0],
            "git_commit": _git_commit(),
            "device": device,
            "dtype": dtype,
            "seed": getattr(getattr(config, "run", None), "seed", None),
            "world_size": Distributed.from_env().world_size,
            "data": {str(p): file_sha256(p) for p in data_files},
            "command": sys.argv,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint_path(self, step: int | None) -> Path:
        return self.checkpoints / ("final" if step is None else f"step_{step}")

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, dir) of every complete checkpoint, oldest first; temporary dirs never count."""
        found = []
        for path in self.checkpoints.glob("*"):
            step = None if path.name.startswith(".") else checkpoint_step(path)
            if step is not None:
                found.append((step, path))
        return sorted(found, key=lambda item: (item[0], item[1].name == "final"))

    def latest_checkpoint(self) -> Path | None:
        found = self.complete_checkpoints()
        return found[-1][1] if found else None

    def prune(self, keep: int) -> None:
        """Remove all but the newest `keep` step_N checkpoints; `final` always stays."""
        if not self.main:
            return
        steps = [(s, p) for s, p in self.complete_checkpoints() if p.name != "final"]
        for _, path in steps[: max(len(steps) - keep, 0)]:
            shutil.rmtree(path, ignore_errors=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.main:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        with open(self.root / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(key, value, step)

    def keep_metrics_until(self, step: int) -> None:
        """Cut metrics.jsonl back to records of steps <= `step` (a resumed run's crashed tail, and a
        line a killed process left half-written), so resuming never logs a step twice."""
        path = self.root / "metrics.jsonl"
        if not self.main or not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line + "\n")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)

    def _tensorboard(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb = False
            else:
                self._tb = SummaryWriter(str(self.root / "tb"))
        return self._tb or None

    def write_jsonl(self, name: str, records) -> Path:
        path = self.root / name
        if not self.main:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        return path

    def print(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    def start_progress(self, total: int, done: int = 0, description: str = "train") -> None:
        if self.quiet or not self.progress:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                  TextColumn("{task.fields[status]}"), transient=False)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=done, status="")

    def advance(self, step: int, status: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=status)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb:
            self._tb.close()
            self._tb = None
