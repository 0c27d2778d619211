"""Record sources: JSONL files (gzip known by its magic bytes), sliced over records, read under a bad-row policy.

A source is a JSONL file, optionally sliced over its records ("hh/test.jsonl.gz[:1354]", see
`parse_source`). `read_jsonl_records` is the low-level reader every loader shares (preference pairs
in data/preferences.py, SFT conversations in data/conversations.py, prompt sets, task data);
`parse_rows` runs a loader's per-record parser under the bad-row policy, and `_error` / `_kind` word
the errors a parser raises about a record.

Reading is bounded on any input: a line is read at most MAX_LINE_BYTES + 1 bytes at a time (so a
gzip bomb that inflates to one endless line stops there), and a record nested deeper than
MAX_JSON_DEPTH is refused. Both name the file and line.

Real data is messy: a few malformed rows in a public preference set. By default a bad row is an
error naming its file and line; given a `BadRows("skip")`, the readers leave such rows out and
record them there (a count per file and the first few reasons) for the caller to print and record
in the run's manifest; this module never prints. A line over MAX_LINE_BYTES is never skipped:
finding its end would mean reading all of it. A file whose every row is bad is an error.

Left out: `datasets` / Parquet / CSV input, files larger than memory.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from alignlab.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
SLICE = re.compile(r"^(?P<path>.+)\[(?P<start>-?\d*):(?P<stop>-?\d*)(?::(?P<step>-?\d*))?\]$")
JSON_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
              float: "a number", type(None): "null"}
Where = tuple[str, int]  # (file, 1-based line) of the record being parsed


@dataclass
class BadRows:
    """Malformed rows met while reading, under `policy`: "error" raises the first one (the
    default everywhere), "skip" records it here and the reader leaves the row out.

    count: rows skipped; by_file: rows skipped per file; first: the first SHOWN as one-line
    `file:line: key: reason` texts (a UserError's own wording).
    """

    SHOWN = 5

    policy: str = "error"
    count: int = 0
    by_file: dict[str, int] = field(default_factory=dict)
    first: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.policy not in ("error", "skip"):
            raise ValueError(f"policy must be 'error' or 'skip', got {self.policy!r}")

    def add(self, err: UserError) -> None:
        """Skip the row `err` is about, or raise `err` under the "error" policy."""
        if self.policy == "error":
            raise err
        self.count += 1
        file = err.file or "<input>"
        self.by_file[file] = self.by_file.get(file, 0) + 1
        if len(self.first) < self.SHOWN:
            self.first.append(str(err))

    def report(self) -> list[str]:
        """Lines for a person: the count, then the first few rows; none when nothing was skipped."""
        if not self.count:
            return []
        more = f" (the first {self.SHOWN} shown)" if self.count > self.SHOWN else ""
        rows = "row" if self.count == 1 else "rows"
        return [f"skipped {self.count} bad {rows} (on_bad_row=skip){more}:", *(f"  {r}" for r in self.first)]

    def to_manifest(self) -> dict:
        """JSON-ready record of what was skipped, for a run's manifest.json."""
        return {"policy": self.policy, "count": self.count, "by_file": dict(self.by_file), "first": list(self.first)}


def parse_rows(rows: Iterable[tuple[Where, object]], parse: Callable, bad_rows: BadRows | None = None,
               name: str = "<input>") -> list:
    """[parse(record, where) for each (where, record) of `rows`]; a row whose parse raises UserError is
    an error, or with `bad_rows` (policy "skip") recorded there and left out. Rows that were all
    skipped are an error naming `name`, since nothing is left to use."""
    out, seen = [], 0
    for where, record in rows:
        seen += 1
        try:
            out.append(parse(record, where))
        except UserError as err:
            if bad_rows is None:
                raise
            bad_rows.add(err)
    if seen and not out:
        raise UserError("no usable records: every row was malformed and skipped", file=name)
    return out


def source_file(spec: str | Path) -> str:
    """The file a data spec names, as written: a trailing record slice ("[:100]") removed, brackets that
    are part of the path ("data[v2]/sft.jsonl") kept. Never raises (`parse_source` checks the slice).

    >>> source_file("d/f.jsonl[:100]"), source_file("data[v2]/sft.jsonl")
    ('d/f.jsonl', 'data[v2]/sft.jsonl')
    """
    match = SLICE.match(str(spec).strip()) if isinstance(spec, str) else None
    return match["path"] if match else str(spec)


def parse_source(spec: str | Path) -> tuple[Path, slice | None]:
    """Split "data.jsonl.gz[:1354]" into (Path("data.jsonl.gz"), slice(None, 1354)).

    The suffix is a Python slice over records (not lines), applied after the whole file has been
    read and checked: "[:1354]", "[1354:]", "[10:20]", "[-100:]", "[::2]". Without one the slice
    is None. A `Path` is taken literally; "~" is expanded.
    """
    if isinstance(spec, Path):
        return spec.expanduser(), None
    match = SLICE.match(spec.strip())
    if match is None:
        head, bracket, _ = spec.strip().rpartition("[")
        if bracket and spec.strip().endswith("]") and not Path(spec).expanduser().exists() \
                and Path(head).expanduser().exists():  # a file with a slice that is not one
            raise UserError(f"{spec.strip()[len(head):]} is not a slice of records; expected e.g. [:1354], [1354:], "
                            "[10:20] or [::2]", file=head)
        return Path(spec).expanduser(), None
    start, stop, step = (int(v) if v else None for v in match.group("start", "stop", "step"))
    if step == 0:
        raise UserError("slice step cannot be zero; expected e.g. [:1354] or [::2]", file=spec)
    return Path(match["path"]).expanduser(), slice(start, stop, step)


MAX_LINE_BYTES = 4 * 2**20  # a record this long is a mistake (a document pasted into one field), not data
MAX_JSON_DEPTH = 64  # chat records nest 3-4 levels; deeper is not data, and json.loads recurses per level
_TOO_DEEP = object()  # what _decode parsed when json.loads ran out of stack


def read_jsonl_records(path: str | Path, bad_rows: BadRows | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object) for each non-blank line of a JSONL file, gzipped or not.

    Raises UserError naming the file (and line) for a missing or unreadable file, bad gzip data,
    a line over MAX_LINE_BYTES, or no records at all; and for a row that is not UTF-8, not JSON,
    nested deeper than MAX_JSON_DEPTH or not an object, unless `bad_rows` skips such rows.
    """
    name, path = str(path), Path(path).expanduser()
    if not path.is_file():
        raise UserError("no such file" if not path.exists() else "not a file", file=name)
    n_records = n_kept = 0
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC  # the magic bytes decide, not the suffix
        with (gzip.open(path, "rb") if compressed else path.open("rb")) as stream:
            # readline(limit + 1), not iteration: iterating reads a whole line, however long, first.
            for lineno, line in enumerate(iter(lambda: stream.readline(MAX_LINE_BYTES + 1), b""), 1):
                if len(line) > MAX_LINE_BYTES:
                    raise UserError(f"a line longer than {MAX_LINE_BYTES // 2**20} MiB is refused (one record "
                                    "per line; a record that long is a mistake)", file=name, line=lineno)
                if not line.strip():
                    continue
                n_records += 1
                try:
                    record = _decode(line, name, lineno)
                except UserError as err:
                    if bad_rows is None:
                        raise
                    bad_rows.add(err)
                    continue
                n_kept += 1
                yield lineno, record
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read the file: {err}", file=name) from err
    if n_records == 0:
        raise UserError("no records: the file is empty (expected one JSON object per line)", file=name)
    if n_kept == 0:
        raise UserError("no usable records: every row was malformed and skipped", file=name)


def _error(where: Where, key: str, message: str) -> UserError:
    return UserError(message, file=where[0], line=where[1], key=key)


def _kind(value) -> str:
    return JSON_KINDS.get(type(value), type(value).__name__)


def _decode(line: bytes, name: str, lineno: int) -> dict:
    try:
        obj = json.loads(line.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text ({err.reason} at byte {err.start})", file=name,
                        line=lineno) from None
    except json.JSONDecodeError as err:
        raise UserError(f"invalid JSON ({err.msg} at column {err.colno}); expected one JSON object per line",
                        file=name, line=lineno) from None
    except RecursionError:  # json.loads recurses once per level; ~1000 levels exhaust the stack
        obj = _TOO_DEEP
    except ValueError as err:  # e.g. an integer of more than 4300 digits (Python's int-parsing limit)
        raise UserError(f"invalid JSON ({err}); expected one JSON object per line", file=name, line=lineno) from None
    if obj is _TOO_DEEP or _nested_deeper(obj, MAX_JSON_DEPTH):
        raise UserError(f"nested deeper than {MAX_JSON_DEPTH} levels; expected a flat record", file=name,
                        line=lineno)
    if not isinstance(obj, dict):
        raise UserError(f"expected a JSON object per line, got {_kind(obj)}", file=name, line=lineno)
    field = _unencodable_field(obj)
    if field is not None:  # "\ud800" is valid JSON but no text: every tokenizer and writer would fail on it
        raise UserError("a lone surrogate escape (\\ud800-\\udfff) is not text", file=name, line=lineno,
                        key=field)
    return obj


def _unencodable_field(obj: dict) -> str | None:
    """The dotted path of the first key or string in `obj` that UTF-8 cannot encode (a lone surrogate
    from a JSON escape), else None; no recursion."""
    stack: list[tuple[str, object]] = [("", obj)]
    while stack:
        path, value = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, child in items:
            where = f"{path}.{key}" if path else str(key)
            for text in (key, child):
                if isinstance(text, str):
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError:
                        return where
            if isinstance(child, (dict, list)):
                stack.append((where, child))
    return None


def _nested_deeper(obj, limit: int) -> bool:
    """True when `obj` (parsed JSON) has containers more than `limit` levels deep; no recursion."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False
