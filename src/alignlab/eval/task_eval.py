"""Sampling evaluation of any built-in task by its own check: pass rate, pass@k, degeneration.

`alignlab eval --task gsm8k --prompts test.jsonl --samples 4` lands here (the study-plan task keeps
the richer rule-by-rule summary of `sampling_eval` / `metrics`). Each example is sampled
`samples_per_example` times from one seeded generator; each completion is judged by
`task.check(prompt, completion, **columns)`. pass@1 is the mean over samples (with its 95% Wilson
interval over all samples); pass@k for k = 1, 2, 4, ... up to the sample count is the unbiased
estimator of Chen et al. (2021) averaged over examples.

Left out: majority voting (maj@k), per-difficulty breakdowns.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from alignlab.algorithms.common import wilson_interval
from alignlab.config import GenerationConfig
from alignlab.errors import UserError
from alignlab.eval.sampling_eval import json_text, start_sampling, write_output
from alignlab.generation.engine import generate
from alignlab.tasks.gsm8k import pass_at_k
from alignlab.tasks.registry import Task


@dataclass(frozen=True)
class TaskEvalSummary:
    """Rates are fractions in [0, 1]; pass_at_k maps k to the mean unbiased pass@k over examples."""

    task: str
    n_examples: int
    samples_per_example: int
    pass_rate: float
    pass_rate_ci: tuple[float, float]
    pass_at_k: dict[int, float]
    degenerate_rate: float
    truncation_rate: float
    length_mean: float

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        record["pass_rate_ci"] = list(self.pass_rate_ci)
        record["pass_at_k"] = {str(k): v for k, v in self.pass_at_k.items()}
        return record


def _ks(n: int) -> list[int]:
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return [*ks, n]


def summarize_task(task: str, records: Sequence[Mapping], samples_per_example: int) -> TaskEvalSummary:
    """Aggregate per-completion records (`example`, `passed`, `degenerate`, `truncated`, `completion`)."""
    if not records:
        raise UserError("no completions to summarise")
    n = len(records)
    passed = sum(r["passed"] for r in records)
    per_example: dict[int, int] = {}
    for r in records:
        per_example[r["example"]] = per_example.get(r["example"], 0) + int(r["passed"])
    at_k = {k: sum(pass_at_k(samples_per_example, c, k) for c in per_example.values()) / len(per_example)
            for k in _ks(samples_per_example)}
    return TaskEvalSummary(task, len(per_example), samples_per_example, passed / n, wilson_interval(passed, n), at_k,
                           sum(bool(r["degenerate"]) for r in records) / n, sum(r["truncated"] for r in records) / n,
                           sum(len(r["completion"]) for r in records) / n)


def evaluate_task(model, tokenizer, task: Task, examples: Sequence[dict], samples_per_example: int,
                  gen: GenerationConfig, seed: int, batch_size: int = 32) -> tuple[list[dict], TaskEvalSummary]:
    """Sample and judge `samples_per_example` completions per example; (records, summary)."""
    seeds = start_sampling(model, len(examples), samples_per_example, batch_size, seed)  # one stream per row
    rows = [(i, e) for i, e in enumerate(examples) for _ in range(samples_per_example)]
    records = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        rollout = generate(model, tokenizer, [e["prompt"] for _, e in batch], gen, chat=True,
                           row_seeds=seeds[start:start + batch_size])
        for (i, example), text, cut in zip(batch, rollout.texts, rollout.truncated.tolist(), strict=True):
            verdict = task.check(example["prompt"], text, **{k: example[k] for k in task.columns})
            records.append({"example": i, **example, "completion": text, "passed": verdict.passed,
                            "degenerate": list(verdict.degenerate_reasons), "reasons": list(verdict.reasons),
                            "truncated": bool(cut)})
    return records, summarize_task(task.name, records, samples_per_example)


def format_task_summary(s: TaskEvalSummary) -> str:
    """A few aligned lines for the terminal."""
    low, high = s.pass_rate_ci
    lines = [f"task {s.task}: {s.n_examples} examples x {s.samples_per_example} samples",
             f"  pass rate (pass@1)  {100 * s.pass_rate:.1f}%  95% CI [{100 * low:.1f}, {100 * high:.1f}]%"]
    lines += [f"  pass@{k:<15} {100 * v:.1f}%" for k, v in s.pass_at_k.items() if k > 1]
    lines += [f"  degenerate          {100 * s.degenerate_rate:.1f}%",
              f"  truncated           {100 * s.truncation_rate:.1f}%",
              f"  length mean (chars) {s.length_mean:.1f}"]
    return "\n".join(lines)


def write_task_eval(out: str | Path, records: Sequence[Mapping], summary: TaskEvalSummary, info: Mapping) -> None:
    """out/summary.json, out/summary.md and out/samples.jsonl: the folder complete or absent."""
    write_output(out, "eval", {
        "summary.json": json_text({**info, **summary.to_dict()}),
        "summary.md": f"# alignlab eval: {info.get('checkpoint', '')}\n\n```\n{format_task_summary(summary)}\n```\n",
        "samples.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)})
