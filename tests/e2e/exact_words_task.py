"""A third task, written as a user would: "answer in exactly N words". This file and its one
`register_task` line are everything it takes for grpo, ppo, eval, compare, check, sweep, the report,
the preflight and probe-reward to work on it (tests/e2e/test_third_task.py)."""

from __future__ import annotations

import random

from alignlab.rewards.penalties import RuleResult, Verdict, check_garbled, check_repetition
from alignlab.tasks.attacks import Family, TaskAttacks
from alignlab.tasks.registry import Task, register_task

SUBJECTS = ["the sea", "a city at night", "your breakfast", "a rainy day", "a good friend", "the moon", "winter",
            "a library", "a train ride", "the mountains", "a market", "your street"]
TRAIN = [{"prompt": f"Describe {s} in exactly {n} words.", "n": n} for s in SUBJECTS[:8] for n in (3, 5)]
HELD_OUT = [{"prompt": f"Describe {s} in exactly {n} words.", "n": n} for s in SUBJECTS[8:] for n in (4,)]


def check(prompt: str, completion: str, n: int) -> Verdict:
    """Passed: exactly `n` words; degenerate: token runs or garbled text."""
    count = len(completion.split())
    right = RuleResult(count == n, max(0.0, 1 - abs(count - n) / n),
                       () if count == n else (f"{count} words, expected {n}",))
    degenerate = tuple(r for c in (check_repetition, check_garbled) for r in c(prompt, completion).reasons)
    return Verdict({"word_count": right}, degenerate)


def reward(mode: str):
    """naive: 1 for any words; shaped: partial credit by distance; sharp: +1 / -0.5 / -1 (degenerate)."""
    def fn(prompts, completions, n, **kwargs):
        verdicts = [check(p, c, k) for p, c, k in zip(prompts, completions, n, strict=True)]
        if mode == "naive":
            return [float(bool(c.split())) for c in completions]
        if mode == "shaped":
            return [v.results["word_count"].score for v in verdicts]
        return [-1.0 if v.degenerate else 1.0 if v.passed else -0.5 for v in verdicts]

    fn.__name__ = f"exact_words_{mode}"
    return fn


def _examples(rows):
    return lambda path, lang: [dict(r) for r in rows]


def _references(example: dict, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(["calm", "blue", "wide", "deep", "bright", "quiet"]) for _ in range(example["n"]))]


ATTACKS = TaskAttacks(
    families=(Family("one short", "a word fewer than asked", lambda e, rng, good: [" ".join(good.split()[:-1])]),),
    references=_references)

TASK = register_task(Task("exact-words", _examples(TRAIN), _examples(HELD_OUT), check, reward, columns=("n",),
                          attacks=ATTACKS))
