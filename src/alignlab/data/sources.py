"""Preference data (for reward models and DPO) read into typed `PreferencePair` records.

A source is a JSONL file (gzip known by its magic bytes), optionally sliced over its records
("hh/test.jsonl.gz[:1354]", see `parse_source`), or a Python list of dicts / `PreferencePair`s.
Record forms, detected per record:
1. ours: {"prompt": str, "chosen": str, "rejected": str} (+ optional "margin", TRL's column);
2. TRL conversational: message lists whose last chosen / rejected message is the assistant
   reply; or TRL's implicit prompt (whole conversations, the shared leading messages = prompt);
3. Anthropic HH-RLHF: chosen / rejected are whole "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogues;
   the shared turns up to the last Human turn are the prompt. A few pairs (9 of 2354 in
   helpful-base test) part earlier, one side having two Assistant turns in a row: their
   replies are the remaining turns rendered back to HH text, counted as irregular.
Empty reply strings are kept and counted (`LoadReport.n_empty`): HH has them (a model that said
nothing, and was rejected for it), and refusing them would break HH files and round trips.
`read_jsonl_records` is the low-level reader later loaders (SFT data, prompt sets) share.

Reading is bounded on any input: a line is read at most MAX_LINE_BYTES + 1 bytes at a time (so a
gzip bomb that inflates to one endless line stops there), and a record nested deeper than
MAX_JSON_DEPTH is refused. Both name the file and line.

Real data is messy: a few malformed rows in a public preference set. By default a bad row is an
error naming its file and line; given a `BadRows("skip")`, the readers leave such rows out and
record them there (a count per file and the first few reasons) for the caller to print and record
in the run's manifest; this module never prints. A line over MAX_LINE_BYTES is never skipped:
finding its end would mean reading all of it. A file whose every row is bad is an error.

Left out: `datasets` / Parquet / CSV input, files larger than memory, TRL's unpaired (KTO) and
step-wise forms, tool calls and multimodal message content.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from alignlab.errors import UserError

ROLES = ("system", "user", "assistant")
GZIP_MAGIC = b"\x1f\x8b"
SLICE = re.compile(r"^(?P<path>.+)\[(?P<start>-?\d*):(?P<stop>-?\d*)(?::(?P<step>-?\d*))?\]$")
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLE = {"Human": "user", "Assistant": "assistant"}
HH_LABEL = {"user": "Human", "assistant": "Assistant"}
HH_EXAMPLE = "'\\n\\nHuman: ...\\n\\nAssistant: ...'"
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


@dataclass(frozen=True)
class PreferencePair:
    """One comparison. prompt: the conversation before the reply, as chat messages
    ({"role": "system" | "user" | "assistant", "content": str}, ...) ending with a user turn;
    chosen / rejected: the two candidate assistant replies (plain text);
    margin: optional strength of the preference (TRL's `margin` column)."""

    prompt: tuple[dict, ...]
    chosen: str
    rejected: str
    margin: float | None = None

    @property
    def messages(self) -> list[dict]:
        """The prompt as a list of fresh dicts (safe to modify)."""
        return [dict(message) for message in self.prompt]

    @property
    def prompt_text(self) -> str:
        """The last user message's content (for rules and printing)."""
        return next((m["content"] for m in reversed(self.prompt) if m["role"] == "user"), "")


@dataclass(frozen=True)
class LoadReport:
    """What `read_preferences_with_report` read; counts are over the pairs returned (after slicing)."""

    n_records: int  # pairs returned
    n_irregular: int  # HH pairs that part before the final reply (see the module docstring)
    n_identical: int  # chosen == rejected: kept (real data), though they carry no preference
    source: str  # the path as given, or "<list>"
    n_empty: int = 0  # pairs with an empty (or blank) reply on either side
    n_skipped: int = 0  # malformed rows left out under on_bad_row=skip (rows of the whole file)


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


def read_preferences(source, *, limit: slice | None = None, bad_rows: BadRows | None = None
                     ) -> list[PreferencePair]:
    """Preference pairs from a JSONL path (with an optional "[a:b]" suffix) or a list of dicts /
    PreferencePairs; `limit` is a further slice over the result; `bad_rows` may skip malformed
    rows (then a slice counts the rows kept). See the module docstring."""
    return read_preferences_with_report(source, limit=limit, bad_rows=bad_rows)[0]


def read_preferences_with_report(source, *, limit: slice | None = None, bad_rows: BadRows | None = None
                                 ) -> tuple[list[PreferencePair], LoadReport]:
    """`read_preferences`, plus counts of irregular, identical, empty-reply and skipped pairs."""
    skipped_before = bad_rows.count if bad_rows is not None else 0
    if isinstance(source, (str, Path)):
        path, cut = parse_source(source)
        name, label = str(path), str(source)
        rows = (((name, lineno), obj) for lineno, obj in read_jsonl_records(path, bad_rows))
        items = parse_rows(rows, lambda obj, where: _parse_record(obj, where), bad_rows, name)
    elif isinstance(source, (list, tuple)):
        name, label, cut = "<list>", "<list>", None
        if not source:
            raise UserError("no records: the list is empty", file=name)
        rows = (((name, index + 1), item) for index, item in enumerate(source))
        items = parse_rows(rows, lambda item, where: _parse_item(item, where[1]), bad_rows, name)
    else:
        raise UserError(f"expected a path to a JSONL file or a list of records, got {type(source).__name__}")
    for part in (cut, limit):
        if part is not None:
            items = items[part]
    pairs = [pair for pair, _ in items]
    report = LoadReport(n_records=len(pairs), n_irregular=sum(irregular for _, irregular in items),
                        n_identical=sum(p.chosen == p.rejected for p in pairs), source=label,
                        n_empty=sum(not p.chosen.strip() or not p.rejected.strip() for p in pairs),
                        n_skipped=(bad_rows.count if bad_rows is not None else 0) - skipped_before)
    return pairs, report


def write_preferences(path: str | Path, pairs: Iterable[PreferencePair]) -> Path:
    """Write pairs as JSONL (gzipped when the name ends in .gz) that `read_preferences` reads back.

    A prompt that is one user message is written as form 1 (strings); any other as TRL's
    conversational form (message lists). `margin` is written when set.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open(path, "wt", encoding="utf-8") if path.suffix == ".gz"
          else path.open("w", encoding="utf-8")) as out:
        for pair in pairs:
            plain = len(pair.prompt) == 1 and pair.prompt[0]["role"] == "user"
            record = {"prompt": pair.prompt[0]["content"] if plain else pair.messages}
            for key, text in (("chosen", pair.chosen), ("rejected", pair.rejected)):
                record[key] = text if plain else [{"role": "assistant", "content": text}]
            if pair.margin is not None:
                record["margin"] = pair.margin
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


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
    return obj


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


def _parse_item(item, index: int) -> tuple[PreferencePair, bool]:
    if isinstance(item, PreferencePair):
        return item, False
    if not isinstance(item, dict):
        raise UserError(f"expected a dict or a PreferencePair, got {type(item).__name__}", file="<list>",
                        line=index)
    return _parse_record(item, ("<list>", index))


def _parse_record(obj: dict, where: Where) -> tuple[PreferencePair, bool]:
    """(pair, irregular) from one record in any accepted form."""
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise _error(where, key, "missing; a preference record needs 'chosen' and 'rejected' "
                                     "(and 'prompt', unless they are Anthropic HH dialogues)")
    margin = _margin(obj.get("margin"), where)
    chosen, rejected = obj["chosen"], obj["rejected"]
    if "prompt" not in obj and isinstance(chosen, str) and isinstance(rejected, str):
        prompt, chosen, rejected, irregular = _hh_pair(chosen, rejected, where)
        return PreferencePair(prompt, chosen, rejected, margin), irregular
    prompt = _prompt(obj.get("prompt", []), where)  # no prompt: TRL's implicit-prompt form
    chosen_before, chosen = _reply(chosen, "chosen", where)
    rejected_before, rejected = _reply(rejected, "rejected", where)
    if chosen_before != rejected_before:
        raise _error(where, "rejected", "its messages before the reply differ from chosen's; expected "
                                        "the same conversation with a different last (assistant) message")
    prompt = (*prompt, *chosen_before)
    if not prompt:
        raise _error(where, "prompt", "none found; expected a 'prompt' field (a string or messages), or "
                                      "chosen and rejected conversations that share their leading messages")
    if prompt[-1]["role"] != "user":
        raise _error(where, "prompt", f"must end with a user message, but ends with {prompt[-1]['role']!r}")
    return PreferencePair(prompt, chosen, rejected, margin), False


def _margin(value, where: Where) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _error(where, "margin", f"expected a finite number, got {value!r}")
    return float(value)


def _prompt(value, where: Where) -> tuple[dict, ...]:
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    if isinstance(value, list):
        return _messages(value, "prompt", where)
    raise _error(where, "prompt", f"expected a string or a list of messages, got {_kind(value)}")


def _reply(value, key: str, where: Where) -> tuple[tuple[dict, ...], str]:
    """(messages before the reply, reply text) from a string or a list of messages."""
    if isinstance(value, str):
        return (), value
    if not isinstance(value, list):
        raise _error(where, key, f"expected a string or a list of messages, got {_kind(value)}")
    if not value:
        raise _error(where, key, "empty response: expected messages ending with the assistant's reply")
    messages = _messages(value, key, where)
    if messages[-1]["role"] != "assistant":
        raise _error(where, f"{key}[{len(messages) - 1}].role", "the last message is the reply: expected "
                                                                f"'assistant', got {messages[-1]['role']!r}")
    return messages[:-1], messages[-1]["content"]


def _messages(value: list, key: str, where: Where) -> tuple[dict, ...]:
    out = []
    for i, message in enumerate(value):
        at = f"{key}[{i}]"
        if not isinstance(message, dict):
            raise _error(where, at, f"expected a message with 'role' and 'content', got {_kind(message)}")
        if "role" not in message or message["role"] not in ROLES:
            problem = f"unknown role {message['role']!r}" if "role" in message else "missing"
            raise _error(where, f"{at}.role", f"{problem}; expected 'system', 'user' or 'assistant'")
        if not isinstance(message.get("content"), str):
            problem = f"got {_kind(message['content'])}" if "content" in message else "missing"
            raise _error(where, f"{at}.content", f"{problem}; every message needs a string 'content'")
        out.append({"role": message["role"], "content": message["content"]})
    return tuple(out)


def _hh_turns(text: str, key: str, where: Where) -> list[tuple[str, str]]:
    """[(role, stripped content), ...] of an HH dialogue, which must end with an Assistant turn."""
    body = text.lstrip()
    if not body.startswith("Human:"):
        raise _error(where, key, f"expected an Anthropic HH dialogue like chosen's, {HH_EXAMPLE}")
    parts = HH_TURN.split("\n\n" + body)  # ["", role, content, role, content, ...]
    turns = [(HH_ROLE[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts), 2)]
    if turns[-1][0] != "assistant":
        raise _error(where, key, "no final '\\n\\nAssistant:' turn; expected a dialogue ending with a reply")
    return turns


def _hh_pair(chosen: str, rejected: str, where: Where) -> tuple[tuple[dict, ...], str, str, bool]:
    """(prompt, chosen reply, rejected reply, irregular) from two HH dialogues."""
    if not chosen.lstrip().startswith("Human:"):
        raise _error(where, "prompt", f"missing; only Anthropic HH dialogues ({HH_EXAMPLE}) may leave the "
                                      "prompt inside chosen and rejected")
    ours, theirs = _hh_turns(chosen, "chosen", where), _hh_turns(rejected, "rejected", where)
    n = 0
    while n < min(len(ours), len(theirs)) and ours[n] == theirs[n]:
        n += 1
    while n and ours[n - 1][0] != "user":  # the prompt ends with a Human turn
        n -= 1
    if n == 0:
        raise _error(where, "rejected", "shares no opening Human turn with chosen; expected the same "
                                        "dialogue with a different final Assistant reply")
    prompt = tuple({"role": role, "content": content} for role, content in ours[:n])
    irregular = len(ours) > n + 1 or len(theirs) > n + 1
    return prompt, _render_hh(ours[n:]), _render_hh(theirs[n:]), irregular


def _render_hh(turns: list[tuple[str, str]]) -> str:
    """Turns back to HH text; a leading Assistant turn loses its label (the chat template adds the role)."""
    shown = [content if i == 0 and role == "assistant" else f"{HH_LABEL[role]}: {content}"
             for i, (role, content) in enumerate(turns)]
    return "\n\n".join(shown).strip()


def read_conversations(source, bad_rows: BadRows | None = None) -> list[list[dict]]:
    """Supervised examples as chat conversations ending with the assistant reply.

    Records are `{prompt, response}` (or `completion`) strings, or `{messages: [...]}`; `source`
    is a JSONL path (optionally sliced, "f.jsonl[:100]") or a list of such dicts. `bad_rows` may
    skip malformed rows (then a slice counts the rows kept).
    """
    if isinstance(source, (list, tuple)):
        name, records = "<list>", [(("<list>", i + 1), r) for i, r in enumerate(source)]
    else:
        path, part = parse_source(source)
        name, records = str(source), [((str(source), n), r) for n, r in read_jsonl_records(path, bad_rows)]
        records = records[part] if part is not None else records
    return parse_rows(records, _conversation, bad_rows, name)


def _conversation(record, where: Where) -> list[dict]:
    if not isinstance(record, dict):
        raise _error(where, "record", f"expected a JSON object, got {_kind(record)}")
    if "messages" in record:
        if not isinstance(record["messages"], list) or not record["messages"]:
            raise _error(where, "messages", f"expected a non-empty list of messages, got {_kind(record['messages'])}")
        messages = list(_messages(record["messages"], "messages", where))
    else:
        reply_key = "completion" if "completion" in record else "response"
        for key in ("prompt", reply_key):
            if not isinstance(record.get(key), str):
                raise _error(where, key, f"expected a string, got {_kind(record.get(key))}"
                             if key in record else "missing (expected prompt + response, or messages)")
        messages = [{"role": "user", "content": record["prompt"]},
                    {"role": "assistant", "content": record[reply_key]}]
    if messages[-1]["role"] != "assistant":
        raise _error(where, "messages", "the last message must be the assistant reply to learn")
    if not messages[-1]["content"].strip():
        raise _error(where, "messages" if "messages" in record else reply_key,
                     "empty reply: nothing to learn (expected the assistant's text)")
    return messages
