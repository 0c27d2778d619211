"""What alignlab may create, replace and delete on disk: only what it made itself.

Every folder alignlab writes as a whole (a run, an evaluation, a comparison, an audit, an export,
a sweep) carries a marker, `.alignlab.json` (`{"kind": "eval", "version": ..., "created": ...}`),
written inside the folder before it becomes visible. A folder is *ours* when it holds a marker of
the expected kind, or (written by an earlier version, before markers) when it has that kind's
signature: a run's `config.yaml` + a `manifest.json` holding alignlab's config hash and versions, an
evaluation's files with a `summary.json` holding its sample count and pass rate, a finished sweep's
`sweep.yaml` + `sweep.json`, only the file names an audit or comparison writes. An unmarked export
is never ours (its files are any model folder's). Nothing else is ever replaced or deleted,
whatever the flags say.

`new_output(target, kind)` is the one way a whole folder is written: files go to a hidden temporary
folder beside the target, the marker (the completeness mark readers check) last, then a rename; an
old output is moved aside first and deleted once the new one is in place. A process killed in between
leaves `.NAME.tmp-PID-*` / `.NAME.old-PID-*` siblings; the next start on the target restores an old
folder whose replacement never arrived and deletes the rest, once their process is gone. A single
file is written by `write_file_atomic`: a temporary sibling renamed into place.

`check_target` / `check_output_file` refuse, before anything is written, paths that could cost the
user something: empty, the current directory, an ancestor of it, home, root, a file in the way, any
overlap with the command's inputs (checkpoint, model, data files). Left out: Windows' file-replace
semantics; cross-filesystem outputs (temporary folders are siblings, so renames stay atomic).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alignlab.errors import UserError

MARKER = ".alignlab.json"
# The files an earlier version wrote in each kind of folder (legacy recognition, before markers). An
# unmarked export is never taken for ours: its files are any transformers model folder's, the user's own.
LEGACY_FILES = {
    "eval": {"summary.json", "summary.md", "samples.jsonl"},
    "audit": {"audit.json", "audit.md"},
    "compare": {"compare.html", "compare.md", "compare_files"},
}
# ...and what its JSON record held that a user's file of the same name would not.
LEGACY_RECORD = {"run": ("manifest.json", ("config_hash", "versions")),
                 "eval": ("summary.json", ("n_samples", "pass_rate")),
                 "sweep": ("sweep.json", ("rows", "runs"))}
COMPLETE_EVAL = {"summary.json", "samples.jsonl"}  # an unmarked (older) evaluation is complete with both


def _version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("alignlab")
    except metadata.PackageNotFoundError:
        return None


def write_marker(directory: Path, kind: str) -> None:
    record = {"kind": kind, "version": _version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (directory / MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")


def marker_kind(directory: Path) -> str | None:
    """The kind recorded in `directory`'s marker, or None (no marker, or unreadable)."""
    try:
        record = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("kind") if isinstance(record, dict) else None


def _legacy_record(directory: Path, kind: str) -> bool:
    """True when the folder holds the JSON record an earlier alignlab wrote for `kind` (its keys checked)."""
    name, keys = LEGACY_RECORD[kind]
    try:
        record = json.loads((directory / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and all(key in record for key in keys)


def is_run_dir(directory: Path) -> bool:
    """A training run's directory: marked, or an earlier version's (config.yaml and an alignlab
    manifest.json: a config hash and versions, not any file of that name)."""
    if marker_kind(directory) is not None:
        return marker_kind(directory) == "run"
    return (directory / "config.yaml").is_file() and _legacy_record(directory, "run")


def owned(directory: Path, kind: str) -> bool:
    """True when alignlab made `directory` as an output of `kind` (marker, or legacy signature)."""
    found = marker_kind(directory)
    if found is not None:
        return found == kind
    if kind == "run":
        return is_run_dir(directory)
    if kind == "sweep":  # an earlier version's finished sweep: its recipe copy and its report record
        return (directory / "sweep.yaml").is_file() and _legacy_record(directory, "sweep")
    names = {p.name for p in directory.iterdir()}
    if not names or kind not in LEGACY_FILES or not names <= LEGACY_FILES[kind] | {MARKER}:
        return False
    return kind not in LEGACY_RECORD or _legacy_record(directory, kind)


def is_empty_dir(directory: Path) -> bool:
    return directory.is_dir() and not any(directory.iterdir())


def _protected_places() -> list[tuple[Path, str]]:
    here = Path.cwd().resolve()
    places = [(here, "the current directory"), *((p, "an ancestor of the current directory") for p in here.parents)]
    return [*places, (Path.home().resolve(), "your home directory")]


def check_target(path: str | os.PathLike | None, *, key: str | None = None, protect: Iterable = (),
                 what: str = "output") -> Path:
    """`path` as an output location, or a UserError when writing there could cost the user something.

    `protect` names the command's inputs (checkpoints, model and data paths): the output may not
    be one of them, inside one, or hold one.
    """
    if path is None or not str(path).strip():
        raise UserError(f"empty {what} path: name a folder", key=key)
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # an undecodable byte: every record that names the folder would fail later
        raise UserError(f"the {what} path {str(path)!a} is not UTF-8 text: name a folder in UTF-8", key=key) from None
    target = Path(path).expanduser()
    if target.is_symlink():  # written where the link points (replacing the link would strand its folder)
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise UserError(f"{what} path exists and is not a folder (alignlab never replaces a file in the way)",
                        file=str(path), key=key)
    full = target.resolve()
    for place, name in _protected_places():
        if full == place:
            raise UserError(f"refusing to write the {what} into {name}: name a new folder", file=str(path), key=key)
    for source in protect:
        text = str(source or "").strip()
        for name in {text, re.sub(r"\[-?\d*:-?\d*(:-?\d*)?\]$", "", text)} - {""}:  # as written, and unsliced
            src = Path(name).expanduser().resolve()
            if full == src or src.is_relative_to(full) or full.is_relative_to(src):
                raise UserError(f"the {what} folder overlaps an input of this command ({source}): writing it "
                                "could destroy that input; choose another folder", file=str(path), key=key)
    return target


def check_output_file(path: str | os.PathLike | None, *, protect: Iterable = (), ours=lambda path: False,
                      key: str | None = None) -> Path:
    """`path` as an output *file*: not empty, not a folder, not one of the inputs (`protect`), and
    an existing file is replaced only when `ours(path)` says alignlab wrote it."""
    if path is None or not str(path).strip():
        raise UserError("empty output path: name a file", key=key)
    target = Path(path).expanduser()
    if target.is_dir():
        raise UserError("output path is a folder: name a file", file=str(path), key=key)
    above = next(folder for folder in target.absolute().parents if folder.exists())  # missing ones get made
    if not above.is_dir():
        raise UserError(f"{above} is a file, not a folder: the output cannot go inside it", file=str(path), key=key)
    for source in protect:
        if source and Path(str(source)).expanduser().resolve() == target.resolve():
            raise UserError("the output file is an input of this command: writing it would destroy that input",
                            file=str(path), key=key)
    if target.exists() and not ours(target):
        raise UserError("file exists and was not written by alignlab: choose a new file name (alignlab never "
                        "replaces a file it did not make)", file=str(path), key=key)
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _leftovers(target: Path) -> list[tuple[Path, str, int]]:
    """(path, "tmp" | "old", pid) of every hidden sibling a replacement of `target` left behind: named
    exactly as `temp_beside` / `move_aside` name them (mkdtemp's 8 random characters), and an "old" one
    must be an alignlab output itself. A user's `.NAME.old-2023-backup` is none of these."""
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-(\d+)-[a-z0-9_]{{8}}")
    found = [(path, match[1], int(match[2])) for path in target.parent.iterdir()
             if (match := pattern.fullmatch(path.name)) and not path.is_symlink()]
    return [(path, role, pid) for path, role, pid in found if role == "tmp" or marker_kind(path) or is_run_dir(path)]


def _in_use(folder: Path) -> bool:
    """True when a live process holds `folder`'s run lock (`folder_lock.FolderLock`)."""
    from alignlab.folder_lock import FolderLock

    try:
        FolderLock(folder).acquire(warn=lambda message: None).release()
    except UserError:
        return True
    return False


def clean_leftovers(target: Path) -> None:
    """Finish what a killed or stopped replacement of `target` left, once its process is gone: restore the
    moved-aside old folder when its replacement never arrived or is a run that saved no checkpoint (that
    run is deleted: nothing in it can be resumed); keep it while the replacing run is resumable but not
    finished; otherwise delete it, and every temporary sibling."""
    for path, role, pid in _leftovers(target):
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if role == "old" and marker_kind(target) == "run":
            saved = {p.parent.name for p in (target / "checkpoints").glob("*/state.json")}
            if (saved and "final" not in saved) or (not saved and _in_use(target)):
                continue  # the new run can still be resumed, or trains now: the old one stays aside
            if not saved:
                shutil.rmtree(target)
        if role == "old" and not target.exists():
            path.rename(target)
        else:
            shutil.rmtree(path, ignore_errors=True)


def write_file_atomic(path: str | os.PathLike, data: str | bytes, *, what: str = "") -> Path:
    """`data` (text as UTF-8) written to `path` (its missing folders made) whole or not at all: a temporary
    sibling renamed into place, which never outlives a failure. An OSError becomes a UserError."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data  # an unencodable text fails before any file
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(raw)
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write{' the ' + what if what else ''}: {err.strerror or err}", file=str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)  # gone after a successful rename; a partial file after a failure
    return path


def temp_beside(target: Path) -> Path:
    """A new hidden folder beside `target`, named so that `clean_leftovers` recognises it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))


def move_aside(target: Path) -> Path:
    """Rename `target` to a hidden `.NAME.old-PID-*` sibling (deleted once its replacement is in place)."""
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-", dir=target.parent))
    old.rmdir()
    target.rename(old)
    return old


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Every file under `directory` and the folder itself on disk before a rename publishes them."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(directory)


def swap_in(tmp: Path, target: Path) -> None:
    """Rename the complete folder `tmp` to `target`; an existing `target` is moved aside first and
    deleted only after the rename (the caller has decided it may be replaced)."""
    old = move_aside(target) if target.exists() else None
    tmp.rename(target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_replaceable(target: Path, kind: str, *, replace: bool, key: str | None = None, hint: str = "") -> None:
    """UserError unless an existing `target` may be replaced by a new output of `kind`: it is empty,
    or alignlab made it as that kind and `replace` allows it."""
    if not target.exists() or is_empty_dir(target):
        return
    if not owned(target, kind):
        raise UserError(f"folder exists and was not written by alignlab as a {kind} output; alignlab replaces only "
                        "folders it made: choose a new folder, or empty this one yourself", file=str(target), key=key)
    if not replace:
        raise UserError(f"{kind} folder already exists{hint}", file=str(target), key=key)


def check_output(target: str | Path, kind: str, *, replace: bool = True, protect: Iterable = (),
                 key: str | None = None, hint: str = "") -> Path:
    """`new_output`'s checks alone, for a command to run before its slow work: the path is safe,
    a killed earlier attempt is cleaned up, and an existing folder may be replaced."""
    target = check_target(target, key=key, protect=protect, what=kind)
    clean_leftovers(target)
    check_replaceable(target, kind, replace=replace, key=key, hint=hint)
    return target


@contextmanager
def new_output(target: str | Path, kind: str, *, replace: bool = True, protect: Iterable = (),
               key: str | None = None, hint: str = "") -> Iterator[Path]:
    """Yield a hidden temporary folder to fill; on success it is marked and renamed to `target`.

    An existing `target` is replaced only when it is empty or alignlab's own output of the same
    kind (and `replace`; `hint` ends the refusal); on any error the temporary folder is deleted and
    `target` is untouched.
    """
    target = check_output(target, kind, replace=replace, protect=protect, key=key, hint=hint)
    try:
        tmp = temp_beside(target)
    except OSError as err:
        raise UserError(f"cannot create the {kind} folder: {err.strerror or err}", file=str(target), key=key) from err
    try:
        yield tmp
        write_marker(tmp, kind)
        swap_in(tmp, target)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write the {kind} folder: {err.strerror or err} (nothing was changed there)",
                        file=str(target), key=key) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def complete_eval(directory: Path) -> bool:
    """An evaluation folder a reader may trust: marked complete, or an earlier version's with both files."""
    if marker_kind(directory) is not None:
        return marker_kind(directory) == "eval" and (directory / "summary.json").is_file()
    return all((directory / name).is_file() for name in COMPLETE_EVAL)


def json_safe(value):
    """`value` with every non-finite float replaced by None, so `json.dumps` writes valid JSON.

    >>> json_safe({"loss": float("nan"), "x": [1.0, float("inf")]})
    {'loss': None, 'x': [1.0, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
