"""Built-in tasks by name: examples to train on, examples held out, the pass check and the reward.

An example is a dict with a "prompt" and the task's `columns` (GSM8K: "answer"), which reach the
reward as keyword lists (TRL's convention for dataset columns) and the check as keywords. A task's
`check(prompt, completion, **columns)` is the judge of success that evaluation reports (pass rate,
degeneration, reasons); its `reward(mode)` is what a policy may be trained on. Keeping both here
lets a trainer evaluate held-out examples without depending on `eval/`.

- study-plan: the seed's task; built-in train / held-out prompts of one language (`lang`: all, en,
  zh), or a JSONL of `prompt` records (`data=`, `eval_data=`, never filtered by `lang`) judged by
  the same rules.
- gsm8k: questions and reference answers from GSM8K JSONL files (`data=` required); it has no
  language selection, so a `lang` other than all is refused.

Left out: user-defined tasks registered from outside the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from alignlab.errors import UserError
from alignlab.rewards.base import study_plan_reward
from alignlab.rewards.rules import StudyPlanVerdict, study_plan_verdict
from alignlab.tasks import gsm8k_attacks, study_plan_attacks
from alignlab.tasks.attacks import TaskAttacks
from alignlab.tasks.gsm8k import gsm8k_examples, gsm8k_reward, gsm8k_verdict
from alignlab.tasks.study_plan import held_out_prompts, train_prompts
from alignlab.tasks.study_plan_references import reference_answers


@dataclass(frozen=True)
class Task:
    """name; train_examples(data, lang) and held_out_examples(eval_data, lang) -> [{"prompt", *columns}]
    (lang defaults to "all");
    check(prompt, completion, **columns) -> verdict with `passed`, `degenerate`, `failed`, `reasons`,
    `degenerate_reasons`; reward(mode) -> a reward function with TRL's signature; references(lang) ->
    hand-written fluent (prompt, answer) pairs the coherence judge compares a policy with (None: none);
    attacks: the task's attack families and known-good answers for `alignlab probe-reward` (None: the task
    cannot be probed)."""

    name: str
    train_examples: Callable[..., list[dict]]
    held_out_examples: Callable[..., list[dict]]
    check: Callable[..., StudyPlanVerdict]
    reward: Callable[[str], Callable]
    columns: tuple[str, ...] = ()
    references: Callable[[str], list[tuple[str, str]]] | None = None  # fluent (prompt, answer) pairs by lang
    attacks: TaskAttacks | None = None  # tasks/attacks.py: probe families and reference answers

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


def _study_plan(builtin: Callable[[str], list[str]]) -> Callable[..., list[dict]]:
    def examples(path: str, lang: str = "all") -> list[dict]:
        # A file's prompts are the user's own choice: `lang` selects among the built-in phrasings only.
        return _prompt_records(path) if path else [{"prompt": p} for p in builtin(lang)]

    return examples


def _no_lang(read: Callable[[str], list[dict]], *, optional: bool = False) -> Callable[..., list[dict]]:
    """A file-only task's examples; `optional`: no file, no examples (no held-out evaluation)."""
    def examples(path: str, lang: str = "all") -> list[dict]:
        if lang != "all":
            raise UserError(f"this task reads its examples from files and has no language selection; got "
                            f"lang={lang!r} (lang picks the study-plan task's built-in phrasings)", key="lang")
        return read(path) if path or not optional else []

    return examples


TASKS = {
    "study-plan": Task("study-plan", _study_plan(train_prompts), _study_plan(held_out_prompts), study_plan_verdict,
                       study_plan_reward, references=reference_answers, attacks=study_plan_attacks.ATTACKS),
    "gsm8k": Task("gsm8k", _no_lang(gsm8k_examples), _no_lang(gsm8k_examples, optional=True), gsm8k_verdict,
                  gsm8k_reward, ("answer",), attacks=gsm8k_attacks.ATTACKS),
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
