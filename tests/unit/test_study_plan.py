"""Study-plan task: prompt set, split, and synthetic completions checked with the tests' own regexes.

The regexes here are deliberately minimal and independent of `tasks/study_plan/rules.py`, so the generator
and the checker are not validated against each other.
"""

from __future__ import annotations

import random
import re

import pytest

from alignlab.errors import UserError
from alignlab.tasks import study_plan as sp

CJK = re.compile(r"[\u4e00-\u9fff]")
BULLET = re.compile(r"-\s?\S")  # '-' or '- ' then text
DURATION = re.compile(
    r"(?:\d+(?:\.\d+)?|[一二两三四五六七八九十]+)\s*个?\s*(?:分钟|小时)"  # \d also matches full-width digits
    r"|\d+(?:\.\d+)?\s*(?:minutes?|mins?|hours?|h)\b|半小时|half an hour",
    re.IGNORECASE,
)
RUN = re.compile(r"(.{1,5}?)\1{9,}", re.DOTALL)  # one short unit repeated at least ten times in a row
NUMBERED = re.compile(r"\(?\d+[.、)]")
DASH_ITEM = re.compile(r"(?<!\S)-\s?\S")  # a '-' item anywhere, also several on one line
STYLES = {"preamble", "numbered", "two_bullets", "four_bullets", "missing_time", "explanation",
          "nested", "echo", "repetition"}


def looks_compliant(text: str) -> bool:
    lines = text.split("\n")
    return (len(lines) == 3 and all(BULLET.match(line) for line in lines)
            and all(DURATION.search(line) for line in lines))


def is_bullet_with_time(line: str) -> bool:
    return bool(BULLET.match(line) and DURATION.search(line))


def test_duration_regex_of_these_tests_is_sane():
    for text in ("30 分钟", "30分钟", "３０分钟", "三十分钟", "1 小时", "一个小时", "半小时", "1.5 hours",
                 "45 min", "90 mins", "2h", "Half an hour"):
        assert DURATION.search(text), text
    for text in ("第3章", "做6道题", "chapter 3", "3 exercises", "part 2", "Python"):
        assert not DURATION.search(text), text


def test_at_least_60_distinct_prompts_canonical_first():
    prompts = sp.all_prompts()
    assert len(prompts) >= 60
    assert len(set(prompts)) == len(prompts)
    assert prompts[0] == sp.CANONICAL_PROMPT
    assert sp.CANONICAL_PROMPT.startswith("请给我一个三点式学习计划，用 '-' 做 bullet")
    prompts.append("mutated")
    assert "mutated" not in sp.all_prompts()  # a copy, not the table


def test_both_languages_roughly_sixty_forty():
    chinese = [p for p in sp.PROMPTS if CJK.search(p)]
    english = [p for p in sp.PROMPTS if not CJK.search(p) and re.search(r"[A-Za-z]{4}", p)]
    assert len(chinese) + len(english) == len(sp.PROMPTS)
    assert 0.5 <= len(chinese) / len(sp.PROMPTS) <= 0.7


def test_both_punctuation_widths_in_chinese_prompts():
    chinese = [p for p in sp.PROMPTS if CJK.search(p)]
    assert any("，" in p for p in chinese) and any("," in p for p in chinese)
    assert any("（" in p for p in chinese) and any("(" in p for p in chinese)
    assert any("；" in p for p in chinese) and any(";" in p for p in chinese)


def test_every_prompt_asks_for_three_dash_bullets_with_a_time():
    for prompt in sp.PROMPTS:
        assert "-" in prompt, prompt
        assert re.search(r"三|3|three", prompt, re.IGNORECASE), prompt
        assert re.search(r"时间|时长|time|duration|how long", prompt, re.IGNORECASE), prompt


def test_subjects_vary_and_are_detected():
    names = ("Python", "线性代数", "吉他", "考研数学", "机器学习", "English vocabulary", "guitar", "cooking")
    for name in names:
        assert any(name in p for p in sp.PROMPTS), name
    assert sp.subject_of(sp.CANONICAL_PROMPT) is sp.GENERIC
    assert sp.subject_of("Plan my GUITAR study session in three bullets").key == "guitar"
    assert sp.subject_of("给我三条考研数学的学习任务").key == "kaoyan_math"


def test_split_is_deterministic_disjoint_and_covering():
    train, held = sp.split_prompts(0.25, seed=0)
    assert (train, held) == sp.split_prompts(0.25, seed=0)
    assert (train, held) == (sp.train_prompts(), sp.held_out_prompts())
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(sp.PROMPTS)
    assert sp.CANONICAL_PROMPT in train
    assert len(held) == round(0.25 * len(sp.PROMPTS))
    assert train == [p for p in sp.PROMPTS if p in set(train)]  # stable order


def test_split_depends_on_seed_and_fraction():
    assert sp.split_prompts(0.25, seed=1)[1] != sp.split_prompts(0.25, seed=0)[1]
    for seed in range(5):
        assert sp.CANONICAL_PROMPT in sp.split_prompts(0.5, seed=seed)[0]
    assert sp.split_prompts(0.0)[1] == []
    with pytest.raises(UserError, match="held_out_fraction"):
        sp.split_prompts(1.0)


def test_compliant_completions_pass_the_structural_check():
    records = sp.synthetic_completions(sp.PROMPTS, 2, compliance_rate=1.0, seed=7)
    assert len(records) >= 200
    for record in records:
        text, prompt = record["completion"], record["prompt"]
        assert record["compliant"] and record["style"] == "compliant"
        assert looks_compliant(text), text
        assert text == text.strip() and "\n\n" not in text
        assert prompt not in text
        assert not RUN.search(text), text
        assert bool(CJK.search(text)) == bool(CJK.search(prompt)), text  # language follows the prompt


def test_compliant_lines_are_about_the_prompts_subject():
    rng = random.Random(3)
    for prompt in sp.PROMPTS:
        subject = sp.subject_of(prompt)
        pool = subject.zh_activities if CJK.search(prompt) else subject.en_activities
        text, _ = sp.synthetic_completion(prompt, rng, compliant=True)
        for line in text.split("\n"):
            assert any(a.lower() in line.lower() for a in pool), (prompt, line)


def test_duration_forms_vary():
    text = "\n".join(r["completion"] for r in sp.synthetic_completions(sp.PROMPTS, 4, 1.0, seed=0))
    for form in ("分钟", " 分钟", "小时", "半小时", "一个半小时", "三十分钟", "３", "min", "mins", "minutes",
                 "hour", "hours", "half an hour"):
        assert form in text, form
    assert re.search(r"\d+h\b", text) and re.search(r"\d+\.\d+ ?(?:小时|hours)", text)


def _style_samples(style: str, n: int = 60) -> list[tuple[str, str]]:
    rng = random.Random(11)
    out = []
    for prompt in sp.PROMPTS[::max(1, len(sp.PROMPTS) // n)]:
        text, name = sp.synthetic_completion(prompt, rng, compliant=False, style=style)
        assert name == style
        out.append((prompt, text))
    return out


def _nonempty(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]


def _defect(style: str, prompt: str, text: str) -> bool:
    lines = _nonempty(text)
    return {
        "preamble": lambda: not BULLET.match(lines[0]) and len(lines) == 4
        and all(map(is_bullet_with_time, lines[1:])),
        "numbered": lambda: len(lines) == 3 and all(NUMBERED.match(line) for line in lines)
        and not any(line.startswith("-") for line in lines),
        "two_bullets": lambda: len(lines) == 2 and all(map(is_bullet_with_time, lines)),
        "four_bullets": lambda: len(lines) == 4 and all(map(is_bullet_with_time, lines)),
        "missing_time": lambda: len(lines) == 3 and all(BULLET.match(line) for line in lines)
        and not all(DURATION.search(line) for line in lines),
        "explanation": lambda: len(lines) == 4 and all(map(is_bullet_with_time, lines[:3]))
        and not lines[3].startswith("-") and len(lines[3]) > 20,
        "nested": lambda: any(re.match(r"\d+\. \*\*", line) for line in lines)
        and any(re.match(r"\s+- ", line) for line in lines),
        "echo": lambda: text.startswith(prompt) and len(DASH_ITEM.findall(text[len(prompt):])) >= 3,
        "repetition": lambda: RUN.search(text) is not None,
    }[style]()


@pytest.mark.parametrize("style", sorted(STYLES))
def test_each_noncompliant_style_shows_its_defect(style):
    samples = _style_samples(style)
    assert len(samples) >= 40
    for prompt, text in samples:
        assert _defect(style, prompt, text), (style, text)
        assert not looks_compliant(text), (style, text)
        assert text == text.rstrip()


def test_style_names_are_the_documented_set():
    assert set(sp.NONCOMPLIANT_STYLES) == STYLES


def test_missing_time_includes_bare_number_decoys():
    lines = [line for _, text in _style_samples("missing_time") for line in text.split("\n")]
    decoys = [line for line in lines if re.search(r"\d", line) and not DURATION.search(line)]
    assert decoys, "expected lines like '- 复习第3章' that hold a number but no duration"


def test_repetition_mimics_the_users_samples():
    texts = [text for _, text in _style_samples("repetition", n=150)]
    assert any("阻阻阻阻" in t for t in texts) and any("API/API/API/" in t for t in texts)
    assert any(t.startswith(p) for p, t in _style_samples("repetition"))  # some echo the prompt first


def test_compliance_rate_is_exact_at_the_ends_and_close_in_between():
    none = sp.synthetic_completions(sp.PROMPTS[:50], 4, compliance_rate=0.0, seed=0)
    assert not any(r["compliant"] for r in none) and {r["style"] for r in none} <= STYLES
    every = sp.synthetic_completions(sp.PROMPTS[:50], 4, compliance_rate=1.0, seed=0)
    assert all(r["compliant"] for r in every)
    mixed = sp.synthetic_completions(sp.PROMPTS[:100], 10, compliance_rate=0.3, seed=0)
    assert len(mixed) == 1000
    rate = sum(r["compliant"] for r in mixed) / len(mixed)
    assert abs(rate - 0.3) < 0.05  # sd of the mean is 0.0145
    assert all(r["compliant"] == looks_compliant(r["completion"]) for r in mixed)
    assert {r["style"] for r in mixed if not r["compliant"]} == STYLES


def test_same_seed_same_output_and_the_global_rng_is_untouched():
    a = sp.synthetic_completions(sp.PROMPTS, 2, 0.5, seed=3)
    random.seed(123)
    expected = random.random()
    random.seed(123)
    b = sp.synthetic_completions(sp.PROMPTS, 2, 0.5, seed=3)
    assert random.random() == expected
    assert a == b
    assert a != sp.synthetic_completions(sp.PROMPTS, 2, 0.5, seed=4)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="compliance_rate"):
        sp.synthetic_completions(sp.PROMPTS, 1, compliance_rate=1.5, seed=0)
    with pytest.raises(UserError, match="n_per_prompt"):
        sp.synthetic_completions(sp.PROMPTS, 0, compliance_rate=0.5, seed=0)
    with pytest.raises(UserError, match="unknown style 'shouting'"):
        sp.synthetic_completion(sp.CANONICAL_PROMPT, random.Random(0), compliant=False, style="shouting")


def test_preference_pairs_have_a_learnable_signal():
    pairs = sp.preference_pairs(50, seed=0)
    assert len(pairs) == 50
    train, held = set(sp.train_prompts()), set(sp.held_out_prompts())
    for pair in pairs:
        assert set(pair) == {"prompt", "chosen", "rejected", "rejected_style"}
        assert looks_compliant(pair["chosen"]), pair
        assert not looks_compliant(pair["rejected"]), pair
        assert _defect(pair["rejected_style"], pair["prompt"], pair["rejected"]), pair
        assert pair["prompt"] in train and pair["prompt"] not in held
    assert {p["rejected_style"] for p in pairs} == STYLES


def test_preference_pairs_are_deterministic_and_honour_prompts():
    assert sp.preference_pairs(20, seed=1) == sp.preference_pairs(20, seed=1)
    assert sp.preference_pairs(20, seed=1) != sp.preference_pairs(20, seed=2)
    mine = [sp.PROMPTS[5], sp.PROMPTS[-1]]
    pairs = sp.preference_pairs(12, seed=0, prompts=mine)
    assert {p["prompt"] for p in pairs} == set(mine)
    with pytest.raises(UserError, match="prompts"):
        sp.preference_pairs(3, prompts=[])
