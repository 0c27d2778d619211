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

from alignlab.data.tokenizer import Tokenizer
from alignlab.data.tokenizer_load import HUB_ID, load_tokenizer
from alignlab.errors import UserError
from alignlab.model.gpt import GPT
from alignlab.model.hf import (
    from_hf,
    hf_config_dict,
    load_auto_causal_lm,
    native_unsupported,
    quiet_hub,
    read_json,
    set_gradient_checkpointing,
    write_weights,
)
from alignlab.model.lora import (
    adapter_record,
    add_lora,
    apply_adapter,
    base_to_check,
    has_lora,
    is_adapter_dir,
    read_adapter,
    save_adapter,
    verify_base,
)
from alignlab.outputs import fsync_tree, new_output, swap_in, temp_beside
from alignlab.runtime import parse_dtype

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
    if adapter_record(model) is not None:  # only the adapters (model/lora.py)
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
    if is_adapter_dir(source):  # a LoRA adapter checkpoint: base + adapter
        return _load_adapter(Path(source).expanduser(), engine=engine, dtype=dtype, device=device,
                             trust_remote_code=trust_remote_code, allow_unverified_base=allow_unverified_base)
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


def checked_base(meta: dict, directory: Path, allow_unverified: bool = False) -> str:
    """The base model of the adapter in `directory` (found from the adapter's folder, never the current
    directory), after checking it still has the weights the adapter was trained on (`model/lora.py`)."""
    base, recorded = base_to_check(meta, directory, allow_unverified)
    if recorded is not None:
        verify_base(resolve_source(base), recorded, base, directory)
    return base


def _load_adapter(directory: Path, *, engine: str, dtype, device, trust_remote_code: bool,
                  allow_unverified_base: bool):
    """(model with the adapter applied, tokenizer) from an adapter checkpoint: its base loaded and checked
    (`checked_base`; a record without a hash loads only with `allow_unverified_base`), then the adapter."""
    meta, cfg = read_adapter(directory)
    base = checked_base(meta, directory, allow_unverified_base)
    model, _ = load_model(base, engine=engine, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                          allow_unverified_base=allow_unverified_base)
    apply_adapter(model, directory, meta, cfg, base)
    return model.to(device), load_tokenizer(str(directory), trust_remote_code=trust_remote_code)


def load_trainable(model_cfg, lora, device, *, engine: str | None = None, seed: int = 0):
    """(model, tokenizer) to train from `model_cfg.path`: with `lora.r` > 0 the adapters are added (base
    frozen, its identity recorded); an adapter checkpoint as the start continues its own adapter."""
    model, tokenizer = load_model(model_cfg.path, engine=engine or model_cfg.engine,
                                  dtype=parse_dtype(model_cfg.dtype), device=device,
                                  trust_remote_code=model_cfg.trust_remote_code,
                                  allow_unverified_base=model_cfg.allow_unverified_base)
    if model_cfg.gradient_checkpointing:
        set_gradient_checkpointing(model, True)
    if lora.enabled:
        if has_lora(model):
            raise UserError("model.path is a LoRA adapter checkpoint: train it on (lora.r=0 continues its adapter) "
                            "or fold it into its base first (alignlab export --merge)", key="lora.r")
        add_lora(model, lora, model_cfg.path, resolve_source(model_cfg.path), seed=seed)
    return model, tokenizer
