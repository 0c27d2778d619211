"""One writer per folder: an exclusive OS lock (flock) on the folder's `.lock` file (`FolderLock`).

Split from `outputs.py` (what alignlab may write where); a run holds its lock from start to finish.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from alignlab.errors import UserError

LOCK = ".lock"
_HELD: dict[Path, FolderLock] = {}  # locks this process holds, by resolved folder


class FolderLock:
    """One writer per folder: an exclusive OS lock (flock) on `<folder>/.lock`, held until `release`.

    The lock file names its owner (pid, host, start time) for the message a second writer gets.
    The OS drops the lock when its process dies; a later writer then finds the dead owner's
    record and takes over with a warning. A folder this process already holds (a trainer called
    again in the same interpreter, e.g. to resume after an exception) is taken over silently.
    """

    def __init__(self, folder: Path):
        self.folder, self.fd = folder, None

    def acquire(self, warn=print) -> FolderLock:
        import fcntl
        import socket

        key = self.folder.resolve()
        if key in _HELD:
            _HELD.pop(key).release()
        try:  # never through a symbolic link: writing the owner record would truncate what it points at
            fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            raise UserError(f"{LOCK}: {err.strerror or err} (a link is refused)", file=str(self.folder)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(os.read(fd, 4096))
            os.close(fd)
            raise UserError(f"in use by another alignlab process ({owner}): wait for it to finish or stop it; "
                            "two writers would corrupt the run", file=str(self.folder)) from None
        previous = os.read(fd, 4096)
        if previous.strip():
            warn(f"warning: {self.folder}: taking over the lock of a process that is gone ({_owner(previous)})")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        self.fd, _HELD[key] = fd, self
        return self

    def release(self) -> None:
        """Clear the owner record and drop the lock (a clean finish leaves no stale owner behind)."""
        if self.fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        key = self.folder.resolve()
        if _HELD.get(key) is self:
            del _HELD[key]


def _owner(raw: bytes) -> str:
    try:
        record = json.loads(raw.decode("utf-8"))
        return f"pid {record['pid']} on {record['host']}, since {record['since']}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "owner unknown"
