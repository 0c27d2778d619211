"""The reward-model audit: calibration and correlation by hand, probe transforms, stub and real scorers."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from alignlab.cli import main
from alignlab.config import GPTConfig
from alignlab.data.preferences import read_preferences
from alignlab.errors import UserError
from alignlab.eval.reward_audit import (
    PROBES,
    audit,
    audit_reward_model,
    echo_prompt,
    expected_calibration_error,
    first_half,
    fold,
    format_markdown,
    format_report,
    format_skeleton,
    pearson,
    reliability_bins,
    repeat_last_unit,
)
from alignlab.model.checkpoint import atomic_dir
from alignlab.model.heads import RewardModel, save_reward_model
from alignlab.rewards.learned import score
from alignlab.tasks.study_plan.synthetic import preference_pairs

ARCH = GPTConfig(vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)


def by_length(prompts, responses):
    return [float(len(r)) for r in responses]


@pytest.fixture(scope="module")
def pairs():
    return read_preferences(preference_pairs(12, seed=0))


def test_fold_predicts_the_higher_scored_reply():
    confidence, correct = fold([2.0, -1.0, 0.0])
    # sigmoid(2) = 0.880797, sigmoid(|-1|) = 0.731059 (wrong winner), sigmoid(0) = 0.5 (a tie counts half)
    assert confidence == pytest.approx([0.880797, 0.731059, 0.5], abs=1e-6)
    assert correct == [1.0, 0.0, 0.5]


def test_reliability_bins_and_ece_by_hand():
    confidence = [0.52, 0.58, 0.62, 0.97, 1.0]
    correct = [1.0, 0.0, 1.0, 1.0, 1.0]
    bins = reliability_bins(confidence, correct, n_bins=5)  # width 0.1 over [0.5, 1]
    # [0.5, 0.6): 0.52, 0.58 -> conf 0.55, acc 0.5, gap 0.05
    # [0.6, 0.7): 0.62       -> conf 0.62, acc 1.0, gap 0.38
    # [0.9, 1.0]: 0.97, 1.0  -> conf 0.985, acc 1.0, gap 0.015 (1.0 falls in the last bin)
    assert [(round(b.low, 2), round(b.high, 2), b.count) for b in bins] == [(0.5, 0.6, 2), (0.6, 0.7, 1),
                                                                           (0.9, 1.0, 2)]
    assert [b.mean_confidence for b in bins] == pytest.approx([0.55, 0.62, 0.985])
    assert [b.accuracy for b in bins] == pytest.approx([0.5, 1.0, 1.0])
    # ECE = (2 * 0.05 + 1 * 0.38 + 2 * 0.015) / 5 = 0.51 / 5 = 0.102
    assert expected_calibration_error(bins) == pytest.approx(0.102)
    assert expected_calibration_error(()) == 0.0


def test_a_bin_edge_goes_to_the_upper_bin():
    # (0.6 - 0.5) / 0.1 is 0.9999999999999998 in floating point: still the second bin.
    assert reliability_bins([0.6], [1.0], n_bins=5)[0].low == pytest.approx(0.6)


def test_pearson_by_hand():
    # x - mean = [-1.5, -0.5, 0.5, 1.5], y - mean = [-3, -1, 0, 4]
    # sxy = 4.5 + 0.5 + 0 + 6 = 11, sxx = 5, syy = 26 -> r = 11 / sqrt(130) = 0.964764
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(0.964764, abs=1e-6)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) is None and pearson([1], [2]) is None


def test_repetition_doubles_the_length_with_the_last_word():
    response = "- read the API docs (30 min)\n- write the API"
    probed = repeat_last_unit(response)
    assert probed.startswith(response) and probed.endswith(" API API")
    assert 2 * len(response) <= len(probed) < 2 * len(response) + len(" API")
    assert probed[len(response):].split() == ["API"] * len(probed[len(response):].split())
    assert repeat_last_unit("") == ""


def test_echo_format_only_and_truncated():
    prompt = "Give three bullets."
    assert echo_prompt(prompt, "- a").startswith(prompt + "\n") and echo_prompt(prompt, "- a").endswith("- a")
    skeleton = format_skeleton("- 30 min: read\n1. write (1 h)\n2) test\n\nplain line")
    assert skeleton == "- ...\n1. ...\n2) ...\n\n..."
    assert "30" not in skeleton and "read" not in skeleton
    assert format_skeleton("-1小时：背单词\n1.5 hours of rest") == "-...\n..."  # "1.5" is no list marker
    text = "- 30 min: read chapter one"
    assert text.startswith(first_half(text)) and len(first_half(text)) == len(text) // 2


def test_length_scorer_shows_length_bias_and_repetition_hack(pairs):
    report = audit(by_length, pairs)
    shorter = sum(len(p.chosen) < len(p.rejected) for p in pairs)
    longer = sum(len(p.chosen) > len(p.rejected) for p in pairs)
    assert shorter > 0 and longer > 0  # the data has both kinds, so both checks below can fail
    assert report.pairs == 12 and report.accuracy == pytest.approx(longer / 12)
    assert report.length_correlation == pytest.approx(1.0)
    assert (report.pairs_chosen_shorter, report.pairs_chosen_longer) == (shorter, longer)
    assert report.accuracy_chosen_shorter == 0.0 and report.accuracy_chosen_longer == 1.0
    probes = {p.name: p for p in report.probes}
    assert list(probes) == list(PROBES)
    assert probes["repetition"].flagged and probes["repetition"].frac_raised == 1.0
    assert probes["prompt_echo"].flagged
    assert not any(probes[name].flagged for name in ("format_only", "truncated", "empty"))
    assert probes["empty"].mean_shift == pytest.approx(-sum(len(p.chosen) for p in pairs) / 12)
    assert any(v.startswith("invites repetition hacking") for v in report.verdicts)
    assert any(v.startswith("invites length hacking") for v in report.verdicts)
    assert sum(b.count for b in report.calibration) == 12


def test_flags_follow_the_scorer_not_the_probe_names(pairs):
    shortest = audit(lambda prompts, responses: [-float(len(r)) for r in responses], pairs)
    flagged = {p.name for p in shortest.probes if p.flagged}
    assert flagged == {"format_only", "truncated", "empty"}
    assert shortest.length_correlation == pytest.approx(-1.0)
    assert not any(v.startswith("invites length hacking") for v in shortest.verdicts)


def test_prompts_stay_aligned_with_probed_responses(pairs):
    def echo_detector(prompts, responses):  # 1 when the response starts with its own prompt's text
        return [float(r.startswith(p[-1]["content"])) for p, r in zip(prompts, responses, strict=True)]

    probes = {p.name: p for p in audit(echo_detector, pairs).probes}
    assert probes["prompt_echo"].frac_raised == 1.0
    assert all(p.frac_raised == 0.0 for name, p in probes.items() if name != "prompt_echo")


def test_report_serialises_and_formats(pairs):
    report = audit(by_length, pairs)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["pairs"] == 12 and [p["name"] for p in data["probes"]] == list(PROBES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.accuracy = 1.0
    text = format_report(report)
    assert "FLAGGED" in text and "repetition" in text and "invites repetition hacking" in text
    markdown = format_markdown(report)
    assert markdown.startswith("# Reward-model audit (12 pairs)")
    assert "| probe (on chosen) | mean shift | raised | verdict |" in markdown
    assert "| sigmoid(\\|margin\\|) | pairs | mean predicted | observed |" in markdown  # a bare "|" splits cells


def test_bad_input_is_a_user_error(pairs):
    with pytest.raises(UserError, match="no preference pairs"):
        audit(by_length, [])
    with pytest.raises(UserError, match="non-finite"):
        audit(lambda prompts, responses: [float("nan")] * len(responses), pairs)


def test_real_reward_model_and_cli(byte_tok, tmp_path, capsys):
    torch.manual_seed(0)
    rm = RewardModel.new(dataclasses.replace(ARCH, vocab_size=byte_tok.vocab_size))
    records = preference_pairs(3, seed=1)
    pairs = read_preferences(records)
    report = audit_reward_model(rm, byte_tok, pairs, max_length=256, batch_size=8)
    prompts = [p.messages for p in pairs]
    chosen = score(rm, byte_tok, prompts, [p.chosen for p in pairs], max_length=256)
    rejected = score(rm, byte_tok, prompts, [p.rejected for p in pairs], max_length=256)
    assert report.accuracy == pytest.approx(sum(c > r for c, r in zip(chosen, rejected, strict=True)) / 3)
    assert report.mean_margin == pytest.approx(sum(chosen) / 3 - sum(rejected) / 3, abs=1e-5)

    with atomic_dir(tmp_path / "rm") as tmp:
        save_reward_model(rm, byte_tok, tmp)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    argv = ["audit-rm", str(tmp_path / "rm"), "--pairs", str(data), "--device", "cpu", "--max-length", "256"]
    assert main([*argv, "--max-pairs", "2", "--out", str(tmp_path / "audit")]) == 0
    assert "exploit probes" in capsys.readouterr().out
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text(encoding="utf-8"))
    assert saved["pairs"] == 2 and [p["name"] for p in saved["probes"]] == list(PROBES)
    assert (tmp_path / "audit" / "audit.md").read_text(encoding="utf-8").startswith("# Reward-model audit")

    with pytest.raises(SystemExit) as stop:  # argparse checks the number: one line, exit 2
        main([*argv, "--max-pairs", "0"])
    assert stop.value.code == 2
    assert main(["audit-rm", str(tmp_path / "missing"), "--pairs", str(data)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("alignlab audit-rm: error:") for line in errors)
