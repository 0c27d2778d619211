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
the tokenizer. `model/checkpoint.py::load_model` recognises such a directory: it finds the base from the
adapter's folder, never the current directory (`base_abs`, the absolute folder; `base_rel`, the same
relative to the adapter; else `base` itself), loads it, checks the hash (a base that changed since
training is an error, not a silent mismatch; a record without a hash loads only when the user says
`--allow-unverified-base`) and applies the adapter. `merge_lora` folds the adapters into the weights
and removes them, leaving the plain model (`alignlab export --merge`), which transformers loads with
no peft installed. This module knows nothing of checkpoints: `model/checkpoint.py` builds on it.

Left out: QLoRA (4-bit bases), DoRA and other peft methods, several adapters on one model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignlab.config import LoRAConfig
from alignlab.data.tokenizer_load import HUB_ID
from alignlab.errors import UserError

META = "adapter.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # peft's key prefix for a PeftModel's adapter weights
RECORD = "_alignlab_adapter"  # the module attribute holding the record (adapter_record)


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


def adapter_bases(path: str | Path) -> list[str]:
    """The base model folders an adapter checkpoint `path` depends on (its base, the base's run when the
    base is a run's checkpoint, and so on down a chain of adapters): what an output may never replace,
    or the adapter is orphaned. [] for anything else, or a base that cannot be found."""
    found, directory = [], Path(path).expanduser()
    while is_adapter_dir(directory) and len(found) < 16:
        try:
            directory = Path(resolve_base(_read_meta(directory)[0], directory))
        except UserError:
            break
        found += [str(directory)] + ([str(directory.parent.parent)] if directory.parent.name == "checkpoints" else [])
    return found


def adapter_record(model: nn.Module) -> dict | None:
    """The adapter's record (what adapter.json holds: base, its hash and folder, the LoRA settings), or
    None for a plain model. It travels on the module next to the peft layers it describes, under one
    private name, and is read and written only through this function and `set_adapter_record`."""
    return getattr(model, RECORD, None)


def set_adapter_record(model: nn.Module, record: dict | None) -> None:
    setattr(model, RECORD, record)


def has_lora(model: nn.Module) -> bool:
    return adapter_record(model) is not None


def _peft_config(cfg: LoRAConfig, base: str):
    return _peft().LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), base_model_name_or_path=base,
                              task_type="CAUSAL_LM")


ALL_LINEAR = "all-linear"


def adaptable_layers(model: nn.Module) -> set[str]:
    """Leaf names of the layers LoRA can adapt: linear layers and transformers' `Conv1D` (GPT-2's
    projections), the output projection onto the vocabulary excepted (peft's `all-linear` rule)."""
    from transformers.pytorch_utils import Conv1D

    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else getattr(model, "lm_head", None)
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, nn.Linear | Conv1D) and module is not output}


def add_lora(model: nn.Module, cfg: LoRAConfig, base: str, base_dir: Path | None = None, *, seed: int = 0) -> nn.Module:
    """Inject LoRA adapters into `model` in place (base weights frozen) and record the base's identity:
    `base` as the user named it, and the hash of `base_dir`'s weights (None: a model never saved).
    `target_modules` "all-linear" names every adaptable layer (`adaptable_layers`); the record keeps
    the names it resolved to. The adapters' random start (A; B starts at 0) is drawn from `seed`, not
    from the global stream."""
    layers = adaptable_layers(model)
    if tuple(cfg.target_modules) == (ALL_LINEAR,):
        cfg = dataclasses.replace(cfg, target_modules=tuple(sorted(layers)))
    missing = sorted(set(cfg.target_modules) - layers)
    if missing or not cfg.target_modules:
        raise UserError(f"no adaptable layer named {', '.join(missing) or ALL_LINEAR} in this model (it has: "
                        f"{', '.join(sorted(layers)) or 'none'}); name some of these, or "
                        f"lora.target_modules={ALL_LINEAR} for all of them", key="lora.target_modules")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _peft().inject_adapter_in_model(_peft_config(cfg, base), model)
    set_adapter_record(model, {
        "format": 1, "base": base, "lora": dataclasses.asdict(cfg),
        "base_sha256": weights_sha256(base_dir) if base_dir is not None else None,
        # found again from anywhere: the folder hashed, absolute (and relative: save_adapter)
        "base_abs": os.path.abspath(base_dir) if base_dir is not None else None,
        "base_hub": not Path(base).expanduser().is_dir(), "base_abs_for": base})
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
    meta = dict(adapter_record(model))
    if meta.get("base_abs"):  # `directory` is a temporary sibling of the target: the same relative path
        meta["base_rel"] = os.path.relpath(meta["base_abs"], os.path.abspath(directory))
    save_file(adapter_state(model), str(directory / WEIGHTS), metadata={"format": "pt"})
    _peft_config(LoRAConfig(**{**meta["lora"], "target_modules": tuple(meta["lora"]["target_modules"])}),
                 meta["base"]).save_pretrained(str(directory))
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(str(directory))


def _recorded_for_base(meta: dict) -> bool:
    """Whether base_abs / base_rel / base_hub still describe `base`: they were recorded for the `base` named in
    base_abs_for (absent in a record written by hand: trusted). A `base` edited since wins over them."""
    return meta.get("base_abs_for", meta["base"]) == meta["base"]


def _base_candidates(meta: dict, directory: Path) -> list[Path]:
    """Where an adapter's base may be, in order: the absolute folder recorded at training time, the same
    folder relative to the adapter's (a tree moved whole), `base` itself when absolute, else relative to the
    adapter's folder. Never the current directory: which model loads must not depend on where one stands."""
    candidates = []
    if _recorded_for_base(meta):
        if isinstance(meta.get("base_abs"), str) and os.path.isabs(meta["base_abs"]):
            candidates.append(Path(meta["base_abs"]))
        if isinstance(meta.get("base_rel"), str) and not os.path.isabs(meta["base_rel"]):
            candidates.append(directory / meta["base_rel"])
    named = Path(meta["base"]).expanduser()
    candidates.append(named if named.is_absolute() else directory / named)
    return candidates


def resolve_base(meta: dict, directory: Path) -> str:
    """The base model of the adapter in `directory` (its adapter.json read into `meta`): a local folder
    (`_base_candidates`), or the hub id it was trained from. UserError when it is not found or is the
    adapter's own folder."""
    record, base = directory / META, meta.get("base")
    if not isinstance(base, str) or not base:
        raise UserError(f"expected 'base' to name the base model, got {base!r}", file=str(record), key="base")
    tried = _base_candidates(meta, directory)
    found = next((p for p in tried if p.is_dir()), None)
    if found is not None:
        if found.resolve() == directory.resolve():
            raise UserError(f"the adapter names its own folder as its base ({base!r}); expected the model it was "
                            f"trained from", file=str(record), key="base")
        return str(found)
    org_name = base.count("/") == 1  # without a record of how `base` was meant, only org/name is taken for a hub id
    if (meta.get("base_hub", org_name) if _recorded_for_base(meta) else org_name) and HUB_ID.match(base):
        if Path(base).exists():  # a relative name could also be read from the current directory: never
            raise UserError(f"the base {base!r} is a hub id, and a folder of that name is in the current directory; "
                            f"run from another directory (alignlab never resolves an adapter's base against "
                            f"the current directory)", file=str(record), key="base")
        return base
    raise UserError(f"the base model {base!r} is not found (looked at {', '.join(str(p) for p in tried)}; a "
                    f"relative base is resolved against the adapter's folder, never the current directory): put "
                    f"the base model there, or write its absolute path into 'base'", file=str(record), key="base")


def _check_chain(directory: Path) -> None:
    """UserError when following `base` from adapter to adapter comes back to one already seen."""
    seen = [directory.resolve()]
    current = directory
    while (current / META).is_file():
        base = Path(resolve_base(_read_meta(current)[0], current))
        if not base.is_dir():
            return  # a hub id
        nxt = base.resolve()
        if nxt in seen:
            chain = " -> ".join(str(p) for p in (*seen, nxt))
            raise UserError(f"the adapters' bases loop ({chain}); an adapter's base must be a model",
                            file=str(directory / META), key="base")
        seen.append(nxt)
        current = nxt


def base_to_check(meta: dict, directory: Path, allow_unverified: bool = False) -> tuple[str, str | None]:
    """(the adapter's base as `resolve_base` finds it, the SHA-256 its weights must have); the hash is None
    when none was recorded and `allow_unverified` lets it load anyway (else UserError)."""
    directory = Path(directory)
    base, recorded = resolve_base(meta, directory), meta.get("base_sha256")
    if recorded is None and not allow_unverified:
        raise UserError(f"no SHA-256 of the base model's weights is recorded (base_sha256), so alignlab cannot "
                        f"check that {meta['base']!r} is the model this adapter was trained on; to load it "
                        f"anyway pass --allow-unverified-base (generate, eval, export) or set "
                        f"model.allow_unverified_base=true (training)", file=str(directory / META),
                        key="base_sha256")
    return base, recorded


def verify_base(base_dir: Path, recorded: str | None, base: str, directory: Path) -> None:
    """UserError when the base's weights in `base_dir` no longer have the `recorded` SHA-256 (None: unchecked)."""
    if recorded is not None and (not isinstance(recorded, str) or weights_sha256(base_dir) != recorded):
        raise UserError(f"the base model {base} no longer has the weights this adapter was trained on "
                        f"(SHA-256 differs from the one recorded)", file=str(Path(directory) / META))


def read_adapter(directory: Path) -> tuple[dict, LoRAConfig]:
    """(record, LoRA settings) of the adapter checkpoint in `directory`, after refusing a loop of bases."""
    meta, cfg = _read_meta(directory)
    _check_chain(directory)
    return meta, cfg


def _read_meta(directory: Path) -> tuple[dict, LoRAConfig]:
    try:
        meta = json.loads((directory / META).read_text(encoding="utf-8"))
        cfg = LoRAConfig(**{**meta["lora"], "target_modules": tuple(meta["lora"]["target_modules"])})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"not a readable adapter record: {err}", file=str(directory / META)) from err
    return meta, cfg


def apply_adapter(model: nn.Module, directory: Path, meta: dict, cfg: LoRAConfig, base: str) -> nn.Module:
    """Add the saved adapter of `directory` to `model` (its base, loaded from `base`) and load its weights."""
    add_lora(model, cfg, meta["base"])
    local = Path(base).expanduser()
    # saved again (training on), the record still finds the base: its absolute folder as found now
    located = {"base_abs": os.path.abspath(local), "base_abs_for": meta["base"]}
    if not _recorded_for_base(meta):
        located["base_hub"] = False
    set_adapter_record(model, {**meta, **located} if local.is_dir() else meta)
    load_adapter_weights(model, directory)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain linear layer back; returns `model`."""
    layers = {id(layer) for layer in lora_layers(model)}
    for name, module in list(model.named_modules()):
        if id(module) in layers:
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    set_adapter_record(model, None)
    return model
