"""`alignlab eval`, `check` and `compare` end to end on CPU: a tiny untrained native checkpoint is
judged degenerate, synthetic compliant completions pass 100%, malformed input is one stderr line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from alignlab.cli import main
from alignlab.model.checkpoint import to_hf
from alignlab.model.gpt import GPT
from alignlab.tasks.study_plan.prompts import CANONICAL_PROMPT, held_out_prompts
from alignlab.tasks.study_plan.synthetic import synthetic_completions

SUMMARY_KEYS = {"n_samples", "pass_rate", "pass_rate_ci", "degenerate_rate", "reward_mean", "verdict"}


@pytest.fixture
def untrained_ckpt(tmp_path, tiny_arch, byte_tok):
    """A random (untrained) native GPT saved with the byte tokenizer."""
    torch.manual_seed(0)
    arch = dataclasses.replace(tiny_arch, vocab_size=byte_tok.vocab_size, max_position_embeddings=512)
    return str(to_hf(GPT(arch).eval(), tmp_path / "untrained", byte_tok))


def _eval(ckpt: str, out, *extra: str) -> int:
    return main(["eval", ckpt, "--task", "study-plan", "--samples", "2", "--max-new-tokens", "32",
                 "--device", "cpu", "--out", str(out), *extra])


def test_eval_untrained_model_is_degenerate(untrained_ckpt, tmp_path, capsys):
    assert _eval(untrained_ckpt, tmp_path / "ev") == 0
    printed = capsys.readouterr().out
    assert "pass rate 95% CI" in printed and "verdict: degenerate" in printed
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text(encoding="utf-8"))
    assert SUMMARY_KEYS <= set(summary)
    assert summary["n_samples"] == 2 * len(held_out_prompts())
    low, high = summary["pass_rate_ci"]
    assert 0.0 <= low <= summary["pass_rate"] <= high <= 1.0
    assert summary["verdict"]["label"] == "degenerate" and summary["verdict"]["evidence"]
    samples = [json.loads(line) for line in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == summary["n_samples"]
    assert all(isinstance(s["truncated"], bool) and set(s["rule_reasons"]) >= {"echo", "count"} for s in samples)
    assert "| pass rate |" in (tmp_path / "ev" / "summary.md").read_text(encoding="utf-8")


def _one_prompt_file(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": CANONICAL_PROMPT}, ensure_ascii=False) + "\n", encoding="utf-8")
    return prompts


def test_eval_same_seed_same_samples_and_prompts_file(untrained_ckpt, tmp_path):
    prompts = _one_prompt_file(tmp_path)
    for name in ("a", "b"):
        assert _eval(untrained_ckpt, tmp_path / name, "--prompts", str(prompts), "--temperature", "1.0") == 0
    a, b = ((tmp_path / name / "samples.jsonl").read_text(encoding="utf-8") for name in ("a", "b"))
    assert a == b and len(a.splitlines()) == 2
    assert _eval(untrained_ckpt, tmp_path / "c", "--prompts", str(prompts), "--temperature", "1.0",
                 "--seed", "1") == 0
    assert (tmp_path / "c" / "samples.jsonl").read_text(encoding="utf-8") != a


def test_eval_unknown_task_is_a_user_error(untrained_ckpt, tmp_path, capsys):
    assert main(["eval", untrained_ckpt, "--task", "gsm9k", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gsm9k" in err and "study-plan" in err


def test_check_synthetic_compliant_completions_all_pass(tmp_path, capsys):
    records = synthetic_completions(held_out_prompts(), 2, 1.0, seed=0)
    src, out = tmp_path / "c.jsonl", tmp_path / "scored.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert main(["check", "--task", "study-plan", str(src), "--out", str(out)]) == 0
    assert "pass rate: 100.0%" in capsys.readouterr().out
    scored = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(scored) == len(records)
    assert all(r["passed"] is True and r["score"] == 1.0 and r["degenerate"] is False and r["reasons"] == []
               for r in scored)
    assert [r["style"] for r in scored] == [r["style"] for r in records]  # input fields are kept


def test_check_scores_failures_with_reasons(tmp_path, capsys):
    src, out = tmp_path / "c.jsonl", tmp_path / "scored.jsonl"
    bad = {"prompt": CANONICAL_PROMPT, "completion": CANONICAL_PROMPT + "当然，对阻阻阻阻阻阻阻阻"}
    src.write_text(json.dumps(bad, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["check", str(src), "--out", str(out)]) == 0
    assert "pass rate: 0.0%" in capsys.readouterr().out
    (record,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert record["passed"] is False and record["degenerate"] is True and record["score"] == -1.0
    assert any("echoes the prompt" in r for r in record["reasons"])


def test_check_out_makes_missing_folders_and_refuses_a_file_in_the_way_before_scoring(tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps({"prompt": CANONICAL_PROMPT, "completion": "- a"}) + "\n", encoding="utf-8")
    out = tmp_path / "new" / "deeper" / "scored.jsonl"
    assert main(["check", str(src), "--out", str(out)]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1
    capsys.readouterr()
    assert main(["check", str(src), "--out", str(src / "scored.jsonl")]) == 2  # c.jsonl is a file
    captured = capsys.readouterr()
    assert "pass rate" not in captured.out  # refused before any scoring
    assert len(captured.err.strip().splitlines()) == 1 and "is a file, not a folder" in captured.err


def test_check_malformed_record_is_one_line_with_file_and_line(tmp_path, capsys):
    src = tmp_path / "c.jsonl"
    src.write_text(json.dumps({"prompt": "p", "completion": "- a"}) + "\n" + json.dumps({"prompt": "p"}) + "\n",
                   encoding="utf-8")
    assert main(["check", "--task", "study-plan", str(src)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{src}:2:" in err[0] and "completion" in err[0]


def test_compare_two_eval_dirs_prints_one_table(untrained_ckpt, tmp_path, capsys):
    prompts = _one_prompt_file(tmp_path)
    for name, temperature in (("first", "0.7"), ("second", "1.5")):
        assert _eval(untrained_ckpt, tmp_path / name, "--temperature", temperature, "--prompts", str(prompts)) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "first"), str(tmp_path / "second")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert str(tmp_path / "first") in header and str(tmp_path / "second") in header
    assert "pass rate" in out and "verdict:" in out
    assert main(["compare", str(tmp_path / "missing")]) == 2


def test_compare_accepts_a_checkpoint_directly(untrained_ckpt, tmp_path, capsys):
    prompts = _one_prompt_file(tmp_path)
    assert _eval(untrained_ckpt, tmp_path / "first", "--prompts", str(prompts)) == 0
    capsys.readouterr()
    report = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "first"), str(untrained_ckpt), "--samples", "1", "--device", "cpu",
                 "--max-new-tokens", "16", "--out", str(report)]) == 0
    out = capsys.readouterr().out
    assert str(untrained_ckpt) in out.splitlines()[0] and "pass rate" in out
    samples = [json.loads(line) for line in (report / "2" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == len(held_out_prompts())  # the checkpoint: every held-out prompt, one sample each
    page = (report / "compare.html").read_text()
    assert "data:image/png;base64," in page and "verdict" in page
    assert (report / "compare_files" / "pass_rate.png").is_file()
