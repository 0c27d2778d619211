"""`alignlab grpo` and `alignlab.grpo`: GRPO on the engine the recipe names (`backend`).

`alignlab` trains with `trainers/grpo.py`; `trl` checks the recipe against what TRL can honour
(before anything is loaded or written), builds the same setup (`trainers.grpo.prepare`), opens the
run directory as alignlab's engine does (`trainers.grpo.open_grpo_run`) and trains with TRL's
GRPOTrainer (`backends/trl.py`), which saves `final` and finishes the run itself.
"""

from __future__ import annotations

from pathlib import Path

from alignlab.backends.trl import check_supported, grpo_trl
from alignlab.config import GRPOConfig
from alignlab.trainers import grpo as engine
from alignlab.trainers.lifecycle import RunOptions


def grpo(cfg: GRPOConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
         preflight_only: bool = False, allow_changes: bool = False) -> Path | None:
    """Train with GRPO on cfg.backend and return the run directory (None after `preflight_only`)."""
    if cfg.backend == "alignlab":
        return engine.train_native(cfg, resume=resume, overwrite=overwrite, quiet=quiet, preflight_only=preflight_only,
                           allow_changes=allow_changes)
    check_supported(cfg)
    options = RunOptions(resume=resume, overwrite=overwrite, quiet=quiet, allow_changes=allow_changes)
    setup = engine.prepare(cfg, options, preflight_only=preflight_only)
    if setup is None:
        return None
    run = engine.open_grpo_run(cfg, setup, options)  # TRL trains without alignlab's loop, so not run_training
    return grpo_trl(cfg, setup.model, setup.tokenizer, setup.train, setup.scorer, run, setup.evaluate,
                    resume=resume, quiet=quiet)
