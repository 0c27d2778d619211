"""Built-in tasks by name: prompts to train on, prompts held out, the pass check and the rule reward.

A task's `check(prompt, completion)` is the judge of success that evaluation reports (pass
rate, degeneration, reasons); its `reward(mode)` is what a policy may be trained on, built
from the same rules. Keeping both here lets a trainer evaluate held-out prompts without
depending on `eval/`.

Left out: GSM8K as a trainable task (`tasks/gsm8k.py` has its prompts, answer extractor, rewards and
pass@k; the trainers do not yet pass per-prompt answer columns to rewards), user-defined tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from alignlab.errors import UserError
from alignlab.rewards.base import Reward, study_plan_reward
from alignlab.rewards.rules import StudyPlanVerdict, study_plan_verdict
from alignlab.tasks.study_plan import held_out_prompts, train_prompts


@dataclass(frozen=True)
class Task:
    """name; train_prompts() and held_out_prompts() -> list[str]; check(prompt, completion) -> verdict
    with `passed`, `degenerate`, `failed`, `reasons`, `degenerate_reasons`; reward(mode) -> Reward."""

    name: str
    train_prompts: Callable[[], list[str]]
    held_out_prompts: Callable[[], list[str]]
    check: Callable[[str, str], StudyPlanVerdict]
    reward: Callable[[str], Reward]


TASKS = {"study-plan": Task("study-plan", train_prompts, held_out_prompts, study_plan_verdict, study_plan_reward)}


def get_task(name: str) -> Task:
    """The built-in task called `name`; an unknown name is a UserError listing the known ones.

    >>> get_task("study-plan").check("plan?", "- 复习（30 分钟）\\n- 练习（1 小时）\\n- 总结（半小时）").passed
    True
    """
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; expected one of: {', '.join(TASKS)}", key="task")
    return TASKS[name]
