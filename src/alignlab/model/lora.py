"""LoRA adapters through peft, on the native GPT and on transformers models alike.

`add_lora(model, cfg, base)` injects peft's LoRA layers into the named linear layers in place
(`peft.inject_adapter_in_model`): the model keeps its class, so the native KV-cache generation, the
grouped-prompt log-probs and every `isinstance(model, GPT)` path run unchanged with the adapter in
the forward; every base weight is frozen and only the adapters train. `adapters_off(model)` runs a
block with the adapters bypassed: the frozen base model, which is the reference of GRPO / PPO /
DPO, so no second copy of the weights exists.

An adapter checkpoint holds only the adapters: `adapter_model.safetensors` and
`adapter_config.json` in peft's own format (keys `base_model.model.<module>.lora_A.weight`, so
`peft.PeftModel.from_pretrained` loads it onto the transformers base too), `adapter.json` with the
base model's identity (the `model.path` it was trained from) and the SHA-256 of its weights, and
the tokenizer. `load_model` recognises such a directory (`load_adapter`): it loads the base, checks
the hash (a base that changed since training is an error, not a silent mismatch) and applies the
adapter. `merge_lora` folds the adapters into the weights and removes them, leaving the plain model
(`alignlab export --merge`), which transformers loads with no peft installed.

Left out: QLoRA (4-bit bases), DoRA and other peft methods, several adapters on one model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignlab.config import LoRAConfig
from alignlab.errors import UserError

META = "adapter.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # peft's key prefix for a PeftModel's adapter weights


def _peft():
    try:
        import peft
    except ImportError:
        raise UserError("LoRA needs the peft library: pip install 'alignlab[peft]'", key="lora.r") from None
    return peft


def weights_sha256(directory: Path) -> str:
    """SHA-256 over a model directory's *.safetensors files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.safetensors")):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / META).is_file()


def has_lora(model: nn.Module) -> bool:
    return getattr(model, "alignlab_lora", None) is not None


def _peft_config(cfg: LoRAConfig, base: str):
    return _peft().LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), base_model_name_or_path=base,
                              task_type="CAUSAL_LM")


def add_lora(model: nn.Module, cfg: LoRAConfig, base: str, base_dir: Path | None = None, *, seed: int = 0) -> nn.Module:
    """Inject LoRA adapters into `model` in place (base weights frozen) and record the base's identity:
    `base` as the user named it, and the hash of `base_dir`'s weights (None: a model never saved).
    The adapters' random start (A; B starts at 0) is drawn from `seed`, not from the global stream."""
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = sorted(set(cfg.target_modules) - linear)
    if missing:
        raise UserError(f"no linear layer named {', '.join(missing)} in this model (it has: "
                        f"{', '.join(sorted(linear))})", key="lora.target_modules")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _peft().inject_adapter_in_model(_peft_config(cfg, base), model)
    model.alignlab_lora = {"format": 1, "base": base, "lora": dataclasses.asdict(cfg),
                           "base_sha256": weights_sha256(base_dir) if base_dir is not None else None}
    return model


def lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block on the base model: every adapter bypassed, then restored (a no-op without LoRA)."""
    if not has_lora(model):
        yield model
        return
    layers = lora_layers(model)
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights by peft's saved names (`base_model.model.<module>.lora_A.weight`)."""
    state = _peft().get_peft_model_state_dict(model, save_embedding_layers=False)
    return {PREFIX + key: value.detach().contiguous() for key, value in state.items()}


def load_adapter_weights(model: nn.Module, directory: Path) -> None:
    """Copy a saved adapter's weights into `model`'s adapters (same configuration); every key must fit."""
    state = {key.removeprefix(PREFIX): value for key, value in load_file(str(directory / WEIGHTS)).items()}
    result = _peft().set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    expected = {k.removeprefix(PREFIX) for k in adapter_state(model)}
    if unexpected or set(state) != expected:
        raise UserError(f"the adapter does not fit the model (unexpected {sorted(unexpected)[:3]}, "
                        f"missing {sorted(expected - set(state))[:3]})", file=str(directory / WEIGHTS))


def save_adapter(model: nn.Module, tokenizer, directory: str | Path) -> None:
    """Write the adapter checkpoint (module docstring) into an existing directory."""
    directory = Path(directory)
    meta = model.alignlab_lora
    save_file(adapter_state(model), str(directory / WEIGHTS), metadata={"format": "pt"})
    _peft_config(LoRAConfig(**{**meta["lora"], "target_modules": tuple(meta["lora"]["target_modules"])}),
                 meta["base"]).save_pretrained(str(directory))
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(str(directory))


def check_base(meta: dict, directory: Path) -> None:
    """UserError when the recorded base no longer has the weights the adapter was trained on."""
    from alignlab.model.checkpoint import resolve_source

    if meta.get("base_sha256") and weights_sha256(resolve_source(meta["base"])) != meta["base_sha256"]:
        raise UserError(f"the base model {meta['base']} no longer has the weights this adapter was trained on "
                        f"(SHA-256 differs from the one recorded)", file=str(Path(directory) / META))


def load_adapter(directory: str | Path, *, engine: str = "auto", dtype=None, device="cpu",
                 trust_remote_code: bool = False):
    """(model with the adapter applied, tokenizer) from an adapter checkpoint; the base is loaded from
    its recorded identity and must still have the recorded weights."""
    from alignlab.data.tokenizer import load_tokenizer
    from alignlab.model.checkpoint import load_model

    directory = Path(directory).expanduser()
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
        cfg = LoRAConfig(**{**meta["lora"], "target_modules": tuple(meta["lora"]["target_modules"])})
        base = meta["base"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"not a readable adapter record: {err}", file=str(directory / META)) from err
    check_base(meta, directory)
    model, _ = load_model(base, engine=engine, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    add_lora(model, cfg, base)
    model.alignlab_lora = meta
    load_adapter_weights(model, directory)
    return model.to(device), load_tokenizer(str(directory), trust_remote_code=trust_remote_code)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain linear layer back; returns `model`."""
    layers = {id(layer) for layer in lora_layers(model)}
    for name, module in list(model.named_modules()):
        if id(module) in layers:
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    model.alignlab_lora = None
    return model


def load_trainable(model_cfg, lora: LoRAConfig, device, *, engine: str | None = None, seed: int = 0):
    """(model, tokenizer) to train from `model_cfg.path`: with `lora.r` > 0 the adapters are added (base
    frozen, its identity recorded); an adapter checkpoint as the start continues its own adapter."""
    from alignlab.model.checkpoint import load_model, resolve_source
    from alignlab.runtime import parse_dtype

    model, tokenizer = load_model(model_cfg.path, engine=engine or model_cfg.engine,
                                  dtype=parse_dtype(model_cfg.dtype), device=device,
                                  trust_remote_code=model_cfg.trust_remote_code)
    if lora.enabled:
        if has_lora(model):
            raise UserError("model.path is a LoRA adapter checkpoint: train it on (lora.r=0 continues its adapter) "
                            "or fold it into its base first (alignlab export --merge)", key="lora.r")
        add_lora(model, lora, model_cfg.path, resolve_source(model_cfg.path), seed=seed)
    return model, tokenizer
