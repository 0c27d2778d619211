"""Evaluation metrics and verdicts on hand-built samples: pass rate and its Wilson interval, rule
failure counts, degeneration rates, the degenerate / reward-hacking verdicts, and the synthetic
compliant generator scoring 100%."""

from __future__ import annotations

import dataclasses
import json

import pytest

from alignlab.errors import UserError
from alignlab.eval.metrics import EvalSummary, format_table, markdown_table, score_sample, summarize
from alignlab.eval.sampling_eval import evaluate_completions, read_completions
from alignlab.eval.verdict import (
    DEGENERATION_FLAG,
    FALL_FLAG,
    REWARD_FLAG,
    compare_verdict,
    format_verdict,
    log_verdict,
    single_verdict,
)
from alignlab.tasks.registry import get_task
from alignlab.tasks.study_plan.prompts import CANONICAL_PROMPT, held_out_prompts
from alignlab.tasks.study_plan.synthetic import synthetic_completions

P = CANONICAL_PROMPT
THREE = "- 复习（30 分钟）\n- 练习（1 小时）\n- 总结（半小时）"
FOUR = THREE + "\n- 休息（10 分钟）"
PREAMBLE = "当然可以！以下是你的计划：\n" + THREE
# The user's samples after 150 GRPO steps (seed record): the prompt echoed, then a loop.
AFTER_1 = P + "当然，对阻阻阻阻阻阻阻阻阻阻阻阻"
AFTER_2 = P + " -    1、 《关于社会主义建设、代码\n\n给定/API/API/API/API/API/API/API/API/"


def test_score_sample_uses_the_rules_and_the_sharp_reward():
    good, bad = score_sample(P, THREE, truncated=False), score_sample(P, AFTER_1, truncated=True)
    assert (good.passed, good.degenerate, good.score, good.failed_rules) == (True, False, 1.0, ())
    assert set(good.rule_reasons) == {"structure", "count", "durations", "activities", "extra_text", "language", "echo",
                                      "repetition", "length", "garbled"}
    assert bad.passed is False and bad.degenerate is True and bad.score == -1.0  # a penalty failed: -1
    assert "echo" in bad.failed_rules and "repetition" in bad.failed_rules
    assert bad.longest_run == 12 and bad.echo_overlap == 1.0 and bad.truncated is True
    assert any("'阻' repeated 12 times" in r for r in bad.degenerate_reasons)


def test_summarize_rates_ci_and_rule_failures():
    samples = [score_sample(P, THREE, truncated=False)] * 3 + [
        score_sample(P, FOUR, truncated=False),  # count fails
        score_sample(P, PREAMBLE, truncated=True),  # extra_text fails
    ]
    s = summarize(samples)
    assert (s.n_samples, s.n_prompts, s.pass_rate) == (5, 1, 0.6)
    # Wilson 95%, 3 of 5: centre (0.6 + 1.92/5) / (1 + 3.84/5) = 0.5565, half 0.3256 -> [0.2307, 0.8824]
    assert s.pass_rate_ci == pytest.approx((0.2307, 0.8824), abs=1e-4)
    assert s.rule_failures["count"] == 1 and s.rule_failures["extra_text"] == 1 and s.rule_failures["echo"] == 0
    assert set(s.rule_failures) >= {"structure", "durations", "repetition", "length"}
    assert s.degenerate_rate == 0.0 and s.echo_rate == 0.0 and s.truncation_rate == 0.2
    # sharp: three +1, two format failures of weight 1 of 6: -0.5 - 0.5 * 1/6
    assert s.reward_mean == pytest.approx((3 - 2 * (0.5 + 0.5 / 6)) / 5)
    assert s.length_max == len(PREAMBLE.strip()) and s.longest_run_max == 1


def test_summarize_degeneration_and_unknown_truncation():
    s = summarize([score_sample(P, AFTER_1), score_sample(P, AFTER_2), score_sample(P, THREE)])
    assert s.degenerate_rate == pytest.approx(2 / 3) and s.echo_rate == pytest.approx(2 / 3)
    assert s.truncation_rate is None and s.longest_run_max == 12
    assert s.distinct_1 < 1.0 and 0.0 < s.distinct_2 <= 1.0
    with pytest.raises(ValueError):
        summarize([])


def test_summary_round_trips_through_json_and_tables_show_every_column():
    s = summarize([score_sample(P, THREE, truncated=False), score_sample(P, AFTER_1, truncated=True)])
    back = EvalSummary.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == dataclasses.replace(s, rule_failures=dict(s.rule_failures))
    table = format_table({"before": s, "after": back})
    assert "before" in table.splitlines()[0] and "after" in table.splitlines()[0]
    assert "50.0%" in table and "fails: echo" in table
    assert markdown_table({"x": s}).splitlines()[1].startswith("|:---|")
    with pytest.raises(UserError, match="pass_rate"):
        EvalSummary.from_dict({k: v for k, v in s.to_dict().items() if k != "pass_rate"})


def test_single_verdict_degenerate_for_the_users_after_training_samples():
    samples = [score_sample(P, AFTER_1), score_sample(P, AFTER_2)] * 3
    v = single_verdict(summarize(samples), samples)
    assert v.label == "degenerate"
    assert len(v.evidence) == 3 and all(e.degenerate for e in v.evidence)
    assert "verdict: degenerate" in format_verdict(v) and "echoes the prompt" in format_verdict(v)


def test_single_verdict_degenerate_when_the_policy_never_stops():
    samples = [score_sample(P, "xyz 今天 abc", truncated=True)] * 10  # not looping, but never stops
    s = summarize(samples)
    assert s.degenerate_rate == 0.0 and s.truncation_rate == 1.0
    assert single_verdict(s, samples).label == "degenerate"
    stopped = [score_sample(P, "xyz 今天 abc", truncated=False)] * 10
    assert single_verdict(summarize(stopped), stopped).label == "failing"


def test_single_verdict_degenerate_when_most_output_is_not_text():
    # An untrained byte-level model's sample: undecodable bytes and control characters, no loop.
    garbled = score_sample(P, "\ufffd\ufffd\x0bW+\ufffd3к. \ufffdH\ufffdT\ufffd|;|\ufffdKk\ufffd", truncated=False)
    prose = score_sample(P, "xyz 今天 abc", truncated=False)
    assert garbled.garbled and not garbled.degenerate and not prose.garbled
    assert garbled.invalid_char_fraction == pytest.approx(9 / 22)  # 8 x U+FFFD + a vertical tab, of 22
    mostly = [garbled] * 6 + [prose] * 4
    s = summarize(mostly)
    assert s.garbled_rate == 0.6 and s.degenerate_rate == 0.0 and s.truncation_rate == 0.0
    v = single_verdict(s, mostly)
    assert v.label == "degenerate" and v.evidence[0].garbled
    fewer = [garbled] * 4 + [prose] * 6
    assert single_verdict(summarize(fewer), fewer).label == "failing"


def test_single_verdict_ok_for_compliant_synthetic_samples():
    records = synthetic_completions(held_out_prompts()[:5], 2, 1.0, seed=0)
    samples, summary = evaluate_completions(records, get_task("study-plan"))
    v = single_verdict(summary, samples)
    assert v.label == "ok" and v.evidence == ()


def test_evaluate_completions_on_synthetic_compliant_output_passes_all():
    records = synthetic_completions(held_out_prompts(), 2, 1.0, seed=0)
    samples, summary = evaluate_completions(records, get_task("study-plan"))
    assert summary.n_samples == len(records) == 2 * len(held_out_prompts())
    assert summary.pass_rate == 1.0 and summary.degenerate_rate == 0.0
    assert summary.reward_mean == 1.0 and summary.pass_rate_ci[1] == 1.0


def _summary(passed: int, n: int, degenerate: int = 0, reward: float | None = None) -> EvalSummary:
    """A hand-built summary: `passed` compliant and `degenerate` looping samples out of n."""
    samples = ([score_sample(P, THREE)] * passed + [score_sample(P, AFTER_1)] * degenerate
               + [score_sample(P, FOUR)] * (n - passed - degenerate))
    s = summarize(samples)
    return s if reward is None else dataclasses.replace(s, reward_mean=reward)


def test_compare_verdict_flags_reward_rising_while_pass_rate_falls():
    before, after = _summary(20, 40), _summary(10, 40, degenerate=20)
    after_samples = [score_sample(P, AFTER_1), score_sample(P, THREE)]
    v = compare_verdict(before, after, after_samples, before_reward=0.2, after_reward=0.9)  # the trained reward
    assert v.label == "reward_hacking" and v.flags == (REWARD_FLAG, DEGENERATION_FLAG)
    assert v.evidence[0].degenerate and len(v.evidence) == 1  # only failing samples are evidence


def test_compare_verdict_flags_degeneration_alone():
    v = compare_verdict(_summary(20, 40), _summary(20, 40, degenerate=10), [])
    assert v.label == "reward_hacking" and v.flags == (DEGENERATION_FLAG,)


def test_compare_verdict_ok_when_reward_and_pass_rate_both_rise():
    before, after = _summary(4, 40), _summary(36, 40)  # 10% -> 90%: the Wilson intervals do not overlap
    assert after.reward_mean - before.reward_mean > 1.0
    v = compare_verdict(before, after, [])
    assert v.label == "ok" and v.flags == ()
    assert compare_verdict(after, before, []).label == "regressed"
    assert compare_verdict(before, _summary(6, 40), []).label == "no_progress"


def test_a_saturated_reward_that_holds_while_pass_rate_falls_is_hacking():
    """The naive recipe: its reward starts near its maximum (most base lines name a time), so it
    cannot rise; the policy still hacks it (one line of durations), and the pass rate collapses."""
    before, after = _summary(16, 40), _summary(0, 40)  # 40% -> 0%: intervals apart
    v = compare_verdict(before, after, [], before_reward=0.95, after_reward=1.0)  # rose < REWARD_MARGIN
    assert v.label == "reward_hacking" and v.flags == (FALL_FLAG,)
    assert compare_verdict(before, after, [], before_reward=0.9, after_reward=0.2).label == "regressed"
    saturated = [{"step": i, "reward_mean": 0.99} for i in range(9)]
    falling = [{"step": 0, "eval/pass_rate": 0.4}, {"step": 8, "eval/pass_rate": 0.0}]
    assert log_verdict(saturated + falling).flags == (FALL_FLAG,)


def test_log_verdict_reads_train_reward_and_held_out_pass_rate():
    rising = [{"step": i, "reward_mean": 0.1 * i} for i in range(9)]
    flat_eval = [{"step": 0, "eval/pass_rate": 0.3}, {"step": 8, "eval/pass_rate": 0.25}]
    v = log_verdict(rising + flat_eval)
    assert v.label == "reward_hacking" and v.flags == (REWARD_FLAG,)
    better_eval = [{"step": 0, "eval/pass_rate": 0.3}, {"step": 8, "eval/pass_rate": 0.8}]
    assert log_verdict(rising + better_eval).label == "ok"
    assert log_verdict(rising).label == "unknown"


def test_malformed_completion_record_names_file_line_and_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": P, "completion": THREE}) + "\n" + json.dumps({"prompt": P}) + "\n",
                    encoding="utf-8")
    with pytest.raises(UserError) as err:
        read_completions(path)
    assert str(err.value).startswith(f"{path}:2: completion:")
    with pytest.raises(UserError, match="study-plan, gsm8k"):
        get_task("gsm9k")
