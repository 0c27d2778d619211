"""Errors caused by the user's input, worded for people.

`UserError` carries where the problem is (file, line, key) and prints as one line:
`recipe.yaml:12: optim.lr: expected a float, got 'abc'`. The CLI prints it and exits 2.
Internal bugs raise ordinary exceptions.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: says what was wrong, where, and what was expected, on one line."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None):
        self.message = " ".join(str(message).splitlines())  # the CLI prints one line
        self.file, self.line, self.key = file, line, key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        if self.key is not None:
            where += f"{self.key}: "
        return where + self.message


class TrainingStopped(Exception):
    """A run stopped on purpose, its last good checkpoint kept: a non-finite loss or gradient
    (`NonFinite`), or a stop signal (`Interrupted`). The message says where to resume from."""

    exit_code = 1


class NonFinite(TrainingStopped):
    """A non-finite loss or gradient norm under nan_policy=stop."""


class Interrupted(TrainingStopped):
    """SIGINT or SIGTERM: the loop saved a checkpoint after the step in flight and stopped."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class ForcedStop(KeyboardInterrupt):
    """A second SIGINT or SIGTERM during training: stop at once, without the checkpoint of the step in
    flight. A KeyboardInterrupt, so `except Exception` (code wrapping user functions) lets it through;
    distinct from one a user's function raises, which alignlab reports as that function's error."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum  # as Interrupted: 130 for SIGINT, 143 for SIGTERM
