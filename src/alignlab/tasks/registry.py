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
module that builds a `Task` and one `register_task` call (or line in TASKS).

- study-plan: the seed's task; built-in train / held-out prompts of one language (`lang`: all, en,
  zh), or a JSONL of `prompt` records (`data=`, `eval_data=`, never filtered by `lang`) judged by
  the same rules.
- gsm8k: questions and reference answers from GSM8K JSONL files (`data=` required); it has no
  language selection, so a `lang` other than all is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


def register_task(task: Task) -> Task:
    """Make `task` known by its name to every command; a name taken by another task is refused."""
    if TASKS.get(task.name, task) is not task:
        raise UserError(f"a task called {task.name!r} is already registered", key="task")
    if not task.languages or task.languages[0] != "all":
        raise UserError(f"task {task.name}: languages must start with 'all', got {task.languages}", key="languages")
    TASKS[task.name] = task
    return task


register_task(Task("study-plan", _study_plan(train_prompts), _study_plan(held_out_prompts), study_plan_verdict,
                   study_plan_reward, references=reference_answers, attacks=study_plan_attacks.ATTACKS,
                   languages=("all", "en", "zh")))
register_task(Task("gsm8k", _from_file(gsm8k_examples), _from_file(gsm8k_examples, optional=True), gsm8k_verdict,
                   gsm8k_reward, ("answer",), attacks=gsm8k_attacks.ATTACKS))


def check_task_config(cfg) -> None:
    """A trainer config's `task` is registered and its `lang` one of that task's languages; a ConfigError
    naming the field otherwise (`load_config(..., check=check_task_config)` points it at the recipe line).
    Configs without a task pass."""
    if not hasattr(cfg, "task"):
        return
    try:
        get_task(cfg.task).check_lang(cfg.lang)
    except UserError as err:
        raise ConfigError(err.key or "task", err.message) from None


def get_task(name: str) -> Task:
    """The built-in task called `name`; an unknown name is a UserError listing the known ones.

    >>> get_task("study-plan").check("plan?", "- 复习（30 分钟）\\n- 练习（1 小时）\\n- 总结（半小时）").passed
    True
    >>> get_task("gsm8k").check("q", "3 + 4 = 7\\n#### 7", answer="7").passed
    True
    """
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; expected one of: {', '.join(TASKS)}", key="task")
    return TASKS[name]
