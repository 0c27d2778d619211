"""Tasks by name, the seam every command meets a task through: examples to train on, examples
held out, the pass check and the rewards.

A `Task` is one object: `name`; examples as dicts with a "prompt" and the task's `columns` (GSM8K:
"answer"), which reach the rewards as keyword lists (TRL's convention for dataset columns) and the
check as keywords; `languages` its built-in prompts come in; `check(prompt, completion, **columns)
-> Verdict` (`rewards/penalties.py`: every rule's result, degeneration), the judge of success that
evaluation reports; `reward(mode)` (naive / shaped / sharp) what a policy may be trained on, built by
the task from the same checks its verdict runs; optional fluent `references` for the coherence judge
and `attacks` for `alignlab probe-reward`. Training (`grpo`, `ppo`), evaluation (`eval`, `compare`,
`check`, `sweep`, the report) and the preflight only ever use this interface, so a new task is one
module that builds a `Task` and one `register_task` call (or line in TASKS). A task may also stay in
the user's own file, named by path wherever a task name goes (`task=my_task.py:TASK`): `get_task`
reads it (`tasks/user_task.py`) and registers it, so every process that meets the name reads it alike.

- study-plan: the seed's task; built-in train / held-out prompts of one language (`lang`: all, en,
  zh), or a JSONL of `prompt` records (`data=`, `eval_data=`, never filtered by `lang`) judged by
  the same rules.
- gsm8k: questions and reference answers from GSM8K JSONL files (`data=` required); it has no
  language selection, so a `lang` other than all is refused.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from alignlab.config_io import ConfigError
from alignlab.errors import UserError
from alignlab.rewards.base import study_plan_reward
from alignlab.rewards.penalties import Verdict
from alignlab.tasks import gsm8k_attacks
from alignlab.tasks.attacks import TaskAttacks
from alignlab.tasks.gsm8k import gsm8k_examples, gsm8k_reward, gsm8k_verdict
from alignlab.tasks.study_plan import attacks as study_plan_attacks
from alignlab.tasks.study_plan.prompts import held_out_prompts, train_prompts
from alignlab.tasks.study_plan.references import reference_answers
from alignlab.tasks.study_plan.rules import study_plan_verdict
from alignlab.tasks.user_task import FORM, contain_task, load_file_attribute, task_file_spec


@dataclass(frozen=True)
class Task:
    """See the module docstring. `read_train(path, lang)` / `read_held_out(path, lang)` read a file's
    examples (path given) or return the built-in ones of `lang`; call them through `train_examples` /
    `held_out_examples`, which first check `lang` is one of `languages`."""

    name: str
    read_train: Callable[[str, str], list[dict]]
    read_held_out: Callable[[str, str], list[dict]]
    check: Callable[..., Verdict]
    reward: Callable[[str], Callable]
    columns: tuple[str, ...] = ()
    references: Callable[[str], list[tuple[str, str]]] | None = None  # fluent (prompt, answer) pairs by lang
    attacks: TaskAttacks | None = None  # tasks/attacks.py: probe families and reference answers
    languages: tuple[str, ...] = ("all",)  # "all" first: every task has it
    file: str = ""  # set by get_task("file.py:NAME"): the file it was read from, a recorded input of runs

    def train_examples(self, path: str = "", lang: str = "all") -> list[dict]:
        """[{"prompt", *columns}] to train on: the file's at `path`, else the built-in ones in `lang`."""
        return self.read_train(path, self.check_lang(lang))

    def held_out_examples(self, path: str = "", lang: str = "all") -> list[dict]:
        """Held-out examples (empty when the task has none built in and no file is given)."""
        return self.read_held_out(path, self.check_lang(lang))

    def check_lang(self, lang: str) -> str:
        """`lang` when the task's built-in prompts come in it (UserError naming `lang` otherwise)."""
        if lang not in self.languages:
            if self.languages == ("all",):
                raise UserError(f"task {self.name} has no language selection (lang picks among a task's built-in "
                                f"prompts); expected all, got {lang!r}", key="lang")
            raise UserError(f"task {self.name} has prompts in: {', '.join(self.languages)}; got {lang!r}", key="lang")
        return lang

    def row_columns(self, rows: list[dict]) -> dict[str, list]:
        """The task's columns of `rows` as keyword lists, one entry per row."""
        return {name: [row[name] for row in rows] for name in self.columns}


def _prompt_records(path: str) -> list[dict]:
    from alignlab.data.sources import read_jsonl_records

    records = []
    for line, record in read_jsonl_records(path):
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"expected a non-empty text prompt, got {prompt!r:.60}", file=path, line=line,
                            key="prompt")
        records.append({"prompt": prompt})
    if not records:
        raise UserError("no prompts in the file", file=path)
    return records


def _study_plan(builtin: Callable[[str], list[str]]) -> Callable[[str, str], list[dict]]:
    def examples(path: str, lang: str) -> list[dict]:
        # A file's prompts are the user's own choice: `lang` selects among the built-in phrasings only.
        return _prompt_records(path) if path else [{"prompt": p} for p in builtin(lang)]

    return examples


def _from_file(read: Callable[[str], list[dict]], *, optional: bool = False) -> Callable[[str, str], list[dict]]:
    """A file-only task's examples; `optional`: no file, no examples (no held-out evaluation)."""
    def examples(path: str, lang: str) -> list[dict]:
        return read(path) if path or not optional else []

    return examples


TASKS: dict[str, Task] = {}
_ORIGINS: dict[str, Path | None] = {}  # name -> the file whose code registered it
_FILE_TASKS: dict[tuple[Path, str], Task] = {}  # (resolved file, attribute) -> its task, as registered


def register_task(task: Task) -> Task:
    """Make `task` known by its name to every command. A name taken by another task is refused, unless
    that task was registered from the same file: the file run twice (imported by a test, then read by
    `get_task("file.py:NAME")`, say) declares the same task, and the newer object replaces the older."""
    caller = Path(sys._getframe(1).f_code.co_filename)
    return _register(task, caller.resolve() if caller.is_file() else None)


def _register(task: Task, origin: Path | None) -> Task:
    held = TASKS.get(task.name)
    if held is not None and held is not task and (origin is None or _ORIGINS.get(task.name) != origin):
        known = _ORIGINS.get(task.name)
        source = " (built in)" if known == Path(__file__).resolve() else f" (from {known})" if known else ""
        raise UserError(f"a task called {task.name!r} is already registered{source}; give this one a name of its "
                        f"own", key="task")
    if not task.languages or task.languages[0] != "all":
        raise UserError(f"task {task.name}: languages must start with 'all', got {task.languages}", key="languages")
    TASKS[task.name], _ORIGINS[task.name] = task, origin
    return task


register_task(Task("study-plan", _study_plan(train_prompts), _study_plan(held_out_prompts), study_plan_verdict,
                   study_plan_reward, references=reference_answers, attacks=study_plan_attacks.ATTACKS,
                   languages=("all", "en", "zh")))
register_task(Task("gsm8k", _from_file(gsm8k_examples), _from_file(gsm8k_examples, optional=True), gsm8k_verdict,
                   gsm8k_reward, ("answer",), attacks=gsm8k_attacks.ATTACKS))


def check_task_config(cfg) -> None:
    """A trainer config's `task` is registered (or a task file that reads cleanly) and its `lang` one of that
    task's languages; a ConfigError naming the field otherwise (`load_config(..., check=check_task_config)`
    points it at the recipe line). Configs without a task pass."""
    if not hasattr(cfg, "task"):
        return
    try:
        get_task(cfg.task).check_lang(cfg.lang)
    except UserError as err:  # a task file's own place (file:line) stays in the message
        where = "" if err.file is None else f"{err.file}:{err.line}: " if err.line is not None else f"{err.file}: "
        raise ConfigError(err.key or "task", where + err.message) from None


def get_task(name: str) -> Task:
    """The registered task called `name`, or the task `name` points to in a file ("path/to/file.py:NAME",
    or "path/to/file.py" for its TASK), read once and registered (`_file_task`); an unknown name is a
    UserError listing the known ones.

    >>> get_task("study-plan").check("plan?", "- 复习（30 分钟）\\n- 练习（1 小时）\\n- 总结（半小时）").passed
    True
    >>> get_task("gsm8k").check("q", "3 + 4 = 7\\n#### 7", answer="7").passed
    True
    """
    if name in TASKS:
        return TASKS[name]
    spec = task_file_spec(name)
    if spec is None:
        raise UserError(f"unknown task {name!r}; expected one of: {', '.join(TASKS)}; or your own task by its "
                        f"file: {FORM} (NAME a Task in it, TASK by default)", key="task")
    return _file_task(*spec)


def task_spec(task: Task) -> str:
    """What names `task` in any process: its name when registered in code, "file.py:NAME" when it was read
    from a file (evaluation folders record it, so a fresh process can judge their samples again)."""
    for (path, attribute), known in _FILE_TASKS.items():
        if known is task:
            return f"{path}:{attribute}"
    return task.name


def _file_task(where: str, attribute: str) -> Task:
    """The `Task` at `attribute` of the file `where`, registered under its name (marked with its file, which
    runs record among their inputs); a name another task holds is refused, naming the file. Its callables
    are contained (`contain_task`): what they raise, or a result of the wrong kind, is a UserError naming
    the file (and the line) instead of a traceback from deep inside a command."""
    path, found = load_file_attribute(where, attribute, Task)
    if (path, attribute) not in _FILE_TASKS:
        contained = replace(found, file=str(path), **contain_task(found, where, path, attribute))
        try:
            _FILE_TASKS[path, attribute] = _register(contained, path)
        except UserError as err:
            raise UserError(f"{attribute}: {err.message}", file=where, key="task") from None
    return _FILE_TASKS[path, attribute]
