"""GSM8K as a task: the verdict, the three reward modes, GRPO with the answer column, and pass@k eval."""

from __future__ import annotations

import gzip
import json

import pytest

from alignlab.cli import main
from alignlab.errors import UserError
from alignlab.eval.metrics import score_sample, summarize
from alignlab.tasks.gsm8k import INSTRUCTION, gsm8k_reward, gsm8k_verdict, sharp_reward
from alignlab.tasks.registry import get_task

QUESTIONS = [("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = <<3+4=7>>7\n#### 7"),
             ("A box holds 12 eggs. How many eggs are in 2 boxes?", "12 * 2 = 24\n#### 24"),
             ("Sara had $1,200 and spent $250. How much is left?", "1200 - 250 = 950\n#### 950"),
             ("It is -3 degrees and gets 5 degrees warmer. What is the temperature?", "#### 2")]


@pytest.fixture
def gsm8k_file(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS), encoding="utf-8")
    return path


def test_verdict_passes_on_the_right_number_and_flags_degeneration():
    assert gsm8k_verdict("q", "3 + 4 = 7\n#### 7", answer="7").passed
    assert gsm8k_verdict("q", "The answer is 7.", answer="7").passed  # lenient extraction judges correctness
    wrong = gsm8k_verdict("q", "#### 8", answer="7")
    assert not wrong.passed and wrong.failed == ("correct",) and "expected '7'" in wrong.reasons[0]
    looping = gsm8k_verdict("q", "7 " * 40, answer="7")
    assert looping.degenerate and looping.passed  # right, and degenerate: both are reported


def test_reward_modes_by_hand():
    prompts, answers = ["q"] * 4, ["7"] * 4
    completions = ["3 + 4 = 7\n#### 7", "so it is 7", "#### 8", "ha " * 40]
    assert gsm8k_reward("naive")(prompts, completions, answer=answers) == [1.0, 1.0, 0.0, 0.0]
    shaped = gsm8k_reward("shaped")(prompts, completions, answer=answers)
    assert shaped == pytest.approx([1.2, 1.0, 0.2, 0.0])  # correctness + 0.2 x format
    assert sharp_reward(prompts, completions, answer=answers) == [1.0, -0.5, -0.5, -1.0]
    with pytest.raises(UserError, match="unknown reward mode"):
        gsm8k_reward("greedy")


def test_examples_carry_the_instruction_and_the_answer_column(gsm8k_file):
    task = get_task("gsm8k")
    examples = task.train_examples(str(gsm8k_file))
    assert examples[2]["answer"] == "950" and examples[0]["prompt"].endswith(INSTRUCTION)
    assert task.row_columns(examples[:2]) == {"answer": ["7", "24"]}
    assert task.held_out_examples("") == []
    with pytest.raises(UserError, match="set data="):
        task.train_examples("")


def test_pass_at_k_by_hand():
    # Example 0: 1 of 4 right; example 1: 4 of 4. pass@1 = (1/4 + 1) / 2 = 0.625;
    # pass@2 for example 0 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5, so (0.5 + 1) / 2 = 0.75; pass@4 = 1.
    task = get_task("gsm8k")
    samples = [score_sample(f"question {e}", "#### 7" if right else "#### 8", task=task, answer="7")
               for e, right in [(0, True), (0, False), (0, False), (0, False), (1, True), (1, True), (1, True),
                                (1, True)]]
    summary = summarize(samples)
    assert summary.pass_rate == 0.625 and summary.pass_at_k == pytest.approx({"1": 0.625, "2": 0.75, "4": 1.0})


def test_grpo_on_gsm8k_passes_the_answer_column_to_rewards_and_ledger(tmp_path, policy_dir, gsm8k_file):
    out = tmp_path / "run"
    code = main(["grpo", "task=gsm8k", f"data={gsm8k_file}", f"eval_data={gsm8k_file}", f"model={policy_dir}",
                 f"run.out_dir={out}", "num_generations=4", "run.batch_size=8", "max_new_tokens=8", "steps=2",
                 "run.progress=false", "run.eval_every=2", "eval_samples=1", "preflight=false"])
    assert code == 0
    with gzip.open(out / "rollouts.jsonl.gz", "rt", encoding="utf-8") as handle:
        ledger = [json.loads(line) for line in handle]
    assert {r["answer"] for r in ledger} <= {"7", "24", "950", "2"} and all(r["reward"] in (-1.0, -0.5, 1.0)
                                                                             for r in ledger)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "eval/pass_rate" in records[0] and any("reward_mean" in r for r in records)


def test_eval_reports_pass_at_k(tmp_path, policy_dir, gsm8k_file, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(policy_dir), "--task", "gsm8k", "--prompts", str(gsm8k_file), "--samples", "4",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_prompts"] == 4 and set(summary["pass_at_k"]) == {"1", "2", "4"}
    assert len((out / "samples.jsonl").read_text().splitlines()) == 16
    assert "pass@4" in capsys.readouterr().out
    assert main(["eval", str(policy_dir), "--task", "gsm8k"]) == 2  # no built-in questions
    assert "--prompts" in capsys.readouterr().err
