"""The comparison report of a sweep: one row per variant, pooled over its seeds, and one figure.

Input: the `result.json` records of the runs (see `alignlab.sweep.run_one`) and the evaluation
of the starting policy. A variant's held-out pass rate pools its seeds' samples (passed / n with
the 95% Wilson interval of the pool); "per seed" lists each seed's rate so a reader sees whether
the seeds agree; the reward columns are the rule reward the variant trained on (its own mode:
compare a variant's first and last, not two variants' values); the verdict column counts each
seed's `evaluation_verdict` label. The figure: held-out pass rate per variant (bars with the pooled
interval, a dot per seed, the starting policy's rate as a shaded band), and the train reward and
held-out pass rate per step, averaged over seeds.

Left out: significance tests between variants (read the intervals), per-rule breakdowns (each
run's own report.html has them).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from alignlab.algorithms.common import wilson_interval
from alignlab.eval.metrics import EvalSummary
from alignlab.eval.pages import DPI, Figure, figures_section, note, table_section, write_pages
from alignlab.eval.sampling_eval import write_texts
from alignlab.outputs import new_output

HEADER = ["variant", "runs", "held-out pass", "95% CI", "per seed", "degenerate", "train reward first -> last",
          "KL", "verdict", "time"]


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return sum(present) / len(present) if present else None


def sweep_rows(results: Sequence[Mapping], variants: Sequence[str]) -> list[dict]:
    """One aggregate per variant (in `variants` order) over its runs' results."""
    rows = []
    for variant in variants:
        runs = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
        if not runs:
            continue
        passed, n = sum(r["passed"] for r in runs), sum(r["n"] for r in runs)
        low, high = wilson_interval(passed, n)
        rows.append({"variant": variant, "slug": runs[0]["slug"], "seeds": [r["seed"] for r in runs],
                     "pass_rate": passed / n, "pass_rate_ci": [low, high],
                     "pass_rate_per_seed": [r["pass_rate"] for r in runs],
                     "degenerate_rate": _mean([r["degenerate_rate"] for r in runs]),
                     "reward_mode": runs[0].get("reward_mode"),
                     "reward_first": _mean([r["reward_first"] for r in runs]),
                     "reward_last": _mean([r["reward_last"] for r in runs]), "kl": _mean([r["kl"] for r in runs]),
                     "verdicts": dict(Counter(r["verdict"] for r in runs)),
                     "flags": sorted({f for r in runs for f in r["flags"]}),
                     "seconds": sum(r["seconds"] for r in runs)})
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def table(rows: Sequence[Mapping], before: Mapping[str, EvalSummary]) -> list[list[str]]:
    """The comparison as text cells, header first; the starting policies come first."""
    cells = [HEADER]
    for i, summary in enumerate(before.values()):
        low, high = summary.pass_rate_ci
        cells.append(["starting policy" + (f" {i + 1}" if len(before) > 1 else ""), "-", _pct(summary.pass_rate),
                      f"[{100 * low:.1f}, {100 * high:.1f}]%", "-", _pct(summary.degenerate_rate), "-", "-", "-", "-"])
    for row in rows:
        low, high = row["pass_rate_ci"]
        verdicts = ", ".join(k if v == len(row["seeds"]) else f"{k} x{v}" for k, v in row["verdicts"].items())
        reward = f"{_num(row['reward_first'], '+.3f')} -> {_num(row['reward_last'], '+.3f')} ({row['reward_mode']})"
        cells.append([row["variant"], str(len(row["seeds"])), _pct(row["pass_rate"]),
                      f"[{100 * low:.1f}, {100 * high:.1f}]%", " ".join(_pct(p) for p in row["pass_rate_per_seed"]),
                      _pct(row["degenerate_rate"]), reward, _num(row["kl"], ".4f"), verdicts,
                      _minutes(row["seconds"])])
    return cells


def format_table(cells: Sequence[Sequence[str]]) -> str:
    """The table aligned for a terminal."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _curve(results: Sequence[Mapping], variant: str, key: str) -> tuple[list[int], list[float]]:
    """Steps and the seed-mean of `key` at each step every seed of `variant` logged."""
    per_run = [dict(map(tuple, r["curves"].get(key, []))) for r in results if r["variant"] == variant]
    steps = sorted(set.intersection(*(set(c) for c in per_run))) if per_run else []
    return steps, [sum(c[s] for c in per_run) / len(per_run) for s in steps]


def plot_sweep(rows: Sequence[Mapping], results: Sequence[Mapping], before: Mapping[str, EvalSummary]) -> Figure:
    """(name, caption, PNG) of the sweep figure."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(14, 0.5 * len(rows) + 2.6), dpi=DPI, layout="constrained")
    bars, rewards, passes = fig.subplots(1, 3, width_ratios=[1.4, 1, 1])
    ys = list(range(len(rows)))[::-1]
    for summary in before.values():
        bars.axvspan(*(100 * v for v in summary.pass_rate_ci), color="grey", alpha=0.2, linewidth=0)
        bars.axvline(100 * summary.pass_rate, color="grey", linestyle="--", linewidth=1)
    for y, row in zip(ys, rows, strict=True):
        rate, (low, high) = 100 * row["pass_rate"], row["pass_rate_ci"]
        hacked = "reward_hacking" in row["verdicts"]
        bars.barh(y, rate, color="#c62828" if hacked else "#1565c0", alpha=0.75,
                  xerr=[[rate - 100 * low], [100 * high - rate]], capsize=3)
        bars.scatter([100 * p for p in row["pass_rate_per_seed"]], [y] * len(row["seeds"]), color="black", s=10,
                     zorder=3)
    bars.set_yticks(ys, [r["variant"] for r in rows], fontsize=8)
    bars.set_xlim(0, 100)
    bars.set_xlabel("held-out pass rate, % (grey: starting policy; red: hacking verdict)")
    bars.grid(axis="x", alpha=0.3)
    for ax, key, label in ((rewards, "reward_mean", "train reward (own mode)"),
                           (passes, "eval/pass_rate", "held-out pass rate during training")):
        for row in rows:
            steps, values = _curve(results, row["variant"], key)
            if steps:
                ax.plot(steps, values, linewidth=1.1, label=row["variant"])
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    passes.legend(fontsize=6, loc="best")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return "sweep", "Held-out pass rate per variant (pooled over seeds, 95% interval, dots: seeds), train reward " \
                    "and held-out pass rate per step (mean over seeds)", buffer.getvalue()


def write_sweep_report(out: Path, results: Sequence[Mapping], variants: Sequence[str],
                       before: Mapping[str, EvalSummary], title: str) -> tuple[Path, Path]:
    """sweep.json (results and rows), sweep.md and sweep.html in `out`; returns (html, md)."""
    rows = sweep_rows(results, variants)
    cells = table(rows, before)
    record = {"rows": rows, "runs": [{k: v for k, v in r.items() if k != "curves"} for r in results],
              "before": {path: s.to_dict() for path, s in before.items()}}
    write_texts(out, {"sweep.json": json.dumps(record, indent=2, ensure_ascii=False) + "\n"})
    figure = plot_sweep(rows, results, before) if rows else None
    flagged = [r["variant"] for r in rows if r["flags"]]
    findings = note("no variant raised a reward-hacking flag") if not flagged else \
        table_section([["variant", "flags (any seed)"], *([r["variant"], "; ".join(r["flags"])]
                                                          for r in rows if r["flags"])])
    links = table_section([["variant", "seed", "run report"],
                           *([r["variant"], str(r["seed"]), f"{r['run_dir']}/report.html"] for r in results)])
    sections = [("Held-out pass rate by variant", table_section(cells, "num")),
                ("Plot", figures_section([figure], "sweep_files") if figure else note("no finished runs")),
                ("Reward-hacking flags", findings), ("Runs", links)]
    line = (f"{len(results)} runs of {len(rows)} variants; evaluation: the same held-out prompts and seed for every "
            f"policy; total {_minutes(sum(r['seconds'] for r in results))}")
    return write_pages(out, "sweep", title, line, sections, [figure] if figure else [])


def write_compare_report(out: Path, loaded: Mapping[str, tuple[EvalSummary, list | None]], verdict,
                         training: Sequence[Sequence[str]] | None = None) -> tuple[Path, Path]:
    """`alignlab compare --out`: compare.html / compare.md with the metric table, the training table
    (`run_info.training_rows`: trainer, steps, wall time, KL) when any policy is a run, a pass-rate
    plot and, for two evaluations, the verdict of the second against the first; each evaluation's
    summary and samples under out/<i>/ (1-based, in the order given). The folder is complete or absent,
    and replaces only an earlier `compare --out` (`outputs.new_output`)."""
    from alignlab.eval.sampling_eval import write_eval
    from alignlab.eval.verdict import single_verdict

    figure = _pass_rate_figure(loaded)
    with new_output(out, "compare", protect=loaded) as tmp:
        for i, (name, (summary, samples)) in enumerate(loaded.items(), 1):
            if samples:
                write_eval(tmp / str(i), name, samples, summary, single_verdict(summary, samples), {"source": name})
        write_pages(tmp, "compare", "alignlab compare", f"{len(loaded)} evaluations: " + ", ".join(loaded),
                    _compare_sections(loaded, verdict, training, figure), [figure])
    return out / "compare.html", out / "compare.md"


def _pass_rate_figure(loaded: Mapping[str, tuple[EvalSummary, list | None]]) -> Figure:
    """One bar per evaluation: its pass rate with the 95% Wilson interval."""
    from matplotlib.figure import Figure as MplFigure

    names = list(loaded)
    fig = MplFigure(figsize=(9, 0.45 * len(names) + 1.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ys = list(range(len(names)))[::-1]
    for y, (summary, _) in zip(ys, loaded.values(), strict=True):
        rate, (low, high) = 100 * summary.pass_rate, summary.pass_rate_ci
        ax.barh(y, rate, color="#1565c0", alpha=0.75, xerr=[[rate - 100 * low], [100 * high - rate]], capsize=3)
    ax.set_yticks(ys, names, fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("pass rate, % (95% Wilson interval)")
    ax.grid(axis="x", alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return "pass_rate", "Pass rate per evaluation (95% Wilson interval)", buffer.getvalue()


def _compare_sections(loaded: Mapping[str, tuple[EvalSummary, list | None]], verdict, training,
                      figure: Figure) -> list:
    from alignlab.eval.metrics import table_rows
    from alignlab.eval.pages import verdict_section

    names = list(loaded)
    summaries = {name: summary for name, (summary, _) in loaded.items()}
    sections = [("Metrics", table_section(table_rows(summaries), "num"))]
    if training:
        sections.append(("Training", table_section(training, "num")))
    sections.append(("Pass rate", figures_section([figure], "compare_files")))
    if verdict is not None:
        sections.append(("Verdict", verdict_section(f"{names[1]} against {names[0]}", verdict)))
    return sections
