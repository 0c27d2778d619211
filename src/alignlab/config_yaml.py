"""Reading YAML with the work bounded, and the line of every key of a recipe.

`read_yaml_bounded` (recipes, sweep files) refuses, before PyYAML builds a single Python object, a
file over MAX_YAML_BYTES, nested deeper than the parser's recursion allows, with a recursive alias,
or holding more than MAX_YAML_VALUES values once its aliases are expanded (a "billion laughs" of
nested anchors). Anchors and merge keys (`<<: *base`) used normally keep working. `_key_lines` maps
each dotted key of a composed recipe to the line that set it, so errors can point there.

Left out: what the values mean; building configs from them is `config_io.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from alignlab.errors import UserError

MAX_YAML_BYTES = 1 << 20  # recipes are a few KB; a larger file is not a recipe, and PyYAML reads ~1 MB/s
MAX_YAML_VALUES = 100_000  # scalars + collections after expanding aliases; a big sweep has a few thousand
MERGE_TAG = "tag:yaml.org,2002:merge"


def _key_lines(node: yaml.MappingNode, prefix: str, lines: dict[str, int], file: str) -> None:
    """The 1-based line of every key of a composed (not yet constructed) YAML mapping, under its
    dotted path. Keys a merge key (`<<: *base`) brings in get the line where they were written,
    unless the mapping sets them itself: overriding a merged key is what merge keys are for."""
    merged: list[yaml.Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == MERGE_TAG:
            merged += value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            continue
        key, line = prefix + str(key_node.value), key_node.start_mark.line + 1
        if key in lines:  # PyYAML keeps the last of two equal keys silently
            raise UserError(f"set twice (first on line {lines[key]})", file=file, line=line, key=key)
        lines[key] = line
        if isinstance(value_node, yaml.MappingNode):
            _key_lines(value_node, key + ".", lines, file)
    for source in merged:
        if isinstance(source, yaml.MappingNode):  # anything else, PyYAML's constructor refuses
            inherited: dict[str, int] = {}
            _key_lines(source, prefix, inherited, file)
            for key, line in inherited.items():
                lines.setdefault(key, line)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expanded_size(root: yaml.Node, file: str) -> None:
    """Refuse a node graph that holds more than MAX_YAML_VALUES values once aliases are expanded,
    or an alias inside the collection it names (an endless structure).

    Aliases make the composed graph a DAG whose expansion can be exponential (9 anchors, each a
    list of 9 aliases to the previous one, expand to 9**9 values); each node's expanded size is
    computed once (memoised by id), so the count is linear in the nodes actually written. An
    explicit stack, not recursion, so that depth costs no Python frames.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # nodes whose subtree is being counted: the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise UserError(f"too many values after expanding aliases (limit {MAX_YAML_VALUES})",
                                file=file, line=node.start_mark.line + 1)
        elif id(node) in open_nodes:
            raise UserError("an alias refers to a collection it is inside (an endless structure)",
                            file=file, line=node.start_mark.line + 1)
        elif id(node) not in sizes:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def _compose_bounded(path: Path) -> yaml.Node | None:
    """The composed YAML node graph of `path` (None when empty), its size checked; see the module
    docstring. yaml.YAMLError and UnicodeDecodeError are left to the caller to word."""
    file = str(path)
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise UserError(f"a file of {size / 2**20:.1f} MiB; a YAML recipe over {MAX_YAML_BYTES // 2**20} MiB "
                        "is refused", file=file)
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except RecursionError:  # PyYAML composes nested collections recursively
        raise UserError("nested too deeply to read (hundreds of levels)", file=file) from None
    if root is not None:
        _check_expanded_size(root, file)
    return root


def _construct(root: yaml.Node | None) -> Any:
    return yaml.constructor.SafeConstructor().construct_document(root) if root is not None else None


def read_yaml_bounded(path: str | Path) -> tuple[Any, yaml.Node | None]:
    """(data, root node) of a YAML file, with the work bounded (see the module docstring).

    Raises UserError naming the file for a file too big, too deep, recursive or too large once
    aliases are expanded; yaml.YAMLError and UnicodeDecodeError are left to the caller, which words
    them for its kind of file. The root node is the one construction used (merge keys flattened).
    """
    root = _compose_bounded(Path(path))
    return _construct(root), root
