"""Run report: a training run directory -> report.md and one self-contained report.html.

`write_report(run_dir)` reads the run's config.yaml, manifest.json and metrics.jsonl and, when
present, the `alignlab eval --out` directories of the policy before and after training
(`eval_before/`, `eval_after/` by default), and writes the same content twice: markdown with its
plots as PNG files under `report_files/`, and HTML with the plots inlined as base64 data URIs and
its style inline, so the one file can be attached or mailed anywhere. Sections: run summary,
config summary, curves (reward, pass rate, length, KL / entropy / clip fraction), the before /
after table of `metrics`, the verdicts (`compare_verdict` on the evaluations, `log_verdict` on the
log) with their evidence, and up to SIDE_BY_SIDE held-out prompts shown before | after. A section
whose input is missing becomes a one-line note. Plots use matplotlib's `Figure` directly (no
pyplot), so no global backend is switched and no figure outlives its PNG.

Left out: rollouts.jsonl.gz (the evaluations hold the samples the report quotes), interactive
plots and any JavaScript beyond one line that counts loaded images (a rendering check for tests),
and more than two evaluations (`alignlab compare` takes any number).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from alignlab.data.sources import read_jsonl_records
from alignlab.errors import UserError
from alignlab.eval.metrics import EvalSummary, ScoredSample, markdown_table, table_rows
from alignlab.eval.pages import (
    DPI,
    Figure,
    Section,
    esc,
    figures_section,
    html_table,
    md_table,
    md_text,
    note,
    sample_html,
    sample_md,
    verdict_section,
    write_pages,
)
from alignlab.eval.sampling_eval import read_evaluation
from alignlab.eval.verdict import Verdict, compare_verdict, log_verdict
from alignlab.outputs import is_run_dir
from alignlab.rewards.base import MODES, call_reward
from alignlab.tasks.registry import get_task

__all__ = ["evaluation_verdict", "plot_curves", "read_metrics", "write_report"]

SIDE_BY_SIDE = 6  # held-out prompts shown before | after
MIN_POINTS = 2  # a curve needs two logged values; one point is a number, shown in the tables
CONFIG_KEYS = ("model.path", "steps", "batch_size", "num_generations", "loss_type", "reward", "reward.mode",
               "reward.model", "temperature", "max_new_tokens", "lr", "beta", "seed")  # summary rows (dotted suffixes)
Evaluation = tuple[EvalSummary, list[ScoredSample]]


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl in order; [] for a missing or empty file. A line that is not a
    JSON object, or has no integer "step", is a UserError naming the file and line."""
    path = Path(path)
    if not path.is_file() or not path.read_bytes().strip():
        return []
    records = []
    for line, record in read_jsonl_records(path):
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise UserError(f"expected an integer step, got {step!r}", file=str(path), line=line, key="step")
        records.append(record)
    return records


def _read_structured(path: Path, loads) -> dict:
    """A YAML or JSON mapping from `path`; {} when the file is missing."""
    if not path.is_file():
        return {}
    try:
        value = loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise UserError(f"cannot read: {' '.join(str(err).split())}", file=str(path)) from err
    if not isinstance(value, dict):
        raise UserError("expected a mapping at the top level", file=str(path))
    return value


def _evaluation(run: Path, given: str | Path | None, name: str) -> Evaluation | None:
    """The summary and re-scored samples of an `alignlab eval --out` directory: `given`, else
    <run>/<name> when it exists, else None."""
    path = Path(given).expanduser() if given is not None else run / name if (run / name).is_dir() else None
    if path is None:
        return None
    if not (path / "summary.json").is_file():
        raise UserError("expected an `alignlab eval --out` directory holding summary.json", file=str(path))
    summary, samples = read_evaluation(path)
    return summary, samples or []


def _xy(records: Sequence[Mapping], *keys: str) -> list[list[float]]:
    """[steps, values of each key] over the records where every key is a finite number."""
    rows = [(r["step"], *(r[k] for k in keys)) for r in records if all(_number(r.get(k)) for k in keys)]
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(len(keys) + 1)]


def _figure_specs(records: Sequence[Mapping]) -> list[tuple[str, str, list[list[tuple[str, object]]]]]:
    """(name, caption, panels): a panel is a list of (key, band) lines; band is a std key (mean +- std),
    a (low, high) pair of keys, or None."""
    rules = sorted({key for r in records for key in r if key.startswith("reward/")})
    return [
        ("reward", "Train reward per step: mean (band: +-1 std) and per-rule rewards",
         [[("reward_mean", "reward_std"), *((key, None) for key in rules)]]),
        ("pass_rate", "Pass rate: train batch, and held-out (band: Wilson 95% interval)",
         [[("pass_rate", None), ("eval/pass_rate", ("eval/pass_rate_low", "eval/pass_rate_high"))]]),
        ("length", "Completion length (mean, max) and truncation rate",
         [[("completion_length_mean", None), ("completion_length_max", None)], [("truncation_rate", None)]]),
        ("kl_entropy_clip", "KL to the reference, entropy and clip fraction",
         [[("kl", None)], [("entropy", None)], [("clip_fraction", None)]]),
    ]


def _draw(ax, records: Sequence[Mapping], key: str, band) -> None:
    steps, values = _xy(records, key)
    (line,) = ax.plot(steps, values, marker="." if len(steps) <= 30 else None, linewidth=1.2, label=key)
    if band is None:
        return
    if isinstance(band, str):
        band_steps, means, stds = _xy(records, key, band)
        low, high = [m - s for m, s in zip(means, stds, strict=True)], [m + s for m, s in zip(means, stds, strict=True)]
    else:
        band_steps, _, low, high = _xy(records, key, *band)
    if band_steps:
        ax.fill_between(band_steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def plot_curves(records: Sequence[Mapping]) -> list[Figure]:
    """(name, caption, PNG bytes) of each figure with at least one curve of MIN_POINTS values."""
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import and only reports need it

    figures = []
    for name, caption, panels in _figure_specs(records):
        panels = [[(k, b) for k, b in lines if len(_xy(records, k)[0]) >= MIN_POINTS] for lines in panels]
        panels = [lines for lines in panels if lines]
        if not panels:
            continue
        fig = Figure(figsize=(max(5.5, 3.8 * len(panels)), 3.0), dpi=DPI, layout="constrained")
        for ax, lines in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
            for key, band in lines:
                _draw(ax, records, key, band)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        figures.append((name, caption, buffer.getvalue()))
    return figures


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m {secs:02d}s" if minutes >= 60 else f"{minutes}m {secs:02d}s"


def _run_line(run_dir: Path, records: Sequence[Mapping], manifest: Mapping) -> str:
    steps = f"last step {records[-1]['step']} ({len(records)} logged)" if records else "no logged steps"
    times = [r["time"] for r in records if _number(r.get("time"))]
    wall = f"wall time {_duration(times[-1] - times[0])}" if len(times) >= 2 else "wall time unknown"
    device = f"device {manifest['device']}" if manifest.get("device") else "device unknown"
    extra = [f"{key} {manifest[key]}" for key in ("seed", "created") if manifest.get(key) is not None]
    return "; ".join([f"run {run_dir}", steps, wall, device, *extra])


def _flatten(mapping: Mapping, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, name + ".") if isinstance(value, Mapping) else {name: value})
    return flat


def _config_rows(config: Mapping) -> list[list[str]]:
    flat = _flatten(config)
    keys = [k for k in flat if any(k == s or k.endswith("." + s) for s in CONFIG_KEYS)] or list(flat)[:10]
    show = [v if isinstance(v, str) and v else json.dumps(v, ensure_ascii=False) for v in map(flat.get, keys)]
    return [["key", "value"], *([k, v] for k, v in zip(keys, show, strict=True))]


def _config_section(config_text: str, config: Mapping) -> Section:
    if not config:
        return note("config.yaml: missing or empty")
    rows = _config_rows(config)
    return (md_table(rows),
            html_table(rows) + f"<details><summary>full config.yaml</summary><pre>{esc(config_text)}</pre></details>")


def _curves_section(figures: Sequence[Figure]) -> Section:
    if not figures:
        return note(f"no curves: metrics.jsonl has fewer than {MIN_POINTS} values of every plotted key")
    return figures_section(figures)


def _table_section(before: Evaluation | None, after: Evaluation | None) -> Section:
    summaries = {name: e[0] for name, e in (("before", before), ("after", after)) if e is not None}
    if not summaries:
        return note("no evaluations: run `alignlab eval --out` into eval_before/ and eval_after/")
    return markdown_table(summaries), html_table(table_rows(summaries), "num")


def _trained_reward(config: Mapping, samples: Sequence[ScoredSample]) -> float | None:
    """Mean of the rule reward the run trained on (config task and reward.mode) over evaluation samples;
    None when a reward model took part (the evaluations cannot re-score that) or the mode or task is unknown."""
    reward = config.get("reward") if isinstance(config, Mapping) else None
    if not isinstance(reward, Mapping) or reward.get("model") or reward.get("mode") not in MODES:
        return None
    try:
        task = get_task(str(config.get("task", "study-plan")))  # a task file is read here too
    except UserError:
        return None
    if not samples:
        return None
    scores = call_reward(task.reward(reward["mode"]), [s.prompt for s in samples], [s.completion for s in samples],
                         **task.row_columns([dict(s.columns) for s in samples]))
    return None if None in scores else sum(scores) / len(scores)


def evaluation_verdict(before: Evaluation, after: Evaluation, config: Mapping) -> Verdict:
    """`compare_verdict` of two evaluations, its reward being the rule reward the run trained on
    (`config`'s reward.mode) when the samples can be re-scored with it, else the sharp reward."""
    trained = _trained_reward(config, before[1]), _trained_reward(config, after[1])
    if None in trained:
        return compare_verdict(before[0], after[0], after[1])
    return compare_verdict(before[0], after[0], after[1], *trained)


def _verdicts(before: Evaluation | None, after: Evaluation | None, records: Sequence[Mapping],
              config: Mapping) -> list[Section]:
    if before is not None and after is not None:
        first = verdict_section("Evaluations, before -> after (reward: the one trained on)",
                                evaluation_verdict(before, after, config))
    else:
        first = note("no evaluation verdict: it needs both eval_before/ and eval_after/")
    return [first, verdict_section("Training log (metrics.jsonl)", log_verdict(records))]


def _samples_section(before: Evaluation | None, after: Evaluation | None) -> Section:
    if before is None or after is None:
        return note("no side-by-side samples: they need both eval_before/ and eval_after/")
    first_before = {s.prompt: s for s in reversed(before[1])}  # reversed: the first sample per prompt wins
    first_after = {s.prompt: s for s in reversed(after[1])}
    prompts = [p for p in dict.fromkeys(s.prompt for s in before[1]) if p in first_after][:SIDE_BY_SIDE]
    if not prompts:
        return note("no side-by-side samples: the two evaluations share no prompt")
    md, rows = [], []
    for i, prompt in enumerate(prompts, 1):
        b, a = first_before[prompt], first_after[prompt]
        md += [f"### Prompt {i}", "", f"> {md_text(prompt)}", "", sample_md(b, "before"), "", sample_md(a, "after"), ""]
        rows.append(f'<tr><td colspan="2" class="prompt">Prompt {i}: {esc(prompt)}</td></tr>'
                    f"<tr><td>{sample_html(b, 'before')}</td><td>{sample_html(a, 'after')}</td></tr>")
    head = "<tr><th>before</th><th>after</th></tr>"
    return "\n".join(md), f'<table class="pair"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def write_report(run_dir: str | Path, *, before: str | Path | None = None, after: str | Path | None = None,
                 title: str | None = None) -> tuple[Path, Path]:
    """Write <run_dir>/report.html and <run_dir>/report.md (atomically: temp file + os.replace) and
    the markdown's plots under <run_dir>/report_files/; return (html, md). `before` / `after` are
    `alignlab eval --out` directories, by default <run_dir>/eval_before and eval_after when they exist."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise UserError("no such run directory" if not run.exists() else "not a directory", file=str(run_dir))
    if not is_run_dir(run):  # its report.* and report_files/ are replaced: only ever in a run alignlab made
        raise UserError("not an alignlab run directory (no .alignlab.json or manifest.json): report writes its "
                        "pages only into runs alignlab made", file=str(run_dir))
    records = read_metrics(run / "metrics.jsonl")
    config_path = run / "config.yaml"
    config, manifest = _read_structured(config_path, yaml.safe_load), _read_structured(run / "manifest.json",
                                                                                         json.loads)
    evals = [_evaluation(run, before, "eval_before"), _evaluation(run, after, "eval_after")]
    figures = plot_curves(records)
    title = title or f"alignlab run report: {run.resolve().name}"
    sections = [("Config", _config_section(config_path.read_text(encoding="utf-8") if config else "", config)),
                ("Curves", _curves_section(figures)), ("Before / after training", _table_section(*evals)),
                ("Reward-hacking verdict", *_verdicts(*evals, records, config or {})),
                ("Held-out samples, before | after", _samples_section(*evals))]
    return write_pages(run, "report", title, _run_line(run, records, manifest), sections, figures)
