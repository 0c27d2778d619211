"""Building config dataclasses from YAML recipes and `key=value` overrides.

Generic over any tree of frozen dataclasses (the concrete ones live in `config.py`):
`load_config(cls, "recipe.yaml", ["optim.lr=3e-4", "steps=150"])` reads the recipe, applies
overrides (a dotted path, or a unique trailing part such as `steps`), coerces every value by
its annotation and builds the frozen tree. Mistakes become a one-line `UserError` naming the
file, line and key, with the closest valid key for typos.

Recipes are read through `config_yaml.py`, bounded whatever the file holds; turning a config
back into a dict, YAML, a hash or a `--help` table is `config_dump.py`.

Left out on purpose: environment-variable overrides and recipe includes / inheritance.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from alignlab.config_yaml import _compose_bounded, _construct, _key_lines
from alignlab.errors import UserError

# Keys spelled as if a leaf were a section: `data` is a list of files in the data-reading configs,
# so `data.on_bad_row` cannot be nested under it; it is read as the top-level key. Likewise `task`
# is a name, and `task.lang` (the task's prompt language, as the issue spells it) is `lang`.
ALIASES = {"data.on_bad_row": "on_bad_row", "task.lang": "lang"}

# Machinery: every value is first collected as an _Entry under its full dotted key, with where it
# came from; values are coerced once the field's type is known, and the tree is built bottom-up.


class ConfigError(ValueError):
    """A config class's validation failure, with the field it concerns as data: `field` is the dotted
    path inside the class that raised it ("steps", "run.batch_size"), `reason` the rest of the sentence.
    `load_config` turns it into a UserError pointing at the recipe line or override that set the field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field} {reason}")
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class _Entry:
    value: Any
    text: bool  # True: the raw text of a key=value override, parsed once the field type is known
    file: str | None = None
    line: int | None = None


class _Schema:
    """Every dotted key of a config class: leaves with their annotations, sections with classes."""

    def __init__(self, cls: type):
        self.leaves: dict[str, Any] = {}
        self.sections: dict[str, type] = {}
        self._walk(cls, "")

    def _walk(self, cls: type, prefix: str) -> None:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                self.sections[prefix + f.name] = tp
                self._walk(tp, prefix + f.name + ".")
            else:
                self.leaves[prefix + f.name] = tp

    def resolve(self, key: str, *, bare: bool, file: str | None = None, line: int | None = None) -> str:
        """The full dotted key for `key`; with `bare`, a unique trailing part (`steps`) also works."""
        if ALIASES.get(key) in self.leaves:
            return ALIASES[key]
        if key in self.leaves:
            return key
        if key in self.sections:
            example = next(p for p in self.leaves if p.startswith(key + "."))
            raise UserError(f"is a section, not a value; set its keys, e.g. '{example}'",
                            file=file, line=line, key=key)
        hits = [p for p in self.leaves if p.endswith("." + key)] if bare else []
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise UserError(f"ambiguous key; use one of {', '.join(map(repr, hits))}", file=file,
                            line=line, key=key)
        raise UserError("unknown key" + self._suggest(key), file=file, line=line, key=key)

    def _suggest(self, key: str) -> str:
        def paths_named(name: str) -> list[str]:
            return [p for p in self.leaves if p == name or p.endswith("." + name)]

        # A right name in the wrong section (`run.lr`) is the commonest slip; try it before difflib.
        found = paths_named(key.rsplit(".", 1)[-1])
        if not found:
            names = {p.rsplit(".", 1)[-1] for p in self.leaves}
            match = difflib.get_close_matches(key, [*self.leaves, *names], n=1)
            found = paths_named(match[0]) if match else []
        return f" (did you mean {' or '.join(map(repr, found))}?)" if found else ""


def _parse_text(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_TRUE, _FALSE, _NULL = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}, {"null", "none", "~"}


def _coerce(tp: Any, value: Any, text: bool) -> Any:
    """`value` as annotation `tp` wants it; `text` marks an override's raw string."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported annotation {tp}")
        if value is None or (isinstance(value, str) and value.strip().lower() in _NULL):
            return None
        return _coerce(inner[0], value, text)
    if origin is Literal:
        if text and not all(isinstance(c, str) for c in args):
            value = _parse_text(value)
        if any(value == c and type(value) is type(c) for c in args):
            return value
        raise UserError(f"expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"unsupported annotation {tp}")
        return tuple(_coerce(args[0], item, item_text) for item, item_text in _list_items(value, text))
    if tp is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise UserError(f"expected true or false, got {value!r}")
    if tp is str:
        if text or isinstance(value, str):
            return value  # override text is taken verbatim, so `out_dir=2024` stays a string
        raise UserError(f"expected a string, got {value!r} (quote it)")
    value = _parse_text(value) if text else value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float:
        return _coerce_float(value)
    if tp is int:
        raise UserError(f"expected an int, got {value!r}")
    raise TypeError(f"unsupported annotation {tp}")


def _coerce_float(value: Any) -> float:
    """A finite float: YAML's `.nan` / `.inf`, and `nan`, `inf` or `1e999` as text, are refused here,
    so no non-finite value reaches a config (whose checks could only word it as out of range)."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value)  # PyYAML reads `3e-4` as a string: YAML 1.1 floats need a dot
        except ValueError:
            pass
    if number is None:
        raise UserError(f"expected a float, got {value!r}")
    try:
        number = float(number)  # an int beyond a float's range (10**400) overflows here
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise UserError(f"expected a finite float, got {value!r}")
    return number


def _list_items(value: Any, text: bool) -> list[tuple[Any, bool]]:
    """Items of a list value; override text may be a YAML flow list `[a, b]` or `a,b`."""
    if text:
        stripped = value.strip()
        if not stripped:
            return []
        if not stripped.startswith("["):
            parts = [part.strip() for part in stripped.split(",")]
            if not all(parts):
                raise UserError(f"an empty item in the comma-separated list {value!r} (a trailing or doubled "
                                "comma?); expected e.g. a,b")
            return [(part, True) for part in parts]
        value = _parse_text(stripped)
    if isinstance(value, (list, tuple)):
        return [(item, False) for item in value]
    raise UserError(f"expected a list, got {value!r}")


def _flatten(schema: _Schema, mapping: Any, prefix: str, out: dict, *, bare: bool, file: str | None = None,
             lines: dict[str, int] | None = None) -> dict[str, _Entry]:
    """Entries under full dotted keys from a nested dict; `lines` gives a recipe key's line."""
    for name, value in mapping.items():
        key = prefix + str(name)
        line = (lines or {}).get(key)
        if key in schema.sections:
            if isinstance(value, Mapping):
                _flatten(schema, value, key + ".", out, bare=False, file=file, lines=lines)
            elif value is not None:  # an empty `optim:` in a recipe changes nothing
                raise UserError(f"expected a mapping of {key}'s keys, got {value!r}", file=file, line=line,
                                key=key)
            continue
        out[schema.resolve(key, bare=bare and not prefix, file=file, line=line)] = _Entry(
            value, text=False, file=file, line=line)
    return out


def _read_recipe(schema: _Schema, recipe: str | Path) -> dict[str, _Entry]:
    path, file = Path(recipe), str(recipe)
    if not path.is_file():
        raise UserError("no such recipe file" if not path.exists() else "not a file", file=file)
    lines: dict[str, int] = {}
    try:
        root = _compose_bounded(path)
        if isinstance(root, yaml.MappingNode):  # before construction, which flattens merge keys in place
            _key_lines(root, "", lines, file)
        data = _construct(root)
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        mark = getattr(err, "problem_mark", None)
        problem = " ".join(filter(None, [getattr(err, "context", None), getattr(err, "problem", None)]))
        raise UserError(f"not a valid YAML recipe: {problem or err}", file=file,
                        line=mark.line + 1 if mark else None) from None
    if root is None:  # an empty recipe (or only comments) changes nothing
        return {}
    if not isinstance(data, dict):
        raise UserError(f"a recipe must be a mapping of keys to values, got {type(data).__name__}",
                        file=file, line=root.start_mark.line + 1)
    return _flatten(schema, data, "", {}, bare=False, file=file, lines=lines)


def _parse_overrides(schema: _Schema, overrides: Sequence[str]) -> dict[str, _Entry]:
    out = {}
    for item in [overrides] if isinstance(overrides, str) else overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"expected key=value, got {item!r}")
        out[schema.resolve(key.strip(), bare=True)] = _Entry(text, text=True)
    return out


def _build(cls: type, prefix: str, entries: dict[str, _Entry], template: Any) -> Any:
    """An instance of `cls` from the entries under `prefix`; unset fields come from `template`."""
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        path, tp = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(tp):
            # A section keeps its own non-class defaults (sample.max_new_tokens = 64) unless set.
            sub = getattr(template, f.name) if template is not None else f.default_factory()
            kwargs[f.name] = _build(tp, path + ".", entries, sub)
        elif path in entries:
            entry = entries[path]
            try:
                kwargs[f.name] = _coerce(tp, entry.value, entry.text)
            except UserError as err:  # _coerce says what is wrong; where it came from is known here
                raise UserError(err.message, file=entry.file, line=entry.line, key=path) from None
        elif template is not None:
            kwargs[f.name] = getattr(template, f.name)
    if template is not None and all(v is getattr(template, k) for k, v in kwargs.items()):
        return template
    try:
        return cls(**kwargs)
    except ConfigError as err:  # point at the recipe line (or override) that set the field
        key = prefix + err.field
        entry = entries.get(key)
        where = {"file": entry.file, "line": entry.line} if entry is not None else {}
        raise UserError(err.reason, key=key, **where) from None
    except ValueError as err:  # a library's own check (no field known): the section
        raise UserError(str(err), key=prefix.rstrip(".") or None) from None


@dataclasses.dataclass(frozen=True)
class Layer:
    """Typed settings that come from somewhere other than the recipe (a sweep recipe's `set:`, say):
    {dotted or bare key: value} and where they were written, for the errors."""

    values: Mapping[str, Any]
    file: str | None = None
    line: int | None = None


def load_config(cls: type, recipe: str | Path | None = None, overrides: Sequence[str] = (), *,
                base: Mapping | None = None, layers: Sequence[Layer] = (),
                check: Callable[[Any], None] | None = None) -> Any:
    """`cls` built from `base` (nested dict), then the YAML `recipe`, then each of `layers` (typed values
    kept as they are, never through text), then `key=value` overrides.

    `check(cfg)` is validation a higher layer knows (the task registry: task names and their languages);
    a ConfigError it raises points at the recipe line, layer or override that set the field, as `cls`'s
    own do. Raises UserError for unknown or ambiguous keys, badly typed values and failed validation.
    """
    schema = _Schema(cls)
    entries: dict[str, _Entry] = {}
    if base:
        entries.update(_flatten(schema, base, "", {}, bare=True))
    if recipe is not None:
        entries.update(_read_recipe(schema, recipe))
    for layer in layers:
        entries.update({schema.resolve(str(key), bare=True, file=layer.file, line=layer.line):
                        _Entry(value, text=False, file=layer.file, line=layer.line)
                        for key, value in layer.values.items()})
    entries.update(_parse_overrides(schema, overrides))
    cfg = _build(cls, "", entries, None)
    if check is not None:
        try:
            check(cfg)
        except ConfigError as err:
            entry = entries.get(err.field)
            raise UserError(err.reason, key=err.field,
                            **({"file": entry.file, "line": entry.line} if entry is not None else {})) from None
    return cfg


def config_from_dict(cls: type, data: Mapping) -> Any:
    """`cls` from a nested dict such as a run's `config.yaml`: full keys only, same coercion.

    Missing keys take their defaults, so configs written before a field existed still load.
    """
    if not isinstance(data, Mapping):
        raise UserError(f"expected a mapping of config keys, got {type(data).__name__}")
    return _build(cls, "", _flatten(_Schema(cls), data, "", {}, bare=False), None)
