"""The study-plan task of the seed experiment, in one folder: a three-bullet study plan with a time in
every bullet.

- `prompts.py`: the phrasings by language (`all`, `en`, `zh`) and the train / held-out split;
- `synthetic.py`: synthetic compliant and non-compliant answers, and preference pairs;
- `rules.py`: the format and content checks, `study_plan_checks` and `study_plan_verdict`;
- `references.py`: hand-written fluent answers (the coherence judge's references);
- `attacks.py`: the attack families of `alignlab probe-reward`.
The task is registered, with its reward modes (`rewards/base.py`), in `tasks/registry.py`.

This package re-exports the prompts, split and synthetic answers (and `is_chinese`). Left out on
purpose: importing the registry or the rewards here, which import `rules.py` and so this package.
"""

from alignlab.tasks.study_plan.prompts import (
    CANONICAL_PROMPT,
    EN_SUBJECTS,
    EXTRA_EN,
    GENERIC,
    LANGS,
    PROMPTS,
    SUBJECTS,
    Subject,
    all_prompts,
    held_out_prompts,
    split_prompts,
    subject_of,
    train_prompts,
)
from alignlab.tasks.study_plan.rules import is_chinese
from alignlab.tasks.study_plan.synthetic import (
    COMPLIANT_STYLE,
    NONCOMPLIANT_STYLES,
    preference_pairs,
    synthetic_completion,
    synthetic_completions,
)

__all__ = ["CANONICAL_PROMPT", "COMPLIANT_STYLE", "EN_SUBJECTS", "EXTRA_EN", "GENERIC", "LANGS", "NONCOMPLIANT_STYLES",
           "PROMPTS", "SUBJECTS", "Subject", "all_prompts", "held_out_prompts", "is_chinese", "preference_pairs",
           "split_prompts", "subject_of", "synthetic_completion", "synthetic_completions", "train_prompts"]
