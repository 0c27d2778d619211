"""Preference sources: every record form, slices, gzip by magic bytes, HH parsing, errors, round trips."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from alignlab.data.preferences import (
    LoadReport,
    PreferencePair,
    read_preferences,
    read_preferences_with_report,
    write_preferences,
)
from alignlab.data.sources import parse_source, read_jsonl_records
from alignlab.errors import UserError

HH_TEST = Path(__file__).parents[2] / ".." / "shared" / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
SYSTEM = {"role": "system", "content": "Be brief."}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_records(path: Path, records: list[dict]) -> Path:
    return write_lines(path, [json.dumps(r) for r in records])


def hh(*turns: str) -> str:
    """hh("H: hi", "A: hello") -> "\n\nHuman: hi\n\nAssistant: hello"."""
    labels = {"H": "Human", "A": "Assistant"}
    return "".join(f"\n\n{labels[t[0]]}: {t[3:]}" for t in turns)


def test_plain_form_with_margin():
    [pair] = read_preferences([{"prompt": "Plan?", "chosen": "- a", "rejected": "no", "margin": 2}])
    assert pair == PreferencePair((user("Plan?"),), "- a", "no", 2.0)
    assert pair.prompt_text == "Plan?" and pair.messages == [user("Plan?")]


def test_messages_are_copies():
    [pair] = read_preferences([{"prompt": "Plan?", "chosen": "a", "rejected": "b"}])
    pair.messages[0]["content"] = "changed"
    assert pair.prompt[0]["content"] == "Plan?"


def test_conversational_form_appends_shared_context_to_the_prompt():
    record = {"prompt": [SYSTEM, user("Hi")],
              "chosen": [assistant("Hello"), user("Plan?"), assistant("- a")],
              "rejected": [assistant("Hello"), user("Plan?"), assistant("no")]}
    [pair] = read_preferences([record])
    assert pair.prompt == (SYSTEM, user("Hi"), assistant("Hello"), user("Plan?"))
    assert (pair.chosen, pair.rejected, pair.margin) == ("- a", "no", None)
    assert pair.prompt_text == "Plan?"


def test_conversational_context_must_match():
    record = {"prompt": [user("Hi")], "chosen": [assistant("Hello"), user("Plan?"), assistant("- a")],
              "rejected": [assistant("Hey"), user("Plan?"), assistant("no")]}
    with pytest.raises(UserError, match=r"<list>:1: rejected: .*differ from chosen"):
        read_preferences([record])


def test_implicit_prompt_conversational_form():
    record = {"chosen": [SYSTEM, user("Plan?"), assistant("- a")],
              "rejected": [SYSTEM, user("Plan?"), assistant("no")]}
    [pair] = read_preferences([record])
    assert pair == PreferencePair((SYSTEM, user("Plan?")), "- a", "no")


def test_hh_two_turn_dialogue():
    chosen = hh("H: Hi there", "A: Hello!", "H:  A plan? ", "A: - read 30 min\n- rest")
    rejected = hh("H: Hi there", "A: Hello!", "H:  A plan? ", "A: No.")
    pairs, report = read_preferences_with_report([{"chosen": chosen, "rejected": rejected}])
    assert pairs == [PreferencePair((user("Hi there"), assistant("Hello!"), user("A plan?")),
                                    "- read 30 min\n- rest", "No.")]
    assert report == LoadReport(n_records=1, n_irregular=0, n_identical=0, source="<list>", n_empty=0)


def test_hh_irregular_pair_keeps_the_extra_turns_in_the_reply():
    # rejected has two Assistant turns in a row, so the dialogues part right after "H: Plan?"
    chosen = hh("H: Hi", "A: Hello", "H: Plan?", "A: - a")
    rejected = hh("H: Hi", "A: Hello", "H: Plan?", "A: Wait.", "A: No.")
    pairs, report = read_preferences_with_report([{"chosen": chosen, "rejected": rejected}])
    assert pairs[0].prompt == (user("Hi"), assistant("Hello"), user("Plan?"))
    assert (pairs[0].chosen, pairs[0].rejected) == ("- a", "Wait.\n\nAssistant: No.")
    assert report.n_irregular == 1


def test_hh_pair_that_parts_before_the_last_human_turn():
    chosen = hh("H: Hi", "A: Hello", "H: Plan?", "A: - a")
    rejected = hh("H: Hi", "A: Hey", "H: Plan?", "A: No.")
    pairs, report = read_preferences_with_report([{"chosen": chosen, "rejected": rejected}])
    assert pairs[0].prompt == (user("Hi"),)
    assert pairs[0].chosen == "Hello\n\nHuman: Plan?\n\nAssistant: - a"
    assert pairs[0].rejected == "Hey\n\nHuman: Plan?\n\nAssistant: No."
    assert report.n_irregular == 1


def test_hh_without_an_assistant_turn_is_malformed():
    with pytest.raises(UserError, match=r"<list>:1: rejected: no final .*Assistant"):
        read_preferences([{"chosen": hh("H: Hi", "A: Hello"), "rejected": hh("H: Hi")}])


def test_plain_strings_without_prompt_need_one():
    with pytest.raises(UserError, match=r"<list>:1: prompt: missing; only Anthropic HH"):
        read_preferences([{"chosen": "good", "rejected": "bad"}])


def test_identical_and_empty_replies_are_kept_and_counted():
    records = [{"prompt": "p", "chosen": "same", "rejected": "same"},
               {"prompt": "p", "chosen": "x", "rejected": ""},
               {"chosen": hh("H: q", "A: fine"), "rejected": hh("H: q", "A: ")}]
    pairs, report = read_preferences_with_report(records)
    assert [p.rejected for p in pairs] == ["same", "", ""]
    assert (report.n_records, report.n_identical, report.n_empty) == (3, 1, 2)


def test_parse_source():
    assert parse_source("d/f.jsonl.gz[:1354]") == (Path("d/f.jsonl.gz"), slice(None, 1354))
    assert parse_source("f.jsonl[1354:]") == (Path("f.jsonl"), slice(1354, None))
    assert parse_source("f.jsonl[10:20]") == (Path("f.jsonl"), slice(10, 20))
    assert parse_source("f.jsonl[-5::2]") == (Path("f.jsonl"), slice(-5, None, 2))
    assert parse_source("f.jsonl") == (Path("f.jsonl"), None)
    assert parse_source(Path("f[:3]")) == (Path("f[:3]"), None)
    with pytest.raises(UserError, match="step cannot be zero"):
        parse_source("f.jsonl[::0]")


def test_a_bad_slice_of_an_existing_file_is_named_as_the_slice(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "response": "r"}\n')
    for bad in ("[:abc]", "[]", "[1:2:3:4]"):
        with pytest.raises(UserError, match=r"d\.jsonl: \[.*\] is not a slice of records"):
            parse_source(f"{data}{bad}")
    odd = tmp_path / "notes[draft].jsonl"  # a file whose name has brackets is still found
    odd.write_text("{}\n")
    assert parse_source(str(odd)) == (odd, None)


def test_slices_apply_to_records_not_lines(tmp_path):
    records = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(5)]
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(r) + "\n" for r in records])  # blank lines between
    assert [p.prompt_text for p in read_preferences(f"{path}[:2]")] == ["p0", "p1"]
    assert [p.prompt_text for p in read_preferences(f"{path}[3:]")] == ["p3", "p4"]
    assert [p.prompt_text for p in read_preferences(f"{path}[1:4]", limit=slice(1, None))] == ["p2", "p3"]
    assert read_preferences_with_report(f"{path}[1:3]")[1].source == f"{path}[1:3]"


def test_gzip_is_detected_by_magic_bytes(tmp_path):
    line = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
    hidden = tmp_path / "data.jsonl"  # gzip content, plain name
    hidden.write_bytes(gzip.compress(line.encode()))
    fake = tmp_path / "plain.jsonl.gz"  # plain content, gzip name
    fake.write_text(line, encoding="utf-8")
    assert read_preferences(hidden)[0].chosen == "a"
    assert read_preferences(fake)[0].chosen == "a"


def test_bad_gzip_names_the_file(tmp_path):
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 50)[:40])
    with pytest.raises(UserError, match=r"broken\.jsonl\.gz: cannot read"):
        read_preferences(path)


def test_read_jsonl_records_skips_blank_lines(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", ['{"a": 1}', "", "   ", '{"a": 2}'])
    assert list(read_jsonl_records(path)) == [(1, {"a": 1}), (4, {"a": 2})]


def test_invalid_json_names_file_and_line(tmp_path):
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    path = write_lines(tmp_path / "d.jsonl", [good, good, '{"prompt": "p", "chosen": '])
    with pytest.raises(UserError) as info:
        read_preferences(path)
    assert f"{path}:3: invalid JSON" in str(info.value)
    assert info.value.line == 3


def test_line_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ["[1, 2]"])
    with pytest.raises(UserError, match=r"d\.jsonl:1: expected a JSON object per line, got a list"):
        read_preferences(path)


def test_missing_rejected(tmp_path):
    path = write_records(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                                {"prompt": "p", "chosen": "a"}])
    with pytest.raises(UserError) as info:
        read_preferences(path)
    assert str(info.value).startswith(f"{path}:2: rejected: missing")
    assert info.value.key == "rejected"


@pytest.mark.parametrize("record, where", [
    ({"prompt": [user("a"), {"role": "bot", "content": "x"}, user("b")], "chosen": "c", "rejected": "r"},
     "prompt[1].role: unknown role 'bot'"),
    ({"prompt": [{"content": "a"}], "chosen": "c", "rejected": "r"}, "prompt[0].role: missing"),
    ({"prompt": [user("a"), {"role": "user"}], "chosen": "c", "rejected": "r"}, "prompt[1].content: missing"),
    ({"prompt": [{"role": "user", "content": None}], "chosen": "c", "rejected": "r"},
     "prompt[0].content: got null"),
    ({"prompt": ["a"], "chosen": "c", "rejected": "r"}, "prompt[0]: expected a message"),
    ({"prompt": 3, "chosen": "c", "rejected": "r"}, "prompt: expected a string or a list of messages"),
    ({"prompt": "p", "chosen": {"text": "c"}, "rejected": "r"}, "chosen: expected a string or a list"),
    ({"prompt": "p", "chosen": "c", "rejected": []}, "rejected: empty response"),
    ({"prompt": "p", "chosen": [user("c")], "rejected": "r"}, "chosen[0].role: the last message is"),
    ({"prompt": [user("p"), assistant("x")], "chosen": "c", "rejected": "r"}, "prompt: must end with a user"),
    ({"prompt": "p", "chosen": "c", "rejected": "r", "margin": "big"}, "margin: expected a finite number"),
    ({"chosen": [assistant("c")], "rejected": [assistant("r")]}, "prompt: none found"),
])
def test_record_errors_name_the_field(tmp_path, record, where):
    path = write_records(tmp_path / "d.jsonl", [record])
    with pytest.raises(UserError) as info:
        read_preferences(path)
    assert str(info.value).startswith(f"{path}:1: {where}")


def test_list_input_errors_use_the_index(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    with pytest.raises(UserError, match=r"^<list>:3: rejected: missing"):
        read_preferences([good, PreferencePair((user("p"),), "a", "b"), {"prompt": "p", "chosen": "a"}])
    with pytest.raises(UserError, match=r"^<list>:2: expected a dict or a PreferencePair, got str"):
        read_preferences([good, "oops"])


def test_empty_file_and_missing_file(tmp_path):
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(UserError, match=r"empty\.jsonl: no records"):
        read_preferences(empty)
    with pytest.raises(UserError, match=r"nope\.jsonl: no such file"):
        read_preferences(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match=r"nope\.jsonl: no such file"):
        read_preferences(f"{tmp_path / 'nope.jsonl'}[:3]")
    with pytest.raises(UserError, match="no records"):
        read_preferences([])


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_write_read_round_trip(tmp_path, name):
    pairs = [PreferencePair((user("Plan? 计划"),), "- a 30 分钟", "no", 1.5),
             PreferencePair((SYSTEM, user("Hi"), assistant("Hello"), user("Plan?")), "- b", ""),
             PreferencePair((user(""),), "same", "same")]
    path = write_preferences(tmp_path / "sub" / name, pairs)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert read_preferences(path) == pairs
    records = [record for _, record in read_jsonl_records(path)]
    assert records[0]["prompt"] == "Plan? 计划" and records[0]["margin"] == 1.5  # form 1: strings
    assert records[1]["chosen"] == [assistant("- b")] and "margin" not in records[1]  # form 2: messages


@pytest.mark.skipif(not HH_TEST.exists(), reason="HH-RLHF helpful-base test split not in this workspace")
def test_real_hh_rlhf_helpful_base_test_split():
    pairs, report = read_preferences_with_report(HH_TEST)
    assert (report.n_records, report.n_irregular, report.n_identical) == (2354, 9, 2)
    assert all(pair.prompt and pair.prompt[-1]["role"] == "user" for pair in pairs)
    assert all(pair.chosen.strip() for pair in pairs)
    # four rejected replies are empty in the data itself (the model said nothing)
    assert report.n_empty == 4 and sum(not pair.rejected for pair in pairs) == 4
    head, tail = read_preferences(f"{HH_TEST}[:1354]"), read_preferences(f"{HH_TEST}[1354:]")
    assert (len(head), len(tail)) == (1354, 1000) and head + tail == pairs
