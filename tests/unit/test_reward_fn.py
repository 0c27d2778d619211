"""The study-plan reward in its three modes, the reward contract, and combined rewards.

Values by hand (default weights: format rules 1 each, echo 1, repetition 1, length 0.5):
- compliant: naive 1.0, shaped 1.0, sharp 1.0;
- preamble line + three bullets: extra_text credit 3/4, so shaped (1 + 1 + 1 + 1 + 0.75 + 1) / 6 = 0.9583
  (six format rules, language included); sharp -0.5 - 0.5 * 1/6 = -0.5833; naive 3 of 4 lines timed = 0.75;
- the user's after-training sample 1: naive 1.0 (the echoed prompt names "30 分钟": the hack),
  sharp -1.0 (echo and repetition).
"""

from __future__ import annotations

import math
import random

import pytest

from alignlab.errors import UserError
from alignlab.rewards.base import (
    CombinedScores,
    Reward,
    RewardContractError,
    WeightedCheck,
    call_reward,
    combine,
    study_plan_reward,
)
from alignlab.rewards.penalties import RuleResult
from alignlab.tasks import study_plan as sp

P = sp.CANONICAL_PROMPT
THREE = "- 复习（30 分钟）\n- 练习（1 小时）\n- 总结（半小时）"
AFTER_1 = ("请给我一个三点式学习计划，用 '-' 做 bullet,每一条都包含一个时间（如 30 分钟）,不要有多余解释，"
           "只输出三条bullet。当然，对阻阻阻阻阻阻阻...")
STUFFED = P + " " + "30分钟 " * 40  # the echoed prompt, then a duration over and over
MODES = ("naive", "shaped", "sharp")
KEYS = {"structure", "count", "durations", "activities", "extra_text", "language", "echo", "repetition", "length",
        "garbled", "content", "passed", "total"}


def _samples(compliant: bool, per_style: int = 4, seed: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, completion, style) across prompts; non-compliant ones cover every style."""
    rng, prompts = random.Random(seed), sp.all_prompts()
    styles = [sp.COMPLIANT_STYLE] if compliant else list(sp.NONCOMPLIANT_STYLES)
    out = []
    for style in styles:
        for _ in range(per_style):
            prompt = rng.choice(prompts)
            text, _ = sp.synthetic_completion(prompt, rng, compliant=compliant, style=None if compliant else style)
            out.append((prompt, text, style))
    return out


@pytest.fixture(scope="module")
def rewards() -> dict[str, Reward]:
    return {mode: study_plan_reward(mode) for mode in MODES}


def test_hand_computed_values(rewards):
    preamble = "好的：\n" + THREE
    assert [rewards[m]([P], [THREE])[0] for m in MODES] == [1.0, 1.0, 1.0]
    assert rewards["naive"]([P], [preamble]) == [0.75]
    assert rewards["shaped"]([P], [preamble]) == [pytest.approx(5.75 / 6)]
    assert rewards["sharp"]([P], [preamble]) == [pytest.approx(-0.5 - 0.5 / 6)]
    assert rewards["naive"]([P], [AFTER_1]) == [1.0]
    assert rewards["sharp"]([P], [AFTER_1]) == [-1.0]


def test_shaped_and_sharp_put_every_compliant_answer_above_every_violation(rewards):
    good, bad = _samples(True, 20), _samples(False, 4, seed=1)
    for mode in ("shaped", "sharp"):
        good_scores = rewards[mode]([p for p, _, _ in good], [c for _, c, _ in good])
        bad_scores = rewards[mode]([p for p, _, _ in bad], [c for _, c, _ in bad])
        assert min(good_scores) > max(bad_scores), mode
    sharp_good = rewards["sharp"]([p for p, _, _ in good], [c for _, c, _ in good])
    sharp_bad = rewards["sharp"]([p for p, _, _ in bad], [c for _, c, _ in bad])
    assert set(sharp_good) == {1.0}
    assert all(-1.0 <= s <= -0.5 for s in sharp_bad)
    for (_, _, style), score in zip(bad, sharp_bad, strict=True):
        if style in ("echo", "repetition"):
            assert score == -1.0, style


def test_naive_orders_on_average_only(rewards):
    good, bad = _samples(True, 20), _samples(False, 4, seed=1)
    good_scores = rewards["naive"]([p for p, _, _ in good], [c for _, c, _ in good])
    bad_scores = rewards["naive"]([p for p, _, _ in bad], [c for _, c, _ in bad])
    assert set(good_scores) == {1.0}
    assert sum(bad_scores) / len(bad_scores) < 0.9
    assert max(bad_scores) == 1.0  # numbered lists, 2 or 4 bullets, echoes: all full marks


def test_naive_is_hackable_and_sharp_is_not(rewards):
    naive, shaped, sharp = (rewards[m]([P, P, P], [THREE, STUFFED, AFTER_1]) for m in MODES)
    assert naive[1] >= naive[0] and naive[2] >= naive[0]  # degenerate scores as high as compliant
    assert sharp[1] < 0 < sharp[0] and sharp[2] < 0
    assert shaped[1] < 0 < shaped[0] and shaped[2] < 0


def test_messages_form_matches_strings(rewards):
    good, bad = _samples(True, 3), _samples(False, 1)
    prompts = [p for p, _, _ in good + bad]
    texts = [c for _, c, _ in good + bad]
    as_messages = [[{"role": "assistant", "content": c}] for c in texts]
    chat_prompts = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": p}] for p in prompts]
    conversation = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": c},
                     {"role": "user", "content": "thanks"}] for c in texts]  # last assistant message counts
    for mode in MODES:
        expected = rewards[mode](prompts, texts)
        assert rewards[mode](chat_prompts, as_messages) == expected
        assert rewards[mode](prompts, conversation) == expected
    echo = [[{"role": "assistant", "content": P + "\n" + THREE}]]
    assert rewards["sharp"]([[{"role": "user", "content": P}]], echo) == [-1.0]  # the prompt is read for echo


def test_name_breakdown_and_explain(rewards):
    assert [rewards[m].__name__ for m in MODES] == ["study_plan_naive", "study_plan_shaped", "study_plan_sharp"]
    rows = rewards["shaped"].breakdown([P, P], [THREE, "好的：\n" + THREE])
    assert all(set(row) == KEYS for row in rows)
    assert [row["total"] for row in rows] == rewards["shaped"]([P, P], [THREE, "好的：\n" + THREE])
    assert [row["passed"] for row in rows] == [1.0, 0.0]
    assert rows[1]["extra_text"] == 0.75 and rows[1]["count"] == 1.0
    results = rewards["sharp"].explain(P, AFTER_1)
    assert all(isinstance(r, RuleResult) for r in results.values())
    assert not results["echo"].passed and not results["repetition"].passed
    assert results["content"].score == 1.0


def test_weights_and_options_change_the_reward():
    long_plan = "- study (30 min)\n- practise (1 hour)\n- rest (half an hour) " + " ".join(f"w{i}" for i in range(80))
    assert 300 < len(long_plan) < 600  # too long, not a blow-up, and no repeated unit
    assert study_plan_reward("sharp")([P], [long_plan]) == [-1.0]  # too long is a hard violation
    # an English plan for the Chinese prompt P: the language rule is weighed out too
    assert study_plan_reward("sharp", weights={"length": 0, "language": 0})([P], [long_plan]) == [1.0]
    assert study_plan_reward("sharp", max_chars=1000, weights={"language": 0})([P], [long_plan]) == [1.0]
    heavy = study_plan_reward("shaped", weights={"echo": 3.0})([P], [P + "\n" + THREE])[0]
    light = study_plan_reward("shaped")([P], [P + "\n" + THREE])[0]
    assert heavy < light


def test_reward_constructor_defaults_to_the_study_plan_and_takes_custom_checks():
    assert Reward(mode="sharp").__name__ == "study_plan_sharp"
    assert Reward(mode="shaped")([P], ["好的：\n" + THREE]) == study_plan_reward("shaped")([P], ["好的：\n" + THREE])

    def short(prompt: str, completion: str) -> RuleResult:
        return RuleResult(len(completion) <= 5, 1.0 if len(completion) <= 5 else 0.0)

    custom = Reward("sharp", rules=[WeightedCheck("short", short, 1.0)], content=short)
    assert custom.__name__ == "reward_sharp"
    assert custom(["p", "p"], ["tiny", "far too long"]) == [1.0, -1.0]  # -0.5 - 0.5 * 1/1
    with pytest.raises(UserError, match="weights apply to the built-in"):
        Reward("sharp", rules=[WeightedCheck("short", short, 1.0)], weights={"echo": 1.0})
    with pytest.raises(UserError, match="positive weight"):
        Reward("sharp", rules=[WeightedCheck("short", short, 0.0)])


def test_configuration_errors_are_user_errors():
    with pytest.raises(UserError, match="unknown reward mode 'sharper'"):
        study_plan_reward("sharper")
    with pytest.raises(UserError, match="unknown rule 'style'"):
        study_plan_reward("shaped", weights={"style": 1.0})
    with pytest.raises(UserError, match="finite weight >= 0"):
        study_plan_reward("shaped", weights={"echo": -1.0})
    with pytest.raises(UserError, match="one prompt per completion"):
        study_plan_reward("sharp")([P], [THREE, THREE])
    with pytest.raises(UserError, match="completion string or a list"):
        study_plan_reward("sharp")([P], [42])


# --- the contract ---

def reward_a_half(prompts, completions, **kwargs):
    return [0.5] * len(completions)


def test_call_reward_accepts_numbers_tuples_and_abstentions(rewards):
    assert call_reward(reward_a_half, [P, P], [THREE, "x"]) == [0.5, 0.5]
    assert call_reward(lambda prompts, completions, **kw: (1, None), [P, P], [THREE, "x"]) == [1.0, None]
    assert call_reward(rewards["sharp"], [P], [THREE]) == [1.0]


def test_call_reward_passes_dataset_columns_as_keywords():
    def by_answer(prompts, completions, answer, **kwargs):
        return [1.0 if a in c else 0.0 for c, a in zip(completions, answer, strict=True)]

    assert call_reward(by_answer, [P, P], ["42", "41"], answer=["42", "42"]) == [1.0, 0.0]


@pytest.mark.parametrize("returned, message", [
    ([0.5], "returned 1 values for 2 completions"),
    ([0.5, float("nan")], "returned nan for completion 1: '- second'"),
    ([float("inf"), 0.5], "returned inf for completion 0: '- first'"),
    ([0.5, "0.5"], "returned '0.5' (str) for completion 1"),
    ([True, 0.5], "returned True (bool) for completion 0"),
    ({"a": 1.0}, "returned dict; expected a list of 2 floats"),
])
def test_contract_violations_name_the_function(returned, message):
    def my_reward(prompts, completions, **kwargs):
        return returned

    with pytest.raises(RewardContractError) as caught:
        call_reward(my_reward, ["p", "p"], ["- first", "- second"])
    assert "reward function 'my_reward'" in str(caught.value)
    assert message in str(caught.value)
    assert isinstance(caught.value, UserError)


def test_an_exception_inside_names_the_function_and_the_completion():
    def picky(prompts, completions, **kwargs):
        return [float(len(c.split("|")[1])) for c in completions]  # IndexError without a '|'

    with pytest.raises(RewardContractError) as caught:
        call_reward(picky, ["p"] * 3, ["a|b", "no bar here", "c|d"])
    text = str(caught.value)
    assert "'picky' raised IndexError" in text and "completion 1: 'no bar here'" in text
    assert isinstance(caught.value.__cause__, IndexError)


def test_a_batch_only_failure_says_so():
    def batch_only(prompts, completions, **kwargs):
        if len(completions) > 1:
            raise RuntimeError("out of memory")
        return [0.0]

    with pytest.raises(RewardContractError, match="'batch_only' raised RuntimeError: out of memory on a batch of 2"):
        call_reward(batch_only, ["p", "p"], ["a", "b"])


def test_unnamed_callables_are_named_by_repr():
    class Scorer:
        def __call__(self, prompts, completions, **kwargs):
            return [None, math.nan]

        def __repr__(self):
            return "Scorer(v2)"

    with pytest.raises(RewardContractError, match=r"reward function 'Scorer\(v2\)' returned nan for completion 1"):
        call_reward(Scorer(), ["p", "p"], ["a", [{"role": "assistant", "content": "b"}]])


# --- combining ---

def _fixed(name: str, values: list):
    def fn(prompts, completions, **kwargs):
        return list(values)

    fn.__name__ = name
    return fn


def test_combine_weighted_sum_with_abstentions():
    both = combine({"format": (_fixed("format", [1.0, 0.5, None, None]), 2.0),
                    "judge": (_fixed("judge", [0.25, None, 1.0, None]), 4.0)})
    scores = both.score(["p"] * 4, ["a", "b", "c", "d"])
    assert isinstance(scores, CombinedScores)
    # 2*1 + 4*0.25 = 3; judge abstains: 2*0.5 = 1; format abstains: 4*1 = 4; both abstain: None
    assert scores.total == [3.0, 1.0, 4.0, None]
    assert scores.parts == {"format": [1.0, 0.5, None, None], "judge": [0.25, None, 1.0, None]}
    assert both(["p"] * 4, ["a", "b", "c", "d"]) == [3.0, 1.0, 4.0, None]
    assert both.__name__ == "combined"


def test_combine_checks_every_component_and_its_entries(rewards):
    mixed = combine({"sharp": (rewards["sharp"], 1.0), "bad": (_fixed("bad_len", [1.0]), 1.0)})
    with pytest.raises(RewardContractError, match="'bad_len' returned 1 values for 2 completions"):
        mixed([P, P], [THREE, THREE])
    with pytest.raises(UserError, match="at least one reward"):
        combine({})
    with pytest.raises(UserError, match="finite number as weight"):
        combine({"a": (reward_a_half, float("nan"))})
    with pytest.raises(UserError, match=r"\(reward function, weight\) pair"):
        combine({"a": reward_a_half})
    nested = combine({"inner": (combine({"x": (_fixed("x", [2.0]), 1.0)}), 0.5)})
    assert call_reward(nested, [P], [THREE]) == [1.0]
