"""Tokenizers: byte ids, BPE round trips, save/load through transformers, chat rendering and masks."""

from __future__ import annotations

import json
import random
import warnings

import pytest

from alignlab.data.tokenizer import (
    CHATML_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    IM_START,
    Tokenizer,
    byte_tokenizer,
    train_bpe,
)
from alignlab.data.tokenizer_load import load_tokenizer
from alignlab.errors import UserError

transformers = pytest.importorskip("transformers")

UNSEEN = "Ωmega ☃ 𝄞 タ"  # none of these characters is in the training corpus
TWO_TURNS = [
    {"role": "system", "content": "Answer in bullets."},
    {"role": "user", "content": "A study plan?"},
    {"role": "assistant", "content": "- read 30 分钟"},
    {"role": "user", "content": "And then?"},
    {"role": "assistant", "content": "- rest 1 小时"},
]


def _corpus() -> list[str]:
    rng = random.Random(0)
    words = ("the plan study thirty minutes each day review notes practice 学习 计划 每天 复习 "
             "分钟 小时").split()
    return [" ".join(rng.choice(words) for _ in range(12)) + f" {rng.randint(1, 99)} 分钟"
            for _ in range(400)]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe(_corpus(), 400)


def _spans(mask: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    spans, start = [], None
    for i, keep in enumerate([*mask, False]):
        if keep and start is None:
            start = i
        elif not keep and start is not None:
            spans.append((start, i))
            start = None
    return spans


@pytest.mark.parametrize("text", ["hello, world", "学习计划 30 分钟", "done 🙂👍🏽"])
def test_byte_tokenizer_ids_are_utf8_bytes(text):
    tok = byte_tokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_byte_tokenizer_specials_follow_the_bytes():
    tok = byte_tokenizer()
    assert tok.kind == "byte"
    assert tok.vocab_size == 259
    special = [tok.hf.convert_tokens_to_ids(t) for t in (ENDOFTEXT, IM_START, IM_END)]
    assert sorted(special) == [256, 257, 258]
    assert tok.eos_id == special[2] and tok.pad_id == special[0]
    assert set(tok.stop_ids) == {special[0], special[2]}
    assert tok.encode(f"a{IM_END}") == [97, special[2]]
    assert tok.decode([104, 105, special[2]]) == "hi"
    assert tok.decode([104, 105, special[2]], skip_special_tokens=False) == f"hi{IM_END}"


def test_bpe_round_trips_unseen_text_and_compresses(bpe):
    assert bpe.kind == "bpe"
    assert 259 < bpe.vocab_size <= 400
    for text in [UNSEEN, "a , b . it 's  x\n\n y", "学习计划 30 分钟"]:
        assert bpe.decode(bpe.encode(text)) == text
    corpus = "\n".join(_corpus())
    assert len(bpe.encode(corpus)) < len(corpus.encode("utf-8")) / 2
    assert bpe.encode_batch(["the plan", UNSEEN]) == [bpe.encode("the plan"), bpe.encode(UNSEEN)]
    assert bpe.decode_batch(bpe.encode_batch(["the plan", UNSEEN])) == ["the plan", UNSEEN]


def test_bpe_specials_and_stop_ids(bpe):
    im_end = bpe.hf.convert_tokens_to_ids(IM_END)
    endoftext = bpe.hf.convert_tokens_to_ids(ENDOFTEXT)
    assert bpe.eos_id == im_end and bpe.pad_id == endoftext and bpe.bos_id is None
    assert bpe.stop_ids == (im_end, endoftext)


@pytest.mark.parametrize("make", ["bpe", "byte"])
def test_save_load_same_ids_kind_and_template(bpe, tmp_path, make):
    tok = bpe if make == "bpe" else byte_tokenizer()
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHATML_TEMPLATE
    loaded = load_tokenizer(str(tmp_path))
    theirs = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert loaded.kind == make
    for text in [*_corpus()[:5], UNSEEN, "x\n\n  y 12345 isn't"]:
        assert loaded.encode(text) == tok.encode(text)
        assert theirs.encode(text, add_special_tokens=False) == tok.encode(text)
    assert loaded.stop_ids == tok.stop_ids and loaded.pad_id == tok.pad_id
    rendered = theirs.apply_chat_template(TWO_TURNS, tokenize=False, add_generation_prompt=True)
    assert rendered == tok.hf.apply_chat_template(TWO_TURNS, tokenize=False, add_generation_prompt=True)
    assert loaded.render_chat(TWO_TURNS) == tok.render_chat(TWO_TURNS)


def test_checkpoint_dir_with_qwen2_config_gives_same_ids(bpe, tmp_path):
    # transformers 5 builds a Qwen2Tokenizer for a Qwen2 config.json, keeping only our vocab
    # and merges; our pipeline must equal the one it rebuilds.
    bpe.save(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 400}))
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in [*_corpus()[:20], UNSEEN, "x\n\n  y 12345 isn't ABC"]:
        assert auto.encode(text, add_special_tokens=False) == bpe.encode(text)
    assert load_tokenizer(str(tmp_path)).kind == "bpe"


def test_chat_prompt_ids_end_with_assistant_header(bpe):
    header = bpe.encode(f"{IM_START}assistant\n")
    ids = bpe.chat_prompt_ids("A study plan?")
    assert ids[-len(header):] == header
    assert bpe.decode(ids, skip_special_tokens=False) == (
        f"{IM_START}user\nA study plan?{IM_END}\n{IM_START}assistant\n")
    assert bpe.chat_prompt_ids(TWO_TURNS[:2])[-len(header):] == header


@pytest.mark.parametrize("make", ["bpe", "byte"])
def test_render_chat_masks_exactly_the_assistant_replies(bpe, make):
    tok = bpe if make == "bpe" else byte_tokenizer()
    ids, mask = tok.render_chat(TWO_TURNS)
    assert len(ids) == len(mask)
    assert tok.decode(ids, skip_special_tokens=False) == tok.hf.apply_chat_template(TWO_TURNS, tokenize=False)
    spans = _spans(mask)
    replies = [tok.decode(ids[a:b], skip_special_tokens=False) for a, b in spans]
    assert replies == [f"- read 30 分钟{IM_END}", f"- rest 1 小时{IM_END}"]
    for a, _ in spans:  # each reply starts right after its header
        assert tok.decode(ids[:a], skip_special_tokens=False).endswith(f"{IM_START}assistant\n")


def test_render_chat_rejects_a_template_that_rewrites_history():
    tok = byte_tokenizer()
    # Drops earlier assistant turns (as reasoning templates do): not prefix-stable.
    tok.hf.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    with pytest.raises(ValueError, match="prefix-stable"):
        tok.render_chat(TWO_TURNS)


def test_no_chat_template_falls_back_to_plain_text():
    tok = byte_tokenizer()
    tok.hf.chat_template = None
    assert tok.chat_prompt_ids("hi there") == list(b"hi there")
    with pytest.raises(UserError, match="system / user / assistant / user / assistant turns"):
        tok.render_chat(TWO_TURNS)
    # one prompt and one reply: what generation sees (the prompt's plain ids), then the reply and its stop id
    ids, mask = tok.render_chat(TWO_TURNS[1:3])
    prompt = tok.chat_prompt_ids(TWO_TURNS[1]["content"])
    assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)]) and all(mask[len(prompt):])
    assert tok.decode(ids[len(prompt):-1]) == TWO_TURNS[2]["content"] and ids[-1] == tok.stop_ids[0]


def test_missing_pad_becomes_eos_with_one_warning(tmp_path):
    backend = byte_tokenizer().hf.backend_tokenizer
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=IM_END).save_pretrained(
        str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = load_tokenizer(str(tmp_path))
        tok.encode_batch(["a", "bb"])
        tok.chat_prompt_ids("a")
    pad_warnings = [w for w in caught if "pad" in str(w.message)]
    assert len(pad_warnings) == 1
    assert tok.kind == "hf"
    assert tok.pad_id == tok.eos_id == 258


def test_load_missing_path_names_it(tmp_path):
    missing = tmp_path / "no" / "such" / "tokenizer"
    with pytest.raises(UserError) as err:
        load_tokenizer(str(missing))
    assert str(missing) in str(err.value)


def test_load_dir_without_tokenizer_files_is_refused(tmp_path):
    # transformers 5 would build an empty one-token Qwen2Tokenizer from this directory.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(UserError) as err:
        load_tokenizer(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_unreachable_hub_id_is_one_line_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        load_tokenizer("alignlab-tests/no-such-model")
    assert "alignlab-tests/no-such-model" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("texts", [[], [""], ["abc", "xyz"]])
def test_nothing_to_learn_falls_back_to_bytes(texts):
    with pytest.warns(UserWarning, match="byte tokenizer"):
        tok = train_bpe(texts, 300)
    assert tok.kind == "byte"
    assert tok.encode("abc") == [97, 98, 99]


def test_too_small_vocab_is_a_user_error():
    with pytest.raises(UserError, match="more than 259"):
        train_bpe(_corpus(), 259)
