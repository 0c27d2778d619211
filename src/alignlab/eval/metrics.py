"""Evaluation metrics of any task: one scored sample, and a summary over many.

`score_samples(task, examples, completions)` runs the task's check (`Task.check`, a `Verdict`: every
rule with its reasons, and degeneration) on each completion and records the task's sharp reward and
the degeneration measures of `rewards.penalties` (`longest_repeat_run`, `repeated_ngram_fraction`,
`echo_overlap`, `length_chars`): the same functions the rewards use, never a second definition
(style rule 8). `summarize` turns samples into an `EvalSummary`: pass rate with a 95% Wilson
interval, pass@k when every prompt has the same number (n > 1) of samples, rule failure counts,
reward mean and std, and the degeneration metrics; `format_table` and `markdown_table` show
summaries side by side.

A sample whose `invalid_char_fraction` (U+FFFD from bytes that did not decode, control characters)
is over GARBLED_FRACTION is "garbled": what an untrained or broken model emits. The rules'
degeneration (echo, repeat runs, length blow-up) does not see random bytes, which rarely repeat;
the `garbled` penalty fails any sample with one such character.

Left out: generating completions (`sampling_eval.py`), judging a run (`verdict.py`), and any file I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.algorithms.common import pass_at_k, verdict_rates
from alignlab.errors import UserError
from alignlab.rewards.base import call_reward
from alignlab.rewards.penalties import (
    GARBLED_FRACTION,
    distinct_n,
    echo_overlap,
    invalid_char_fraction,
    length_chars,
    longest_repeat_run,
    repeated_ngram_fraction,
)
from alignlab.tasks.registry import Task, get_task

__all__ = ["EvalSummary", "ScoredSample", "format_table", "invalid_char_fraction", "markdown_table", "score_sample",
           "score_samples", "summarize"]

@dataclass(frozen=True)
class ScoredSample:
    """One completion with every verdict and measure the evaluation reports.

    passed: every rule of the task's check holds. degenerate: echo, repetition runs, a length blow-up
    or garbled text, as the task's check says. score: the task's sharp reward (study plan: +1 pass,
    -1 penalty failed, [-1, -0.5] other violations). columns: the example's task columns (gsm8k:
    the reference answer), written with the sample so it can be judged again.
    reasons: every rule's explanations; degenerate_reasons: why it is degenerate (empty if not).
    failed_rules: names of the failed rules. rule_reasons: each rule's reasons, every rule listed
    in the verdict's order (failed or not). truncated: generation ran out of tokens before a stop
    (None: unknown, e.g. completions produced elsewhere). invalid_char_fraction: see the module
    docstring (`garbled` when over GARBLED_FRACTION). The rest are `rewards.penalties` measures.
    """

    prompt: str
    completion: str
    passed: bool
    degenerate: bool
    score: float
    reasons: tuple[str, ...]
    degenerate_reasons: tuple[str, ...]
    failed_rules: tuple[str, ...]
    truncated: bool | None
    length_chars: int
    longest_run: int
    repeated_ngram_fraction: float
    echo_overlap: float
    invalid_char_fraction: float = 0.0
    rule_reasons: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    columns: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def garbled(self) -> bool:
        return self.invalid_char_fraction > GARBLED_FRACTION

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists; the task's columns sit at the top level (as in the input)."""
        record = dataclasses.asdict(self)
        record = {**record.pop("columns"), **record}
        for key in ("reasons", "degenerate_reasons", "failed_rules"):
            record[key] = list(record[key])
        record["rule_reasons"] = {name: list(reasons) for name, reasons in self.rule_reasons.items()}
        record["garbled"] = self.garbled
        return record


def score_samples(task: Task, examples: Sequence[Mapping], completions: Sequence[str],
                  truncated: Sequence[bool | None] | None = None) -> list[ScoredSample]:
    """Score completion i of examples[i] ({"prompt", *task.columns}) with the task's check, its sharp
    reward and the degeneration measures; `truncated[i]`: cut by the token limit (None: unknown)."""
    prompts = [e["prompt"] for e in examples]
    columns = task.row_columns(list(examples))
    scores = call_reward(task.reward("sharp"), prompts, list(completions), **columns)
    cut = truncated if truncated is not None else [None] * len(completions)
    samples = []
    for i, (example, completion) in enumerate(zip(examples, completions, strict=True)):
        if scores[i] is None:
            raise UserError(f"task {task.name}'s sharp reward abstained on completion {i}; an evaluation reports "
                            f"a score for every completion")
        own = {name: example[name] for name in task.columns}
        verdict = task.check(example["prompt"], completion, **own)
        samples.append(ScoredSample(
            prompt=example["prompt"], completion=completion, passed=verdict.passed, degenerate=verdict.degenerate,
            score=scores[i], reasons=verdict.reasons, degenerate_reasons=verdict.degenerate_reasons,
            failed_rules=verdict.failed, truncated=cut[i], length_chars=length_chars(completion),
            longest_run=longest_repeat_run(completion).repeats,
            repeated_ngram_fraction=repeated_ngram_fraction(completion),
            echo_overlap=echo_overlap(example["prompt"], completion),
            invalid_char_fraction=invalid_char_fraction(completion),
            rule_reasons={name: result.reasons for name, result in verdict.results.items()}, columns=own))
    return samples


def score_sample(prompt: str, completion: str, truncated: bool | None = None, *, task: Task | None = None,
                 **columns) -> ScoredSample:
    """`score_samples` for one completion; `task` defaults to the study plan.

    >>> s = score_sample("三条计划", "- 复习（30 分钟）\\n- 练习（1 小时）\\n- 总结（半小时）")
    >>> s.passed, s.degenerate, s.score, s.failed_rules
    (True, False, 1.0, ())
    """
    return score_samples(task or get_task("study-plan"), [{"prompt": prompt, **columns}], [completion], [truncated])[0]


@dataclass(frozen=True)
class EvalSummary:
    """Aggregate metrics over scored samples (rates are fractions in [0, 1]).

    pass_rate_ci: 95% Wilson interval (low, high). pass_at_k: {"k": unbiased pass@k (Chen et al. 2021)
    averaged over prompts} for k = 1, 2, 4, ... up to n, when every prompt has n > 1 samples, else
    None. reward_*: the task's sharp reward; std is the
    population std. rule_failures: {rule: samples failing it}, every rule seen, zeros included.
    distinct_1/2: distinct-n over all completions pooled (joined by newlines, so n-grams that
    straddle two completions count too: a small bias, the price of one distinct-n definition).
    echo_rate: fraction whose echo rule failed. garbled_rate: fraction of garbled samples (not
    text; see the module docstring). length_*: characters. truncation_rate: fraction
    cut by the token limit among samples where that is known; None when it is known for none.
    """

    n_samples: int
    n_prompts: int
    pass_rate: float
    pass_rate_ci: tuple[float, float]
    degenerate_rate: float
    reward_mean: float
    reward_std: float
    rule_failures: Mapping[str, int]
    distinct_1: float
    distinct_2: float
    longest_run_mean: float
    longest_run_max: int
    repeated_ngram_fraction_mean: float
    echo_rate: float
    garbled_rate: float
    length_mean: float
    length_max: int
    truncation_rate: float | None
    # Coherence under a judge model (eval/judge.py; None when no judge was asked): the set's mean token
    # NLL and its 95% interval, the fluent references' mean, "coherent" / "incoherent", and why.
    coherence_nll: float | None = None
    coherence_nll_ci: tuple[float, float] | None = None
    coherence_reference_nll: float | None = None
    coherence: str | None = None
    coherence_note: str | None = None
    pass_at_k: Mapping[str, float] | None = None

    def to_dict(self) -> dict:
        """JSON-ready: the interval as a [low, high] list."""
        record = dataclasses.asdict(self)
        record["pass_rate_ci"] = list(self.pass_rate_ci)
        record["coherence_nll_ci"] = None if self.coherence_nll_ci is None else list(self.coherence_nll_ci)
        record["rule_failures"] = dict(self.rule_failures)
        record["pass_at_k"] = None if self.pass_at_k is None else dict(self.pass_at_k)
        return record

    @classmethod
    def from_dict(cls, record: Mapping, source: str | None = None) -> EvalSummary:
        """Inverse of `to_dict`. A missing key, or a value that is not a finite number where one is
        needed (json.loads accepts NaN and Infinity; null only truncation_rate may be), is a UserError
        naming `source` and the key, e.g. "summary.json: pass_rate: expected a finite number, got NaN"."""
        import json

        def number(value, key: str, whole: bool = False):
            finite = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not finite or (whole and value != int(value)):
                wanted = "a whole number" if whole else "a finite number"
                raise UserError(f"expected {wanted}, got {json.dumps(value)[:60]}", file=source, key=key)
            return int(value) if whole else float(value)

        values = {}
        for field in dataclasses.fields(cls):
            if field.name not in record and field.default is not dataclasses.MISSING:
                continue  # written before the field existed (coherence): its default
            if field.name not in record:
                raise UserError("missing from the evaluation summary", file=source, key=field.name)
            value, kind = record[field.name], str(field.type)
            if value is None and kind.endswith("| None"):
                values[field.name] = None
                continue
            if kind == "str | None":
                values[field.name] = str(value)
                continue
            if kind.startswith("tuple[float, float]"):
                if not (isinstance(value, list | tuple) and len(value) == 2):
                    raise UserError(f"expected [low, high], got {value!r:.60}", file=source, key=field.name)
                value = tuple(number(v, f"{field.name}[{i}]") for i, v in enumerate(value))
            elif kind.startswith("Mapping"):
                whole = kind.startswith("Mapping[str, int]")  # rule failure counts; pass@k are fractions
                if not isinstance(value, Mapping):
                    wanted = "{rule: count}" if whole else "{k: fraction}"
                    raise UserError(f"expected {wanted}, got {value!r:.60}", file=source, key=field.name)
                value = {str(k): number(v, f"{field.name}.{k}", whole=whole) for k, v in value.items()}
            elif value is not None or kind != "float | None":
                value = number(value, field.name, whole=kind == "int")
            values[field.name] = value
        return cls(**values)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _std(values: Sequence[float]) -> float:
    centre = _mean(values)
    return math.sqrt(sum((v - centre) ** 2 for v in values) / len(values))


def _rule_failures(samples: Sequence[ScoredSample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sample in samples:
        for name in (*sample.rule_reasons, *sample.failed_rules):
            counts.setdefault(name, 0)
        for name in sample.failed_rules:
            counts[name] += 1
    return counts


def _pass_at_k(samples: Sequence[ScoredSample]) -> dict[str, float] | None:
    """Mean unbiased pass@k over prompts, k = 1, 2, 4, ... n, when each prompt has the same n > 1 samples."""
    groups: dict[tuple, list[bool]] = {}
    for s in samples:
        groups.setdefault((s.prompt, *sorted(map(str, s.columns.items()))), []).append(s.passed)
    sizes = {len(g) for g in groups.values()}
    if len(sizes) != 1 or (n := sizes.pop()) < 2:
        return None
    ks = sorted({*(2 ** i for i in range(n.bit_length()) if 2 ** i < n), n})
    return {str(k): sum(pass_at_k(n, sum(g), k) for g in groups.values()) / len(groups) for k in ks}


def summarize(samples: Sequence[ScoredSample]) -> EvalSummary:
    """Aggregate scored samples into an `EvalSummary`; at least one sample is required.

    >>> plan = "- 复习（30 分钟）\\n- 练习（1 小时）\\n- 总结（半小时）"
    >>> s = summarize([score_sample("p", plan), score_sample("p", "好的")])
    >>> s.pass_rate, s.rule_failures["count"], s.truncation_rate
    (0.5, 1, None)
    """
    if not samples:
        raise ValueError("summarize needs at least one scored sample")
    n = len(samples)
    rates = verdict_rates([s.passed for s in samples], [s.degenerate for s in samples])
    texts = "\n".join(s.completion for s in samples)
    known = [s.truncated for s in samples if s.truncated is not None]
    scores = [s.score for s in samples]
    return EvalSummary(
        n_samples=n, n_prompts=len({s.prompt for s in samples}), pass_rate=rates["pass_rate"],
        pass_rate_ci=(rates["pass_rate_low"], rates["pass_rate_high"]), degenerate_rate=rates["degenerate_rate"],
        reward_mean=_mean(scores), reward_std=_std(scores), rule_failures=_rule_failures(samples),
        distinct_1=distinct_n(texts, 1), distinct_2=distinct_n(texts, 2),
        longest_run_mean=_mean([s.longest_run for s in samples]), longest_run_max=max(s.longest_run for s in samples),
        repeated_ngram_fraction_mean=_mean([s.repeated_ngram_fraction for s in samples]),
        echo_rate=sum("echo" in s.failed_rules for s in samples) / n, garbled_rate=sum(s.garbled for s in samples) / n,
        length_mean=_mean([s.length_chars for s in samples]), length_max=max(s.length_chars for s in samples),
        truncation_rate=sum(known) / len(known) if known else None, pass_at_k=_pass_at_k(samples))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ci(s: EvalSummary) -> str:
    low, high = s.pass_rate_ci
    return f"[{100 * low:.1f}, {100 * high:.1f}]%"


_ROWS: tuple[tuple[str, Callable[[EvalSummary], str]], ...] = (
    ("samples", lambda s: str(s.n_samples)),
    ("prompts", lambda s: str(s.n_prompts)),
    ("pass rate", lambda s: _pct(s.pass_rate)),
    ("pass rate 95% CI", _ci),
    ("degenerate", lambda s: _pct(s.degenerate_rate)),
    ("reward (sharp) mean", lambda s: f"{s.reward_mean:+.3f}"),
    ("reward (sharp) std", lambda s: f"{s.reward_std:.3f}"),
    ("echo rate", lambda s: _pct(s.echo_rate)),
    ("garbled (not text)", lambda s: _pct(s.garbled_rate)),
    ("truncated", lambda s: _pct(s.truncation_rate)),
    ("distinct-1", lambda s: f"{s.distinct_1:.3f}"),
    ("distinct-2", lambda s: f"{s.distinct_2:.3f}"),
    ("longest run mean", lambda s: f"{s.longest_run_mean:.2f}"),
    ("longest run max", lambda s: str(s.longest_run_max)),
    ("repeated 4-grams mean", lambda s: f"{s.repeated_ngram_fraction_mean:.3f}"),
    ("length mean (chars)", lambda s: f"{s.length_mean:.1f}"),
    ("length max (chars)", lambda s: str(s.length_max)),
)
_COHERENCE_ROWS: tuple[tuple[str, Callable[[EvalSummary], str]], ...] = (
    ("coherence NLL (judge)", lambda s: "n/a" if s.coherence_nll is None else
     f"{s.coherence_nll:.2f} [{s.coherence_nll_ci[0]:.2f}, {s.coherence_nll_ci[1]:.2f}]"),
    ("fluent reference NLL", lambda s: "n/a" if s.coherence_reference_nll is None else
     f"{s.coherence_reference_nll:.2f}"),
    ("coherence", lambda s: s.coherence or "n/a"),
)


def table_rows(summaries: Mapping[str, EvalSummary]) -> list[list[str]]:
    """Header row, then one row per metric and per rule ("fails: <rule>"), one column per summary."""
    rows = [["metric", *summaries]]
    shown = _ROWS + (_COHERENCE_ROWS if any(s.coherence_nll is not None for s in summaries.values()) else ())
    rows += [[label, *(show(s) for s in summaries.values())] for label, show in shown]
    ks = dict.fromkeys(k for s in summaries.values() for k in (s.pass_at_k or {}) if k != "1")
    rows += [[f"pass@{k}", *(_pct((s.pass_at_k or {}).get(k)) for s in summaries.values())] for k in ks]
    rules = dict.fromkeys(name for s in summaries.values() for name in s.rule_failures)
    for rule in rules:
        cells = []
        for s in summaries.values():
            count = s.rule_failures.get(rule)
            cells.append("n/a" if count is None else f"{count} ({_pct(count / s.n_samples)})")
        rows.append([f"fails: {rule}", *cells])
    return rows


def _aligned(row: list[str], widths: list[int]) -> str:
    cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
    return "  ".join(cells).rstrip()


def format_table(summaries: Mapping[str, EvalSummary]) -> str:
    """A plain-text table for the terminal: one row per metric, one column per named summary."""
    rows = table_rows(summaries)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [_aligned(row, widths) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(summaries: Mapping[str, EvalSummary]) -> str:
    """The same table in GitHub markdown (metric column left-aligned, values right-aligned)."""
    rows = table_rows(summaries)
    escaped = [[cell.replace("|", "\\|") for cell in row] for row in rows]
    lines = ["| " + " | ".join(row) + " |" for row in escaped]
    lines.insert(1, "|" + "|".join([":---", *(["---:"] * (len(rows[0]) - 1))]) + "|")
    return "\n".join(lines)
