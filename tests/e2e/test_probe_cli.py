"""`alignlab probe-reward` end to end: tables and verdicts printed, outputs complete, bad input one line and
nothing written; the GRPO preflight's probe warns on an exploitable reward."""

from __future__ import annotations

import json

import pytest

from alignlab.cli import main


def test_probe_cli_prints_verdicts_and_writes_complete_outputs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["probe-reward", "--task", "study-plan", "--modes", "naive,shaped,sharp", "--prompts", "4",
                 "--out", "probe", "lang=en"]) == 0
    out = capsys.readouterr().out
    assert "verdict: exploitable by: echo_plus_list" in out
    assert out.count("verdict: exploitable by: salad") == 2  # shaped and sharp
    assert "exploits by family and reward:" in out
    folder = tmp_path / "probe"
    assert {p.name for p in folder.iterdir()} == {"probe.md", "probe.html", "probe.json", ".alignlab.json"}
    record = json.loads((folder / "probe.json").read_text(encoding="utf-8"))
    assert [r["verdict"].split(":")[0] for r in record["rewards"]] == ["exploitable by"] * 3
    assert record["lang"] == "en" and len(record["prompts"]) == 4
    assert "salad" in (folder / "probe.md").read_text(encoding="utf-8")
    assert "<table" in (folder / "probe.html").read_text(encoding="utf-8")
    # a second run replaces alignlab's own probe folder
    assert main(["probe-reward", "--prompts", "2", "--families", "salad,echo", "--out", "probe"]) == 0
    record = json.loads((folder / "probe.json").read_text(encoding="utf-8"))
    assert [f["name"] for f in record["rewards"][0]["families"]] == ["salad", "echo"]


def test_probe_cli_takes_a_grpo_recipe_and_a_users_function(tmp_path, capsys):
    fn = tmp_path / "mine.py"
    fn.write_text("def short(prompts, completions, **kwargs):\n    return [-len(c) for c in completions]\n",
                  encoding="utf-8")
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(f"run:\n  steps: 5\nreward:\n  mode: shaped\n  function: {fn}:short\n  function_weight: 0.01\n",
                      encoding="utf-8")
    assert main(["probe-reward", str(recipe), "--prompts", "2"]) == 0
    out = capsys.readouterr().out
    assert "probe-reward: 1 x study_plan_shaped + 0.01 x short on task study-plan, 2 prompts" in out


@pytest.mark.parametrize("args,message", [
    (["--task", "bogus"], "task: unknown task 'bogus'; expected one of: study-plan"),
    (["reward.function=missing.py:fn"], "reward.function: no such file"),
    (["--task", "gsm8k"], "data: the gsm8k task reads its questions from a file"),
    (["--families", "nope"], "unknown attack family 'nope'"),
    (["--modes", "greedy"], "--modes: expected a comma-separated list of naive, shaped, sharp"),
    (["reward.judge_weight=-1"], "judge_weight: must be >= 0"),
])
def test_probe_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["probe-reward", *args, "--out", "probe"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("alignlab probe-reward: error: ")
    assert not (tmp_path / "probe").exists() and list(tmp_path.iterdir()) == []


def test_probe_cli_is_listed_in_help_as_every_command_is(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert out.count("probe-reward") == out.count("audit-rm") == 1


def test_probe_in_grpo_preflight_warns_on_the_naive_reward(policy_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["grpo", f"model.path={policy_dir}", f"run.out_dir={out}", "num_generations=2", "run.batch_size=4",
                 "max_new_tokens=4", "reward.mode=naive", "--preflight-only"])
    text = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "[FAIL] reward probe: exploitable by: echo_plus_list" in text
    assert "WARNING: THE REWARD IS EXPLOITABLE (" in text
