"""A task in the user's own file, named by path (`task=file.py:NAME`, `--task file.py`): read once per
process, registered under its name, and every hostile file a one-line UserError (key "task") naming
the file and what is wrong with it, before anything is written."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys

import pytest

from alignlab.cli import main
from alignlab.config import GRPOConfig, load_config
from alignlab.errors import UserError
from alignlab.tasks.registry import TASKS, Task, check_task_config, get_task

_names = itertools.count()

HEADER = "from alignlab.tasks.registry import Task, get_task, register_task\n_base = get_task('study-plan')\n"


def _task_text(name: str, *, attribute: str = "TASK", register: bool = False) -> str:
    """A file that builds a task called `name` from study-plan's parts (and registers it itself)."""
    made = f"Task({name!r}, _base.read_train, _base.read_held_out, _base.check, _base.reward)"
    return HEADER + f"{attribute} = {f'register_task({made})' if register else made}\n"


def _write(tmp_path, text: str, filename: str = "my_task.py"):
    path = tmp_path / filename
    path.write_text(text, encoding="utf-8")
    return path


def _unique() -> str:
    return f"file-task-{next(_names)}"  # the registry is one per process: every test its own task name


def test_a_file_resolves_to_its_task_registered_and_marked_with_its_file(tmp_path):
    name = _unique()
    counter = tmp_path / "runs.txt"
    path = _write(tmp_path, _task_text(name) + f"open({str(counter)!r}, 'a').write('ran ')\n"
                  + _task_text(name + "-b", attribute="OTHER").removeprefix(HEADER))
    task = get_task(f"{path}:TASK")
    assert isinstance(task, Task) and task.name == name and TASKS[name] is task
    assert task.file == str(path.resolve())
    assert get_task(str(path)) is task  # the file alone means TASK
    assert get_task(name) is task  # registered: its plain name works from now on
    assert get_task(f"{path}:OTHER").name == name + "-b"
    assert counter.read_text() == "ran "  # one run of the file per process, whatever it is asked for
    assert not (tmp_path / "__pycache__").exists() and not any(m.startswith("alignlab_user_task") for m in sys.modules)
    assert task.check is get_task("study-plan").check


def test_a_file_that_registers_its_task_itself(tmp_path):
    name = _unique()
    path = _write(tmp_path, _task_text(name, register=True))
    task = get_task(f"{path}:TASK")
    assert task.name == name and TASKS[name] is task and task.file == str(path.resolve())


def test_the_same_file_imported_twice_is_one_task_not_a_clash(tmp_path):
    """Imported by the user's own code first (as tests/e2e/test_third_task.py does), then by path."""
    name = _unique()
    path = _write(tmp_path, _task_text(name, register=True))
    spec = importlib.util.spec_from_file_location("my_task_imported", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert TASKS[name] is module.TASK
    task = get_task(f"{path}:TASK")  # runs the file again: its register_task call is not refused
    assert task.name == name and TASKS[name] is task and get_task(f"{path}:TASK") is task


def test_a_task_file_in_a_config_and_through_the_cli(tmp_path, capsys):
    name = _unique()
    path = _write(tmp_path, _task_text(name))
    cfg = load_config(GRPOConfig, None, [f"task={path}:TASK", "steps=3"], check=check_task_config)
    assert cfg.task == f"{path}:TASK" and get_task(cfg.task).name == name
    done = tmp_path / "done.jsonl"
    plan = "- 复习（30 分钟）\n- 练习（1 小时）\n- 总结（半小时）"
    done.write_text(json.dumps({"prompt": "plan?", "completion": plan}) + "\n", encoding="utf-8")
    assert main(["check", str(done), "--task", f"{path}:TASK"]) == 0
    printed = capsys.readouterr().out
    assert f"task {path}:TASK" in printed and "pass rate: 100.0% (1/1" in printed


HOSTILE = [  # (id, file name, file text or None for no file, spec suffix, expected message after "file: ")
    ("missing", "gone.py", None, ":TASK", ": task: no such task file (expected path/to/file.py:NAME)"),
    ("not-python", "task.txt", "TASK = 1\n", ":TASK", ": task: not a .py file; a task file is Python"),
    ("syntax-error", "my_task.py", "x = 1\ndef broken(:\n", "", ":2: task: running the task file raised "
     "SyntaxError: "),
    ("raises-at-import", "my_task.py", "x = 1\n\nraise ValueError('no prompts today')\n", "",
     ":3: task: running the task file raised ValueError: no prompts today"),
    ("exits-at-import", "my_task.py", "import sys\nsys.exit(4)\n", "", ":2: task: running the task file called "
     "sys.exit(4)"),
    ("attribute-missing", "my_task.py", _task_text("never-registered-a", attribute="POEMS"), ":TASKS",
     ": task: no attribute 'TASKS'; its Task attributes: POEMS"),
    ("no-task-at-all", "my_task.py", "TASKS = []\n", "", ": task: no attribute 'TASK'; it defines no Task"),
    ("not-a-task", "my_task.py", "TASK = {'name': 'x'}\n", "", ": task: TASK is of type dict, not a Task "
     "(alignlab.tasks.registry.Task)"),
    ("bad-attribute", "my_task.py", "TASK = 1\n", ":2nd", ": task: expected path/to/file.py:NAME"),
    ("declares-a-built-in-name", "my_task.py", _task_text("study-plan"), "",
     ": task: TASK: a task called 'study-plan' is already registered (built in); give this one a name of its own"),
    ("registers-a-built-in-name", "my_task.py", _task_text("study-plan", register=True), "",
     ":3: task: running the task file: a task called 'study-plan' is already registered (built in)"),
]


@pytest.mark.parametrize(("filename", "text", "suffix", "expected"), [c[1:] for c in HOSTILE],
                         ids=[c[0] for c in HOSTILE])
def test_hostile_task_files_are_one_line_errors_naming_the_file(tmp_path, filename, text, suffix, expected):
    path = tmp_path / filename if text is None else _write(tmp_path, text, filename)
    before = dict(TASKS)
    with pytest.raises(UserError) as caught:
        get_task(f"{path}{suffix}")
    message = str(caught.value)
    assert message.startswith(f"{path}{expected}"), message
    assert caught.value.key == "task" and "\n" not in message
    assert TASKS == before  # nothing registered


def test_a_name_another_file_holds_is_refused(tmp_path):
    name = _unique()
    first = _write(tmp_path, _task_text(name), "first.py")
    second = _write(tmp_path, _task_text(name), "second.py")
    assert get_task(f"{first}:TASK").name == name
    with pytest.raises(UserError, match=f"already registered \\(from {first.resolve()}\\)"):
        get_task(f"{second}:TASK")
    assert TASKS[name].file == str(first.resolve())


def test_an_unknown_plain_name_mentions_the_file_form():
    with pytest.raises(UserError) as caught:
        get_task("poetry")
    assert str(caught.value).startswith("task: unknown task 'poetry'; expected one of: study-plan, gsm8k")
    assert "path/to/file.py:NAME" in str(caught.value)


def test_a_recipe_naming_a_bad_task_file_points_at_both(tmp_path):
    path = _write(tmp_path, "raise RuntimeError('half written')\n")
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(f"run:\n  steps: 2\ntask: {path}:TASK\n", encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_config(GRPOConfig, recipe, [], check=check_task_config)
    assert str(caught.value) == (f"{recipe}:3: task: {path}:1: running the task file raised RuntimeError: "
                                 "half written")


@pytest.mark.parametrize("argv", [
    ["eval", "{policy}", "--task", "{bad}", "--out", "{out}"],
    ["grpo", "task={bad}", "model.path={policy}", "run.out_dir={out}"],
    ["probe-reward", "--task", "{bad}", "--out", "{out}"],
])
def test_the_cli_exits_2_with_one_line_and_writes_nothing(tmp_path, policy_dir, capsys, argv):
    bad = _write(tmp_path, "x = 1\nraise ValueError('boom')\n")
    out = tmp_path / "out"
    filled = [a.format(policy=policy_dir, bad=f"{bad}:TASK", out=out) for a in argv]
    assert main(filled) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:2: " in err, err
    assert "running the task file raised ValueError: boom" in err, err
    assert not out.exists()
