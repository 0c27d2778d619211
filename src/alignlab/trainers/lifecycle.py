"""The one run lifecycle every trainer goes through: open the run, say what it trains, train, close.

`run_training` is the seam between a trainer and everything a run does the same way: it creates
or resumes the run directory (`Run.create`: checked, locked, config and manifest written), prints
the trainer's one-line summary, asks the trainer for its `TrainSpec` (built once the run exists,
so the spec may name the run's files: a ledger, a reference cache, `checkpoints/best`), and hands
both to `Loop.train`, which resumes or evaluates at step 0, runs the steps, saves `final`,
calls the spec's closing summary (`TrainSpec.close`, still under the run's lock: train-rm's
`checkpoints/best` may be written there) and finishes the run. A trainer therefore
owns only what is its own: loading data and model, the summary line, the spec.

`open_run` is the first half alone, for an engine that trains without alignlab's loop
(`backend=trl`, `backends/trl.py`), which then finishes the run itself.

Left out: anything that happens before the run folder may exist (reading and checking inputs,
GRPO's preflight): a bad input must never leave a half-made run behind, so trainers do it first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from alignlab.runs import Run
from alignlab.runtime import Runtime
from alignlab.trainers.loop import Loop, TrainSpec


@dataclass(frozen=True)
class RunOptions:
    """How a command opens its run folder (the command line's --resume / --overwrite / --allow-changes)."""

    resume: bool = False  # continue alignlab's run there from its newest intact checkpoint
    overwrite: bool = False  # replace alignlab's run there (moved aside, deleted once the new one finishes)
    quiet: bool = False  # print nothing (tests); warnings still go to stderr
    allow_changes: bool = False  # resume even though the config or data changed (the changes are recorded)


def open_run(cfg, runtime: Runtime, options: RunOptions, *, describe: Callable[[Run], str],
             data_files: Sequence = (), dtype="float32", skipped_rows=None) -> Run:
    """The run at cfg.run.out_dir, created or resumed and locked, with `describe(run)` printed.
    `dtype` (a name or torch.dtype) and `data_files` go to the manifest; `skipped_rows`
    (data.sources.BadRows) records and prints the rows `on_bad_row=skip` left out."""
    run = Run.create(cfg.run.out_dir, cfg, resume=options.resume, overwrite=options.overwrite,
                     allow_changes=options.allow_changes, data_files=data_files, device=str(runtime.device),
                     dtype=dtype, quiet=options.quiet, progress=cfg.run.progress, skipped_rows=skipped_rows)
    run.print(describe(run))
    return run


def run_training(cfg, runtime: Runtime, options: RunOptions, *, build: Callable[[Run], TrainSpec],
                 describe: Callable[[Run], str], data_files: Sequence = (), dtype="float32",
                 skipped_rows=None) -> Path:
    """Open the run (`open_run`), build the trainer's spec with it, train it to the end (`Loop.train`:
    resume or step-0 evaluation, steps, final checkpoint, `spec.close`, finish); returns the run directory.
    `cfg` is any trainer config with `run` and `optim` sections."""
    run = open_run(cfg, runtime, options, describe=describe, data_files=data_files, dtype=dtype,
                   skipped_rows=skipped_rows)
    spec = build(run)
    Loop(spec, cfg.optim, cfg.run, runtime, run).train(resume=options.resume)
    return run.root


def trainable(module) -> int:
    """The number of parameters the optimizer updates (all of them, or the adapters with LoRA)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def parameter_count(module) -> str:
    """'N parameters' for a trainer's summary line, '(M trained)' added when not all of them train."""
    total, trained = sum(p.numel() for p in module.parameters()), trainable(module)
    return f"{total} parameters" + (f" ({trained} trained)" if trained != total else "")
