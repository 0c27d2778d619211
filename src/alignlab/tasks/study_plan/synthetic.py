"""Synthetic answers to the study-plan prompts: compliant ones and the failure styles the user saw.

Compliant completions are exactly three '-' bullets with a duration each; non-compliant ones come
in the failure styles the user saw (preamble, numbered, nested, echo, degenerate repetition, ...)
at a controllable compliance rate. The SFT issue builds a base policy from them;
`preference_pairs` gives reward-model tests a learnable signal (chosen is always compliant,
rejected never).

Deliberately left out: judging a completion (that is `rules.py`, kept separate so the
checker is not tuned to this generator), file I/O, and global randomness: every function takes
a seed or a `random.Random`.

Durations the compliant generator writes (the rules must accept all of them): `30 分钟`,
`30分钟`, `三十分钟`, `３０分钟` (full-width digits), `1 小时`, `1.5小时`, `一个小时`, `两个小时`,
`半小时`, `一个半小时`, `45 min`, `2h` in Chinese text; `30 minutes`, `45 min`, `90 mins`,
`1 hour`, `1.5 hours`, `2h`, `half an hour` (also capitalised at a line start) in English text.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from alignlab.errors import UserError
from alignlab.tasks.study_plan.prompts import Subject, subject_of, train_prompts
from alignlab.tasks.study_plan.rules import is_chinese

_MINUTES = (10, 15, 20, 25, 30, 40, 45, 50, 60, 90)
_ZH_NUMERALS = ("十五", "二十", "三十", "四十", "四十五")
_FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
_ZH_DURATIONS = ("{m} 分钟", "{m}分钟", "{h} 小时", "{h}小时", "半小时", "一个半小时", "{cm}分钟",
                 "{fm}分钟", "{ch}个小时", "{m} min", "{hi}h")
_EN_DURATIONS = ("{m} minutes", "{m} min", "{m} mins", "{h} {hours}", "{hi}h", "half an hour")
# {a} activity, {A} capitalised, {d} duration, {D} capitalised; {sd} / {pd}: a space before / around
# the duration where it meets Chinese text with an ASCII character ("约 45 分钟", "花 2h 复习").
_ZH_LAYOUTS = ("{a}（{d}）", "{a}：{d}", "{d}：{a}", "{a} {d}", "{a}，约{sd}", "花{pd}{a}", "{a}({d})")
_EN_LAYOUTS = ("{A} ({d})", "{A}: {d}", "{D}: {a}", "{A} for {d}", "{A} - {d}")


def _duration(rng: random.Random, zh: bool) -> str:
    h = rng.choice(("1", "1.5", "2"))
    fields = {"m": rng.choice(_MINUTES), "h": h, "hours": "hour" if h == "1" else "hours",
              "hi": rng.choice((1, 2)), "cm": rng.choice(_ZH_NUMERALS), "ch": rng.choice(("一", "两")),
              "fm": str(rng.choice(_MINUTES)).translate(_FULL_WIDTH)}
    return rng.choice(_ZH_DURATIONS if zh else _EN_DURATIONS).format(**fields)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _with_duration(activity: str, rng: random.Random, zh: bool) -> str:
    d = _duration(rng, zh)
    spaced = " " + d if d[0].isascii() else d
    padded = spaced + " " if d[-1].isascii() else spaced  # "花 2h 复习", never "花2h复习"
    layout = rng.choice(_ZH_LAYOUTS if zh else _EN_LAYOUTS)
    return layout.format(a=activity, A=_cap(activity), d=d, D=_cap(d), sd=spaced, pd=padded)


def _activities(rng: random.Random, zh: bool, subject: Subject, k: int) -> list[str]:
    """k activities, distinct until the pool runs out."""
    pool = subject.zh_activities if zh else subject.en_activities
    shuffled = rng.sample(pool, len(pool))
    return [shuffled[i % len(shuffled)] for i in range(k)]


def _bullets(rng: random.Random, zh: bool, subject: Subject, k: int) -> list[str]:
    """k bullet lines, each an activity with a duration; one prefix style per completion."""
    prefix = "-" if rng.random() < 0.15 else "- "
    return [prefix + _with_duration(a, rng, zh) for a in _activities(rng, zh, subject, k)]


_PREAMBLES = {True: ("当然可以！以下是一个基于您要求的三点式学习计划：", "好的，这是你的学习计划：",
                     "没问题～给你一个简单的安排："),
              False: ("Sure! Here is your study plan:", "Of course. Here's a three-point plan:",
                      "Here you go:")}
_EXPLANATIONS = {True: ("这个计划由浅入深，先打基础再练习，最后复盘，能帮助你稳步提高。",
                        "说明：每天坚持执行，效果会更好。时间可以根据自己的情况灵活调整。"),
                 False: ("This plan moves from the basics to practice and then review, which helps "
                         "the material stick.", "Note: adjust the times to your schedule; consistency "
                         "matters more than length.")}
_NESTED_HEADERS = {True: ("第一步：设定目标", "第二步：制定计划", "第三步：实践行动"),
                   False: ("Step one: set goals", "Step two: make a plan", "Step three: practise")}
_DECOYS = {True: ("（第{n}章）", "，做{n}道题", "，重点看第{n}节"),
           False: (" (chapter {n})", ", {n} exercises", " - part {n}")}
_DEGENERATE_LEADS = {True: ("当然，对", "给定", "-    1、 《关于社会主义建设、代码 给定"),
                     False: ("Sure, ", "Given ", "- 1. ")}
_DEGENERATE_UNITS = {True: ("阻", "API/", "的", "计划"), False: ("the ", "API/", "plan ", "ing")}

_Writer = Callable[[str, random.Random, bool, Subject], str]


def _compliant(prompt: str, rng: random.Random, zh: bool, subject: Subject) -> str:
    return "\n".join(_bullets(rng, zh, subject, 3))


def _preamble(prompt: str, rng: random.Random, zh: bool, subject: Subject) -> str:
    return rng.choice(_PREAMBLES[zh]) + rng.choice(("\n", "\n\n")) + _compliant(prompt, rng, zh, subject)


def _numbered(prompt: str, rng: random.Random, zh: bool, subject: Subject) -> str:
    marker = rng.choice(("{i}. ", "{i}、", "({i}) ") if zh else ("{i}. ", "{i}) "))
    bodies = [_with_duration(a, rng, zh) for a in _activities(rng, zh, subject, 3)]
    return "\n".join(marker.format(i=i + 1) + body for i, body in enumerate(bodies))


def _two_bullets(prompt: str, rng: random.Random, zh: bool, subject: Subject) -> str:
    return "\n".join(_bullets(rng, zh, subject, 2))


def _four_bullets(prompt: str, rng: random.Random, zh: bool, subject: Subject) -> str:
    return "\n".join(_bullets(rng, zh, subject, 4))


def _missing_time(prompt: str, rng: random.Random, zh: bool, subject: Subject) -> str:
    """Three bullets, one to three without a duration; half of those carry a bare number
    ("第3章", "chapter 3") that a careless checker would mistake for a time."""
    missing = set(rng.sample(range(3), rng.randint(1, 3)))
    prefix = "-" if rng.random() < 0.15 else "- "
    lines = []
    for i, activity in enumerate(_activities(rng, zh, subject, 3)):
        body = activity if zh else _cap(activity)
        if i not in missing:
            body = _with_duration(activity, rng, zh)
        elif rng.random() < 0.5:
            body += rng.choice(_DECOYS[zh]).format(n=rng.randint(1, 9))
        lines.append(prefix + body)
    return "\n".join(lines)


def _explanation(prompt: str, rng: random.Random, zh: bool, subject: Subject) -> str:
    closing = rng.choice(_EXPLANATIONS[zh])
    return _compliant(prompt, rng, zh, subject) + rng.choice(("\n", "\n\n")) + closing


def _nested(prompt: str, rng: random.Random, zh: bool, subject: Subject) -> str:
    """The user's before-training sample: numbered bold steps with indented '-' sub-bullets."""
    lines = [rng.choice(_PREAMBLES[zh])] if rng.random() < 0.5 else []
    counts = [rng.randint(1, 2) for _ in _NESTED_HEADERS[zh]]
    activities = iter(_activities(rng, zh, subject, sum(counts)))
    for i, (header, count) in enumerate(zip(_NESTED_HEADERS[zh], counts, strict=True)):
        lines.append(f"{i + 1}. **{header}**")
        lines.extend("   - " + _with_duration(next(activities), rng, zh) for _ in range(count))
    return "\n".join(lines)


def _echo(prompt: str, rng: random.Random, zh: bool, subject: Subject) -> str:
    """The prompt repeated verbatim, then bullets: on new lines, or all on one line as in the
    user's before-training sample."""
    bullets = _bullets(rng, zh, subject, 3)
    if rng.random() < 0.5:
        return prompt + "\n" + "\n".join(bullets)
    return prompt + " " + " ".join(bullets)


def _repetition(prompt: str, rng: random.Random, zh: bool, subject: Subject) -> str:
    """The user's after-training samples: (often the prompt, then) a short lead and one unit
    repeated until the length limit, e.g. "当然，对阻阻阻阻..." or "给定API/API/API/..."."""
    head = prompt + rng.choice(("", " ", "\n")) if rng.random() < 0.5 else ""
    unit = rng.choice(_DEGENERATE_UNITS[zh])
    return (head + rng.choice(_DEGENERATE_LEADS[zh]) + unit * rng.randint(12, 60)).rstrip()


COMPLIANT_STYLE = "compliant"
_WRITERS: dict[str, _Writer] = {
    "preamble": _preamble, "numbered": _numbered, "two_bullets": _two_bullets,
    "four_bullets": _four_bullets, "missing_time": _missing_time, "explanation": _explanation,
    "nested": _nested, "echo": _echo, "repetition": _repetition,
}
NONCOMPLIANT_STYLES: tuple[str, ...] = tuple(_WRITERS)


def synthetic_completion(prompt: str, rng: random.Random, *, compliant: bool,
                         style: str | None = None) -> tuple[str, str]:
    """(completion, style name) for one prompt, in the prompt's language and about its subject.

    Compliant: exactly three '-' lines, each with a duration, nothing else. Otherwise `style`
    (one of NONCOMPLIANT_STYLES) or, when None, a style drawn from `rng`.
    """
    zh, subject = is_chinese(prompt), subject_of(prompt)
    if compliant:
        if style not in (None, COMPLIANT_STYLE):
            raise UserError(f"a compliant completion has style {COMPLIANT_STYLE!r}, got {style!r}",
                            key="style")
        return _compliant(prompt, rng, zh, subject), COMPLIANT_STYLE
    name = rng.choice(NONCOMPLIANT_STYLES) if style is None else style
    if name not in _WRITERS:
        raise UserError(f"unknown style {name!r}; expected one of {', '.join(NONCOMPLIANT_STYLES)}",
                        key="style")
    return _WRITERS[name](prompt, rng, zh, subject), name


def synthetic_completions(prompts: Sequence[str], n_per_prompt: int, compliance_rate: float,
                          seed: int) -> list[dict]:
    """`n_per_prompt` records {prompt, completion, style, compliant} per prompt, in prompt order.

    Each sample is compliant with probability `compliance_rate` (exact in expectation; 0 and 1
    are exact in every draw); non-compliant ones draw a style uniformly.
    """
    if not 0.0 <= compliance_rate <= 1.0:
        raise UserError(f"expected a probability in [0, 1], got {compliance_rate!r}", key="compliance_rate")
    if n_per_prompt < 1:
        raise UserError(f"expected at least 1 completion per prompt, got {n_per_prompt}", key="n_per_prompt")
    rng = random.Random(seed)
    records = []
    for prompt in prompts:
        for _ in range(n_per_prompt):
            compliant = rng.random() < compliance_rate  # random() is in [0, 1): 0 never, 1 always
            text, style = synthetic_completion(prompt, rng, compliant=compliant)
            records.append({"prompt": prompt, "completion": text, "style": style, "compliant": compliant})
    return records


def preference_pairs(n: int, seed: int = 0, prompts: list[str] | None = None, lang: str = "all") -> list[dict]:
    """`n` records {prompt, chosen, rejected, rejected_style}: chosen compliant, rejected not,
    both for the same prompt; rejected styles cycle through NONCOMPLIANT_STYLES so every one
    appears once n >= 9. Prompts default to the training split of `lang` (held-out stays unseen)."""
    if n < 0:
        raise UserError(f"expected a non-negative number of pairs, got {n}", key="n")
    pool = train_prompts(lang) if prompts is None else list(prompts)
    if not pool:
        raise UserError("expected at least one prompt, got an empty list", key="prompts")
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        prompt = rng.choice(pool)
        chosen, _ = synthetic_completion(prompt, rng, compliant=True)
        style = NONCOMPLIANT_STYLES[i % len(NONCOMPLIANT_STYLES)]
        rejected, _ = synthetic_completion(prompt, rng, compliant=False, style=style)
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "rejected_style": style})
    return pairs
