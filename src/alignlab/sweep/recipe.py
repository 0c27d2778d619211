"""A sweep recipe (YAML) read and checked: every run's full GRPO config built before the first starts.

The recipe's keys, its `set` / `variants` / `grid` / `seeds` / `lang` / `eval` semantics and the
one-held-out-set rule are documented in the package docstring (`alignlab.sweep`). Errors name the
recipe file, the line and the key.

Left out: running anything (`run.py`).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alignlab.config import EvalConfig, GRPOConfig, config_from_dict, load_config
from alignlab.config_io import Layer
from alignlab.config_yaml import read_yaml_bounded
from alignlab.errors import UserError
from alignlab.tasks.registry import check_task_config

KEYS = ("base", "policy", "set", "variants", "grid", "seeds", "lang", "eval", "out_dir")


@dataclass(frozen=True)
class SweepRun:
    """One training run: a variant at a seed, its `config` built from the base recipe, the sweep's typed
    `set` / variant layers (`config_io.Layer`) and the command line; `overrides` shows them as key=value
    texts (the plan, result.json)."""

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
    """A typed YAML value as a `key=value` text, for people to read (configs are built from the values)."""
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


def _lang_setting(data: Mapping, file: str, line: int | None) -> dict:
    """The recipe's `lang` key as a setting (none when absent: the base recipe's lang holds)."""
    if "lang" not in data:
        return {}
    if not isinstance(data["lang"], str):
        raise UserError(f"expected a language name (the task's: study-plan has all, en, zh), got {data['lang']!r}",
                        file=file, line=line, key="lang")
    return {"lang": data["lang"]}


def _one_eval_set(runs: Sequence[SweepRun], file: str, line: int | None) -> None:
    """Every run trains on one task, language and held-out file (each checked against the registry when its
    config was built): the sweep judges every policy on one set."""
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
    common = [Layer(_lang_setting(data, file, lines.get("lang")), file, lines.get("lang")),
              Layer(_flat(data.get("set"), "set", file, lines.get("set")), file, lines.get("set"))]
    out = Path(out_dir or data.get("out_dir") or f"runs/sweep_{path.stem}")
    runs, names, slugs = [], [], set()
    for name, changes, line in _variants(data, file, lines):
        slug = slugify(name)
        if slug in slugs:
            raise UserError(f"two variants share the directory name {slug!r}; rename one", file=file, line=line,
                            key="variants")
        slugs.add(slug)
        names.append(name)
        layers = [*common, Layer(changes, file, line)]
        shown = [_override_text(k, v) for layer in layers for k, v in layer.values.items()]
        for seed in seeds:
            ours = [f"run.seed={seed}", f"run.out_dir={out / slug / f'seed{seed}'}"]
            if policy and policy != "demo":
                ours.append(f"model.path={policy}")
            texts = (*shown, *overrides, *ours)  # what the plan and result.json show
            try:
                cfg = load_config(GRPOConfig, base_path, [*overrides, *ours], layers=layers, check=check_task_config)
            except UserError as err:
                field = f"{err.key}: " if err.key else ""
                raise UserError(f"variant {name!r}: {field}{err.message}", file=err.file or file,  # or the base's
                                line=err.line if err.file else line) from None
            runs.append(SweepRun(name, slug, seed, texts, cfg))
    _one_eval_set(runs, file, lines.get("lang"))
    return Sweep(path, base_path, policy, tuple(names), tuple(runs), _eval_spec(data.get("eval"), file,
                                                                                     lines.get("eval")), out)
