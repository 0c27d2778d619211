"""A task written in the user's own file, named by path wherever a task name is accepted:
`task=path/to/file.py:NAME` (NAME a module-level `Task` in it; the file alone means `TASK`).
`tasks/registry.get_task` calls here for a value that names a file, so every command, and every
sweep worker process, reads the task the same way.

The file runs as a user's reward file does (`rewards/user_code.run_user_file`): in a worker thread,
so a `sys.exit` at import is an error naming the file rather than an exit; under a module name derived
from its path; with nothing left in sys.path or sys.modules; once per file per process (cached by its
resolved path). The task's own callables are contained the same way (`contain_task`): what its check,
`reward(mode)`, example readers or references raise, and a result of the wrong kind (a check returning
a bool, a reader returning a generator or examples without a text "prompt"), is an error naming the
file. Every failure is a one-line UserError (key "task") naming the file and, when the file raised or
a function of it returned the wrong kind, the line.

Left out: a time limit on running the file or its functions (tasks have no timeout setting), the
callables inside its `attacks`, reloading a file edited while the process runs, and process isolation
of user code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignlab.errors import UserError
from alignlab.rewards.base import reward_name
from alignlab.rewards.penalties import Verdict, snippet
from alignlab.rewards.user_code import describe_escape, fresh_lists, run_contained, run_user_file, user_module_name

FORM = "path/to/file.py:NAME"
_MODULES: dict[Path, object] = {}  # resolved path -> the module its one run made


def task_file_spec(value: str) -> tuple[str, str] | None:
    """(file, attribute) when `value` names a task file, None when it is a plain task name.

    >>> task_file_spec("tasks/mine.py:POEMS"), task_file_spec("mine.py"), task_file_spec("gsm8k")
    (('tasks/mine.py', 'POEMS'), ('mine.py', 'TASK'), None)
    """
    where, sep, name = value.rpartition(":")
    if sep and where and "/" not in name and "\\" not in name:
        return where, name
    if value.endswith(".py") or "/" in value or "\\" in value:
        return value, "TASK"
    return None


def _error_line(error: BaseException, path: Path) -> int | None:
    """The line of the user's file where `error` arose: a syntax error's own, else the traceback's last
    frame in that file."""
    if isinstance(error, SyntaxError) and error.filename == str(path):
        return error.lineno
    line, trace = None, error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == str(path):
            line = trace.tb_lineno
        trace = trace.tb_next
    return line


def _failure(doing: str, error: BaseException, path: Path) -> str:
    """What went wrong when the file's code, `doing` something, raised (or exited) with `error`."""
    if isinstance(error, UserError):  # alignlab refused something the file did (register_task, say)
        return f"{doing}: {error.message if error.file is None else error}"
    if isinstance(error, SyntaxError) and error.filename == str(path):
        return f"{doing} raised SyntaxError: {error.msg}"
    if isinstance(error, Exception):
        return f"{doing} raised {type(error).__name__}: {error}"
    return f"{doing} {describe_escape(error)}"


def _run_failed(error: BaseException, where: str, path: Path) -> UserError:
    """The one-line error for a task file that raised (or exited) while it ran."""
    return UserError(_failure("running the task file", error, path), file=where, line=_error_line(error, path),
                     key="task")


def _module(where: str) -> tuple[Path, object]:
    """(resolved path, module) of the task file `where`, run on first use and cached."""
    path = Path(where).expanduser()
    if not path.exists():
        raise UserError(f"no such task file (expected {FORM})", file=where, key="task")
    if not path.is_file() or path.suffix != ".py":
        raise UserError(f"not a .py file; a task file is Python: {FORM}", file=where, key="task")
    path = path.resolve()
    if path not in _MODULES:
        module, error, _ = run_user_file(path, user_module_name("task", path))  # no time limit: always finishes
        if error is not None:
            raise _run_failed(error, where, path) from None
        _MODULES[path] = module
    return path, _MODULES[path]


def load_file_attribute(where: str, name: str, kind: type) -> tuple[Path, object]:
    """(resolved path, value) of the module-level `name` of the task file `where`, which must be a `kind`
    (the registry passes `Task`); a UserError naming the file otherwise."""
    if not name.isidentifier():
        raise UserError(f"expected {FORM} (NAME a module-level {kind.__name__}), got {where}:{name}", file=where,
                        key="task")
    path, module = _module(where)
    found = vars(module)
    if name not in found:
        have = [k for k, v in found.items() if isinstance(v, kind) and not k.startswith("_")]
        offer = f"its {kind.__name__} attributes: {', '.join(have)}" if have else \
            f"it defines no {kind.__name__} (expected a module-level one, e.g. TASK = {kind.__name__}(...))"
        raise UserError(f"no attribute {name!r}; {offer}", file=where, key="task")
    if not isinstance(found[name], kind):
        raise UserError(f"{name} is of type {type(found[name]).__name__}, not a {kind.__name__} "
                        f"({kind.__module__}.{kind.__qualname__})", file=where, key="task")
    return path, found[name]


@dataclass(frozen=True)
class _Place:
    """Where a file task's callables came from, for the errors they cause: the file as the user named it
    (`where`), its resolved path (what tracebacks carry) and the attribute holding the task."""

    where: str
    path: Path
    attribute: str

    def error(self, text: str, fn: Callable | None = None, raised: BaseException | None = None) -> UserError:
        """`text` about the task as a UserError at the line that raised, else the line defining `fn`."""
        line = None if raised is None else _error_line(raised, self.path)
        code = getattr(fn, "__code__", None)
        if line is None and code is not None and code.co_filename == str(self.path):
            line = code.co_firstlineno
        return UserError(f"{self.attribute}.{text}", file=self.where, line=line, key="task")

    def call(self, fn: Callable, doing: str, *args, on: str = "", **kwargs):
        """fn(*args, **kwargs), contained (`run_contained`): what it raises or exits with is a UserError
        (`on`: the input it was given, said after the error)."""
        value, error, _ = run_contained(functools.partial(fn, *args, **kwargs), 0)  # 0: no time limit
        if error is not None:
            raise self.error(_failure(doing, error, self.path) + on, fn, error) from error
        return value


class _FileReward:
    """A reward function made by a task file's `reward(mode)`, called with copies of the lists it is given
    (`fresh_lists`); any other attribute (a `Reward`'s breakdown, say) is the function's own."""

    def __init__(self, fn: Callable):
        self.fn, self.__name__ = fn, reward_name(fn)

    def __call__(self, *args, **kwargs):
        args, kwargs = fresh_lists(args, kwargs)
        return self.fn(*args, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "fn":  # never during unpickling or copying, before `fn` is set
            raise AttributeError(name)
        return getattr(self.fn, name)


def _kind(value) -> str:
    """A value's type for a message, and the value itself when it is short and plain.

    >>> _kind(True), _kind("n"), _kind(x for x in ()), _kind(None)
    ('bool True', "str 'n'", 'generator', 'None')
    """
    if value is None:
        return "None"
    text = repr(value) if isinstance(value, bool | int | float | str) else ""
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:40] + '...'}".rstrip()


def _guard_check(fn: Callable, place: _Place) -> Callable:
    def check(prompt, completion, *args, **columns):
        on = f" (on prompt {snippet(str(prompt))}, completion {snippet(str(completion))})"
        verdict = place.call(fn, "check", prompt, completion, *args, on=on, **columns)
        if not isinstance(verdict, Verdict):
            raise place.error(f"check returned {_kind(verdict)}; expected a Verdict (alignlab.rewards.penalties."
                              f"Verdict: every rule's RuleResult by name)", fn)
        return verdict

    return check


def _guard_reward(fn: Callable, place: _Place) -> Callable:
    def reward(mode: str):
        made = place.call(fn, f"reward({mode!r})", mode)
        if not callable(made):
            raise place.error(f"reward({mode!r}) returned {_kind(made)}; expected a reward function "
                              f"(prompts, completions, **columns) -> one float per completion", fn)
        return _FileReward(made)

    return reward


def _example_problem(row, columns: tuple[str, ...]) -> str:
    """What is wrong with one example of a task file ("" when nothing is)."""
    if not isinstance(row, dict):
        return f"is {_kind(row)}, not a dict"
    if "prompt" not in row:
        return f"has no 'prompt' (its keys: {', '.join(map(str, row)) or 'none'})"
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        return f"has prompt {_kind(row['prompt'])}"
    missing = [name for name in columns if name not in row]
    return f"lacks the task's column(s) {', '.join(missing)}" if missing else ""


def _guard_examples(fn: Callable, place: _Place, field: str, columns: tuple[str, ...]) -> Callable:
    wanted = "a list of dicts, each with a non-empty text 'prompt'" + \
        (f" and the task's columns {', '.join(map(repr, columns))}" if columns else "")

    def examples(path: str, lang: str) -> list[dict]:
        rows = place.call(fn, field, path, lang)
        if not isinstance(rows, list | tuple):
            raise place.error(f"{field} returned {_kind(rows)}; expected {wanted}", fn)
        for i, row in enumerate(rows):
            if problem := _example_problem(row, columns):
                raise place.error(f"{field}: example {i} {problem}; expected {wanted}", fn)
        return list(rows)

    return examples


def _guard_references(fn: Callable, place: _Place) -> Callable:
    def references(lang: str) -> list[tuple[str, str]]:
        pairs = place.call(fn, f"references({lang!r})", lang)
        if not isinstance(pairs, list | tuple) or not all(
                isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(t, str) for t in p) for p in pairs):
            raise place.error(f"references({lang!r}) returned {_kind(pairs)}; expected a list of "
                              f"(prompt, answer) text pairs", fn)
        return list(pairs)

    return references


def _alignlab_own(fn) -> bool:
    """alignlab's own functions (a file task built from a built-in task's parts) keep their contract: they are
    used as they are."""
    return (getattr(fn, "__module__", None) or "").startswith("alignlab.")


def _checked_fields(task, place: _Place) -> tuple[str, ...]:
    """The task's columns as a tuple, once its name, columns and callables are of the right kinds."""
    if not isinstance(task.name, str) or not task.name.strip():
        raise place.error(f"name is {_kind(task.name)}; expected a non-empty text")
    columns = task.columns
    if isinstance(columns, str) or not isinstance(columns, list | tuple) or \
            not all(isinstance(c, str) and c for c in columns):
        example = f"({columns!r},)" if isinstance(columns, str) else "('answer',)"
        raise place.error(f"columns is {_kind(columns)}; expected a tuple of column names, e.g. {example}")
    for field in ("read_train", "read_held_out", "check", "reward"):
        if not callable(getattr(task, field)):
            raise place.error(f"{field} is {_kind(getattr(task, field))}; expected a function")
    if task.references is not None and not callable(task.references):
        raise place.error(f"references is {_kind(task.references)}; expected a function or None")
    return tuple(columns)


def contain_task(task, where: str, path: Path, attribute: str) -> dict:
    """The fields of a task read from the file `where` (resolved: `path`) at `attribute` to replace before it
    is registered: its columns as a tuple and its callables contained (see the module docstring), but for
    alignlab's own functions. Wrong kinds of name, columns or callables are a UserError naming the file."""
    place = _Place(where, path, attribute)
    columns = _checked_fields(task, place)
    guards = {"read_train": lambda fn: _guard_examples(fn, place, "read_train", columns),
              "read_held_out": lambda fn: _guard_examples(fn, place, "read_held_out", columns),
              "check": lambda fn: _guard_check(fn, place), "reward": lambda fn: _guard_reward(fn, place),
              "references": lambda fn: _guard_references(fn, place)}
    fields = {"columns": columns}
    for field, guard in guards.items():
        fn = getattr(task, field)
        if fn is not None and not _alignlab_own(fn):
            fields[field] = guard(fn)
    return fields
