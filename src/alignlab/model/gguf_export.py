"""GGUF out: `export_gguf` writes a Qwen2 or Llama causal LM as llama.cpp's `convert_hf_to_gguf.py` does.

The file holds `general.architecture` qwen2 / llama, the `<arch>.*` hyper-parameters, a "gpt2" (byte-level
BPE) tokenizer (tokens, types, merges, special ids, chat template), tensors `token_embd`, `blk.N.*`,
`output_norm`, `output` (absent when tied). Llama's q/k rows are permuted for llama.cpp's interleaved
rotary layout; Qwen2's are not (llama.cpp runs Qwen2 in the NeoX layout transformers uses). Weights
are f32, f16 or q8_0; norms and biases stay f32, and a row not a multiple of 32 wide falls back to f16,
as in llama.cpp. The file is written beside its target and renamed: complete or absent.
`check_gguf_output` and `check_gguf_source` refuse a bad target or checkpoint before any loading.
Reading a GGUF back (and the format's shared constants) is `gguf.py`.

Left out: other architectures, rope scaling (llama.cpp's `rope_freqs`, which transformers' reader
ignores), Llama biases (dropped by that reader), tokenizers other than byte-level BPE with merges (so
not the byte tokenizer: llama.cpp needs merges), k-quants.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from alignlab.data.tokenizer import ENDOFTEXT, Tokenizer
from alignlab.errors import UserError
from alignlab.model.gguf import UNUSED, _gguf, is_gguf_file
from alignlab.model.gpt import GPT
from alignlab.model.hf import hf_config_dict, read_json
from alignlab.model.lora import has_lora
from alignlab.outputs import check_output_file, clean_leftovers, fsync_dir, temp_beside

ARCHS = ("llama", "qwen2")  # what export writes (and transformers' reader reads back)
DTYPES = ("f32", "f16", "q8_0")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


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
