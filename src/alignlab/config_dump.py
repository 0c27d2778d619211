"""Configs back out: plain dicts, YAML, a content hash, and the key table `--help` prints.

`config_to_dict` / `dump_yaml` write the fully resolved config a run keeps (loadable again with
`load_config`), `config_hash` names its content, and `describe_config` lists every dotted key with
its default and the "why" beside the field.

Left out: reading configs; that is `config_io.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Literal, get_args, get_origin

import yaml

from alignlab.config_io import _Schema


def config_to_dict(cfg: Any) -> dict:
    """A nested dict of plain values (tuples become lists), ready for YAML or JSON."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = config_to_dict(value)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def dump_yaml(cfg: Any) -> str:
    """The fully resolved config as YAML, loadable again with `load_config`."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def config_hash(cfg: Any) -> str:
    """First 16 hex characters of the sha256 of the config's canonical JSON."""
    canonical = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple) or (isinstance(value, str) and (not value or value != value.strip())):
        return json.dumps(list(value) if isinstance(value, tuple) else value, ensure_ascii=False)
    return str(value)


def describe_config(cls: type) -> list[tuple[str, str, str]]:
    """(dotted key, default, why) for every leaf, in declaration order, for `--help`."""
    schema, rows = _Schema(cls), []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            path, value = prefix + f.name, getattr(obj, f.name)
            if path in schema.sections:
                walk(value, path + ".")
                continue
            why, tp = f.metadata.get("why", ""), schema.leaves[path]
            if get_origin(tp) is Literal:
                why += f" (one of: {', '.join(map(str, get_args(tp)))})"
            rows.append((path, _short(value), why))

    walk(cls(), "")
    return rows
