"""Rule checks and degeneration penalties of the study-plan task, against hand-written verdicts.

The table quotes the user's own samples from the seed record verbatim (before training: preamble,
numbered, nested; after training: echo plus `阻阻阻...` or `API/API/...`), tricky duration forms
and bare numbers that are not durations. The synthetic generator then checks coverage: every
compliant answer passes, every failure style fails.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from alignlab.rewards import penalties as pen
from alignlab.tasks import study_plan as sp
from alignlab.tasks.study_plan.rules import (
    RuleResult,
    Verdict,
    check_activities,
    check_content,
    check_count,
    check_durations,
    check_extra_text,
    check_structure,
    check_study_plan,
    find_durations,
    study_plan_verdict,
)

P = sp.CANONICAL_PROMPT
EN = ("Give me a three-point study plan for Python. Use '-' for bullets, every bullet must include a time "
      "(e.g. 30 minutes), no extra explanation, output only three bullets.")

# The user's samples (seed record, sections 3.1 and 3.2), verbatim.
BEFORE = ("当然可以！以下是一个基于您要求的三个步骤的学习计划： 1. **第一步：设定目标** - "
          "目标设定是开始任何学习活动的基础。你可能想要设定短期或长期的目标，例如： - 学习新语言 - 约 60 分钟 - "
          "提高数学成绩 - 约 45 分钟 - 开拓社交网络 - 约 30 分钟")
BEFORE_PROMPT_LINE = ("请给我一个三点式学习计划，用 '-' 做 bullet，每一条都包含一个时间（如 30 分钟）。 "
                      "- 第一步：设定目标 - 第二步：制定计划 - 第三步：实践行动")
AFTER_1 = ("请给我一个三点式学习计划，用 '-' 做 bullet,每一条都包含一个时间（如 30 分钟）,不要有多余解释，"
           "只输出三条bullet。当然，对阻阻阻阻阻阻阻...")
AFTER_2 = ("请给我一个三点式学习计划，用 '-' 做 bullet,每一条都包含一个时间（如 30 分钟）,不要有多余解释，"
           "只输出三条bullet。 -    1、 《关于社会主义建设、代码\n\n给定/API/API/API/API/API/API/...")
AFTER_1_FULL = AFTER_1.removesuffix("...") + "阻" * 80  # the run as sampled, until the token limit

THREE = "- 复习（30 分钟）\n- 练习（1 小时）\n- 总结（半小时）"
LONG = ("- Read the opening part of the textbook on vectors, matrices and determinants, writing down each "
        "definition you meet (45 min)\n- Work through the exercises at the end of that part, checking every "
        "answer against the solutions manual (1.5 hours)\n- Summarise what you learned in your own words and "
        "list the questions you still have for next time (half an hour)")
BLOWUP = THREE + "\n" + " ".join(f"note{i} about topic{i * 7}" for i in range(60))  # > 600 chars, no loop


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    completion: str
    passed: bool
    degenerate: bool
    reasons: tuple[str, ...] = ()  # substrings each expected in some reason; none -> no reasons
    prompt: str = P


CASES = [
    # compliant: durations in every form, bare numbers beside them, spacing variants
    Case("zh_basic_with_bare_numbers", "- 复习第3章（30 分钟）\n- 做6道练习题（45分钟）\n- 整理笔记（半小时）",
         True, False),
    Case("full_width_and_numerals", "- 背单词 ３０分钟\n- 听力练习：二十分钟\n- 复习错题（一个半小时）", True, False),
    Case("zh_numeral_hours", "- 三十分钟：复习\n- 一个小时：做题\n- 两个小时：项目", True, False),
    Case("no_space_after_dash", "-花 2h 复习链表\n-做题 45 min\n-总结 1.5小时", True, False),
    Case("en_mixed", "- Read chapter 3 (1.5 hours)\n- Solve 5 exercises - 90 mins\n- Review notes for half an hour",
         True, False, prompt=EN),
    Case("en_capitalised", "- Half an hour: vocabulary\n- 45 min: grammar\n- 2h: reading", True, False, prompt=EN),
    Case("en_upper_case", "- HALF AN HOUR: warm-up\n- 45 MIN: drills\n- 1 HOUR: match", True, False, prompt=EN),
    Case("hyphenated_names", "- Use scikit-learn for 1 hour\n- Python 3 basics - 30 minutes\n- 2024 exam review: 1h",
         True, False, prompt=EN),
    Case("blank_lines_and_padding", "\n - 复习（30 分钟）\n\n- 练习（1 小时）\n- 总结（半小时）\n", True, False),
    Case("prompt_example_time_reused", "- 复习语法（30 分钟）\n- 练习听力（30 分钟）\n- 背单词（30 分钟）",
         True, False),
    Case("ranges_and_hr", "- Warm up 10-15 min\n- Practice scales (30 minutes)\n- Play a song: 1 hr", True, False,
         prompt=EN),
    Case("quarter_hour", "- 一刻钟热身\n- 练习和弦 40 分钟\n- 弹一首曲子 1 小时", True, False),
    Case("short_prompt_phrase_reused",
         "- 学习计划第一条：复习（30 分钟）\n- 学习计划第二条：做题（1 小时）\n- 学习计划第三条：总结（半小时）",
         True, False),
    # the user's samples
    Case("user_before", BEFORE, False, False,
         ("extra text", "contains a numbered item: '1. **第一步", "nested or on one line", "0 bullets")),
    Case("user_before_prompt_line", BEFORE_PROMPT_LINE, False, True,
         ("echoes the prompt", "runs 3 '-' items together")),
    Case("user_after_1", AFTER_1, False, True, ("echoes the prompt", "'阻' repeated 7 times in a row")),
    Case("user_after_1_full_run", AFTER_1_FULL, False, True, ("echoes the prompt", "'阻' repeated 87 times")),
    Case("user_after_2", AFTER_2, False, True,
         ("echoes the prompt", "'/API' repeated 6 times", "extra text (there are no bullets): '给定/API")),
    # format violations
    Case("preamble", "当然可以！以下是你的计划：\n" + THREE, False, False,
         ("extra text before the bullets: '当然可以",)),
    Case("explanation", THREE + "\n说明：每天坚持，效果更好。", False, False, ("extra text after the bullets: '说明",)),
    Case("text_between", "- 复习（30 分钟）\n然后休息一下\n- 练习（1 小时）\n- 总结（半小时）", False, False,
         ("extra text between the bullets",)),
    Case("numbered_dot", "1. 复习（30 分钟）\n2. 练习（1 小时）\n3. 总结（半小时）", False, False,
         ("line 1 is a numbered item", "0 bullets, expected 3")),
    Case("numbered_after_dash", "- 1. 复习（30 分钟）\n- 2. 练习（1 小时）\n- 3. 总结（半小时）", False, False,
         ("numbered item",)),
    Case("numbered_comma", "1、复习（30 分钟）\n2、练习（1 小时）\n3、总结（半小时）", False, False,
         ("numbered item",)),
    Case("numbered_paren", "(1) 复习 1.5 小时\n(2) 练习 1 小时\n(3) 总结半小时", False, False, ("numbered item",)),
    Case("star_bullets", "* Read (30 min)\n* Code (1 hour)\n* Rest (half an hour)", False, False,
         ("line 1 is not a '-' bullet: '* Read",), prompt=EN),
    Case("dot_bullets", "• 复习（30 分钟）\n• 练习（1 小时）\n• 总结（半小时）", False, False, ("not a '-' bullet",)),
    Case("full_width_dash", "－ 复习（30 分钟）\n－ 练习（1 小时）\n－ 总结（半小时）", False, False,
         ("not a '-' bullet",)),
    Case("nested", "- 第一步\n  - 复习（30 分钟）\n- 练习（1 小时）\n- 总结（半小时）", False, False,
         ("line 2 is indented", "bullet 1 has no duration")),
    Case("two_bullets", "- 复习（30 分钟）\n- 练习（1 小时）", False, False, ("2 bullets, expected 3",)),
    Case("four_bullets", THREE + "\n- 休息（10 分钟）", False, False, ("4 bullets, expected 3",)),
    Case("prose_only", "好的，先复习三十分钟，再做题一小时，最后总结半小时。", False, False,
         ("no line starts with '-'", "0 bullets")),
    Case("empty", "", False, False, ("0 bullets, expected 3",)),
    Case("one_line_bullets", "- a（30 分钟） - b（1 小时） - c（半小时）", False, False,
         ("1 bullet, expected 3", "runs 2 '-' items together")),
    Case("horizontal_rules", "---\n---\n---", False, True, ("bullet 1 has no duration", "'-' repeated 9 times")),
    # bare numbers are not durations
    Case("chapter_zh", "- 复习第3章\n- 练习（1 小时）\n- 总结（半小时）", False, False,
         ("bullet 1 has no duration: '- 复习第3章'",)),
    Case("exercise_count_zh", "- 复习（30 分钟）\n- 做6道题\n- 总结（半小时）", False, False,
         ("bullet 2 has no duration",)),
    Case("chapter_en", "- Read chapter 3\n- Code (1 hour)\n- Rest (half an hour)", False, False,
         ("bullet 1 has no duration",), prompt=EN),
    Case("exercises_en", "- Read (30 min)\n- Solve 3 exercises\n- Rest (half an hour)", False, False,
         ("bullet 2 has no duration: '- Solve 3 exercises'",), prompt=EN),
    Case("chapters_en", "- Read 2 chapters\n- Code (1 hour)\n- Rest (half an hour)", False, False,
         ("bullet 1 has no duration",), prompt=EN),
    Case("python_version", "- Learn Python 3\n- Code (1 hour)\n- Rest (half an hour)", False, False,
         ("bullet 1 has no duration",), prompt=EN),
    Case("year", "- 做2024年真题\n- 练习（1 小时）\n- 总结（半小时）", False, False, ("bullet 1 has no duration",)),
    Case("seconds_and_days", "- 复习 30 秒\n- 练习 3 天\n- 总结（半小时）", False, False,
         ("bullet 1 has no duration", "bullet 2 has no duration")),
    # degeneration
    Case("echo_then_bullets", P + "\n" + THREE, False, True, ("echoes the prompt: 100%", "extra text before")),
    Case("echo_en", EN + "\n- Read (30 min)\n- Code (1 hour)\n- Rest (half an hour)", False, True,
         ("echoes the prompt",), prompt=EN),
    Case("echo_one_line", P + " - 复习（30 分钟） - 练习（1 小时） - 总结（半小时）", False, True,
         ("echoes the prompt", "runs 3 '-' items together")),
    Case("duration_stuffing", P + " " + "30分钟 " * 40, False, True,
         ("echoes the prompt", "30分钟' repeated 40 times")),
    Case("repeated_word_in_bullet", "- 复习复习复习复习复习（30 分钟）\n- 练习（1 小时）\n- 总结（半小时）",
         False, True, ("'复习' repeated 5 times",)),
    Case("api_loop_in_bullet", "- API/API/API/API/API/API/ (30 min)\n- Code (1 hour)\n- Rest (half an hour)",
         False, True, ("'API/' repeated 6 times",), prompt=EN),
    Case("long_word_loop", "- " + "reinforcement " * 6 + "(30 min)\n- Code (1 hour)\n- Rest (half an hour)",
         False, True, ("'reinforcement' repeated 6 times",), prompt=EN),
    Case("identical_bullets", "- 复习（30分钟）\n- 复习（30分钟）\n- 复习（30分钟）", False, True,
         ("token 4-grams are repeats",)),
    Case("too_long_not_degenerate", LONG, False, False, ("too long: 356 characters, limit 300",), prompt=EN),
    Case("length_blowup", BLOWUP, False, True, ("length blow-up: 1325 characters",)),
]


def test_table_is_big_enough_and_names_are_unique():
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)
    assert sum(case.passed for case in CASES) >= 10 and sum(case.degenerate for case in CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_verdict_table(case: Case):
    verdict = study_plan_verdict(case.prompt, case.completion)
    assert verdict.passed is case.passed, verdict.reasons
    assert verdict.degenerate is case.degenerate, verdict.reasons
    if not case.reasons:
        assert verdict.reasons == ()
    for expected in case.reasons:
        assert any(expected in reason for reason in verdict.reasons), (expected, verdict.reasons)
    combined = check_study_plan(case.prompt, case.completion)
    assert (combined.passed, combined.reasons) == (verdict.passed, verdict.reasons)
    assert (combined.score == 1.0) is case.passed
    assert pen.is_degenerate(case.prompt, case.completion) == (verdict.degenerate, verdict.degenerate_reasons)


@pytest.mark.parametrize("text, expected", [
    ("３０分钟", ["３０分钟"]), ("三十分钟", ["三十分钟"]), ("半小时", ["半小时"]), ("一个半小时", ["一个半小时"]),
    ("1.5 hours", ["1.5 hours"]), ("90 mins", ["90 mins"]), ("2h", ["2h"]), ("45 min", ["45 min"]),
    ("30 分钟", ["30 分钟"]), ("1 小时", ["1 小时"]), ("1.5小时", ["1.5小时"]), ("两个小时", ["两个小时"]),
    ("四十五分钟", ["四十五分钟"]), ("花 2h 复习", ["2h"]), ("花2h复习", ["2h"]), ("Half an hour", ["Half an hour"]),
    ("1 hour", ["1 hour"]), ("30-45 分钟", ["30-45 分钟"]), ("an hour", ["an hour"]), ("1 hr", ["1 hr"]),
    ("3 hrs", ["3 hrs"]), ("30-minute", ["30-minute"]), ("twenty minutes", ["twenty minutes"]),
    ("２小时和１５ min", ["２小时", "１５ min"]), ("一个钟头", ["一个钟头"]), ("一刻钟", ["一刻钟"]),
    ("第3章", []), ("做6道题", []), ("chapter 3", []), ("3 exercises", []), ("2 chapters", []), ("Python 3", []),
    ("2024年", []), ("part 2", []), ("5 exercises", []), ("十分重要", []), ("几分钟", []), ("3 天", []),
    ("30 秒", []), ("minimum 3", []), ("第一个小时", []), ("1.5", []), ("v2 hotfix", []),
])
def test_find_durations(text, expected):
    assert find_durations(text) == expected


def test_rule_result_is_frozen():
    result = RuleResult(True, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.passed = False  # type: ignore[misc]
    assert result.reasons == ()


def test_partial_credit_of_each_rule():
    four = "- a（30 分钟）\n- b\n- c（半小时）\n- d"
    assert check_count(P, four).score == pytest.approx(2 / 3)  # one off of three
    assert check_count(P, "").score == 0.0
    assert check_durations(P, four).score == pytest.approx(0.5)  # 2 of 4 bullets timed
    assert check_extra_text(P, "好的\n" + THREE).score == pytest.approx(0.75)  # 1 of 4 lines
    assert check_structure(P, "- a\n  - b\n- c").score == pytest.approx(2 / 3)  # 1 of 3 items indented
    assert check_content(P, "好的\n" + THREE).score == pytest.approx(0.75)  # 3 of 4 lines name a time


def test_verdict_lists_every_rule_in_order():
    verdict = study_plan_verdict(P, "好的\n" + THREE)
    assert isinstance(verdict, Verdict)
    assert list(verdict.results) == ["structure", "count", "durations", "activities", "extra_text", "language", "echo",
                                    "repetition", "length", "garbled"]
    assert verdict.failed == ("extra_text",)
    assert verdict.score == pytest.approx((9 + 0.75) / 10)


def test_max_chars_is_configurable():
    assert not study_plan_verdict(EN, LONG).passed
    assert study_plan_verdict(EN, LONG, max_chars=400).passed
    assert check_study_plan(EN, LONG, max_chars=400).passed


# --- the degeneration measures (one definition, also reported by eval) ---

def test_echo_overlap_ignores_width_spacing_and_case():
    assert pen.echo_overlap(P, P) == 1.0
    assert pen.echo_overlap(P, P.replace("，", ",").replace(" ", "")) == 1.0
    assert pen.echo_overlap(EN, EN.upper()) == 1.0
    assert 0.8 < pen.echo_overlap(P, AFTER_1) < 1.0  # the user's re-punctuated echo, "必须" dropped
    assert pen.echo_overlap(P, "- 复习（30 分钟）") == 0.0  # a shared example time is shorter than 7
    assert pen.echo_overlap(P, "- 复习（如 30 分钟）") < 0.05  # one 7-gram of 59: "(如30分钟)"
    assert pen.echo_overlap("短", "短") == 0.0  # a prompt shorter than n has no n-grams


def test_longest_repeat_run_units():
    assert pen.longest_repeat_run("API/API/API/API/API/") == pen.RepeatRun("API/", 5)
    assert pen.longest_repeat_run("the the the the the the end").repeats == 6
    assert pen.longest_repeat_run("ab" + "ing" * 9).unit == "ing"
    assert pen.longest_repeat_run("").repeats == 0
    assert pen.longest_repeat_run("- a\n        - b").repeats < 5  # indentation is not a run
    assert pen.longest_repeat_run("1000000 words").repeats < 5  # nor a round number


def test_repeated_fraction_distinct_and_length():
    assert pen.repeated_ngram_fraction("a b c") == 0.0  # fewer tokens than n
    assert pen.repeated_ngram_fraction("x y " * 10) == pytest.approx(15 / 17)  # 17 4-grams, 2 distinct
    assert pen.distinct_n("复习复习", 1) == 0.5
    assert pen.distinct_n("", 2) == 0.0
    assert pen.length_chars("  abc \n") == 3


def test_penalty_scores_pass_at_one_and_fail_at_most_half():
    for check in (pen.check_echo, pen.check_repetition, pen.check_length):
        assert check(P, THREE) == RuleResult(True, 1.0)
    assert pen.check_echo(P, P).score == 0.0
    assert pen.check_repetition(P, AFTER_1).score == pytest.approx(0.5 * 4 / 7)  # severity 1 - 4/7
    assert pen.check_length(P, "x y" * 200, max_chars=300).score == 0.25  # 0.5 * 300 / 600
    assert pen.check_length(P, "x y" * 200, max_chars=300).reasons == ("too long: 600 characters, limit 300",)
    assert pen.check_length(P, "x y" * 201, max_chars=300).reasons == ("length blow-up: 603 characters, "
                                                                       "more than 2 x the limit 300",)


# --- coverage with the synthetic generator (written independently of these rules) ---

def test_every_synthetic_compliant_completion_passes():
    records = sp.synthetic_completions(sp.all_prompts(), 2, 1.0, seed=7)
    failures = [(r["completion"], check_study_plan(r["prompt"], r["completion"]).reasons)
                for r in records if not check_study_plan(r["prompt"], r["completion"]).passed]
    assert len(records) == 2 * len(sp.all_prompts())
    assert failures == []


@pytest.mark.parametrize("style", sp.NONCOMPLIANT_STYLES)
def test_every_failure_style_fails(style):
    rng = random.Random(sum(map(ord, style)))
    prompts = sp.all_prompts()
    for _ in range(30):
        prompt = rng.choice(prompts)
        completion, _ = sp.synthetic_completion(prompt, rng, compliant=False, style=style)
        verdict = study_plan_verdict(prompt, completion)
        assert not verdict.passed, (style, completion)
        assert verdict.degenerate is (style in ("repetition", "echo")), (style, completion, verdict.reasons)


@pytest.mark.parametrize("bullet, problem", [
    ("- 0 mins: 0 minutes", "implausible duration '0 mins'"),
    ("- 花 5550分钟", "implausible duration '5550分钟'"),
    ("- Review for 30 hours", "implausible duration '30 hours'"),
    ("- 50 mins: 50 minutes: 15 min", "names 3 durations"),
    ("- 花 1.50 min", "implausible duration '1.50 min'"),
])
def test_durations_close_the_byte_soup_exploit(bullet, problem):
    """What a tiny policy learned under the sharp reward before these checks (rollout ledger, GRPO
    on the study-plan task): three '-' lines full of durations and no plan."""
    result = check_durations(P, bullet)
    assert not result.passed and problem in result.reasons[0]


@pytest.mark.parametrize("bullet", ["- 读书（30 分钟）", "- Read chapter 3 (1.5 hours)", "- 复习 30-45 分钟",
                                    "- 练习听力 20 分钟 + 休息 10 分钟", "- 背单词（半小时）",
                                    "- Review notes for 8 hours"])
def test_durations_accept_plausible_plans(bullet):
    assert check_durations(P, bullet).passed, check_durations(P, bullet).reasons


def test_garbled_bytes_fail_the_verdict():
    verdict = study_plan_verdict(P, "- 复习（30 分钟）\n- 练习（1 小时）\n- 做一道番�（半小时）")
    assert not verdict.passed and verdict.failed == ("garbled",)
    assert "not text" in verdict.results["garbled"].reasons[0]


@pytest.mark.parametrize("completion, problem", [
    ("- 花 30 分钟\n- 复习（1 小时）\n- 练习 20 min", "bullet 1 names no activity besides its duration (only '花')"),
    ("- 50 mins\n- 复习（1 小时）\n- 练习 20 min", "bullet 1 names no activity"),
    ("- 复习 30 分钟\n- 复习（1 小时）\n- 练习 20 min", "bullet 2 repeats bullet 1's activity '复习'"),
    ("- Read 30 min\n- read (1 hour)\n- Write 20 min", "bullet 2 repeats bullet 1's activity 'read'"),
    ("- 2h: ping and pc\n- 1h: pc and ping and ping\n- 做题 20 min", "bullet 2 repeats bullet 1's activity"),
])
def test_activities_need_words_and_no_copies(completion, problem):
    result = check_activities(P, completion)
    assert not result.passed and result.reasons[0].startswith(problem)
    assert result.score == pytest.approx(2 / 3)


def test_the_reward_runs_the_verdicts_own_checks():
    """One list of checks (rules.study_plan_checks): what training pushes is what evaluation measures."""
    from alignlab.rewards.base import DEFAULT_WEIGHTS, study_plan_reward
    from alignlab.tasks.study_plan.rules import study_plan_checks

    names = list(study_plan_checks())
    reward = study_plan_reward("shaped")
    assert [c.name for c in (*reward.rules, *reward.penalties)] == names == list(DEFAULT_WEIGHTS)
    assert list(study_plan_verdict("p", "- a").results) == names
