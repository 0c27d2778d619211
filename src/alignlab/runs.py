"""The run directory, the unit of reproducibility, and the one place that writes and prints.

    runs/<name>/
      config.yaml        the fully resolved config
      manifest.json      config hash, versions, git commit, device, dtype, data hashes, seed
      metrics.jsonl      one JSON object per logged step
      tb/                TensorBoard events (when tensorboard is installed)
      samples/           generated samples
      checkpoints/step_N/, checkpoints/final/   (written atomically; see model/checkpoint.py)

Nothing is created until a trainer has validated its inputs, so a bad input never leaves a
half-made run behind. A run directory is alignlab's own (`outputs.py`: a `.alignlab.json` marker,
or an earlier version's manifest): only such a folder is resumed or replaced (`--overwrite`, which
moves the old run aside and deletes it once the new one finishes). One process writes a run at a
time: `Run.create` takes an OS lock on `<run>/.lock` for the whole run (`finish` releases it), and a
second writer is refused before it writes anything. `--resume` first compares the config and data
with the run's own (`run_resume.py`) and resumes from the newest *intact* checkpoint.
`quiet=True` silences all printing (tests); `progress=False` only the progress bar (on a terminal) or
lines (elsewhere).

In a multi-process run (torchrun) this is where the rank-0 guards live: every rank opens the
`Run` (all read checkpoints when resuming), but only rank 0 creates, writes, prunes and prints;
`Run.create` checks the directory on every rank before rank 0 touches it, so all ranks raise
the same error or none does.

Left out: experiment trackers other than TensorBoard.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from alignlab.config import config_hash, dump_yaml
from alignlab.data.sources import source_file
from alignlab.distributed import Distributed
from alignlab.errors import UserError
from alignlab.folder_lock import LOCK, FolderLock
from alignlab.outputs import (
    MARKER,
    check_target,
    clean_leftovers,
    is_empty_dir,
    is_run_dir,
    json_safe,
    marker_kind,
    move_aside,
    write_file_atomic,
    write_marker,
)
from alignlab.progress import start_progress
from alignlab.run_resume import BATCH_MEANING, check_resume, checkpoint_problem, file_sha256


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


def print_nothing(message: str) -> None:
    """A `warn=` that says nothing: for a look whose caller warns later, when it resumes."""


def checkpoint_step(directory: Path) -> int | None:
    """The step a complete checkpoint directory holds (from its state.json), or None."""
    try:
        return int(json.loads((directory / "state.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):  # TypeError: a hand-edited step (null, a list)
        return None


def is_checkpoint_name(name: str) -> bool:
    """`step_N` or `final`: the folders a run writes under checkpoints/ and resumes from. Anything else
    there (train-rm's `best`, a user's backup copy) is never resumed from or pruned."""
    return name == "final" or re.fullmatch(r"step_\d+", name) is not None


def _holds_results(root: Path) -> bool:
    """True when a run folder holds anything beyond what its start writes first (marker, lock, config,
    an empty checkpoints/ folder)."""
    started = {MARKER, LOCK, "config.yaml", "checkpoints"}
    checkpoints = root / "checkpoints"
    return any(p.name not in started for p in root.iterdir()) or (checkpoints.is_dir() and any(checkpoints.iterdir()))


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
               allow_changes: bool = False, data_files=(), device: str = "cpu", dtype="float32",
               quiet: bool = False, progress: bool = True, extra: dict | None = None, skipped_rows=None):
        """The run directory at `out_dir`, checked on every rank, then locked and written by rank 0.

        A new run needs a new or empty folder; `resume` continues alignlab's run there (its config
        compared first: run_resume.py); `overwrite` replaces alignlab's run there, never anything
        else, and never a folder holding one of the run's inputs (model, reward model, data). The
        replaced run is moved aside and deleted when the new run finishes (`finish`). `dtype` is a
        name or a torch.dtype; `extra` adds fields to the manifest; `skipped_rows` (data.sources.BadRows)
        records the rows `on_bad_row=skip` left out in the manifest and prints the first few.
        """
        if skipped_rows is not None:
            extra = {**(extra or {}), "skipped_rows": skipped_rows.to_manifest()}
        data_files = [source_file(f) for f in data_files]  # "f.jsonl[:100]" names f.jsonl
        root = check_target(out_dir, key="run.out_dir", protect=_inputs(config, data_files) if overwrite else (),
                            what="run")
        group = Distributed.from_env()
        if group.is_main:
            clean_leftovers(root)  # a killed replacement's hidden siblings (outputs.py)
        group.barrier()
        record = cls._check(root, config, resume, overwrite, allow_changes, data_files)
        if record is not None:  # a resume with no intact checkpoint fails here, before config and manifest change
            cls(root, quiet=True).latest_checkpoint(warn=print_nothing)
        group.barrier()  # every rank has looked before rank 0 writes
        run, failure = cls(root, quiet=quiet, progress=progress), None
        if group.is_main:
            try:
                run._open(config, record, overwrite and not resume, data_files, device,
                          str(dtype).removeprefix("torch."), extra or {})
            except UserError as err:  # the lock is taken: every rank must stop, not only rank 0
                failure = err
        if group.any(failure is not None):
            raise failure or UserError("rank 0 could not open the run directory (its message says why)",
                                       file=str(root))
        for line in skipped_rows.report() if skipped_rows is not None else ():  # nothing when none was skipped
            run.print(line)
        if getattr(config, "micro_batch_size", None) is not None and config.optim.grad_accum > 1:
            run.print(f"note: run.batch_size={config.run.batch_size} is the whole optimizer step: "
                      f"{config.optim.grad_accum} micro-batches of {config.micro_batch_size} (earlier versions of "
                      f"sft / dpo / train-rm / pretrain read it as one micro-batch)")
        return run

    @staticmethod
    def _check(root: Path, config, resume: bool, overwrite: bool, allow_changes: bool, data_files) -> dict | None:
        """What resuming changes (None for a new run); UserError before anything is written."""
        if not root.exists() or is_empty_dir(root):
            return None
        if marker_kind(root) == "run" and not (root / "manifest.json").is_file():
            if overwrite or not _holds_results(root):
                return None  # ours, and its start died before writing anything (or it is to be replaced)
            raise UserError("run directory holds checkpoints or metrics but its manifest.json is missing, so what "
                            "it holds cannot be checked: restore manifest.json, pass --overwrite to replace the run, "
                            "or choose another run.out_dir", file=str(root), key="run.out_dir")
        if not is_run_dir(root):
            raise UserError("folder exists and is not an alignlab run directory (no .alignlab.json or manifest.json); "
                            "alignlab never writes into or replaces a folder it did not make: choose another "
                            "run.out_dir", file=str(root), key="run.out_dir")
        if resume:
            return check_resume(root, config, data_files, allow_changes)
        if not overwrite:
            raise UserError("run directory already exists: pass --resume to continue it, --overwrite to replace it, "
                            "or choose another run.out_dir", file=str(root))
        return None

    def _open(self, config, record: dict | None, replace: bool, data_files, device: str, dtype: str,
              extra: dict) -> None:
        """Lock the folder (refusing a second writer), then write config.yaml and manifest.json."""
        root = self.root
        if replace and root.exists() and not is_empty_dir(root):
            FolderLock(root).acquire(warn=self.warn).release()  # refuse to replace a run in use
            self._replaced = move_aside(root)
        root.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(root).acquire(warn=self.warn)
        (root / "checkpoints").mkdir(exist_ok=True)
        for stale in (root / "checkpoints").glob(".*"):  # a killed process's half-written checkpoint
            shutil.rmtree(stale, ignore_errors=True)
        if not (root / MARKER).is_file():
            write_marker(root, "run")
        manifest = self._manifest(config, data_files, device, dtype, extra) if record is None else \
            self._resumed_manifest(config, record, device)
        (root / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
        _write_json(root / "manifest.json", manifest)

    @staticmethod
    def _manifest(config, data_files, device: str, dtype: str, extra: dict) -> dict:
        return {
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
            "batch_size_means": BATCH_MEANING,  # how to read run.batch_size (run_resume.batch_meaning_difference)
            **extra,
        }

    def _resumed_manifest(self, config, record: dict, device: str) -> dict:
        """The run's manifest with this resume appended (when, the command, what changed)."""
        manifest = json.loads((self.root / "manifest.json").read_text(encoding="utf-8"))
        manifest.setdefault("resumes", []).append({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv, "device": device,
            "config_hash": config_hash(config), **record})
        manifest["batch_size_means"] = BATCH_MEANING  # from here on, whatever it was before (record says)
        if record["changed"]:
            changes = (f"{k}: {a!r} -> {b!r}" for k, (a, b) in record["changed"].items())
            self.print("resume changes: " + "; ".join(changes))
        return manifest

    def warn(self, message: str) -> None:
        """A warning on stderr (even when quiet: it says something was wrong); rank 0 only."""
        if self.main:
            print(message, file=sys.stderr, flush=True)

    def finish(self) -> None:
        """The run is complete: delete the run it replaced (if any) and release the lock."""
        old = getattr(self, "_replaced", None)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            self._replaced = None
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint_path(self, step: int | None) -> Path:
        return self.checkpoints / ("final" if step is None else f"step_{step}")

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, dir) of every complete checkpoint, oldest first; temporary dirs never count."""
        found = []
        for path in self.checkpoints.glob("*"):
            step = checkpoint_step(path) if is_checkpoint_name(path.name) else None
            if step is not None:
                found.append((step, path))
        return sorted(found, key=lambda item: (item[0], item[1].name == "final"))

    def latest_checkpoint(self, warn=None) -> Path | None:
        """The newest intact checkpoint (run_resume.checkpoint_problem); each damaged newer one is
        passed over, with `warn(message)` saying what was wrong with it. UserError when checkpoints
        exist and none is intact (starting again from step 0 would silently discard the run)."""
        damaged = []
        for path in sorted(self._checkpoint_dirs(), key=_age, reverse=True):
            problem = checkpoint_problem(path)
            if problem is None:
                for message in damaged:
                    (warn or self.warn)(f"warning: {message}; resuming from {path} instead")
                return path
            damaged.append(f"checkpoint {path} is damaged ({problem})")
        if damaged:
            raise UserError(f"no intact checkpoint to resume from: {'; '.join(damaged)}; start again with --overwrite",
                            file=str(self.checkpoints))
        return None

    def _checkpoint_dirs(self) -> list[Path]:
        """Every checkpoint folder, complete or not (a lost state.json is damage, not absence)."""
        if not self.checkpoints.is_dir():
            return []
        return [p for p in self.checkpoints.iterdir() if p.is_dir() and is_checkpoint_name(p.name)]

    def prune(self, keep: int) -> None:
        """Remove all but the newest `keep` step_N checkpoints; `final` always stays."""
        if not self.main:
            return
        steps = [(s, p) for s, p in self.complete_checkpoints() if p.name == f"step_{s}"]  # never a renamed copy
        for _, path in steps[: max(len(steps) - keep, 0)]:
            shutil.rmtree(path, ignore_errors=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.main:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        with open(self.root / "metrics.jsonl", "a", encoding="utf-8") as handle:  # NaN -> null: valid JSON
            handle.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
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
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():  # a bad byte: that line
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
                handle.write(json.dumps(json_safe(record), ensure_ascii=False, allow_nan=False) + "\n")
        return path

    def print(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    def start_progress(self, total: int, done: int = 0, every: int = 10, description: str = "train") -> None:
        """A live bar on a terminal, else a plain line every `every` steps (`progress.py`); nothing when
        quiet or with progress off."""
        if not self.quiet and self.progress:
            self._progress = start_progress(total, done, every, description)

    def advance(self, step: int, status: str = "") -> None:
        if self._progress is not None:
            self._progress.advance(step, status)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb:
            self._tb.close()
            self._tb = None


def _age(path: Path) -> tuple[int, bool]:
    """Sort key of a checkpoint folder: its step (from state.json, else its name), `final` last on ties."""
    step = checkpoint_step(path)
    if step is None:
        name = path.name.removeprefix("step_")
        step = int(name) if name.isdigit() else (1 << 62 if path.name == "final" else -1)
    return step, path.name == "final"


def _inputs(config, data_files) -> list[str]:
    """The paths a run reads (model, reward model, tokenizer, data): `--overwrite` never deletes them."""
    from alignlab.model.lora import adapter_bases

    named = [getattr(getattr(config, section, None), "path", "") for section in ("model", "tokenizer")]
    named.append(getattr(getattr(config, "reward", None), "model", ""))
    named = [p for p in named if isinstance(p, str) and p]
    return [*named, *(base for p in named for base in adapter_bases(p)), *data_files]  # an adapter's base too


def _write_json(path: Path, record: dict) -> None:
    """`record` as indented JSON, written under a temporary name and renamed (complete or absent)."""
    write_file_atomic(path, json.dumps(json_safe(record), indent=2, allow_nan=False) + "\n")
