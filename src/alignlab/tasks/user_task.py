"""A task written in the user's own file, named by path wherever a task name is accepted:
`task=path/to/file.py:NAME` (NAME a module-level `Task` in it; the file alone means `TASK`).
`tasks/registry.get_task` calls here for a value that names a file, so every command, and every
sweep worker process, reads the task the same way.

The file runs as a user's reward file does (`rewards/user_code.run_user_file`): in a worker thread,
so a `sys.exit` at import is an error naming the file rather than an exit; under a module name derived
from its path; with nothing added to sys.path or sys.modules; once per file per process (cached by its
resolved path). Every failure is a one-line UserError (key "task") naming the file and, when the file
raised, the line.

Left out: a time limit on running the file (tasks have no timeout setting), reloading a file edited
while the process runs, and process isolation of user code.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from alignlab.errors import UserError
from alignlab.rewards.user_code import describe_escape, run_user_file

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


def _module_name(path: Path) -> str:
    """A module name of its own for each file: its stem and a digest of its resolved path."""
    return f"alignlab_user_task_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_" \
           f"{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


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


def _run_failed(error: BaseException, where: str, path: Path) -> UserError:
    """The one-line error for a task file that raised (or exited) while it ran."""
    doing = "running the task file"
    if isinstance(error, UserError):  # alignlab refused something the file did (register_task, say)
        text = f"{doing}: {error.message if error.file is None else error}"
    elif isinstance(error, SyntaxError) and error.filename == str(path):
        text = f"{doing} raised SyntaxError: {error.msg}"
    elif isinstance(error, Exception):
        text = f"{doing} raised {type(error).__name__}: {error}"
    else:
        text = f"{doing} {describe_escape(error)}"
    return UserError(text, file=where, line=_error_line(error, path), key="task")


def _module(where: str) -> tuple[Path, object]:
    """(resolved path, module) of the task file `where`, run on first use and cached."""
    path = Path(where).expanduser()
    if not path.exists():
        raise UserError(f"no such task file (expected {FORM})", file=where, key="task")
    if not path.is_file() or path.suffix != ".py":
        raise UserError(f"not a .py file; a task file is Python: {FORM}", file=where, key="task")
    path = path.resolve()
    if path not in _MODULES:
        module, error, _ = run_user_file(path, _module_name(path))  # no time limit: always finishes
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
