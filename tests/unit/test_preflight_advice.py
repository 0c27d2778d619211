"""What the preflight tells a user whose GRPO groups have no reward spread."""

from __future__ import annotations

from alignlab.trainers.preflight import _no_spread_advice


def test_a_zero_start_under_an_all_or_nothing_reward_points_to_shaped_or_sft():
    advice = _no_spread_advice({"zero_spread_fraction": 1.0, "pass_rate": 0.0}, "sharp")
    assert "100% of pilot groups" in advice and "reward.mode=shaped" in advice and "alignlab sft" in advice


def test_some_passing_answers_get_only_the_general_advice():
    advice = _no_spread_advice({"zero_spread_fraction": 0.6, "pass_rate": 0.4}, "sharp")
    assert "num_generations" in advice and "alignlab sft" not in advice
    assert "alignlab sft" not in _no_spread_advice({"zero_spread_fraction": 1.0, "pass_rate": 0.0}, "shaped")
