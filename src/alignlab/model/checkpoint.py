"""Saving and loading models with their tokenizer, atomically, without pickle.

A saved model is a transformers-loadable directory: `config.json`, `model.safetensors`,
`generation_config.json`, `tokenizer.json` and `tokenizer_config.json`. For the native GPT
the config is the Qwen2 config, so every alignlab checkpoint loads in
`AutoModelForCausalLM.from_pretrained` as it is and `alignlab export` only leaves the
training state behind. Directories are written under a temporary name, fsynced and
renamed: a checkpoint is complete or absent.

Left out: trainer state (optimizer, RNG, data position), which `trainers/loop.py` adds to a
checkpoint directory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from alignlab.data.tokenizer import HUB_ID, Tokenizer, load_tokenizer
from alignlab.errors import UserError
from alignlab.model.gpt import GPT
from alignlab.model.hf import (
    from_hf,
    hf_config_dict,
    load_auto_causal_lm,
    native_unsupported,
    quiet_hub,
    read_json,
    write_weights,
)
from alignlab.outputs import fsync_tree, new_output, swap_in, temp_beside

EXPORT_HINT = ": pass --overwrite to replace it (an earlier alignlab export), or choose another folder"


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary directory beside `target`; on success it becomes `target`.

    Readers never see a half-written directory: names starting with '.' are temporary, and
    the rename happens only after every file is fsynced. An existing `target` is replaced (the
    caller owns it: a checkpoint inside a locked run, or an output `new_output` has checked).
    """
    target = Path(target)
    tmp = temp_beside(target)
    try:
        yield tmp
        fsync_tree(tmp)
        swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _special_ids(tokenizer: Tokenizer | None) -> dict:
    if tokenizer is None:
        return {}
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
            "pad_token_id": tokenizer.pad_id}


def save_model(model, tokenizer: Tokenizer | None, directory: str | Path) -> None:
    """Write model (+ tokenizer) into an existing directory (wrap in `atomic_dir` for safety)."""
    directory = Path(directory)
    if getattr(model, "alignlab_lora", None) is not None:  # only the adapters (model/lora.py)
        from alignlab.model.lora import save_adapter

        save_adapter(model, tokenizer, directory)
        return
    if isinstance(model, GPT):
        config = hf_config_dict(model.config, model.dtype, _special_ids(tokenizer))
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_weights(model, directory)
        if tokenizer is not None:
            generation = {"eos_token_id": list(tokenizer.stop_ids), "pad_token_id": tokenizer.pad_id,
                          "bos_token_id": tokenizer.bos_id}
            (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    else:
        quiet_hub()
        model.save_pretrained(str(directory), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save(str(directory))


def to_hf(model, directory: str | Path, tokenizer: Tokenizer | None = None, *, overwrite: bool = False,
          protect=()) -> Path:
    """Export a directory that `transformers.AutoModelForCausalLM.from_pretrained` loads (and
    `AutoTokenizer` too, when the tokenizer is given). `directory` must be new or empty, or (with
    `overwrite`) an earlier alignlab export; it may not overlap `protect` (the source checkpoint
    and its run). The export is complete or absent (`outputs.new_output`)."""
    with new_output(directory, "export", replace=overwrite, protect=protect, hint=EXPORT_HINT) as tmp:
        save_model(model, tokenizer, tmp)
        fsync_tree(tmp)
    return Path(directory)


def resolve_source(source: str) -> Path:
    """A local model directory for `source`: a path as given, a GGUF file (or a name like
    `smollm2-135m-instruct`) imported once into the cache (`model/gguf.py`), or a hub id fetched
    (when online)."""
    from alignlab.model.gguf import cached_import, gguf_source  # gguf.py builds on this module

    gguf_file = gguf_source(source)
    if gguf_file is not None:
        return cached_import(gguf_file)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError("not a model directory (no config.json)", file=str(path))
        return path
    if path.exists() or not HUB_ID.match(source):
        raise UserError("checkpoint not found" if not path.exists() else "not a directory",
                        file=str(path))
    quiet_hub()
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.txt",
                                                          "*.model", "*.jinja"])
    except Exception as err:  # offline, unknown repo, gated...: one line for the user
        raise UserError(f"model '{source}' is not a local directory and could not be fetched "
                        f"from the hub ({type(err).__name__}; HF_HUB_OFFLINE="
                        f"{os.environ.get('HF_HUB_OFFLINE', '0')})") from None
    return Path(local)


def load_model(source: str, *, engine: str = "auto", dtype: torch.dtype | None = None,
               device="cpu", trust_remote_code: bool = False, allow_unverified_base: bool = False):
    """(model, tokenizer) from an alignlab checkpoint, an HF model directory, a GGUF file, a hub id, or a
    LoRA adapter checkpoint (its base loaded and checked, the adapter applied: `model/lora.py`).

    engine "auto" runs Qwen2- and Llama-architecture weights on the native GPT and everything else
    through transformers; "native" insists on the fast path; "hf" always uses transformers.
    """
    if (Path(source).expanduser() / "adapter.json").is_file():  # a LoRA adapter checkpoint: base + adapter
        from alignlab.model.lora import load_adapter

        return load_adapter(source, engine=engine, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                            allow_unverified_base=allow_unverified_base)  # base_sha256 missing: load anyway
    directory = resolve_source(source)
    hf_config = read_json(directory / "config.json")
    why_not = native_unsupported(hf_config)
    if engine == "native" or (engine == "auto" and why_not is None):
        model = from_hf(directory, dtype=dtype, device=device)
    else:
        model = load_auto_causal_lm(str(directory), dtype=dtype, device=device,
                                    trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(str(directory), trust_remote_code=trust_remote_code)
    check_vocabulary(model, tokenizer, directory)
    return model, tokenizer


def check_vocabulary(model, tokenizer: Tokenizer, directory) -> None:
    """A tokenizer whose ids run past the model's embedding does not belong to it: UserError.
    (An embedding with spare rows is normal: vocabularies are padded to a multiple of 64.)"""
    rows = model.get_input_embeddings().weight.shape[0]
    if tokenizer.vocab_size > rows:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary (embedding) has "
                        f"{rows} rows: tokenizer and weights do not belong together", file=str(directory))
