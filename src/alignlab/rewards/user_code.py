"""A user's reward function (`reward.function=file.py:fn`), loaded and called contained.

Its module runs, and every call of it, in a daemon worker thread (`run_contained`), so what it
raises there (sys.exit, KeyboardInterrupt) becomes an error naming it, never an exit with its
code, and a call that has not returned within `reward.timeout_s` stops the run naming it; a real
Ctrl-C or a second stop signal (`ForcedStop`) arrives in the main thread and passes through
untouched. Every path to user code (alignlab's GRPO and PPO `Scorer`, the TRL backend through the
same `Scorer`) goes through `load_reward_function`. A task file (`task=file.py:NAME`,
`tasks/user_task.py`) is run the same way, by `run_user_file`.

Left out: `os._exit` (nothing in-process can contain it) and process isolation of user code.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from alignlab.errors import UserError
from alignlab.rewards.base import RewardContractError, RewardFn, reward_name


def describe_escape(error: BaseException) -> str:
    """What a BaseException that is not an Exception means when user code raised it."""
    if isinstance(error, SystemExit):
        return f"called sys.exit({'' if error.code is None else repr(error.code)})"
    if isinstance(error, KeyboardInterrupt):  # raised in the worker thread: the code's own, not a Ctrl-C
        return "raised KeyboardInterrupt itself (a real Ctrl-C reaches alignlab, not the function)"
    return f"raised {type(error).__name__}: {error}"


def _caller_state() -> Callable[[], None]:
    """Sets a worker thread up as the calling thread is: torch's grad mode and CUDA device are per thread."""
    torch = sys.modules.get("torch")  # never imported here: a reward without torch pays nothing
    if torch is None:
        return lambda: None
    grad = torch.is_grad_enabled()
    device = torch.cuda.current_device() if torch.cuda.is_initialized() else None

    def apply() -> None:
        torch.set_grad_enabled(grad)
        if device is not None:
            torch.cuda.set_device(device)

    return apply


def run_contained(call: Callable[[], object], timeout_s: float) -> tuple[object, BaseException | None, bool]:
    """Run `call()` in a daemon worker thread -> (its value, what it raised or None, whether it finished
    within `timeout_s` seconds; 0 = no limit).

    Why a thread: Python delivers signals to the main thread, so whatever the worker raises is the code's
    own (a KeyboardInterrupt there is never a Ctrl-C), and a hung call leaves the main thread free to stop
    the run (the daemon thread dies with the process). The main thread waits in short joins, so a signal
    handler that raises (a second SIGTERM's `ForcedStop`, a Ctrl-C) interrupts the wait and passes through.
    The cost is one thread start per call (about 0.2 ms; a reward is called once per generation batch)."""
    outcome: dict = {}
    setup, context = _caller_state(), contextvars.copy_context()

    def work() -> None:
        try:
            setup()
            outcome["value"] = context.run(call)
        except BaseException as error:  # everything user code raises is judged in the calling thread
            outcome["error"] = error

    worker = threading.Thread(target=work, name="alignlab-user-code", daemon=True)
    worker.start()
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else math.inf
    while worker.is_alive():
        wait = min(0.1, deadline - time.monotonic())
        if wait <= 0:
            return None, None, False
        worker.join(wait)
    return outcome.get("value"), outcome.get("error"), True


def fresh_lists(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """`args` and `kwargs` with every list replaced by a shallow copy: what user code is handed, so that a
    function that edits its `completions` (or a column) in place cannot change the lists alignlab goes on
    using (a cleared `completions` would pass the one-value-per-completion check against itself).

    >>> completions = ["a", "b"]
    >>> (copied,), kw = fresh_lists((completions,), {"n": [1, 2], "k": 3})
    >>> copied == completions and copied is not completions, kw
    (True, {'n': [1, 2], 'k': 3})
    """
    fresh = [list(a) if isinstance(a, list) else a for a in args]
    return tuple(fresh), {k: list(v) if isinstance(v, list) else v for k, v in kwargs.items()}


class UserReward:
    """A user's reward function, called contained (`run_contained`): an exception reaches `call_reward`
    as it was raised (which names the sample); sys.exit, a KeyboardInterrupt it raises and a call that
    has not returned within `timeout_s` seconds (0 = no limit) become a `RewardContractError` naming the
    function and where it came from. It is handed copies of the lists it is called with (`fresh_lists`);
    the values it returns are passed on untouched."""

    def __init__(self, fn: RewardFn, origin: str, timeout_s: float = 0.0):
        self.fn, self.origin, self.timeout_s = fn, origin, timeout_s
        self.__name__ = reward_name(fn)

    def __repr__(self) -> str:
        return f"reward function {self.__name__!r} ({self.origin})"

    def __call__(self, *args, **kwargs) -> list:
        args, kwargs = fresh_lists(args, kwargs)
        value, error, finished = run_contained(functools.partial(self.fn, *args, **kwargs), self.timeout_s)
        if not finished:
            raise RewardContractError(f"{self!r} did not return within {self.timeout_s:g} s (reward.timeout_s; "
                                      f"raise it, or 0 for no limit)")
        if isinstance(error, Exception):
            raise error
        if error is not None:
            raise RewardContractError(f"{self!r} {describe_escape(error)}; expected a list of floats")
        return value


def run_user_file(path, module_name: str, timeout_s: float = 0.0) -> tuple[object, BaseException | None, bool]:
    """Run the Python file at `path` as a fresh module called `module_name`, contained (`run_contained`)
    -> (the module, what it raised or None, whether it finished within `timeout_s` seconds; 0 = no limit).
    The module is in sys.modules under `module_name` (unique to the file) while the file runs, because
    `dataclasses` looks a class's module up there (a @dataclass under `from __future__ import annotations`
    fails without it), and taken out again afterwards: nothing is left in sys.path or sys.modules. The file
    is compiled here, not by the import system, so no __pycache__ is written beside the user's file."""
    import importlib.util

    fresh = importlib.util.module_from_spec(importlib.util.spec_from_file_location(module_name, path))

    def run_file():
        sys.modules[module_name] = fresh
        try:
            exec(compile(path.read_bytes(), str(path), "exec", dont_inherit=True), fresh.__dict__)
        finally:
            if sys.modules.get(module_name) is fresh:
                del sys.modules[module_name]
        return fresh

    return run_contained(run_file, timeout_s)


def user_module_name(kind: str, path) -> str:
    """A module name of its own for each user file: `kind`, its stem and a digest of its resolved path.

    >>> user_module_name("reward", Path("rewards/my.reward-v2.py")).rsplit("_", 1)[0]
    'alignlab_user_reward_my_reward_v2'
    """
    resolved = Path(path).resolve()
    stem = re.sub(r"[^0-9A-Za-z_]", "_", resolved.stem)
    return f"alignlab_user_{kind}_{stem}_{hashlib.sha256(str(resolved).encode()).hexdigest()[:8]}"


def _load_module(where: str, name: str, timeout_s: float):
    """Import the module named by a reward.function spec, contained like its calls (`run_contained`)."""
    import importlib

    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise UserError("no such file", file=str(path), key="reward.function")
        module, error, finished = run_user_file(path, user_module_name("reward", path), timeout_s)
        doing, place = f"loading reward function {name!r}: running the file", {"file": str(path)}
    else:
        module, error, finished = run_contained(lambda: importlib.import_module(where), timeout_s)
        doing, place = f"loading reward function {name!r}: importing {where}", {}
    if not finished:
        raise UserError(f"{doing} did not finish within {timeout_s:g} s (reward.timeout_s)", key="reward.function",
                        **place)
    if isinstance(error, ImportError) and not place:
        raise UserError(f"cannot import {where!r}: {error}", key="reward.function") from error
    if isinstance(error, Exception):  # the user's file failed to run: say where
        raise UserError(f"{doing} raised {type(error).__name__}: {error}", key="reward.function", **place) from error
    if error is not None:
        raise UserError(f"{doing} {describe_escape(error)}", key="reward.function", **place) from None
    return module


def load_reward_function(spec: str, timeout_s: float = 0.0) -> UserReward:
    """The reward function named by `spec`: "path/to/file.py:name" (the file is run as a module) or
    "package.module:name" (imported), contained (`UserReward`): each call may take `timeout_s` seconds
    (0 = no limit), and so may running its module. This runs the user's code, as the user asked.

    >>> load_reward_function("alignlab.tasks.gsm8k:format_reward").__name__
    'format_reward'
    """
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise UserError(f"expected 'file.py:function' or 'module:function', got {spec!r}", key="reward.function")
    module = _load_module(where, name, timeout_s)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"{where} has no callable {name!r}", key="reward.function")
    return UserReward(fn, where, timeout_s)
