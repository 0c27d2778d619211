"""Tokenizers: a byte-level BPE trained locally, a byte tokenizer, or any transformers tokenizer.

All three are one `Tokenizer`, a thin wrapper over a transformers tokenizer (`.hf`) that adds
what the rest of alignlab needs: the ids generation stops at, a pad id that always exists,
chat prompts, and `render_chat`, which turns a conversation into (ids, loss_mask) for SFT.

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

Chat templates are code shipped with a checkpoint (`tokenizer_config.json`), so rendering one is
bounded: transformers renders it in jinja2's sandbox, and `_render` adds a limit on the characters
produced (MAX_TEMPLATE_CHARS, checked as each chunk is produced, so a loop emitting gigabytes stops
at the limit) and on time (MAX_TEMPLATE_SECONDS, checked per chunk, plus a SIGALRM backstop for a
loop that emits nothing, in the main thread on Unix). Either stop is a UserError naming the
tokenizer. A template that grows one string without emitting it (doubling it with `~`) is stopped
by the time limit only.

Left out: slow (Python) tokenizer training, sentencepiece / unigram models, tool calling and
multimodal chat templates, truncation (batching code decides lengths).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as Backend
from tokenizers.pre_tokenizers import ByteLevel

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

# A chat rendering is a few KB; these bound a template that loops (see the module docstring).
MAX_TEMPLATE_CHARS = 1_000_000
MAX_TEMPLATE_SECONDS = 10.0

# Key in tokenizer_config.json that marks a tokenizer as ours. transformers keeps unknown
# init kwargs in `init_kwargs` and writes them back on save, so it survives round trips.
KIND_KEY = "alignlab_kind"

# Files that carry a vocabulary. transformers 5 builds an EMPTY tokenizer (one token) from a
# model directory that has none of them, instead of failing, so we check first.
VOCAB_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
               "sentencepiece.bpe.model", "tekken.json")

# "name" or "org/name" that is not a local path: a Hugging Face hub id.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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
            raise UserError(f"tokenizer {self.name_or_path!r} has no chat template, so "
                            "conversations cannot be rendered; set tokenizer.chat_template")
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


class _TemplateLimit(Exception):
    """A chat template went over MAX_TEMPLATE_CHARS or MAX_TEMPLATE_SECONDS (the message says which)."""


class _Budget:
    """What a rendering may still produce, and until when."""

    def __init__(self, chars: int, seconds: float):
        self.chars, self.deadline = chars, time.monotonic() + seconds

    def spend(self, n: int) -> None:
        self.chars -= n
        if self.chars < 0:
            raise _TemplateLimit(f"exceeded the limit of {MAX_TEMPLATE_CHARS} characters")
        if time.monotonic() > self.deadline:
            raise _TemplateLimit(f"exceeded the limit of {MAX_TEMPLATE_SECONDS:g} seconds")


_BUDGET: ContextVar[_Budget | None] = ContextVar("alignlab_chat_template_budget", default=None)


def _bounded_concat(chunks: Iterator[str]) -> str:
    """jinja2's `Environment.concat` ("".join of the rendered chunks), spending the active budget per chunk."""
    budget = _BUDGET.get()
    if budget is None:
        return "".join(chunks)
    parts = []
    for chunk in chunks:
        budget.spend(len(chunk))
        parts.append(chunk)
    return "".join(parts)


def _bounded_binop(self, context, operator: str, left, right):
    """The sandbox's `call_binop`, refusing `'x' * 10**9` (a sequence repeated past the budget) first."""
    from jinja2.sandbox import SandboxedEnvironment

    budget = _BUDGET.get()
    if budget is not None and operator == "*":
        sequence = next((v for v in (left, right) if isinstance(v, (str, list, tuple))), None)
        times = next((v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)), None)
        if sequence is not None and times is not None and len(sequence) * times > budget.chars:
            raise _TemplateLimit(f"exceeded the limit of {MAX_TEMPLATE_CHARS} characters")
    return SandboxedEnvironment.call_binop(self, context, operator, left, right)


def _install_bounds() -> None:
    """Route the rendering of every jinja2 ImmutableSandboxedEnvironment (transformers' chat template
    environment) through the budget. Without an active budget (`_render_limits`) both hooks behave
    exactly as jinja2's own, so other renderings in the process are unchanged."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment as Env

    if Env.__dict__.get("call_binop") is not _bounded_binop:
        Env.concat = staticmethod(_bounded_concat)
        Env.intercepted_binops = frozenset(Env.intercepted_binops | {"*"})  # read when a template compiles
        Env.call_binop = _bounded_binop


@contextmanager
def _render_limits():
    """A budget of MAX_TEMPLATE_CHARS / MAX_TEMPLATE_SECONDS for the renderings inside, with a SIGALRM
    backstop for loops that emit nothing (main thread on Unix, when no other timer is running)."""
    _install_bounds()
    token = _BUDGET.set(_Budget(MAX_TEMPLATE_CHARS, MAX_TEMPLATE_SECONDS))
    alarm = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
             and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if alarm:
        def on_alarm(signum, frame):
            raise _TemplateLimit(f"exceeded the limit of {MAX_TEMPLATE_SECONDS:g} seconds")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, MAX_TEMPLATE_SECONDS)
    try:
        yield
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        _BUDGET.reset(token)


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


def inside_folder(folder: Path, name, *, named_in: Path | str, key: str | None = None) -> Path:
    """`folder / name` for a file name written inside a checkpoint (a weight index's shard, a tokenizer
    config's file), refused with a UserError naming `named_in` and `key` unless it stays inside `folder`:
    no absolute name, no `..` that leaves it, no symlink that resolves outside it. A checkpoint is data
    anyone may hand over; what it names must never make alignlab read the rest of the disk.

    One exception, for the Hugging Face hub cache: a snapshot's files are symlinks into the repository's
    `blobs/` folder (models--org--name/snapshots/<rev>/x -> ../../blobs/<sha>), which is allowed.
    """
    if not isinstance(name, str) or not name or "\0" in name:
        raise UserError(f"expected a file name inside the checkpoint folder, got {name!r}", file=str(named_in),
                        key=key)
    root = folder.resolve()
    lexical = Path(os.path.normpath(root / name))  # `..` folded before any symlink is followed
    if os.path.isabs(name) or not lexical.is_relative_to(root):
        raise UserError(f"{name!r} is outside the checkpoint folder {folder}; files a checkpoint names are "
                        f"resolved inside it (absolute names and '..' are refused)", file=str(named_in), key=key)
    real = lexical.resolve()
    blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    if not (real.is_relative_to(root) or (blobs is not None and real.is_relative_to(blobs))):
        raise UserError(f"{name!r} is a symlink that resolves outside the checkpoint folder {folder} (to {real}); "
                        f"files a checkpoint names must be inside it", file=str(named_in), key=key)
    return folder / name


# Files transformers reads from a local tokenizer folder besides VOCAB_FILES (a symlink among them must stay
# inside the folder too), and tokenizer_config.json keys that name files (checked by suffix as well).
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json", "config.json", "merges.txt")
FILE_KEYS = ("tokenizer_file", "vocab_file", "merges_file", "spm_file", "chat_template_file",
             "fast_tokenizer_files", "added_tokens_file", "special_tokens_map_file", "tokenizer_config_file")


def _read_tokenizer_config(directory: Path) -> dict:
    """tokenizer_config.json ({} when absent), after checking that no file it names (a `*_file` or
    `*_files` key: tokenizer_file, vocab_file, merges_file, chat templates...) and no file transformers
    reads from the folder (a symlink) leads outside `directory` (`inside_folder`)."""
    config_file = directory / "tokenizer_config.json"
    for name in (*VOCAB_FILES, *TOKENIZER_FILES):
        if (directory / name).is_symlink():
            inside_folder(directory, name, named_in=directory)
    templates = directory / "additional_chat_templates"
    if templates.is_dir():
        for path in sorted(templates.iterdir()):
            inside_folder(directory, f"{templates.name}/{path.name}", named_in=directory)
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"not valid JSON: {err}", file=str(config_file)) from None
    if not isinstance(config, dict):
        raise UserError(f"expected a JSON object, got {type(config).__name__}", file=str(config_file))
    for key, value in config.items():
        if key in FILE_KEYS or key.endswith(("_file", "_files")):
            names = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
            for name in names:
                if name is not None:
                    inside_folder(directory, name, named_in=config_file, key=key)
    return config


def load_tokenizer(path: str, *, trust_remote_code: bool = False) -> Tokenizer:
    """A tokenizer from a local directory (ours or any transformers one) or a hub id.

    Ours load from their own `tokenizer.json` as saved (kind "bpe" / "byte"); anything else
    goes through `AutoTokenizer` (kind "hf"). A hub id downloads only when online.
    """
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    local = Path(path).expanduser()
    if local.is_dir():
        return _load_local(local, trust_remote_code)
    if local.exists():
        raise UserError("a tokenizer is a directory (tokenizer.json, tokenizer_config.json), "
                        "not a file", file=str(local))
    if not HUB_ID.match(path):
        raise UserError("tokenizer directory not found", file=str(local))
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:  # offline, unknown repo, gated, remote code refused: one line
        raise UserError(f"tokenizer '{path}' is not a local directory and could not be loaded "
                        f"from the hub ({type(err).__name__}; HF_HUB_OFFLINE="
                        f"{os.environ.get('HF_HUB_OFFLINE', '0')})") from None
    return Tokenizer(hf, hf.init_kwargs.get(KIND_KEY, "hf"))


def _load_local(directory: Path, trust_remote_code: bool) -> Tokenizer:
    if not any((directory / name).is_file() for name in VOCAB_FILES):
        raise UserError(f"no tokenizer files in this directory (expected one of "
                        f"{', '.join(VOCAB_FILES)})", file=str(directory))
    kind = _recorded_kind(_read_tokenizer_config(directory), directory / "tokenizer_config.json")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if kind is not None:
            # Ours: load tokenizer.json verbatim; AutoTokenizer would see the Qwen2 config.json
            # of a checkpoint and rebuild a Qwen2Tokenizer around our vocabulary.
            hf = PreTrainedTokenizerFast.from_pretrained(str(directory))
        else:
            hf = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"could not load the tokenizer: {first}", file=str(directory)) from None
    return Tokenizer(hf, kind or "hf")


def _recorded_kind(config: dict, config_file: Path) -> str | None:
    """The kind an alignlab tokenizer recorded in its tokenizer_config.json (None: not ours)."""
    kind = config.get(KIND_KEY)
    if kind is not None and kind not in ("bpe", "byte"):
        raise UserError(f"unknown tokenizer kind {kind!r}; expected 'bpe' or 'byte'",
                        file=str(config_file), key=KIND_KEY)
    return kind


def tokenizer_for_new_model(config, texts: Iterable[str], resume_from: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer a trainer gives a new native model (`config` is a `TokenizerConfig`): the one
    saved in the checkpoint being resumed, a given directory, the byte tokenizer, or a BPE
    trained on `texts` (consumed only in that last case)."""
    if resume_from is not None:
        return load_tokenizer(str(resume_from))
    if config.path:
        return load_tokenizer(config.path)
    if config.kind == "byte":
        return byte_tokenizer()
    return train_bpe(texts, config.vocab_size)
