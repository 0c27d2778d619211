"""Tokenizers: a byte-level BPE trained locally, a byte tokenizer, or any transformers tokenizer.

All three are one `Tokenizer`, a thin wrapper over a transformers tokenizer (`.hf`) that adds
what the rest of alignlab needs: the ids generation stops at, a pad id that always exists,
chat prompts, and `render_chat`, which turns a conversation into (ids, loss_mask) for SFT.
This module owns that wrapper and the building of our own tokenizers; loading one from a
folder or the hub is `tokenizer_load`, and the bounds on rendering a chat template are
`template_limits`.

Our own tokenizers (`train_bpe`, `byte_tokenizer`) share one shape with Qwen2.5:

- the normalizer (NFC) and pre-tokenizer (Qwen2's regex, then byte-level) are exactly the
  ones transformers' `Qwen2Tokenizer` rebuilds. An alignlab checkpoint carries a Qwen2
  `config.json`, and `AutoTokenizer` (transformers 5) then builds a `Qwen2Tokenizer` from the
  vocabulary and merges in `tokenizer.json`, ignoring its pipeline; matching it means such a
  user gets the same ids as we do.
- ChatML special tokens: `<|endoftext|>` (document separator, pad), `<|im_start|>`,
  `<|im_end|>` (end of a turn, the eos), and a ChatML chat template with no default system
  prompt, saved in `tokenizer_config.json` so transformers users get it too.
- the byte tokenizer has no merges and id i = byte i, so `encode(s) == list(s.encode())`
  for NFC text (nearly all text; decomposed accents are composed first).

Left out: slow (Python) tokenizer training, sentencepiece / unigram models, tool calling and
multimodal chat templates, truncation (batching code decides lengths).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as Backend
from tokenizers.pre_tokenizers import ByteLevel

from alignlab.data.template_limits import _render_limits, _TemplateLimit
from alignlab.errors import UserError

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
KINDS = ("bpe", "byte", "hf")
# Plain text of several scripts, digits, punctuation and list marks: what checks that two tokenizers
# agree, or that no special id appears in ordinary text, encode (task-neutral).
PROBE_TEXT = "- Plain text, 123 (4.5%)\n* 中文：你好，世界。\n1. Ünïcödé — ok?"

# ChatML as Qwen2.5 renders it, minus its default system prompt and tools:
#   <|im_start|>{role}\n{content}<|im_end|>\n   per message, then
#   <|im_start|>assistant\n                      when a reply is wanted.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Key in tokenizer_config.json that marks a tokenizer as ours. transformers keeps unknown
# init kwargs in `init_kwargs` and writes them back on save, so it survives round trips.
KIND_KEY = "alignlab_kind"


class Tokenizer:
    """A transformers tokenizer (`hf`) plus its `kind`: "bpe", "byte" (ours) or "hf" (anything else).

    A tokenizer without a pad token gets pad = eos here, with one warning: left-padded batched
    generation needs some pad id, and the attention mask (not the id) keeps it invisible.
    Models whose eos is also their pad token are the classic source of "batched generation
    stops at once" bugs when code masks by id instead of by attention mask; ours never does.
    """

    def __init__(self, hf, kind: str = "hf"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.hf = hf
        self.kind = kind
        if hf.pad_token is None and hf.eos_token is not None:
            warnings.warn(f"tokenizer {hf.name_or_path!r} has no pad token; using eos "
                          f"{hf.eos_token!r} as pad", stacklevel=2)
            hf.pad_token = hf.eos_token
        vocab = hf.get_vocab()
        candidates = (hf.eos_token_id, vocab.get(ENDOFTEXT), vocab.get(IM_END))
        # Qwen-style vocabularies end documents with <|endoftext|> and turns with <|im_end|>;
        # a model may emit either whatever its eos says, so generation stops at all of them.
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys(i for i in candidates if i is not None))

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can produce, added special tokens included."""
        return len(self.hf)

    @property
    def eos_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def pad_id(self) -> int | None:
        return self.hf.pad_token_id

    @property
    def bos_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def name_or_path(self) -> str:
        return self.hf.name_or_path

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, name={self.name_or_path!r})"

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, no special tokens added (special-token strings in it are parsed)."""
        return self.hf.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.hf(list(texts), add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        return self.hf.batch_decode([list(ids) for ids in batch], skip_special_tokens=skip_special_tokens)

    def chat_prompt_ids(self, prompt: str | list[dict]) -> list[int]:
        """Ids of a prompt rendered by the chat template, ending with the assistant header.

        A string is one user message. A tokenizer with no chat template (a base model's)
        gets the plain encoding of a string prompt: there is no chat shape to follow.
        """
        if self.hf.chat_template is None:
            if isinstance(prompt, str):
                return self.encode(prompt)
            raise UserError(f"tokenizer {self.name_or_path!r} has no chat template, so a list of "
                            "messages cannot be rendered; pass a plain string prompt or use a "
                            "tokenizer with a chat_template")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return self.encode(self._render(messages, add_generation_prompt=True))

    def render_chat(self, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """(ids, loss_mask) of a whole conversation; the mask is True on assistant replies.

        A reply is its content plus the token that closes the turn (`<|im_end|>`, or whichever
        stop id the template emits), not the `<|im_start|>assistant\\n` header and not the
        newline the template puts after the closing token: the model generates the former
        and stops before the latter. Each reply's span is found by rendering the conversation
        up to it (with the generation prompt) and up to its end, so any template works whose
        renderings of shorter conversations are prefixes of longer ones; one that is not
        (e.g. it rewrites earlier turns) raises ValueError.
        """
        if self.hf.chat_template is None:
            return self._render_plain(messages)
        full_text = self._render(messages, add_generation_prompt=False)
        ids = self.encode(full_text)
        mask = [False] * len(ids)
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            start = self._prefix_length(messages[:i], True, full_text, ids)
            end = self._prefix_length(messages[: i + 1], False, full_text, ids)
            end = self._turn_end(ids, start, end)
            mask[start:end] = [True] * (end - start)
        return ids, mask

    def _render_plain(self, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """A base model's (no chat template) one prompt and one reply: the prompt's plain encoding, as
        `chat_prompt_ids` gives it to generation, then the reply and the first stop id, which the mask
        covers. Anything longer has no shape to follow without a template: a UserError."""
        roles = [m.get("role") for m in messages]
        if roles != ["user", "assistant"]:
            raise UserError(f"tokenizer {self.name_or_path!r} has no chat template, so a conversation of "
                            f"{' / '.join(map(str, roles))} turns cannot be rendered (one prompt and one reply "
                            "can); set tokenizer.chat_template")
        prompt, reply = self.encode(messages[0]["content"]), self.encode(messages[1]["content"])
        reply += list(self.stop_ids)[:1]
        return prompt + reply, [False] * len(prompt) + [True] * len(reply)

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        # tokenize=False, then encode: transformers 5 returns a BatchEncoding for tokenize=True,
        # and encoding the string one way everywhere is what makes prefixes comparable.
        # transformers itself renders (so the text is exactly its own); `_render_limits` bounds it.
        try:
            with _render_limits():
                return self.hf.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=add_generation_prompt)
        except _TemplateLimit as err:
            raise UserError(f"rendering a conversation {err}; a chat template that runs away is refused (fix "
                            "or replace the template)", file=self.name_or_path or "<tokenizer>",
                            key="chat_template") from None

    def _prefix_length(self, messages: list[dict], add_generation_prompt: bool,
                       full_text: str, full_ids: list[int]) -> int:
        """Token count of a rendered prefix of the conversation, checked to be a true prefix."""
        text = self._render(messages, add_generation_prompt)
        ids = self.encode(text)
        if not full_text.startswith(text) or full_ids[: len(ids)] != ids:
            raise ValueError(
                f"chat template of {self.name_or_path!r} is not prefix-stable: rendering the first "
                f"{len(messages)} messages (add_generation_prompt={add_generation_prompt}) is not a "
                "prefix of rendering the whole conversation, so assistant tokens cannot be located; "
                "templates that rewrite earlier turns need a different masking strategy")
        return len(ids)

    def _turn_end(self, ids: list[int], start: int, end: int) -> int:
        """End of a reply: just after the last stop id in ids[start:end] (or `end` if none)."""
        for position in range(end - 1, start - 1, -1):
            if ids[position] in self.stop_ids:
                return position + 1
        return end

    def save(self, path: str | os.PathLike) -> None:
        """tokenizer.json + tokenizer_config.json (chat template and kind inside) in `path`."""
        # save_jinja_files=False keeps the chat template inside tokenizer_config.json, where
        # every transformers version looks, rather than in a separate chat_template.jinja.
        self.hf.save_pretrained(str(path), save_jinja_files=False)



def _qwen2_backend(vocab: dict[str, int] | None = None, merges: list | None = None) -> Backend:
    """An empty (or given) byte-level BPE with Qwen2's normalizer and pre-tokenizer."""
    # The regex Qwen2Tokenizer uses; imported so ours cannot drift from what transformers rebuilds.
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = Backend(models.BPE(vocab=vocab, merges=merges) if vocab is not None else models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    return backend


def _ours(backend: Backend, kind: str) -> Tokenizer:
    """Wrap a backend in a transformers tokenizer with our specials, template and kind marker."""
    from transformers import PreTrainedTokenizerFast

    # Appended after the regular vocabulary, as Qwen does: byte ids stay equal to byte values.
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    hf = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=IM_END, pad_token=ENDOFTEXT,
        chat_template=CHATML_TEMPLATE,
        # transformers 4 defaulted to True for some classes, which turns "a ." into "a.".
        clean_up_tokenization_spaces=False,
        **{KIND_KEY: kind})
    return Tokenizer(hf, kind)


def byte_tokenizer() -> Tokenizer:
    """256 byte ids (id i = byte i) + ChatML specials (256-258): nothing to train, nothing unknown."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    # byte-level BPE spells byte b as the printable character bytes_to_unicode()[b].
    symbols = bytes_to_unicode()
    vocab = {symbols[b]: b for b in range(256)}
    return _ours(_qwen2_backend(vocab, []), "byte")


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> Tokenizer:
    """Byte-level BPE trained on `texts`, `vocab_size` ids in all (ChatML specials included).

    The 256 byte symbols are always in the vocabulary, so any text encodes with no unknown
    token. When the texts teach no merge at all (empty, or nothing repeats `min_frequency`
    times) the result would be a byte tokenizer in a different order: we warn and return
    `byte_tokenizer()` instead.
    """
    floor = 256 + len(SPECIAL_TOKENS)
    if vocab_size <= floor:
        raise UserError(f"a BPE vocabulary needs more than {floor} ids (256 bytes + "
                        f"{len(SPECIAL_TOKENS)} special tokens), got {vocab_size}; use the byte "
                        "tokenizer for a pure byte vocabulary", key="vocab_size")
    backend = _qwen2_backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS), min_frequency=min_frequency,
        initial_alphabet=ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    if backend.get_vocab_size() <= len(ByteLevel.alphabet()):
        warnings.warn("BPE training learned no merges (empty corpus, or nothing repeats "
                      f"{min_frequency} times); falling back to the byte tokenizer", stacklevel=2)
        return byte_tokenizer()
    return _ours(backend, "bpe")
