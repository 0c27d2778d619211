"""Preference data (for reward models and DPO) read into typed `PreferencePair` records.

A source is a JSONL file (read by data/sources.py: gzip known by its magic bytes, an optional slice
over its records such as "hh/test.jsonl.gz[:1354]", bad rows), or a Python list of dicts /
`PreferencePair`s. Record forms, detected per record:
1. ours: {"prompt": str, "chosen": str, "rejected": str} (+ optional "margin", TRL's column);
2. TRL conversational: message lists whose last chosen / rejected message is the assistant
   reply; or TRL's implicit prompt (whole conversations, the shared leading messages = prompt);
3. Anthropic HH-RLHF: chosen / rejected are whole "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogues;
   the shared turns up to the last Human turn are the prompt. A few pairs (9 of 2354 in
   helpful-base test) part earlier, one side having two Assistant turns in a row: their
   replies are the remaining turns rendered back to HH text, counted as irregular.
Empty reply strings are kept and counted (`LoadReport.n_empty`): HH has them (a model that said
nothing, and was rejected for it), and refusing them would break HH files and round trips.

Left out: TRL's unpaired (KTO) and step-wise forms, tool calls and multimodal message content.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from alignlab.data.conversations import _messages, select_slice
from alignlab.data.sources import BadRows, Where, _error, _kind, parse_rows, parse_source, read_jsonl_records
from alignlab.errors import UserError

HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_ROLE = {"Human": "user", "Assistant": "assistant"}
HH_LABEL = {"user": "Human", "assistant": "Assistant"}
HH_EXAMPLE = "'\\n\\nHuman: ...\\n\\nAssistant: ...'"


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
            items = select_slice(items, part, name)
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
