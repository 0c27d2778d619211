"""Sampling evaluation, the one path for every task: N completions per example from a model,
scored by the task and summarised.

`evaluate(model, tokenizer, task, examples, EvalConfig)` samples `samples` completions per example
with `generation.engine.sample_rows` (chat template; row i of the evaluation samples from its own
stream `derive_seed(seed, i)`, so the same seed gives the same samples whatever the batch size),
scores them with `metrics.score_samples` (the task's check and sharp reward, the Rollout's
truncated flag kept) and summarises them (pass rate, pass@k, rules, degeneration). `eval`,
`compare`, `sweep` and the demo all evaluate through it; `evaluate_completions` scores
completions produced anywhere. `held_out` picks a task's held-out examples. `read_prompts` /
`read_completions` load JSONL records with errors naming file, line and field; `write_samples`
writes scored samples as JSONL, every rule's reasons included.

The sampling loop itself is `generation.engine.sample_rows`, shared with the trainers' held-out check
(`trainers/heldout.py`, which deals rows over ranks and cannot import this layer).

Left out: distributed evaluation here (the trainers' held-out check has it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from alignlab.config import EvalConfig
from alignlab.data.sources import read_jsonl_records
from alignlab.errors import UserError
from alignlab.eval.metrics import EvalSummary, ScoredSample, score_samples, summarize
from alignlab.generation.engine import sample_rows
from alignlab.generation.sampling import derive_seed
from alignlab.outputs import complete_eval, json_safe, new_output, write_file_atomic
from alignlab.rewards.base import completion_text, prompt_text
from alignlab.tasks.registry import Task, get_task, task_spec


def held_out(task: Task, cfg: EvalConfig, path: str = "", lang: str = "all") -> list[dict]:
    """The task's held-out examples (from `path` when given, else its built-in ones in `lang`), the
    first `cfg.prompts` of them (0: all); none is a UserError."""
    examples = task.held_out_examples(path, lang)[: cfg.prompts or None]
    if not examples:
        raise UserError(f"task {task.name} has no built-in held-out examples: give a file of them", key="--prompts")
    return examples


def start_sampling(model, n_prompts: int, samples_per_prompt: int, batch_size: int, seed: int) -> list[int]:
    """Check the sampling arguments, put `model` in eval mode and return the row seeds every sampled
    evaluation draws from: one stream per row (prompt-major), so that a sample does not depend on
    the generation batch it falls in."""
    if samples_per_prompt < 1 or batch_size < 1:
        raise UserError(f"expected at least 1 sample per prompt and a batch size >= 1, got {samples_per_prompt} "
                        f"and {batch_size}")
    if n_prompts == 0:
        raise UserError("no prompts to evaluate on")
    model.eval()
    return [derive_seed(seed, i) for i in range(n_prompts * samples_per_prompt)]


def evaluate(model, tokenizer, task: Task, examples: Sequence[Mapping], cfg: EvalConfig
             ) -> tuple[list[ScoredSample], EvalSummary]:
    """Sample `cfg.samples` chat completions per example ({"prompt", *task.columns}), score and summarise them.

    Rows are the examples each repeated `cfg.samples` times, in order, generated `cfg.batch_size`
    rows at a time, row i from its own stream seeded by (`cfg.seed`, i): the same seed gives the same
    samples at any batch size. The model is put in eval mode.
    """
    seeds = start_sampling(model, len(examples), cfg.samples, cfg.batch_size, cfg.seed)
    rows = [e for e in examples for _ in range(cfg.samples)]
    sampled = sample_rows(model, tokenizer, [e["prompt"] for e in rows], cfg.generation(), seeds, cfg.batch_size)
    samples = score_samples(task, rows, sampled.texts, sampled.truncated)
    return samples, summarize(samples)


def evaluate_completions(records: Sequence[Mapping], task: Task) -> tuple[list[ScoredSample], EvalSummary]:
    """Score records {prompt, completion[, truncated], *task.columns} made elsewhere; prompts and completions
    may be strings or chat message lists (the last user / assistant message is scored)."""
    if not records:
        raise UserError("no completions to score")
    for i, record in enumerate(records):
        missing = [name for name in task.columns if name not in record]
        if missing:
            raise UserError(f"record {i + 1} has no {', '.join(missing)} (task {task.name} judges with it)",
                            key=missing[0])
    examples = [{"prompt": prompt_text(r["prompt"]), **{k: r[k] for k in task.columns}} for r in records]
    samples = score_samples(task, examples, [completion_text(r["completion"]) for r in records],
                            [_truncated(r) for r in records])
    return samples, summarize(samples)


def _truncated(record: Mapping) -> bool | None:
    value = record.get("truncated")
    return value if isinstance(value, bool) else None


def _text_field(record: Mapping, key: str, name: str, line: int) -> None:
    """Check record[key] is a non-empty string or a list of {role, content} messages."""
    value = record.get(key)
    if key not in record:
        raise UserError("missing field (expected a string)", file=name, line=line, key=key)
    ok = isinstance(value, str) or (isinstance(value, list) and bool(value)
                                    and all(isinstance(m, Mapping) and isinstance(m.get("content"), str)
                                            for m in value))
    if not ok:
        raise UserError(f"expected a string or a list of {{role, content}} messages, got {value!r:.60}",
                        file=name, line=line, key=key)
    if key == "prompt" and not prompt_text(value).strip():
        raise UserError("empty prompt", file=name, line=line, key=key)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a JSONL file of records with a `prompt` field (string or chat messages)."""
    prompts = []
    for line, record in read_jsonl_records(path):
        _text_field(record, "prompt", str(path), line)
        prompts.append(prompt_text(record["prompt"]))
    return prompts


def read_completions(path: str | Path) -> list[dict]:
    """Records with `prompt` and `completion` fields from a JSONL file, checked field by field."""
    records = []
    for line, record in read_jsonl_records(path):
        for key in ("prompt", "completion"):
            _text_field(record, key, str(path), line)
        records.append(record)
    return records


def sample_record(sample: ScoredSample, extra: Mapping | None = None) -> dict:
    """One JSONL record: `extra` (e.g. the input record's other fields), then the scored sample."""
    return {**(extra or {}), **sample.to_dict()}


def write_samples(path: str | Path, samples: Sequence[ScoredSample], extras: Sequence[Mapping] | None = None) -> Path:
    """Write scored samples as JSONL (one `sample_record` per line, `extras[i]` merged under sample i),
    atomically: a temp file renamed into place. Returns the path."""
    path = Path(path)
    extras = extras if extras is not None else [{}] * len(samples)
    text = "".join(json.dumps(sample_record(s, e), ensure_ascii=False) + "\n"
                   for s, e in zip(samples, extras, strict=True))
    return write_file_atomic(path, text, what="samples")


def load_or_evaluate(arg: str, task: Task, cfg: EvalConfig, *, device="cpu",
                     lang: str = "all") -> tuple[EvalSummary, list[ScoredSample] | None]:
    """(summary, scored samples) for `alignlab compare`: an `eval --out` directory (or its summary.json)
    is read (`read_evaluation`); a checkpoint or a run directory (its checkpoints/final) is evaluated on
    the task's held-out examples (of `lang`) with `cfg`, so runs of different training compare on one eval set."""
    from alignlab.model.checkpoint import load_model

    path = Path(arg).expanduser()
    if (path / "summary.json" if path.is_dir() else path).is_file():
        return read_evaluation(path)
    model_dir = path / "checkpoints" / "final" if (path / "checkpoints" / "final").is_dir() else path
    if not ((model_dir / "config.json").is_file() or (model_dir / "adapter.json").is_file()):
        raise UserError("expected an `alignlab eval --out` directory, a checkpoint or a run directory", file=arg)
    model, tokenizer = load_model(str(model_dir), device=device)
    samples, summary = evaluate(model, tokenizer, task, held_out(task, cfg, lang=lang), cfg)
    return summary, samples


def read_evaluation(path: str | Path) -> tuple[EvalSummary, list[ScoredSample] | None]:
    """The summary of an `alignlab eval --out` directory (or its summary.json) and its samples,
    judged again by the task the folder records (study-plan for folders written before tasks were recorded)."""
    path = Path(path).expanduser()
    summary_file = path / "summary.json" if path.is_dir() else path
    if not complete_eval(summary_file.parent):
        raise UserError("an incomplete evaluation folder (no completion mark, or samples.jsonl missing): an "
                        "evaluation was interrupted while writing it; run `alignlab eval --out` again", file=str(path))
    try:
        record = json.loads(summary_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read the summary: {err}", file=str(summary_file)) from err
    if not isinstance(record, dict):
        raise UserError("expected a JSON object", file=str(summary_file))
    named = record.get("task_spec", record.get("task"))  # a file task's path:NAME, else its registered name
    task = get_task(named if isinstance(named, str) else "study-plan")
    samples_file = summary_file.parent / "samples.jsonl"
    samples = evaluate_completions(read_completions(samples_file), task)[0] if samples_file.is_file() else None
    return EvalSummary.from_dict(record, str(summary_file)), samples


def eval_info(checkpoint: str, task: Task, cfg: EvalConfig, *, lang: str | None = "all", prompts: str = "held-out",
              **extra) -> dict:
    """What an evaluation folder's summary.json records about how it was made."""
    named = task_spec(task)
    spec = {"task_spec": named} if named != task.name else {}  # a task read from a file
    return {"checkpoint": checkpoint, "task": task.name, **spec, "prompts": prompts, "lang": lang,
            "samples_per_prompt": cfg.samples, "temperature": cfg.temperature, "max_new_tokens": cfg.max_new_tokens,
            "seed": cfg.seed, **extra}


def write_eval(out: str | Path, name: str, samples: Sequence[ScoredSample], summary: EvalSummary, verdict,
               info: Mapping) -> Path:
    """An evaluation directory, as `alignlab eval --out` writes it: summary.md (table + verdict),
    summary.json (run info, the summary, the verdict) and samples.jsonl; each file atomically."""
    from alignlab.eval.metrics import markdown_table
    from alignlab.eval.verdict import format_verdict

    record = {**info, **summary.to_dict(), "verdict": verdict.to_dict()}
    texts = {"summary.md": f"# alignlab eval: {name}\n\n{markdown_table({name: summary})}\n\n"
                           f"```\n{format_verdict(verdict)}\n```\n",
             "summary.json": json_text(record)}
    with new_output(out, "eval") as tmp:  # the folder appears complete, or the old one stays
        write_texts(tmp, texts)
        write_samples(tmp / "samples.jsonl", samples)
    return Path(out)


def json_text(record) -> str:
    """Indented JSON with non-finite numbers as null (`outputs.json_safe`): always valid JSON."""
    return json.dumps(json_safe(record), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_output(out: str | Path, kind: str, texts: Mapping[str, str]) -> Path:
    """A whole output folder of `kind` holding `texts` (file name -> text), complete or absent; an
    existing folder is replaced only when alignlab wrote it as the same kind (`outputs.new_output`)."""
    with new_output(out, kind) as tmp:
        write_texts(tmp, texts)
    return Path(out)


def write_texts(out: str | Path, texts: Mapping[str, str]) -> None:
    """Write each text to out/<name>, creating `out`; each file appears whole or not at all
    (a temp file renamed into place). An OSError becomes a UserError naming `out`."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write: {err.strerror or err}", file=str(out)) from err
    for file_name, text in texts.items():
        write_file_atomic(out / file_name, text)
