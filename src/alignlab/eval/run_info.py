"""What a run directory says about how its policy was trained: trainer, steps, wall time, KL, reward.

`alignlab compare` puts these next to the sampled evaluation, so SFT, DPO, GRPO and PPO policies
are read side by side with what each cost. The trainer is recognised by a key only its config has;
the wall time runs from the run's creation (manifest.json) to its last metrics record, so it holds
model loading and in-run evaluations as well as the steps. A resumed run's downtime counts too:
`seconds` is then an upper bound, and `steps` is exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from alignlab.errors import UserError
from alignlab.eval.report import read_metrics
from alignlab.model.hf import read_json

# A config key that only one trainer's config has, in the order tested.
TRAINER_KEYS = (("num_ppo_epochs", "ppo"), ("num_generations", "grpo"), ("label_smoothing", "dpo"),
                ("center_rewards_coefficient", "train-rm"), ("synthetic_per_prompt", "sft"), ("block_size", "pretrain"))


@dataclass(frozen=True)
class TrainingInfo:
    trainer: str
    steps: int | None
    seconds: float | None
    kl: float | None  # the last logged KL to the reference (GRPO, PPO); DPO's is implicit in its margin
    reward: float | None  # the last logged training reward mean (GRPO, PPO)


def run_directory(path: Path) -> Path | None:
    """The run directory of a run path or of one of its checkpoints; None for anything else."""
    full = path.absolute()  # runs/x/checkpoints/final is in run x; runs/x/eval_before is not a run's
    for candidate in (full, full.parent.parent) if full.parent.name == "checkpoints" else (full,):
        if (candidate / "config.yaml").is_file() and (candidate / "checkpoints").is_dir():
            return candidate
    return None


def _last(records: Sequence[Mapping], key: str) -> float | None:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return float(values[-1]) if values else None


def training_info(path: str | Path) -> TrainingInfo | None:
    """The training facts of `path` (a run directory or a checkpoint in one), None when it is neither."""
    run = run_directory(Path(path).expanduser())
    if run is None:
        return None
    try:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"cannot read the run's config: {err}", file=str(run / "config.yaml")) from err
    trainer = next((name for key, name in TRAINER_KEYS if key in config), "unknown")
    records = read_metrics(run / "metrics.jsonl")
    steps = max((r["step"] for r in records), default=None)
    seconds = None
    manifest = read_json(run / "manifest.json") if (run / "manifest.json").is_file() else {}
    if records and isinstance(manifest.get("created"), str):
        created = datetime.strptime(manifest["created"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
        last = _last(records, "time")
        seconds = last - created if last is not None else None
    return TrainingInfo(trainer, steps, seconds, _last(records, "kl"), _last(records, "reward_mean"))


def training_rows(infos: Mapping[str, TrainingInfo | None]) -> list[list[str]] | None:
    """A table (header first): one row per named run with its training facts; None when none is a run."""
    if not any(infos.values()):
        return None

    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = [["policy", "trainer", "steps", "wall time", "KL (last)", "train reward (last)"]]
    for name, info in infos.items():
        if info is None:
            rows.append([name, "-", "-", "-", "-", "-"])
            continue
        wall = "-" if info.seconds is None else f"{info.seconds / 60:.1f} min"
        rows.append([name, info.trainer, cell(info.steps, "d"), wall, cell(info.kl, ".4f"), cell(info.reward, "+.3f")])
    return rows
