"""Sampling evaluation: N completions per prompt from a model, scored and summarised.

`evaluate_model` samples `samples_per_prompt` completions per prompt with
`generation.engine.generate` (chat template; row i of the evaluation samples from its own stream
`derive_seed(seed, i)`, so the same seed gives the same samples whatever the batch size), scores
each with `metrics.score_sample` (keeping the Rollout's truncated flag) and summarises them.
`evaluate_completions` does the same for completions produced anywhere. `read_prompts` /
`read_completions` load JSONL records with errors naming file, line and field; `write_samples`
writes scored samples as JSONL, every rule's reasons included.

Left out: tasks other than the study plan (`TASKS`), distributed evaluation, and pass@k.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from alignlab.config import GenerationConfig
from alignlab.data.sources import read_jsonl_records
from alignlab.errors import UserError
from alignlab.eval.metrics import EvalSummary, ScoredSample, score_sample, summarize
from alignlab.generation.engine import generate
from alignlab.generation.sampling import derive_seed
from alignlab.outputs import complete_eval, json_safe, new_output
from alignlab.rewards.base import completion_text, prompt_text
from alignlab.tasks.study_plan import held_out_prompts

TASKS = {"study-plan": held_out_prompts}  # task name -> its held-out prompts


def task_prompts(task: str, lang: str = "all") -> list[str]:
    """The held-out prompts of a built-in task in `lang` (all, en, zh); an unknown name is a UserError
    listing the tasks."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; expected one of: {', '.join(TASKS)}", key="--task")
    return TASKS[task](lang)


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


def evaluate_model(model, tokenizer, prompts: Sequence[str], samples_per_prompt: int, gen: GenerationConfig,
                   seed: int, batch_size: int = 32) -> tuple[list[ScoredSample], EvalSummary]:
    """Sample `samples_per_prompt` chat completions per prompt, score and summarise them.

    Rows are the prompts each repeated `samples_per_prompt` times, in prompt order, generated
    `batch_size` rows at a time, row i from its own stream seeded by (`seed`, i): the same seed gives
    the same samples at any batch size. The model is put in eval mode.
    """
    seeds = start_sampling(model, len(prompts), samples_per_prompt, batch_size, seed)
    rows = [p for p in prompts for _ in range(samples_per_prompt)]
    samples = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        rollout = generate(model, tokenizer, batch, gen, chat=True, row_seeds=seeds[start:start + batch_size])
        truncated = rollout.truncated.tolist()  # (B,) bool
        samples += [score_sample(p, text, truncated=bool(cut))
                    for p, text, cut in zip(batch, rollout.texts, truncated, strict=True)]
    return samples, summarize(samples)


def evaluate_completions(records: Sequence[Mapping]) -> tuple[list[ScoredSample], EvalSummary]:
    """Score records {prompt, completion[, truncated]} made elsewhere; prompts and completions may be
    strings or chat message lists (the last user / assistant message is scored)."""
    samples = [score_sample(prompt_text(r["prompt"]), completion_text(r["completion"]), _truncated(r))
               for r in records]
    if not samples:
        raise UserError("no completions to score")
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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write the samples: {err.strerror or err}", file=str(path)) from err
    return path


def load_or_evaluate(arg: str, *, samples_per_prompt: int = 5, temperature: float = 0.7, seed: int = 0,
                     device="cpu", max_new_tokens: int = 128,
                     lang: str = "all") -> tuple[EvalSummary, list[ScoredSample] | None]:
    """(summary, scored samples) for `alignlab compare`: an `eval --out` directory (or its summary.json)
    is read; a checkpoint or a run directory (its checkpoints/final) is evaluated on the task's
    held-out prompts (of `lang`) with the eval defaults, so runs of different training compare on one eval set."""
    from alignlab.model.checkpoint import load_model

    path = Path(arg).expanduser()
    summary_file = path / "summary.json" if path.is_dir() else path
    if summary_file.is_file():
        if not complete_eval(summary_file.parent):
            raise UserError("an incomplete evaluation folder (no completion mark, or samples.jsonl missing): an "
                            "evaluation was interrupted while writing it; run `alignlab eval --out` again", file=arg)
        return _read_summary(summary_file)
    model_dir = path / "checkpoints" / "final" if (path / "checkpoints" / "final").is_dir() else path
    if not ((model_dir / "config.json").is_file() or (model_dir / "adapter.json").is_file()):
        raise UserError("expected an `alignlab eval --out` directory, a checkpoint or a run directory", file=arg)
    model, tokenizer = load_model(str(model_dir), device=device)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature)
    samples, summary = evaluate_model(model, tokenizer, held_out_prompts(lang), samples_per_prompt, gen, seed)
    return summary, samples


def _read_summary(path: Path) -> tuple[EvalSummary, list[ScoredSample] | None]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read the summary: {err}", file=str(path)) from err
    if not isinstance(record, dict):
        raise UserError("expected a JSON object", file=str(path))
    samples_file = path.parent / "samples.jsonl"
    samples = evaluate_completions(read_completions(samples_file))[0] if samples_file.is_file() else None
    return EvalSummary.from_dict(record, str(path)), samples


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
        for file_name, text in texts.items():
            tmp = out / f".{file_name}.tmp-{os.getpid()}"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out / file_name)
    except OSError as err:
        raise UserError(f"cannot write: {err.strerror or err}", file=str(out)) from err
