"""Degeneration measures and the anti-hacking penalties built on them.

The measures are the ONE definition of each degeneration metric: `eval/` reports exactly these
numbers, so training pressure and measurement cannot drift apart (style rule 8):
- `echo_overlap`: fraction of the prompt's character n-grams (n = 7) found in the completion;
- `longest_repeat_run`: the longest run of one unit repeated back to back, where a unit is a
  short character string (`阻`, `API/`, `the `) or a short sequence of tokens (a token is an
  ASCII word, a number, a CJK character or one other symbol);
- `repeated_ngram_fraction`, `distinct_n`: over the same tokens;
- `length_chars`: length in characters of the stripped completion;
- `invalid_char_fraction`: share of characters that are not text (U+FFFD from bytes that did not
  decode, control characters): what a broken model, or a policy that learned that byte soup
  passes the format rules, emits.

The penalties (`check_echo`, `check_length`, `check_repetition`, `check_garbled`) turn them into `RuleResult`s:
score 1.0 when the check passes, at most 0.5 when it fails (lower for worse violations), so a
failing penalty always costs a shaped reward at least half its weight. `is_degenerate` is the
verdict `alignlab check` and the evaluation report: echo, a repetition failure, or a length
blow-up (past twice the bound; merely too long fails `check_length` without being degenerate).

`RuleResult` and `Verdict` (every check's result on one completion, the type every task's check
returns) are defined here, the lowest module of `rewards/`, and re-exported by `tasks/study_plan/rules.py`, so
that rules and tasks can use the penalties without an import cycle.

Left out: model-based measures (perplexity, embedding similarity to the prompt), and any
language-specific tokenizer: tokens are a fixed regex so the metric is the same for every run.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

ECHO_N = 7  # longer than any duration ("30分钟", "1.5hours" is 8 with the ".") or short phrase
MAX_ECHO = 0.3  # a completion holding >= 30% of the prompt's 7-grams repeats the prompt
MAX_CHARS = 300  # three verbose bullets fit in ~200 characters; the seed's blow-ups exceed 300
BLOWUP = 2.0  # past 2 x MAX_CHARS a completion is degenerate (ran to the limit), not just verbose
MAX_REPEATS = 4  # a unit may repeat 4 times in a row ("哈哈哈哈"); the 5th repeat is a run
MAX_REPEATED_FRACTION = 0.5  # more than half of the token 4-grams are repeats: looping text
MIN_NGRAMS_FOR_FRACTION = 12  # the repeated fraction says nothing about a handful of n-grams
GARBLED_FRACTION = 0.2  # a "garbled" sample in evaluation: text from any working model has ~0%
_NOT_TEXT = {"Cc", "Cs", "Co", "Cn"}  # control, surrogate, private use, unassigned
CHAR_UNIT = 8  # longest character unit searched for runs ("30分钟 " is 5, "API/" is 4)
TOKEN_UNIT = 4  # longest token unit searched for runs (catches long repeated words)

_TOKEN = re.compile(r"[A-Za-z]+|\d+(?:\.\d+)?|[^\sA-Za-z\d]")


@dataclass(frozen=True)
class RuleResult:
    """One check's verdict on one completion.

    passed: the hard criterion holds. score: partial credit in [0, 1] (1.0 when passed).
    reasons: human-readable explanations of every violation, empty when passed.
    """

    passed: bool
    score: float
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """Every check's result on one completion, by check name in the task's order: what evaluation
    reports for any task (passed, partial score, reasons, failed checks, degeneration).

    passed: all hold (the pass criterion). degenerate_reasons: why the completion is degenerate
    (echo, token runs, length blow-up, garbled text), empty when it is not.
    """

    results: dict[str, RuleResult]
    degenerate_reasons: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results.values())

    @property
    def degenerate(self) -> bool:
        return bool(self.degenerate_reasons)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(name for name, r in self.results.items() if not r.passed)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(reason for r in self.results.values() for reason in r.reasons)

    @property
    def score(self) -> float:
        """Mean partial credit over all checks, in [0, 1]."""
        return sum(r.score for r in self.results.values()) / len(self.results)


@dataclass(frozen=True)
class RepeatRun:
    """The longest back-to-back repetition: `unit` repeated `repeats` times (0: empty text)."""

    unit: str
    repeats: int


def snippet(text: str, limit: int = 40) -> str:
    """The text quoted for a reason: single line, cut at `limit` characters.

    >>> snippet("当然可以！以下是一个学习计划：", 6)
    "'当然可以！以...'"
    """
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def tokens(text: str) -> list[str]:
    """Words, numbers, CJK characters and single symbols; whitespace dropped.

    >>> tokens("- 复习 API/API 30分钟")
    ['-', '复', '习', 'API', '/', 'API', '30', '分', '钟']
    """
    return _TOKEN.findall(text)


def _normalise(text: str) -> str:
    """NFKC (full-width to half-width), case-folded, whitespace removed: echo ignores spacing."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def _char_ngrams(text: str, n: int) -> set[str]:
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def echo_overlap(prompt: str, completion: str, n: int = ECHO_N) -> float:
    """Fraction of the prompt's distinct character n-grams that occur in the completion.

    Text is compared after NFKC, case folding and whitespace removal, so a re-punctuated echo
    (half-width commas, dropped spaces) still counts. Phrases shorter than n characters, such as
    a duration copied from the prompt's example, cannot match on their own.

    >>> p = "请给我一个三点式学习计划，每一条都必须包含一个时间（如 30 分钟）"
    >>> echo_overlap(p, p + "阻阻阻")
    1.0
    >>> echo_overlap(p, "- 复习第三章（30 分钟）")
    0.0
    """
    grams = _char_ngrams(_normalise(prompt), n)
    if not grams:
        return 0.0
    return len(grams & _char_ngrams(_normalise(completion), n)) / len(grams)


def _runs(seq, max_unit: int, skip) -> RepeatRun:
    """Longest back-to-back repetition in `seq` (a str or a list of tokens), unit <= max_unit.

    For unit length k, seq[i] == seq[i + k] along a stretch of L positions means a unit of
    k items repeated (L + k) // k times; that is O(len(seq) * max_unit).
    """
    best = RepeatRun("", 0)
    for k in range(1, max_unit + 1):
        stretch = 0
        for i in range(len(seq) - k + 1):
            stretch = stretch + 1 if i + k < len(seq) and seq[i] == seq[i + k] else 0
            repeats = (stretch + k) // k
            if repeats <= best.repeats:
                continue
            start = i - stretch + 1 if stretch else i
            unit = seq[start:start + k]
            if not skip(unit):
                best = RepeatRun(unit if isinstance(unit, str) else " ".join(unit), repeats)
    return best


def _blank_or_digits(unit: str) -> bool:
    """Runs of spaces (indentation) or of digits ("100000") are not degeneration."""
    return unit.isspace() or unit.strip().isdigit()


@functools.lru_cache(maxsize=4096)  # the reward, its breakdown and the verdict each ask per completion
def longest_repeat_run(text: str) -> RepeatRun:
    """The longest run of one unit repeated back to back: a character string of up to 8
    characters, or a sequence of up to 4 tokens (so long repeated words count too).

    >>> longest_repeat_run("当然，对阻阻阻阻阻阻阻...")
    RepeatRun(unit='阻', repeats=7)
    >>> longest_repeat_run("给定/API/API/API/API/API/API/...").repeats
    6
    >>> longest_repeat_run("- 复习第3章（30 分钟）").repeats
    1
    """
    by_char = _runs(text, CHAR_UNIT, _blank_or_digits)
    by_token = _runs(tokens(text), TOKEN_UNIT, lambda unit: False)  # a token list is never blank
    return by_token if by_token.repeats > by_char.repeats else by_char


def _ngrams(items: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(items[i:i + n]) for i in range(len(items) - n + 1)]


@functools.lru_cache(maxsize=4096)
def repeated_ngram_fraction(text: str, n: int = 4) -> float:
    """Fraction of token n-grams that repeat an earlier one: (total - distinct) / total (0.0 when the
    text has no n-gram).

    >>> repeated_ngram_fraction("a b c d")
    0.0
    >>> repeated_ngram_fraction("a b a b a b")  # 3 4-grams, 2 distinct
    0.3333333333333333
    """
    grams = _ngrams(tokens(text), n)
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def distinct_n(text: str, n: int) -> float:
    """distinct-n (Li et al. 2016): distinct token n-grams / total token n-grams (0.0: none).

    >>> distinct_n("a b a b", 1), distinct_n("a b a b", 2)
    (0.5, 0.6666666666666666)
    """
    grams = _ngrams(tokens(text), n)
    return len(set(grams)) / len(grams) if grams else 0.0


def length_chars(completion: str) -> int:
    """Length in characters, surrounding whitespace excluded.

    >>> length_chars("  - 复习（30 分钟）\\n")
    11
    """
    return len(completion.strip())


def invalid_char_fraction(text: str) -> float:
    """Fraction of characters that are not text: U+FFFD (undecodable bytes), control characters
    other than newline, tab and carriage return, surrogates, private-use or unassigned code points.

    >>> invalid_char_fraction("- 复习（30 分钟）\\n"), invalid_char_fraction("ab\\ufffd\\x0b")
    (0.0, 0.5)
    """
    if not text:
        return 0.0
    bad = sum(1 for ch in text if ch == "\ufffd" or (unicodedata.category(ch) in _NOT_TEXT and ch not in "\n\t\r"))
    return bad / len(text)


def check_garbled(prompt: str, completion: str) -> RuleResult:
    """No character that is not text. Closes the byte-soup exploit: a small byte-level policy
    under a format reward learns that three '-' lines with a number and a unit pass, whatever
    the bytes between them (`- 50分钟�一道番脏�０分钟`); a real answer never holds U+FFFD.

    >>> result = check_garbled("", "- 复习（30 分钟）�")  # 1 of 12 characters: score 0.5 x 11/12
    >>> result.passed, round(result.score, 4), result.reasons
    (False, 0.4583, ("1 character that is not text: '- 复习（30 分钟）�'",))
    """
    fraction = invalid_char_fraction(completion)
    if fraction == 0:
        return RuleResult(True, 1.0)
    count = round(fraction * len(completion))
    noun = "character that is" if count == 1 else "characters that are"
    return RuleResult(False, 0.5 * (1.0 - fraction), (f"{count} {noun} not text: {snippet(completion.strip())}",))


def check_echo(prompt: str, completion: str, max_overlap: float = MAX_ECHO) -> RuleResult:
    """Closes the seed's echo exploit: repeating the prompt (which names a duration, "30 分钟")
    earns a content reward without planning anything. Fails at >= 30% of the prompt's 7-grams.

    >>> p = "请给我一个三点式学习计划，用 '-' 做 bullet，每一条都必须包含一个时间（如 30 分钟）"
    >>> check_echo(p, p + "\\n- 复习（30 分钟）").reasons
    ('echoes the prompt: 100% of its 7-grams appear',)
    >>> check_echo(p, "- 复习（30 分钟）").passed
    True
    """
    overlap = echo_overlap(prompt, completion)
    if overlap < max_overlap:
        return RuleResult(True, 1.0)
    reason = f"echoes the prompt: {overlap:.0%} of its {ECHO_N}-grams appear"
    return RuleResult(False, 0.5 * (1.0 - overlap), (reason,))


def _blown_up(length: int, max_chars: int) -> bool:
    return length > BLOWUP * max_chars


def _length_reason(length: int, max_chars: int) -> str:
    if _blown_up(length, max_chars):
        return f"length blow-up: {length} characters, more than {BLOWUP:g} x the limit {max_chars}"
    return f"too long: {length} characters, limit {max_chars}"


def check_length(prompt: str, completion: str, max_chars: int = MAX_CHARS) -> RuleResult:
    """Closes the length exploit: rambling or looping until the token limit (the seed's
    `API/API/...`) to collect more reward-bearing phrases. Score falls as max / length.

    >>> check_length("", "- a" * 150, max_chars=300)
    RuleResult(passed=False, score=0.3333333333333333, reasons=('too long: 450 characters, limit 300',))
    """
    length = length_chars(completion)
    if length <= max_chars:
        return RuleResult(True, 1.0)
    return RuleResult(False, 0.5 * max_chars / length, (_length_reason(length, max_chars),))


def check_repetition(prompt: str, completion: str, max_repeats: int = MAX_REPEATS,
                     max_fraction: float = MAX_REPEATED_FRACTION) -> RuleResult:
    """Closes the repetition exploit: a degenerate policy looping on one unit (`对阻阻阻阻...`,
    `API/API/...`, or a duration stuffed over and over: `30分钟 30分钟 ...`). Fails on a unit
    repeated more than 4 times in a row, or when over half of the token 4-grams are repeats.

    >>> check_repetition("", "当然，对阻阻阻阻阻阻阻...").reasons
    ("'阻' repeated 7 times in a row",)
    >>> check_repetition("", "- 复习（30 分钟）\\n- 练习（1 小时）\\n- 总结（半小时）").passed
    True
    """
    reasons, severity = [], 0.0
    run = longest_repeat_run(completion)
    if run.repeats > max_repeats:
        reasons.append(f"{run.unit!r} repeated {run.repeats} times in a row")
        severity = 1.0 - max_repeats / run.repeats
    grams = max(len(tokens(completion)) - 3, 0)
    fraction = repeated_ngram_fraction(completion)
    if grams >= MIN_NGRAMS_FOR_FRACTION and fraction > max_fraction:
        reasons.append(f"repeated text: {fraction:.0%} of its token 4-grams are repeats")
        severity = max(severity, fraction)
    if not reasons:
        return RuleResult(True, 1.0)
    return RuleResult(False, 0.5 * (1.0 - severity), tuple(reasons))


def degeneration_reasons(echo: RuleResult, repetition: RuleResult, length: int,
                         max_chars: int = MAX_CHARS) -> tuple[str, ...]:
    """Why a completion is degenerate, from its echo and repetition results and its length;
    empty when it is not. A length counts only past BLOWUP x max_chars: a verbose answer fails
    `check_length` but is not degenerate, a run to the token limit is.

    >>> degeneration_reasons(RuleResult(True, 1.0), RuleResult(True, 1.0), 700, max_chars=300)
    ('length blow-up: 700 characters, more than 2 x the limit 300',)
    """
    reasons = echo.reasons + repetition.reasons
    return reasons + ((_length_reason(length, max_chars),) if _blown_up(length, max_chars) else ())


def is_degenerate(prompt: str, completion: str, max_chars: int = MAX_CHARS) -> tuple[bool, tuple[str, ...]]:
    """(degenerate, reasons): the completion echoes the prompt, loops on a repeated unit, or
    blows far past the length bound. A wrong format alone (4 bullets, a preamble, a verbose
    nested list) is not degenerate.

    >>> is_degenerate("请给我一个学习计划，每条都有时间", "请给我一个学习计划，每条都有时间API/API/API/API/API/")
    (True, ('echoes the prompt: 100% of its 7-grams appear', "'API/' repeated 5 times in a row"))
    >>> is_degenerate("请给我一个学习计划", "- 复习（30 分钟）\\n- 练习\\n- 练习\\n- 练习")
    (False, ())
    """
    reasons = degeneration_reasons(check_echo(prompt, completion), check_repetition(prompt, completion),
                                   length_chars(completion), max_chars)
    return bool(reasons), reasons
