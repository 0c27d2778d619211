"""Loading a tokenizer: from a local folder (ours or any transformers one) or a hub id, checked first.

A tokenizer folder is data anyone may hand over, so before transformers reads it, every file it names
(tokenizer_config.json's `*_file` keys) and every symlink among the files transformers reads must stay
inside the folder (`inside_folder`, which model loading uses for weight shards too). Also here: the
tokenizer a trainer gives a new native model (`tokenizer_for_new_model`).

Left out: building tokenizers (`train_bpe`, `byte_tokenizer`) and saving them (`Tokenizer.save`),
both in data/tokenizer.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from alignlab.data.tokenizer import KIND_KEY, Tokenizer, byte_tokenizer, train_bpe
from alignlab.errors import UserError

# Files that carry a vocabulary. transformers 5 builds an EMPTY tokenizer (one token) from a
# model directory that has none of them, instead of failing, so we check first.
VOCAB_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
               "sentencepiece.bpe.model", "tekken.json")

# "name" or "org/name" that is not a local path: a Hugging Face hub id.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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
