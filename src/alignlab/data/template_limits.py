"""Bounds on rendering a chat template: a limit on the characters produced and on the time taken.

Chat templates are code shipped with a checkpoint (`tokenizer_config.json`), so rendering one is
bounded: transformers renders it in jinja2's sandbox, and `_render_limits` adds a limit on the characters
produced (MAX_TEMPLATE_CHARS, checked as each chunk is produced, so a loop emitting gigabytes stops
at the limit) and on time (MAX_TEMPLATE_SECONDS, checked per chunk, plus a SIGALRM backstop for a
loop that emits nothing, in the main thread on Unix). Either stop raises `_TemplateLimit`, which
`Tokenizer._render` (data/tokenizer.py) turns into a UserError naming the tokenizer. A template that
grows one string without emitting it (doubling it with `~`) is stopped by the time limit only.

Left out: renderings outside `_render_limits`: without an active budget the hooks behave exactly as
jinja2's own, so other jinja2 users in the process are unchanged.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# A chat rendering is a few KB; these bound a template that loops (see the module docstring).
MAX_TEMPLATE_CHARS = 1_000_000
MAX_TEMPLATE_SECONDS = 10.0


class _TemplateLimit(Exception):
    """A chat template went over MAX_TEMPLATE_CHARS or MAX_TEMPLATE_SECONDS (the message says which)."""


class _Budget:
    """What a rendering may still produce, and until when."""

    def __init__(self, chars: int, seconds: float):
        self.chars, self.deadline = chars, time.monotonic() + seconds

    def spend(self, n: int) -> None:
        self.chars -= n
        if self.chars < 0:
            raise _TemplateLimit(f"exceeded the limit of {MAX_TEMPLATE_CHARS} characters")
        if time.monotonic() > self.deadline:
            raise _TemplateLimit(f"exceeded the limit of {MAX_TEMPLATE_SECONDS:g} seconds")


_BUDGET: ContextVar[_Budget | None] = ContextVar("alignlab_chat_template_budget", default=None)


def _bounded_concat(chunks: Iterator[str]) -> str:
    """jinja2's `Environment.concat` ("".join of the rendered chunks), spending the active budget per chunk."""
    budget = _BUDGET.get()
    if budget is None:
        return "".join(chunks)
    parts = []
    for chunk in chunks:
        budget.spend(len(chunk))
        parts.append(chunk)
    return "".join(parts)


def _bounded_binop(self, context, operator: str, left, right):
    """The sandbox's `call_binop`, refusing `'x' * 10**9` (a sequence repeated past the budget) first."""
    from jinja2.sandbox import SandboxedEnvironment

    budget = _BUDGET.get()
    if budget is not None and operator == "*":
        sequence = next((v for v in (left, right) if isinstance(v, (str, list, tuple))), None)
        times = next((v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)), None)
        if sequence is not None and times is not None and len(sequence) * times > budget.chars:
            raise _TemplateLimit(f"exceeded the limit of {MAX_TEMPLATE_CHARS} characters")
    return SandboxedEnvironment.call_binop(self, context, operator, left, right)


def _install_bounds() -> None:
    """Route the rendering of every jinja2 ImmutableSandboxedEnvironment (transformers' chat template
    environment) through the budget. Without an active budget (`_render_limits`) both hooks behave
    exactly as jinja2's own, so other renderings in the process are unchanged."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment as Env

    if Env.__dict__.get("call_binop") is not _bounded_binop:
        Env.concat = staticmethod(_bounded_concat)
        Env.intercepted_binops = frozenset(Env.intercepted_binops | {"*"})  # read when a template compiles
        Env.call_binop = _bounded_binop


@contextmanager
def _render_limits():
    """A budget of MAX_TEMPLATE_CHARS / MAX_TEMPLATE_SECONDS for the renderings inside, with a SIGALRM
    backstop for loops that emit nothing (main thread on Unix, when no other timer is running)."""
    _install_bounds()
    token = _BUDGET.set(_Budget(MAX_TEMPLATE_CHARS, MAX_TEMPLATE_SECONDS))
    alarm = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
             and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if alarm:
        def on_alarm(signum, frame):
            raise _TemplateLimit(f"exceeded the limit of {MAX_TEMPLATE_SECONDS:g} seconds")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, MAX_TEMPLATE_SECONDS)
    try:
        yield
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        _BUDGET.reset(token)
