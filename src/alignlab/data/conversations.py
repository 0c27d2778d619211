"""Chat messages, and supervised (SFT) examples read as conversations ending with the assistant reply.

`_messages` checks a list of {"role", "content"} messages (a role in ROLES, string content); preference
records (data/preferences.py) are checked with it too. `read_conversations` reads `{prompt, response}`
(or `completion`) records or `{messages: [...]}` from a JSONL source (data/sources.py) or a list.

Left out: tool calls and multimodal message content, roles other than system, user and assistant.
"""

from __future__ import annotations

from alignlab.data.sources import BadRows, Where, _error, _kind, parse_rows, parse_source, read_jsonl_records
from alignlab.errors import UserError

ROLES = ("system", "user", "assistant")


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


def select_slice(items: list, part: slice, name: str) -> list:
    """items[part]; a slice that leaves nothing of a non-empty source ("f.jsonl[:0]", "[100:]" of a
    shorter file) is a mistake that would end in an empty evaluation or run, so it is refused naming
    the file."""
    chosen = items[part]
    if items and not chosen:
        text = ":".join("" if v is None else str(v) for v in (part.start, part.stop))
        text += f":{part.step}" if part.step is not None else ""
        has = "the list has" if name == "<list>" else "the file has"
        raise UserError(f"the slice [{text}] selects no records ({has} {len(items)})", file=name)
    return chosen


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
        records = select_slice(records, part, str(path)) if part is not None else records
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
