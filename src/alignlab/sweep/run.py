"""Running a sweep: the starting policy evaluated once, every run trained (or resumed), evaluated and
reported, and the sweep's own report; `plan` prints what would run.

Left out: reading the recipe (`recipe.py`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

from alignlab.config import EvalConfig, GRPOConfig, config_to_dict
from alignlab.errors import UserError
from alignlab.eval.report import Evaluation, evaluation_verdict, read_metrics, write_report
from alignlab.eval.sampling_eval import eval_info, evaluate, held_out, read_evaluation, write_eval, write_texts
from alignlab.eval.sweep_report import format_table, sweep_rows, table, write_sweep_report
from alignlab.eval.verdict import single_verdict
from alignlab.outputs import check_output, is_empty_dir, marker_kind, move_aside, write_marker
from alignlab.runs import checkpoint_step
from alignlab.runtime import resolve_device
from alignlab.sweep.recipe import Sweep, SweepRun
from alignlab.tasks.registry import get_task

RESULT = "result.json"
TAIL = 10  # logged steps averaged for a run's first and last train reward


def _evaluate(checkpoint: str, spec: EvalConfig, config: GRPOConfig, out: Path, name: str, device) -> Evaluation:
    """Evaluate `checkpoint` into `out` (an eval directory) on the held-out examples of `config`'s task
    (its eval_data, else the built-in ones of its language), or read it back when already there."""
    from alignlab.model.checkpoint import load_model

    if (out / "summary.json").is_file():
        summary, samples = read_evaluation(out)
        return summary, samples or []
    model, tokenizer = load_model(checkpoint, device=device)
    task = get_task(config.task)
    samples, summary = evaluate(model, tokenizer, task, held_out(task, spec, config.eval_data, config.lang), spec)
    info = eval_info(checkpoint, task, spec, lang=config.lang, prompts=config.eval_data or "held-out")
    write_eval(out, name, samples, summary, single_verdict(summary, samples), info)
    return summary, samples


def _mean_of(records: Sequence[Mapping], key: str, tail: bool) -> float | None:
    values = [r[key] for r in records if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
    values = values[-TAIL:] if tail else values[:TAIL]
    return sum(values) / len(values) if values else None


def run_one(run: SweepRun, before_dir: str, spec: EvalConfig, quiet: bool, threads: int = 0) -> dict:
    """Train one variant at one seed (resuming an interrupted run), evaluate it, report it; its result."""
    from alignlab.backends.grpo import grpo

    if threads:
        import torch

        torch.set_num_threads(threads)
    get_task(run.config.task)  # a worker process reads a file task here, before an evaluation naming it is read
    root = Path(run.config.run.out_dir)
    if (root / RESULT).is_file():
        return json.loads((root / RESULT).read_text(encoding="utf-8"))
    started = time.perf_counter()
    final = root / "checkpoints" / "final"
    if checkpoint_step(final) is None:
        resumable = any(checkpoint_step(p) is not None for p in (root / "checkpoints").glob("step_*"))
        grpo(run.config, resume=resumable, overwrite=not resumable, quiet=quiet)
    trained = time.perf_counter() - started
    device = resolve_device(run.config.run.device)
    before_summary, before_samples = read_evaluation(before_dir)
    before = before_summary, before_samples or []
    after = _evaluate(str(final), spec, run.config, root / "eval_after", "after", device)
    config = config_to_dict(run.config)
    verdict = evaluation_verdict(before, after, config)
    write_report(root, before=before_dir, title=f"alignlab sweep run: {run.variant}, seed {run.seed}")
    records = read_metrics(root / "metrics.jsonl")
    summary = after[0]
    passed = round(summary.pass_rate * summary.n_samples)
    result = {"variant": run.variant, "slug": run.slug, "seed": run.seed, "overrides": list(run.overrides),
              "run_dir": str(root), "steps": run.config.run.steps, "seconds": round(time.perf_counter() - started, 1),
              "train_seconds": round(trained, 1), "passed": passed, "n": summary.n_samples,
              "pass_rate": summary.pass_rate, "degenerate_rate": summary.degenerate_rate,
              "reward_first": _mean_of(records, "reward_mean", tail=False),
              "reward_last": _mean_of(records, "reward_mean", tail=True), "kl": _mean_of(records, "kl", tail=True),
              "reward_mode": run.config.reward.mode, "verdict": verdict.label, "flags": list(verdict.flags),
              "curves": {k: [[r["step"], r[k]] for r in records if isinstance(r.get(k), int | float)]
                         for k in ("reward_mean", "eval/pass_rate")}}
    write_texts(root, {RESULT: json.dumps(result, indent=2, ensure_ascii=False) + "\n"})
    return result


def _prepare(sweep: Sweep, resume: bool, overwrite: bool) -> Path | None:
    """The sweep folder: new or empty, alignlab's sweep with --resume, or (--overwrite) alignlab's sweep
    moved aside and deleted once this one is complete; a folder alignlab did not make is never touched."""
    out = check_output(sweep.out_dir, "sweep", replace=resume or overwrite, key="out_dir",
                       hint=": pass --resume to continue it (finished runs are kept), --overwrite to replace it, "
                            "or choose another out_dir")
    replaced = move_aside(out) if overwrite and not resume and out.exists() and not is_empty_dir(out) else None
    out.mkdir(parents=True, exist_ok=True)
    if marker_kind(out) is None:
        write_marker(out, "sweep")
    return replaced


def _with_policy(sweep: Sweep) -> Sweep:
    """The sweep with `policy: demo` resolved to the demo's base checkpoint (built first if missing)."""
    if sweep.policy != "demo":
        return sweep
    from alignlab.demo import base_policy

    path = str(base_policy(lang=sweep.runs[0].config.lang))  # every run shares one lang (read_sweep)
    runs = tuple(replace(r, overrides=(*r.overrides, f"model.path={path}"),
                         config=replace(r.config, model=replace(r.config.model, path=path))) for r in sweep.runs)
    return replace(sweep, runs=runs)


def plan(sweep: Sweep) -> str:
    """The runs a sweep will make, one line each with its overrides."""
    lines = [f"sweep {sweep.path}: {len(sweep.variants)} variants x {len(sweep.runs) // len(sweep.variants)} "
             f"seeds = {len(sweep.runs)} runs -> {sweep.out_dir}"]
    lines += [f"  {r.name}: {' '.join(o for o in r.overrides if not o.startswith(('run.out_dir=', 'model.path=')))}"
              for r in sweep.runs]
    return "\n".join(lines)


def run_sweep(sweep: Sweep, *, jobs: int = 1, resume: bool = False, overwrite: bool = False,
              quiet: bool = False) -> Path:
    """Run every run of `sweep` (finished ones are read back), then write its comparison report;
    return the sweep directory. `jobs` > 1 runs that many at once in separate processes, the CPU
    threads split between them."""
    if jobs < 1:
        raise UserError(f"expected at least 1 job, got {jobs}", key="--jobs")
    replaced = _prepare(sweep, resume, overwrite)
    sweep = _with_policy(sweep)
    if not quiet:
        print(plan(sweep), flush=True)
    write_texts(sweep.out_dir, {"sweep.yaml": sweep.path.read_text(encoding="utf-8")})
    befores = {}
    for path in dict.fromkeys(r.config.model.path for r in sweep.runs):
        name = "before" if len(befores) == 0 else f"before_{len(befores)}"
        if not quiet:
            print(f"evaluating the starting policy {path}: {sweep.eval.samples} samples per held-out prompt",
                  flush=True)
        _evaluate(path, sweep.eval, sweep.runs[0].config, sweep.out_dir / name, "before",
                  resolve_device(sweep.runs[0].config.run.device))
        befores[path] = str(sweep.out_dir / name)
    results = []
    if jobs == 1:
        for i, run in enumerate(sweep.runs, 1):
            if not quiet:
                print(f"[{i}/{len(sweep.runs)}] {run.variant}, seed {run.seed}", flush=True)
            results.append(run_one(run, befores[run.config.model.path], sweep.eval, quiet))
            if not quiet:
                print(_result_line(results[-1]), flush=True)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_one, run, befores[run.config.model.path], sweep.eval, True, threads)
                       for run in sweep.runs]
            for future in futures:
                results.append(future.result())
                if not quiet:
                    print(_result_line(results[-1]), flush=True)
    befores_eval = {path: read_evaluation(d)[0] for path, d in befores.items()}
    html, md = write_sweep_report(sweep.out_dir, results, list(sweep.variants), befores_eval,
                                  title=f"alignlab sweep: {sweep.path.name}")
    if replaced is not None:  # the new sweep is complete: the one it replaces can go
        shutil.rmtree(replaced, ignore_errors=True)
    if not quiet:
        print("\n" + format_table(table(sweep_rows(results, sweep.variants), befores_eval)))
        print(f"\nreport: {html}  (and {md.name}, sweep.json)")
    return sweep.out_dir


def _result_line(result: Mapping) -> str:
    return (f"  {result['variant']}, seed {result['seed']}: held-out pass {result['pass_rate']:.1%} "
            f"({result['passed']}/{result['n']}), verdict {result['verdict']}, {result['seconds']:.0f} s")
