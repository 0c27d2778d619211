"""Training progress a person can follow, on a terminal or in a log file.

On a terminal (stdout is a TTY) a live bar: steps done, elapsed, ETA and the trainer's status
(`rich.progress`). Anywhere else (`nohup ... > train.log`, CI, a notebook's captured output) one
plain line every `every` steps and at the last step, as the bar would show it:

    step 20/120 | reward +0.512  pass 62%  held-out 58%  len 41  kl 0.003 | 4.21 s/step | eta 7m01s

Step time is the mean wall time of the steps since the previous line; ETA is the steps left at
the mean pace since this process started training.
"""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    """'7m01s', '1h02m', '42s'.

    >>> _duration(421), _duration(3720), _duration(42.4)
    ('7m01s', '1h02m', '42s')
    """
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class PlainProgress:
    """One line every `every` steps (and at the last) on `stream`; nothing in between."""

    def __init__(self, total: int, done: int = 0, every: int = 10, stream=None):
        self.total, self.every, self.stream = total, max(1, every), stream or sys.stdout
        self.first_step, self.last_step = done, done
        self.started = self.last_time = time.perf_counter()

    def line(self, step: int, status: str, now: float) -> str:
        per_step = (now - self.last_time) / max(step - self.last_step, 1)
        pace = (now - self.started) / max(step - self.first_step, 1)
        parts = [f"step {step}/{self.total}", status, f"{per_step:.2f} s/step",
                 f"eta {_duration(pace * (self.total - step))}"]
        return " | ".join(p for p in parts if p)

    def advance(self, step: int, status: str = "") -> None:
        if step % self.every and step != self.total:
            return
        now = time.perf_counter()
        print(self.line(step, status, now), file=self.stream, flush=True)
        self.last_step, self.last_time = step, now

    def stop(self) -> None:
        pass


class BarProgress:
    """rich's live bar with the trainer's status after it."""

    def __init__(self, total: int, done: int = 0, description: str = "train"):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                            TextColumn("{task.fields[status]}"), transient=False)
        self.bar.start()
        self.task = self.bar.add_task(description, total=total, completed=done, status="")

    def advance(self, step: int, status: str = "") -> None:
        self.bar.update(self.task, completed=step, status=status)

    def stop(self) -> None:
        self.bar.stop()


def start_progress(total: int, done: int = 0, every: int = 10, description: str = "train"):
    """A live bar on a terminal, else plain lines every `every` steps."""
    if sys.stdout.isatty():
        return BarProgress(total, done, description)
    return PlainProgress(total, done, every)
