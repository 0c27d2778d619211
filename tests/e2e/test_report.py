"""`write_report` on a synthetic GRPO run directory: both files written, plots inlined, model output
escaped, missing evaluations noted, a malformed log named by line; headless Chromium renders every plot."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import pytest
import yaml

from alignlab.errors import UserError
from alignlab.eval.report import write_report
from alignlab.eval.sampling_eval import evaluate_completions, write_samples
from alignlab.eval.verdict import single_verdict
from alignlab.outputs import write_marker
from alignlab.tasks.registry import get_task
from alignlab.tasks.study_plan.prompts import held_out_prompts

COMPLIANT = "- 复习（30 分钟）\n- 练习（1 小时）\n- 总结（半小时）"
SCRIPT = "- 看 <script>alert(1)</script> 笔记（30 分钟）\n- 练习（1 小时）\n- 总结（半小时）"
PROMPTS = held_out_prompts()[:8]


def _metrics(steps: int = 20) -> list[dict]:
    """Plausible GRPO log lines: reward and pass rate rise, held-out eval every 5 steps."""
    records = []
    for step in range(1, steps + 1):
        t = step / steps
        record = {"step": step, "time": 1000.0 + 30 * step, "loss": 0.1 - 0.05 * t, "lr": 1e-5,
                  "reward_mean": -0.8 + 1.6 * t, "reward_std": 0.5 - 0.3 * t, "reward/structure": t,
                  "reward/count": 0.5 * t, "pass_rate": t, "completion_length_mean": 60 - 20 * t,
                  "completion_length_max": 128 - 40 * t, "truncation_rate": 0.3 * (1 - t),
                  "kl": 0.02 * t, "entropy": 1.5 - 0.5 * t, "clip_fraction": 0.05 * math.sin(step)}
        if step % 5 == 0:
            record.update({"eval/pass_rate": t, "eval/pass_rate_low": max(0.0, t - 0.2),
                           "eval/pass_rate_high": min(1.0, t + 0.2), "eval/degenerate_rate": 0.1 * (1 - t),
                           "eval/reward_mean": -0.8 + 1.6 * t})
        records.append(record)
    return records


def _write_eval(out, completions: dict[str, list[str]]) -> None:
    """An `alignlab eval --out` directory, in the format cmd_eval writes."""
    out.mkdir()
    samples, summary = evaluate_completions([{"prompt": p, "completion": c} for p, cs in completions.items()
                                             for c in cs], get_task("study-plan"))
    info = {"checkpoint": str(out), "task": "study-plan", "prompts": "held-out", "samples_per_prompt": 2}
    record = {**info, **summary.to_dict(), "verdict": single_verdict(summary, samples).to_dict()}
    (out / "summary.json").write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
    write_samples(out / "samples.jsonl", samples)


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "grpo"
    run.mkdir()
    write_marker(run, "run")
    config = {"model": {"path": "runs/sft/checkpoints/final", "dtype": "auto"}, "num_generations": 8,
              "reward": {"mode": "sharp"}, "beta": 0.04, "optim": {"lr": 1e-5}, "run": {"steps": 20, "batch_size": 4},
              "generation": {"temperature": 0.9, "max_new_tokens": 128}}
    (run / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    manifest = {"device": "cpu", "seed": 0, "created": "2025-01-01T00:00:00+0000", "versions": {"torch": "2"}}
    (run / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _metrics()), encoding="utf-8")
    _write_eval(run / "eval_before", {p: ["好的，这是你的计划：\n1. 复习（30 分钟）\n2. 练习（1 小时）\n3. 总结", p]
                                      for p in PROMPTS})
    _write_eval(run / "eval_after", {p: [SCRIPT if i == 0 else COMPLIANT, COMPLIANT] for i, p in enumerate(PROMPTS)})
    return run


def test_report_has_table_verdict_plots_and_escapes(run_dir):
    html_path, md_path = write_report(run_dir)
    assert (html_path, md_path) == (run_dir / "report.html", run_dir / "report.md")
    md, page = md_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")
    assert "| pass rate 95% CI |" in md and "| metric | before | after |" in md
    assert "**verdict: ok**" in md  # before 0/16 pass, after 16/16: the Wilson intervals are apart
    assert "**verdict: ok**" in md.split("Training log")[1]  # train reward and held-out pass rate both rose
    assert "num\\_generations | 8" in md and "reward.mode | sharp" in md  # config rows (markdown-escaped)
    assert len(re.findall(r"report_files/\w+\.png", md)) == 4
    assert all((run_dir / "report_files" / f"{n}.png").stat().st_size > 1000
               for n in ("reward", "pass_rate", "length", "kl_entropy_clip"))
    assert page.count('src="data:image/png;base64,') == 4 and page.count("<img ") == 4
    assert not re.search(r"""(src|href)=["']?(https?:|//)|<link|@import|url\(""", page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert page.count("<script") == 1  # only the image check
    assert "verdict: ok" in page and "fail</span>" in page and "pass</span>" in page
    assert "extra text before the bullets" in page and "复习（30 分钟）" in page
    assert "wall time 9m 30s" in md and "device cpu" in page


def test_missing_evaluations_are_noted(run_dir):
    shutil.rmtree(run_dir / "eval_before")
    shutil.rmtree(run_dir / "eval_after")
    html_path, md_path = write_report(run_dir, title="no evals")
    md = md_path.read_text(encoding="utf-8")
    assert md.startswith("# no evals") and "_no evaluations: run" in md and "no side\\-by\\-side" not in md
    assert "no evaluation verdict" in md and "Training log" in md
    assert "no side-by-side samples" in html_path.read_text(encoding="utf-8")


def test_after_only_still_shows_its_table(run_dir):
    shutil.rmtree(run_dir / "eval_before")
    md = write_report(run_dir)[1].read_text(encoding="utf-8")
    assert "| metric | after |" in md and "no evaluation verdict" in md


def test_short_log_skips_plots(run_dir):
    (run_dir / "metrics.jsonl").write_text(json.dumps(_metrics(1)[0]) + "\n", encoding="utf-8")
    html_path, md_path = write_report(run_dir)
    assert "no curves" in md_path.read_text(encoding="utf-8") and "<img" not in html_path.read_text(encoding="utf-8")
    (run_dir / "metrics.jsonl").write_text("", encoding="utf-8")
    assert "no logged steps" in write_report(run_dir)[1].read_text(encoding="utf-8")


def test_bad_inputs_are_user_errors(run_dir, tmp_path):
    lines = [json.dumps(r) for r in _metrics(3)]
    (run_dir / "metrics.jsonl").write_text("\n".join([*lines[:2], '{"step": 3, "loss": ', lines[2]]) + "\n")
    with pytest.raises(UserError, match=r"metrics\.jsonl:3: invalid JSON"):
        write_report(run_dir)
    (run_dir / "metrics.jsonl").write_text(lines[0] + '\n{"loss": 1.0}\n')
    with pytest.raises(UserError, match=r"metrics\.jsonl:2: step: expected an integer step"):
        write_report(run_dir)
    with pytest.raises(UserError, match="no such run directory"):
        write_report(tmp_path / "missing")
    site = tmp_path / "site"  # a user's folder with a metrics file and pages of its own: never written
    (site / "report_files").mkdir(parents=True)
    (site / "report.md").write_text("mine\n")
    (site / "report_files" / "fig1.png").write_bytes(b"png")
    (site / "metrics.jsonl").write_text(lines[0] + "\n")
    with pytest.raises(UserError, match="not an alignlab run directory"):
        write_report(site)
    assert (site / "report.md").read_text() == "mine\n" and (site / "report_files" / "fig1.png").exists()
    (run_dir / "metrics.jsonl").write_text(lines[0] + "\n")
    with pytest.raises(UserError, match="summary.json"):
        write_report(run_dir, before=tmp_path)


def _browser() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.mark.slow
def test_chromium_renders_every_plot(run_dir, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH")
    html_path = write_report(run_dir)[0]
    base = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=60)
    loaded = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert loaded, f"the image check did not run; stderr: {dom.stderr[-2000:]}"
    assert loaded[1] == loaded[2] and int(loaded[2]) >= 3
    shot = tmp_path / "report.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,2400", html_path.as_uri()],
                   capture_output=True, timeout=60)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
