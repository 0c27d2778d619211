"""GSM8K grade-school maths (Cobbe et al. 2021): prompts, answer extraction, rewards and pass@k.

Prompts come from a local JSONL (gzipped or not) in the standard form `{"question": ...,
"answer": ...}`, where the answer's worked solution ends with a line `#### <number>`.
`read_gsm8k` turns it into `{"prompt", "answer"}` records, the answer being the reference
number as a canonical string (`normalise_number`), so a TRL-style trainer passes it to
`correctness_reward` as the `answer` keyword column.

Numbers are compared as canonical strings, never as floats: `$1,000.00`, `1000` and `1000.0`
all become "1000"; `2.50` becomes "2.5"; the unicode minus `−12` becomes "-12".

As a task (`task=gsm8k data=train.jsonl eval_data=test.jsonl`): prompts carry an instruction to end
with `#### <number>`; the pass check is correctness (lenient extraction), with repetition and
garbled text as degeneration; rewards by mode: naive = correctness, shaped = correctness + 0.2 x
format, sharp = +1 correct and formatted / -1 degenerate / -0.5 otherwise.

Left out: downloading the data set, tool use (a calculator or code interpreter), few-shot
prompting, fractions and scientific notation in answers (GSM8K references are plain numbers).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path

from alignlab.data.sources import read_jsonl_records
from alignlab.errors import UserError
from alignlab.rewards.base import completion_text
from alignlab.rewards.penalties import RuleResult, Verdict, check_garbled, check_repetition

# A number as written in text: optional sign (not after a word character, so "3-4" is 3 and 4),
# optional `$`, thousands groups "1,234" or plain digits, optional decimals. "42." stops at 42.
_NUMBER = r"(?:(?<![\w.])[-−])?\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_HASHES_RE = re.compile(r"####\s*(" + _NUMBER + ")")
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")
_PHRASE_RE = re.compile(r"(?:answer\s+is|answer\s*[:：]|答案是|答案[:：])[\s:：*]*(" + _NUMBER + ")", re.IGNORECASE)
_FORMAT_LINE_RE = re.compile(r"####\s*" + _NUMBER + r"\s*\.?")
# What `normalise_number` accepts once `$`, spaces, a trailing "." and "%" are gone.
_CANONICAL_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def normalise_number(text: str) -> str | None:
    """The canonical string of a number written in `text`, or None when it is not one number.

    Drops `$`, whitespace, one trailing "." (end of sentence) and one trailing "%" (kept simple:
    "50%" is "50", not "0.5"; GSM8K references are written without the sign). Commas are
    accepted only as thousands separators ("12,34" is None). Fractions ("1/2") and scientific
    notation are unsupported and give None. Decimal arithmetic keeps it exact.

    >>> [normalise_number(t) for t in ["1,234", "$1,000.00", "2.50", "7.0", "−12", "-3", "50%", "1/2", "abc"]]
    ['1234', '1000', '2.5', '7', '-12', '-3', '50', None, None]
    """
    cleaned = re.sub(r"[\s$]", "", text).replace("−", "-").removesuffix(".").removesuffix("%")
    if not _CANONICAL_RE.fullmatch(cleaned):
        return None
    try:
        value = Decimal(cleaned.replace(",", ""))
    except InvalidOperation:  # unreachable after the regex; kept so a bad input never raises
        return None
    if value == value.to_integral_value():
        return str(int(value))  # "7.0" -> "7", "-0" -> "0"
    return format(value.normalize(), "f")  # "2.50" -> "2.5", without exponent notation


def reference_answer(answer: str) -> str:
    """The reference number of a GSM8K answer: what follows its last `####`, normalised.

    >>> reference_answer("She makes 9 * 2 = $<<9*2=18>>18 every day.\\n#### 18")
    '18'
    """
    if "####" not in answer:
        raise UserError("expected the answer to end with '#### <number>', found no '####'")
    tail = answer.rsplit("####", 1)[1].strip()
    number = normalise_number(tail)
    if number is None:
        raise UserError(f"expected a number after '####', got {tail[:40]!r}")
    return number


def extract_answer(completion: str, *, strict: bool = False) -> str | None:
    """A model's final answer in `completion`, normalised; None when no number is found.

    By priority, the last match of: (1) `#### <number>`; (2) `\\boxed{<number>}`; (3) "answer is
    <number>", "Answer: <number>" or "答案是 <number>" (any case); (4) unless `strict`, the last
    number anywhere in the text: lenient on purpose, since a model that never learnt the format
    often still ends with its result, but it can credit a stray trailing number.

    >>> extract_answer("3 + 7 = 10\\n#### 10\\nCheck: 99 bottles")
    '10'
    >>> extract_answer("so 5 apples", strict=True) is None
    True
    """
    for matches in (_HASHES_RE.findall(completion), _boxed_numbers(completion), _PHRASE_RE.findall(completion)):
        if matches:
            return normalise_number(matches[-1])
    if strict:
        return None
    numbers = _NUMBER_RE.findall(completion)
    return normalise_number(numbers[-1]) if numbers else None


def _boxed_numbers(text: str) -> list[str]:
    """The contents of `\\boxed{...}` that are numbers once LaTeX escapes (`\\$`, `\\%`) are gone."""
    contents = (content.replace("\\", "") for content in _BOXED_RE.findall(text))
    return [content for content in contents if normalise_number(content) is not None]


def read_gsm8k(path: str | Path) -> list[dict[str, str]]:
    """Records `{"prompt": question, "answer": reference number}` from a GSM8K JSONL file.

    A record without a text `question` or `answer`, or an answer without `#### <number>`, is a
    UserError naming the file, the line and the field.
    """
    records = []
    for lineno, record in read_jsonl_records(path):
        for field in ("question", "answer"):
            if not isinstance(record.get(field), str) or not record[field].strip():
                raise UserError(f"expected a non-empty text {field!r}, got {record.get(field)!r}",
                                file=str(path), line=lineno, key=field)
        try:
            number = reference_answer(record["answer"])
        except UserError as error:
            raise UserError(error.message, file=str(path), line=lineno, key="answer") from error
        records.append({"prompt": record["question"], "answer": number})
    return records


def _reference(answer, index: int) -> str:
    """A reference as given in the `answer` column: a number string, a number, or a full GSM8K answer."""
    text = str(answer)
    number = reference_answer(text) if "####" in text else normalise_number(text)
    if number is None:  # else a completion without a number would match it (None == None)
        raise UserError(f"expected a number as the reference answer, got {text[:40]!r}", key=f"answer[{index}]")
    return number


def correctness_reward(prompts: Sequence, completions: Sequence, answer: Sequence, **kwargs) -> list[float]:
    """1.0 when `extract_answer` (lenient) of a completion equals its reference `answer[i]`, else 0.0.

    `answer` is the data set column, one entry per completion, as TRL passes it.

    >>> correctness_reward(["q", "q"], ["so #### 18", "The answer is 17."], answer=["18", "18"])
    [1.0, 0.0]
    """
    if len(answer) != len(completions):
        raise UserError(f"expected one answer per completion, got {len(answer)} answers and "
                        f"{len(completions)} completions", key="answer")
    references = [_reference(a, i) for i, a in enumerate(answer)]
    return [float(extract_answer(completion_text(c)) == ref) for c, ref in zip(completions, references, strict=True)]


def format_reward(prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
    """1.0 when a completion's last non-blank line is `#### <number>`, else 0.0.

    Rewards the GSM8K answer format only, not correctness; text after the answer line scores 0.

    >>> format_reward(["q", "q"], ["9 * 2 = 18\\n#### 18", "#### 18\\nI hope this helps"])
    [1.0, 0.0]
    """
    scores = []
    for completion in completions:
        lines = completion_text(completion).strip().splitlines()
        scores.append(float(bool(lines) and _FORMAT_LINE_RE.fullmatch(lines[-1].strip()) is not None))
    return scores


INSTRUCTION = "Solve the problem step by step, then give the final answer on the last line as '#### <number>'."
DEGENERATE_CHECKS = (check_repetition, check_garbled)  # a worked solution may restate the question: no echo check


def gsm8k_prompt(question: str) -> str:
    """The user turn for a GSM8K question: the question, then the answer-format instruction."""
    return f"{question.strip()}\n\n{INSTRUCTION}"


def gsm8k_examples(path: str) -> list[dict[str, str]]:
    """`{"prompt", "answer"}` records of a GSM8K JSONL, the prompt carrying the format instruction."""
    if not path:
        raise UserError("the gsm8k task reads its questions from a file: set data= (and eval_data=) to GSM8K "
                        "JSONL files with question / answer fields", key="data")
    return [{"prompt": gsm8k_prompt(r["prompt"]), "answer": r["answer"]} for r in read_gsm8k(path)]


def gsm8k_verdict(prompt: str, completion: str, answer: str = "") -> Verdict:
    """Passed: the extracted answer (lenient) equals `answer`; degenerate: token runs or garbled text."""
    found = extract_answer(completion)
    reference = _reference(answer, 0)
    correct = RuleResult(found == reference, float(found == reference),
                         () if found == reference else (f"answer {found!r}, expected {reference!r}",))
    reasons = tuple(r for check in DEGENERATE_CHECKS for r in check(prompt, completion).reasons)
    return Verdict({"correct": correct}, reasons)


def sharp_reward(prompts: Sequence, completions: Sequence, answer: Sequence, **kwargs) -> list[float]:
    """+1 for a correct answer on a last line `#### <number>` (`format_reward`); -1 for a degenerate
    completion (token runs, garbled text); -0.5 otherwise (wrong, missing, or right but unformatted).

    >>> sharp_reward(["q"] * 3, ["2 + 2 = 4\\n#### 4", "The answer is 4.", "#### 5"], answer=["4"] * 3)
    [1.0, -0.5, -0.5]
    """
    scores = []
    formatted = format_reward(prompts, completions)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        text = completion_text(c)
        if any(not check(str(p), text).passed for check in DEGENERATE_CHECKS):
            scores.append(-1.0)
        else:
            right = formatted[i] == 1.0 and extract_answer(text, strict=True) == _reference(answer[i], i)
            scores.append(1.0 if right else -0.5)
    return scores


def gsm8k_reward(mode: str = "sharp"):
    """naive: correctness (lenient: the last number counts); shaped: correctness + 0.2 x format;
    sharp: `sharp_reward`. Each takes the `answer` column as a keyword, as TRL passes it."""
    from alignlab.rewards.base import MODES, combine

    if mode == "naive":
        return correctness_reward
    if mode == "shaped":
        return combine({"correct": (correctness_reward, 1.0), "format": (format_reward, 0.2)}, name="gsm8k_shaped")
    if mode == "sharp":
        return sharp_reward
    raise UserError(f"unknown reward mode {mode!r}; expected one of {', '.join(MODES)}", key="mode")
