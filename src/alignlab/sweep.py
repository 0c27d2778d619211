"""`alignlab sweep RECIPE`: run variants of one GRPO recipe and compare them on one held-out evaluation.

A sweep recipe (YAML) names a base GRPO recipe and what each variant changes:

    base: grpo_study_plan.yaml          # a GRPO recipe, relative to this file
    policy: demo                         # every variant starts here: "demo" (the demo's cached base
                                         # policy, built if missing) or a checkpoint; else base's model.path
    set: {steps: 150, run.batch_size: 32}   # applied to every variant
    seeds: [0, 1]                        # each variant runs once per seed (run.seed)
    lang: en                             # prompts of one language (study-plan: all, en, zh) for training
                                         # and evaluation; default: the base recipe's lang (all)
    eval: {samples: 5, temperature: 0.7, max_new_tokens: 96}   # one evaluation for every run (EvalConfig)
    variants:                            # named override sets ...
      - {name: naive reward, set: {reward.mode: naive}}
      - {name: sharp reward, set: {reward.mode: sharp}}
    grid: {temperature: [0.7, 0.3]}      # ... and/or a cartesian grid, crossed with the variants
    out_dir: runs/my_sweep

Every run is checked (its full config built) before the first one starts, so a typo in the last
variant costs nothing. The starting policy is evaluated once (`sampling_eval.evaluate` on the held-out
examples of the runs' one task, `lang` and `eval_data`, with the sweep's `EvalConfig`), each trained policy the
same way, so rows differ only by training; the evaluation
settings are the sweep's, not the variant's (a variant trained at temperature 0.3 is still judged
at `eval.temperature`). Each run directory gets its own report.html; the sweep directory gets
sweep.md / sweep.html / sweep.json: a row per variant with the held-out pass rate (pooled over
seeds, 95% Wilson interval, and the per-seed spread), degeneration, the trained reward first ->
last, KL, the reward-hacking verdict of each seed and the time, plus a plot. A finished run leaves
result.json; `--resume` skips those and resumes interrupted ones from their newest checkpoint.

Left out: other trainers than GRPO, sweeping evaluation settings, early stopping of bad variants.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import yaml

from alignlab.config import EvalConfig, GRPOConfig, config_from_dict, config_to_dict, load_config
from alignlab.config_io import read_yaml_bounded
from alignlab.errors import UserError
from alignlab.eval.report import Evaluation, evaluation_verdict, read_metrics, write_report
from alignlab.eval.sampling_eval import eval_info, evaluate, held_out, read_evaluation, write_eval, write_texts
from alignlab.eval.sweep_report import format_table, sweep_rows, table, write_sweep_report
from alignlab.eval.verdict import single_verdict
from alignlab.outputs import check_output, is_empty_dir, marker_kind, move_aside, write_marker
from alignlab.runs import checkpoint_step
from alignlab.runtime import resolve_device
from alignlab.tasks.registry import get_task

KEYS = ("base", "policy", "set", "variants", "grid", "seeds", "lang", "eval", "out_dir")
RESULT = "result.json"
TAIL = 10  # logged steps averaged for a run's first and last train reward


@dataclass(frozen=True)
class SweepRun:
    """One training run: a variant at a seed; `overrides` are key=value texts on top of the base recipe."""

    variant: str
    slug: str
    seed: int
    overrides: tuple[str, ...]
    config: GRPOConfig = field(repr=False)

    @property
    def name(self) -> str:
        return f"{self.slug}/seed{self.seed}"


@dataclass(frozen=True)
class Sweep:
    path: Path
    base: Path | None
    policy: str
    variants: tuple[str, ...]
    runs: tuple[SweepRun, ...]
    eval: EvalConfig
    out_dir: Path


def _override_text(key: str, value) -> str:
    """A typed YAML value as the `key=value` text `load_config` parses back to the same value."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif value is None:
        text = "null"
    elif isinstance(value, list | tuple | dict):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    return f"{key}={text}"


def _flat(mapping, where: str, file: str, line: int | None) -> dict:
    """{dotted key: value} of a (possibly nested) `set:` mapping."""
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise UserError(f"expected a mapping of config keys to values, got {mapping!r:.60}", file=file, line=line,
                        key=where)
    out = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in _flat(value, where, file, line).items()})
        else:
            out[str(key)] = value
    return out


def _lines(root: yaml.Node | None) -> dict[str, int]:
    """1-based lines of the top-level keys and of each `variants` item (as "variants[i]")."""
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        lines[str(key_node.value)] = key_node.start_mark.line + 1
        if key_node.value == "variants" and isinstance(value_node, yaml.SequenceNode):
            for i, item in enumerate(value_node.value):
                lines[f"variants[{i}]"] = item.start_mark.line + 1
    return lines


def slugify(name: str) -> str:
    """A directory name for a variant: lower case, runs of other characters as one "-".

    >>> slugify("Sharp reward, T=0.3 (50 prompts)")
    'sharp-reward-t-0-3-50-prompts'
    """
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "variant"


def _variants(data: Mapping, file: str, lines: Mapping[str, int]) -> list[tuple[str, dict, int | None]]:
    """(name, {key: value}, line) of every variant, the grid crossed with the named list."""
    named = data.get("variants") or [{"name": "base", "set": {}}]
    if not isinstance(named, list):
        raise UserError("expected a list of {name, set} mappings", file=file, line=lines.get("variants"),
                        key="variants")
    listed = []
    for i, item in enumerate(named):
        line = lines.get(f"variants[{i}]")
        if not isinstance(item, Mapping) or set(item) - {"name", "set"} or not isinstance(item.get("name"), str):
            raise UserError(f"expected {{name: <text>, set: {{key: value}}}}, got {item!r:.80}", file=file,
                            line=line, key=f"variants[{i}]")
        listed.append((item["name"], _flat(item.get("set"), f"variants[{i}].set", file, line), line))
    grid = data.get("grid") or {}
    grid = _flat(grid, "grid", file, lines.get("grid"))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"expected a non-empty list of values, got {values!r:.60}", file=file,
                            line=lines.get("grid"), key=f"grid.{key}")
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())] or [{}]
    out = []
    for (name, changes, line), combo in itertools.product(listed, combos):
        label = ", ".join(f"{k}={v}" for k, v in combo.items())
        full = label if name == "base" and combo and "variants" not in data else \
            f"{name} ({label})" if label else name
        out.append((full, {**changes, **combo}, line))
    return out


def _lang_override(data: Mapping, file: str, line: int | None) -> list[str]:
    """The recipe's `lang` key as an override text (none when absent: the base recipe's lang holds)."""
    if "lang" not in data:
        return []
    if not isinstance(data["lang"], str):
        raise UserError(f"expected a language name (the task's: study-plan has all, en, zh), got {data['lang']!r}",
                        file=file, line=line, key="lang")
    return [f"lang={data['lang']}"]


def _one_eval_set(runs: Sequence[SweepRun], file: str, line: int | None) -> None:
    """Every run trains on one registered task, one of its languages and one held-out file: the sweep
    judges every policy on one set."""
    for run in runs:
        try:
            get_task(run.config.task).check_lang(run.config.lang)
        except UserError as err:
            raise UserError(f"variant {run.variant!r}: {err.message}", file=file, line=line, key=err.key) from None
    for key in ("task", "lang", "eval_data"):
        values = sorted({str(getattr(r.config, key)) for r in runs})
        if len(values) > 1:
            raise UserError(f"variants differ in {key} ({', '.join(values)}); every policy is judged on one held-out "
                            f"set, so set {key} once (in the base recipe or `set`)", file=file, line=line, key=key)


def _eval_spec(value, file: str, line: int | None) -> EvalConfig:
    """The sweep's `eval:` mapping as an `EvalConfig` (its keys, defaults and checks)."""
    if value is None:
        return EvalConfig()
    try:
        return config_from_dict(EvalConfig, value)
    except UserError as err:
        key = f"eval.{err.key}" if err.key else "eval"
        raise UserError(err.message, file=file, line=line, key=key) from None


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    file = str(path)
    if not path.is_file():
        raise UserError("no such sweep recipe" if not path.exists() else "not a file", file=file)
    try:
        data, root = read_yaml_bounded(path)  # aliases expanded within a bound: a recipe is not a bomb
        lines = _lines(root)
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        mark = getattr(err, "problem_mark", None)
        raise UserError(f"not a valid YAML sweep recipe: {getattr(err, 'problem', None) or err}", file=file,
                        line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise UserError("a sweep recipe is a mapping with keys " + ", ".join(KEYS), file=file)
    for key in data:
        if key not in KEYS:
            raise UserError(f"unknown key; expected one of {', '.join(KEYS)}", file=file, line=lines.get(key),
                            key=str(key))
    return data, lines


def read_sweep(path: str | Path, overrides: Sequence[str] = (), out_dir: str | None = None) -> Sweep:
    """Parse and check a sweep recipe: every run's config is built here. `overrides` (key=value) apply
    to every variant after the recipe's own `set`."""
    path = Path(path)
    file = str(path)
    data, lines = _read_yaml(path)
    base = data.get("base")
    if base is not None and not isinstance(base, str):
        raise UserError(f"expected a recipe path, got {base!r}", file=file, line=lines.get("base"), key="base")
    base_path = (path.parent / base) if base else None
    if base_path is not None and not base_path.is_file():
        raise UserError(f"no such GRPO recipe {str(base_path)!r}", file=file, line=lines.get("base"), key="base")
    policy = data.get("policy") or ""
    if not isinstance(policy, str):
        raise UserError(f"expected 'demo' or a checkpoint path, got {policy!r}", file=file, line=lines.get("policy"),
                        key="policy")
    seeds = data.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                      for s in seeds)) or len(set(seeds)) != len(seeds):
        raise UserError(f"expected a list of distinct integers >= 0, got {seeds!r}", file=file,
                        line=lines.get("seeds"), key="seeds")
    common = [*_lang_override(data, file, lines.get("lang")),
              *(_override_text(k, v) for k, v in _flat(data.get("set"), "set", file, lines.get("set")).items())]
    out = Path(out_dir or data.get("out_dir") or f"runs/sweep_{path.stem}")
    runs, names, slugs = [], [], set()
    for name, changes, line in _variants(data, file, lines):
        slug = slugify(name)
        if slug in slugs:
            raise UserError(f"two variants share the directory name {slug!r}; rename one", file=file, line=line,
                            key="variants")
        slugs.add(slug)
        names.append(name)
        mine = [_override_text(k, v) for k, v in changes.items()]
        for seed in seeds:
            texts = (*common, *mine, *overrides, f"run.seed={seed}", f"run.out_dir={out / slug / f'seed{seed}'}")
            if policy and policy != "demo":
                texts = (*texts, f"model.path={policy}")
            try:
                cfg = load_config(GRPOConfig, base_path, texts)
            except UserError as err:
                raise UserError(f"variant {name!r}: {err}", file=file, line=line) from None
            runs.append(SweepRun(name, slug, seed, texts, cfg))
    _one_eval_set(runs, file, lines.get("lang"))
    return Sweep(path, base_path, policy, tuple(names), tuple(runs), _eval_spec(data.get("eval"), file,
                                                                                     lines.get("eval")), out)


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
