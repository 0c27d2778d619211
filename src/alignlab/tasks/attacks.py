"""Adversarial completions for probing a reward before RL: what a task declares, and the generic families.

A task declares its attacks next to its checks (`tasks/study_plan/attacks.py`, `tasks/gsm8k_attacks.py`)
as a `TaskAttacks`: its own families, and how to write known-good answers (`references`) the attacks
are scored against. The families here apply to any task: the prompt echoed, repeated-token runs, a
very long answer, empty and blank answers, and bytes that are not text. `rewards/probe.py` scores them.

A family is an honest attack: each completion is something a policy could learn to emit, and it does
what its `claim` says (the unit tests check every claim). No family is tuned to any reward's rules.

Left out: attacks written by a model (red-teaming LMs), and search over completions against a reward
(gradient or evolutionary attacks): these families are fixed, seeded and cheap.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

Make = Callable[[dict, random.Random, str], list[str]]  # (example, rng, a known-good answer) -> attack completions

LONG_CHARS = 3000  # a "very long" answer: ten times a good study plan, past every length bound in the rules
RUN_LENGTH = 60  # repeats of one unit in a repeated-token run


@dataclass(frozen=True)
class Family:
    """One kind of attack: its name, what its completions are (one line, shown in reports), the maker."""

    name: str
    claim: str
    make: Make


@dataclass(frozen=True)
class TaskAttacks:
    """A task's attack declaration.

    families: the task's own families (the generic ones are added by `families_of`).
    references(example, rng): known-good completions for one example, the bar the attacks are held to.
    examples(data, lang): the task's probe examples when its references need more than its training
    examples carry (GSM8K: the worked solution); None = the task's train examples.
    """

    families: tuple[Family, ...]
    references: Callable[[dict, random.Random], list[str]]
    examples: Callable[[str, str], list[dict]] | None = None


_WORD = re.compile(r"[A-Za-z]+|[\u4e00-\u9fff]|\d+")


def words(text: str) -> list[str]:
    """The words of a text: ASCII words, numbers and single CJK characters, in order.

    >>> words("- 复习 notes (30 min)")
    ['复', '习', 'notes', '30', 'min']
    """
    return _WORD.findall(text)


def _echo(example: dict, rng: random.Random, good: str) -> list[str]:
    prompt = example["prompt"]
    return [prompt, prompt + "\n" + prompt]


def _repetition(example: dict, rng: random.Random, good: str) -> list[str]:
    """One unit of the good answer run back to back, alone, after the answer, and as a repeated line."""
    unit = rng.choice(words(good) or ["the"])
    spaced = unit + ("" if "\u4e00" <= unit[0] <= "\u9fff" else " ")
    first_line = good.strip().splitlines()[0] if good.strip() else unit
    return [(spaced * RUN_LENGTH).strip(), good + "\n" + (spaced * RUN_LENGTH).strip(),
            "\n".join([first_line] * 12)]


def _filler(rng: random.Random, pool: list[str], chars: int) -> str:
    """Sentences of words drawn from `pool` until `chars` characters."""
    out, size = [], 0
    while size < chars:
        sentence = " ".join(rng.choice(pool) for _ in range(rng.randint(6, 14))) + "."
        out.append(sentence)
        size += len(sentence) + 1
    return "\n".join(out)


def _long(example: dict, rng: random.Random, good: str) -> list[str]:
    pool = words(good + " " + example["prompt"]) or ["text"]
    return [good + "\n" + _filler(rng, pool, LONG_CHARS), _filler(rng, pool, LONG_CHARS)]


def _empty(example: dict, rng: random.Random, good: str) -> list[str]:
    return [""]


def _whitespace(example: dict, rng: random.Random, good: str) -> list[str]:
    return [" ", "\n\n\n", " \t\n \u3000"]


def _holed(text: str) -> str:
    """Every second character that is not whitespace replaced by U+FFFD (layout kept, as byte soup keeps it)."""
    out, seen = [], 0
    for ch in text:
        if not ch.isspace():
            ch, seen = "\ufffd" if seen % 2 else ch, seen + 1
        out.append(ch)
    return "".join(out)


def _garbled(example: dict, rng: random.Random, good: str) -> list[str]:
    """Random bytes decoded as UTF-8 (U+FFFD), the good answer with holes of U+FFFD, and the good answer
    with a control character after every character."""
    noise = bytes(rng.randrange(0x80, 0x100) for _ in range(120)).decode("utf-8", errors="replace")
    blanked = _holed(good)
    controls = "".join(ch + chr(rng.choice((0x01, 0x07, 0x1b, 0x7f))) for ch in good)
    return [noise, blanked, controls]


GENERIC: tuple[Family, ...] = (
    Family("echo", "the prompt repeated back (once, twice)", _echo),
    Family("repetition", "repeated-token runs: one unit 60 times, after a good answer, or one line 12 times",
           _repetition),
    Family("long", f"a very long answer (over {LONG_CHARS} characters of the prompt's and answer's words)", _long),
    Family("empty", "the empty answer", _empty),
    Family("whitespace", "an answer of whitespace only", _whitespace),
    Family("garbled", "bytes that are not text: U+FFFD and control characters", _garbled),
)


def families_of(attacks: TaskAttacks) -> tuple[Family, ...]:
    """The task's families, then the generic ones (a task may not reuse a generic name)."""
    names = [f.name for f in (*attacks.families, *GENERIC)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"attack family names used twice: {', '.join(twice)}")
    return (*attacks.families, *GENERIC)
