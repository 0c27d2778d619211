"""Built-in tasks by name: examples to train on, examples held out, the pass check and the reward.

An example is a dict with a "prompt" and the task's `columns` (GSM8K: "answer"), which reach the
reward as keyword lists (TRL's convention for dataset columns) and the check as keywords. A task's
`check(prompt, completion, **columns)` is the judge of success that evaluation reports (pass rate,
degeneration, reasons); its `reward(mode)` is what a policy may be trained on. Keeping both here
lets a trainer evaluate held-out examples without depending on `eval/`.

- study-plan: the seed's task; built-in train / held-out prompts, or a JSONL of `prompt` records
  (`data=`, `eval_data=`) judged by the same rules.
- gsm8k: questions and reference answers from GSM8K JSONL files (`data=` required).

Left out: user-defined tasks registered from outside the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from alignlab.errors import UserError
from alignlab.rewards.base import study_plan_reward
from alignlab.rewards.rules import StudyPlanVerdict, study_plan_verdict
from alignlab.tasks.gsm8k import gsm8k_examples, gsm8k_reward, gsm8k_verdict
from alignlab.tasks.study_plan import held_out_prompts, train_prompts


@dataclass(frozen=True)
class Task:
    """name; train_examples(data) and held_out_examples(eval_data) -> [{"prompt", *columns}];
    check(prompt, completion, **columns) -> verdict with `passed`, `degenerate`, `failed`, `reasons`,
    `degenerate_reasons`; reward(mode) -> a reward function with TRL's signature."""

    name: str
    train_examples: Callable[[str], list[dict]]
    held_out_examples: Callable[[str], list[dict]]
    check: Callable[..., StudyPlanVerdict]
    reward: Callable[[str], Callable]
    columns: tuple[str, ...] = ()

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


def _study_plan(builtin: Callable[[], list[str]]) -> Callable[[str], list[dict]]:
    def examples(path: str) -> list[dict]:
        return _prompt_records(path) if path else [{"prompt": p} for p in builtin()]

    return examples


def _optional(read: Callable[[str], list[dict]]) -> Callable[[str], list[dict]]:
    """Held-out examples are optional: no file, no held-out evaluation."""
    return lambda path: read(path) if path else []


TASKS = {
    "study-plan": Task("study-plan", _study_plan(train_prompts), _study_plan(held_out_prompts), study_plan_verdict,
                       study_plan_reward),
    "gsm8k": Task("gsm8k", gsm8k_examples, _optional(gsm8k_examples), gsm8k_verdict, gsm8k_reward, ("answer",)),
}


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
