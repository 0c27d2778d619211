"""GSM8K grade-school maths (Cobbe et al. 2021): prompts, answer extraction, rewards and pass@k.

Prompts come from a local JSONL (gzipped or not) in the standard form `{"question": ...,
"answer": ...}`, where the answer's worked solution ends with a line `#### <number>`.
`read_gsm8k` turns it into `{"prompt", "answer"}` records, the answer being the reference
number as a canonical string (`normalise_number`), so a TRL-style trainer passes it to
`correctness_reward` as the `answer` keyword column.

Numbers are compared as canonical strings, never as floats: `$1,000.00`, `1000` and `1000.0`
all become "1000"; `2.50` becomes "2.5"; the unicode minus `−12` becomes "-12".

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


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` are correct (Chen et al. 2021, eq. 1).

    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which avoids the
    huge binomials (the product form of the paper's numpy snippet).

    >>> round(pass_at_k(5, 1, 1), 12)  # 1 - (1 - 1/5)
    0.2
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"expected 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every draw of k samples contains a correct one
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product
