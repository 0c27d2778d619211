"""GSM8K task: answer extraction on hand-written completions, references, rewards, pass@k, reader errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from alignlab.algorithms.common import pass_at_k
from alignlab.errors import UserError
from alignlab.rewards.base import call_reward
from alignlab.tasks.gsm8k import (
    correctness_reward,
    extract_answer,
    format_reward,
    normalise_number,
    read_gsm8k,
    reference_answer,
)

GSM8K_DIR = Path("/work/shared/data/gsm8k")

EXTRACTIONS = [
    # the #### marker
    ("Janet sells 9 eggs.\n#### 42", "42"),
    ("####42", "42"),
    ("Total: 1,234 apples.\n#### 1,234", "1234"),
    ("#### $1,000.00", "1000"),
    ("#### −12", "-12"),
    ("#### -12", "-12"),
    ("#### 7.0", "7"),
    ("First guess\n#### 5\nWait, recount.\n#### 6", "6"),  # the last of two #### wins
    ("#### 10\nCheck: 3 + 7 = 10, and 99 bottles on the wall", "10"),  # the marker beats the last number
    ("The answer is 3.\n#### 4", "4"),  # #### outranks the phrase
    ("\\boxed{3}\n#### 4", "4"),  # #### outranks \boxed
    # \boxed
    ("So the total is \\boxed{42}.", "42"),
    ("\\boxed{3.5}", "3.5"),
    ("\\boxed{\\$18}", "18"),
    ("Try \\boxed{2}, no: \\boxed{20} then 7 more steps", "20"),
    ("\\boxed{42}. The answer is 41.", "42"),  # \boxed outranks the phrase
    # answer phrases
    ("The answer is 42.", "42"),
    ("So the answer is $18.", "18"),
    ("Answer: -7", "-7"),
    ("ANSWER IS 0.5", "0.5"),
    ("The final answer is: 2.50 dollars", "2.5"),
    ("She pays $1,000.00 in total, so the answer is $1,000.00.", "1000"),
    ("计算得 3 + 12 = 15，所以答案是 15", "15"),
    ("答案是15。", "15"),
    ("The answer is 12 after adding 3 and 9 more boxes.", "12"),  # the phrase beats the last number
    # the last-number fallback
    ("She has 3 apples and buys 5 more, so 8", "8"),
    ("It costs −12 dollars", "-12"),
    ("It grows 2,500 per year", "2500"),
    ("He runs 0.5 miles", "0.5"),
    ("Ages 3-4 years", "4"),  # a hyphen between numbers is not a minus sign
    ("That is 50% of them", "50"),
    # no number
    ("I don't know.", None),
    ("", None),
    ("#### unknown", None),
]


@pytest.mark.parametrize(("completion", "expected"), EXTRACTIONS)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_there_are_at_least_thirty_extraction_cases():
    assert len(EXTRACTIONS) >= 30


@pytest.mark.parametrize(("completion", "expected"), [
    ("She has 3 apples and buys 5 more, so 8", None),  # no marker: nothing in strict mode
    ("It costs 12 dollars.", None),
    ("#### 8", "8"),
    ("The answer is 9.", "9"),
    ("\\boxed{10}", "10"),
])
def test_strict_mode_needs_a_marker(completion, expected):
    assert extract_answer(completion, strict=True) == expected


@pytest.mark.parametrize(("completion", "reference"), [
    ("#### 41", "42"),
    ("The answer is 4.2", "42"),
    ("\\boxed{-42}", "42"),
    ("#### 42\nno wait, 43", "43"),  # the marker wins even when the model changes its mind after it
])
def test_wrong_answers_are_extracted_but_differ(completion, reference):
    extracted = extract_answer(completion)
    assert extracted is not None and extracted != reference


@pytest.mark.parametrize(("text", "expected"), [
    ("1,234", "1234"), ("$1,000.00", "1000"), ("2.50", "2.5"), ("7.0", "7"), ("-3", "-3"), ("−3", "-3"),
    (" 42. ", "42"), ("50%", "50"), ("-0", "0"), (".5", "0.5"), ("1 234", "1234"),
    ("1/2", None), ("12,34", None), ("1e5", None), ("abc", None), ("", None), ("4-2", None),
])
def test_normalise_number(text, expected):
    assert normalise_number(text) == expected


@pytest.mark.parametrize(("answer", "expected"), [
    ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18"),
    ("It takes 2/2=<<2/2=1>>1 bolt of white fiber\nSo the total is 2+1=<<2+1=3>>3 bolts\n#### 3", "3"),
    ("He earns 1,000 + 80 = <<1000+80=1080>>1080.\n#### 1,080", "1080"),
    ("The change is 5 - 8 = <<5-8=-3>>-3\n#### -3", "-3"),
    ("Half is 0.5\n#### 0.50", "0.5"),
])
def test_reference_answer_hand_written(answer, expected):
    assert reference_answer(answer) == expected


@pytest.mark.parametrize("answer", ["9 * 2 = 18", "#### eighteen", "####"])
def test_reference_answer_without_a_number_is_a_user_error(answer):
    with pytest.raises(UserError, match="####"):
        reference_answer(answer)


def test_reference_answer_on_real_gsm8k():
    files = sorted(GSM8K_DIR.glob("*.jsonl*")) if GSM8K_DIR.is_dir() else []
    if not files:
        pytest.skip(f"no GSM8K JSONL under {GSM8K_DIR}")
    for path in files:
        records = read_gsm8k(path)[:50]
        assert len(records) == 50
        for record in records:
            assert record["prompt"].strip()
            assert normalise_number(record["answer"]) == record["answer"]  # canonical already


def test_read_gsm8k_records(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
        {"question": "Pay?", "answer": "#### $1,200"},
    ]) + "\n", encoding="utf-8")
    assert read_gsm8k(path) == [{"prompt": "2 + 2?", "answer": "4"}, {"prompt": "Pay?", "answer": "1200"}]


@pytest.mark.parametrize(("bad", "key"), [
    ({"question": "2 + 2?"}, "answer"),
    ({"question": "2 + 2?", "answer": "2 + 2 = 4"}, "answer"),
    ({"answer": "#### 4"}, "question"),
])
def test_read_gsm8k_errors_name_file_line_and_field(tmp_path, bad, key):
    path = tmp_path / "gsm8k.jsonl"
    good = {"question": "1 + 1?", "answer": "#### 2"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        read_gsm8k(path)
    assert (info.value.file, info.value.line, info.value.key) == (str(path), 2, key)
    assert str(info.value).startswith(f"{path}:2: {key}: ")


def test_correctness_reward_through_the_contract():
    completions = [
        "16 - 3 - 4 = 9 eggs, 9 * 2 = 18\n#### 18",  # right, with the marker
        "The answer is $18.",  # right, phrase
        "#### 17",  # wrong
        "I am not sure.",  # no number
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\\boxed{18}"}],  # chat form
    ]
    rewards = call_reward(correctness_reward, ["q"] * 5, completions, answer=["18"] * 5)
    assert rewards == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_correctness_reward_accepts_full_answers_and_numbers_as_references():
    rewards = call_reward(correctness_reward, ["q", "q"], ["#### 1,080", "#### 7"],
                          answer=["1000 + 80 = 1080\n#### 1,080", 7])
    assert rewards == [1.0, 1.0]


def test_correctness_reward_needs_one_answer_per_completion():
    with pytest.raises(UserError, match="one answer per completion"):
        correctness_reward(["q", "q"], ["#### 1", "#### 2"], answer=["1"])


def test_correctness_reward_rejects_a_reference_that_is_not_a_number():
    # Without the check, "I am not sure." (no number) would equal the unparsable reference: None == None.
    with pytest.raises(UserError, match=r"answer\[0\]"):
        correctness_reward(["q"], ["I am not sure."], answer=["eighteen"])


def test_format_reward_through_the_contract():
    completions = [
        "3 + 4 = 7\n#### 7",  # 1: ends with the answer line
        "3 + 4 = 7\n#### 7\n\n",  # 1: trailing blank lines are fine
        "#### 7\nHope this helps!",  # 0: text after the answer line
        "The answer is 7.",  # 0: no #### line
        "3 + 4 = #### 7",  # 0: #### not on its own line
        "#### seven",  # 0: not a number
        "",  # 0: empty
    ]
    assert call_reward(format_reward, ["q"] * 7, completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert format_reward.__name__ == "format_reward" and correctness_reward.__name__ == "correctness_reward"


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 0, 1) == 0.0  # no correct sample: C(5,1)/C(5,1) = 1, so 0
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0  # every sample correct
    assert pass_at_k(5, 5, 5) == 1.0
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)  # 1 - C(4,1)/C(5,1) = 1 - 4/5
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert pass_at_k(4, 3, 2) == 1.0  # n - c = 1 < k: any 2 samples include a correct one


def test_pass_at_k_matches_the_binomial_formula_and_stays_stable():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 1, 10), (100, 7, 50)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    value = pass_at_k(2000, 1, 1000)  # C(2000, 1000) overflows a float; the product form does not
    assert value == pytest.approx(0.5)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 1, 6), (5, 6, 1), (5, -1, 1), (5, 1, 0)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)
