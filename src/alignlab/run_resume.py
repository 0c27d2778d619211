"""Resume resumes the same run: the config and data are compared, checkpoints are verified.

Before `--resume` writes anything, the run's saved `config.yaml` is compared with the new
config. Keys that only say how long to go, how often to log, evaluate or save, or where to run
(`SAFE_TO_CHANGE`) may change and are recorded in the manifest; any other difference (data,
architecture, optimizer, reward, seed, sampling ...) changes what the run means, and is refused
with the list of differences unless the user passes `--allow-config-change`, which records them.
A data file whose contents changed since the run started (its SHA-256 in the manifest) counts as
such a difference, and so is a run whose manifest predates `batch_size_means` when it accumulates
gradients (it may have begun when `run.batch_size` was one micro-batch; docs/decisions.md 45).

Every checkpoint's `state.json` lists the SHA-256 of each of its files; `checkpoint_problem`
verifies them (a checkpoint written before the hashes existed is checked for its files and a
loadable trainer state), so a truncated or damaged newest checkpoint is passed over for the
previous intact one, with a warning that names what was wrong.

Left out: comparing the code version (a resumed run under a newer alignlab is allowed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from alignlab.config_dump import config_to_dict
from alignlab.config_io import config_from_dict
from alignlab.config_yaml import read_yaml_bounded
from alignlab.errors import UserError

# Keys (dotted, or a trailing part) whose change does not change what the run computes.
SAFE_TO_CHANGE = ("run.steps", "run.log_every", "run.eval_every", "run.save_every", "run.keep_checkpoints",
                  "run.progress", "run.device", "run.fsdp", "eval_prompts", "eval_samples",
                  "eval_batch_size", "preflight", "optim.nan_policy", "reward.timeout_s", "sample_prompts",
                  "sample.max_new_tokens", "sample.temperature", "sample.top_p", "sample.top_k",
                  "sample.stop_strings", "on_bad_row")
STATE_FILES = ("trainer_state.pt",)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """{"optim.lr": 1e-3, ...} from a nested mapping (lists kept as values)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _safe(key: str) -> bool:
    return any(key == s or key.endswith("." + s) for s in SAFE_TO_CHANGE)


def config_differences(saved: Mapping, config) -> dict[str, tuple]:
    """{key: (saved value, new value)} for every leaf that differs; the saved config is read with
    today's defaults, so a key added since the run started is not a difference."""
    try:
        old = flatten(config_to_dict(config_from_dict(type(config), saved)))
    except UserError:  # a key that no longer exists: compare what both have
        old = flatten(saved)
    new = flatten(config_to_dict(config))
    keys = sorted((set(old) | set(new)) - {"run.out_dir"})  # a run folder may be moved or named another way
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def data_differences(manifest: Mapping, data_files: Iterable) -> dict[str, tuple]:
    """{"data file X": (old sha, new sha)} for data files whose contents changed since the run started."""
    before = manifest.get("data") or {}
    before = before if isinstance(before, Mapping) else {}
    changed = {}
    for path in data_files:
        if before and str(path) not in before and Path(path).is_file():  # another file than the run read
            changed[f"input {path} (not among the run's recorded inputs: {', '.join(map(str, before))})"] = \
                (None, file_sha256(path)[:12])
        elif str(path) in before and Path(path).is_file():
            now = file_sha256(path)
            if now != before[str(path)]:
                changed[f"data file {path} (contents changed, sha256)"] = (before[str(path)][:12], now[:12])
    return changed


def _describe(changes: Mapping[str, tuple]) -> str:
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())


def check_resume(root: Path, config, data_files: Iterable, allow_changes: bool) -> dict:
    """The record of a resume of `root` with `config` (what changed), or a UserError when the
    change would make it another run and `allow_changes` is off. Writes nothing."""
    try:
        saved = read_yaml_bounded(root / "config.yaml")[0]  # an alias bomb is refused, not expanded
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError, RecursionError) as err:
        raise UserError(f"cannot resume: the run's config.yaml / manifest.json is unreadable ({err})",
                        file=str(root)) from None
    if not isinstance(saved, dict) or not isinstance(manifest, dict):
        raise UserError("cannot resume: config.yaml / manifest.json is not a mapping", file=str(root))
    changes = config_differences(saved, config)
    meaning = {k: v for k, v in changes.items() if not _safe(k)}
    meaning.update(data_differences(manifest, data_files))
    meaning.update(batch_meaning_difference(saved, manifest))
    reshaped = sorted(k for k in meaning if k.startswith("model.arch.") or k in ("lora.r", "lora.target_modules"))
    if reshaped:  # the checkpoint's weights would not fit: refused even with --allow-config-change
        raise UserError(f"--resume cannot change {', '.join(reshaped)}: the run's checkpoints hold weights of the "
                        "run's own model; start a new run for another model", file=str(root))
    if meaning and not allow_changes:
        raise UserError(f"--resume with a config that changes the run: {_describe(meaning)}; resume with the "
                        "run's own settings, start a new run, or pass --allow-config-change to record the change "
                        "in the manifest", file=str(root))
    as_json = {k: [old, new] for k, (old, new) in changes.items()}
    return {"changed": as_json, "meaning_changed": sorted(meaning)}


BATCH_MEANING = "optimizer step"  # the manifest's `batch_size_means` since docs/decisions.md 45


def batch_meaning_difference(saved: Mapping, manifest: Mapping) -> dict:
    """{"run.batch_size": (then, now)} when the run began while `run.batch_size` was one micro-batch of
    a step that took `optim.grad_accum` of them (pretrain, SFT, DPO, train-rm before decision 45), so
    that resuming it under today's reading would shrink every step; {} otherwise. A manifest without
    `batch_size_means` is counted as such a run (it cannot tell which alignlab wrote it)."""
    optim, run = saved.get("optim") or {}, saved.get("run") or {}
    accum = optim.get("grad_accum", 1) if isinstance(optim, Mapping) else 1
    rl = "num_generations" in saved or "num_ppo_epochs" in saved  # GRPO / PPO always read it as the step
    if manifest.get("batch_size_means") == BATCH_MEANING or rl or not isinstance(accum, int) or accum <= 1:
        return {}
    batch = run.get("batch_size") if isinstance(run, Mapping) else None
    fix = f"run.batch_size={batch * accum}" if isinstance(batch, int) else "run.batch_size x optim.grad_accum"
    then = f"{batch} x optim.grad_accum {accum} per step (the manifest predates batch_size_means)"
    return {"run.batch_size": (then, f"{batch} per step: set {fix} if the run began before run.batch_size "
                                     "meant the optimizer step's batch")}


def checkpoint_hashes(directory: Path) -> dict[str, str]:
    """{relative file name: sha256} of every file in a checkpoint folder but state.json."""
    return {str(p.relative_to(directory)): file_sha256(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != "state.json"}


def checkpoint_problem(directory: Path) -> str | None:
    """What is wrong with a checkpoint folder (missing, truncated or altered files), or None."""
    try:
        state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return "state.json missing or unreadable"
    files = state.get("files")
    if isinstance(files, dict):
        for name, digest in files.items():
            path = directory / name
            if not path.is_file():
                return f"{name} is missing"
            if file_sha256(path) != digest:
                return f"{name} does not match its recorded SHA-256 (damaged or altered)"
        return None
    return _legacy_problem(directory)


def _legacy_problem(directory: Path) -> str | None:
    """A checkpoint written before hashes: its weights and trainer state must at least load."""
    import torch

    weights = [p for p in directory.glob("*.safetensors")]
    if not weights:
        return "no weights (*.safetensors)"
    for name in STATE_FILES:
        if (directory / name).is_file():
            try:
                torch.load(directory / name, map_location="cpu", weights_only=True)
            except Exception as err:  # truncated or damaged: any reader error means the same
                return f"{name} does not load ({type(err).__name__})"
    try:
        from safetensors import safe_open

        for path in weights:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
    except Exception as err:  # noqa: BLE001 (safetensors raises its own error types)
        return f"weights do not load ({type(err).__name__})"
    return None
