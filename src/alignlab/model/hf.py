"""The bridge to Hugging Face: Qwen2 and Llama config and weight mapping, and any other causal LM.

Our `GPT` mirrors `Qwen2ForCausalLM` and `LlamaForCausalLM` name for name, so "mapping" is
reading and writing the same state dict: `config.json` (the config transformers writes for the
family `GPTConfig.architecture` names) plus `model.safetensors` (or sharded
`model-0000x-of-0000y.safetensors` with an index). Llama's tensors are Qwen2's without the q/k/v
biases (plus o_proj / MLP biases when `attention_bias` / `mlp_bias` say so). Config mapping reads
transformers 4.x (`rope_theta`, `rope_scaling`) and 5.x (`rope_parameters`) keys alike and writes
both. Other architectures, and Qwen2 / Llama variants the native engine cannot run exactly
(`native_unsupported` says why), are loaded with `transformers.AutoModelForCausalLM` and run on
its slower path. Nothing here downloads unless the caller names a hub id and the network is
there; `trust_remote_code` stays off unless the user asks.

Left out: writing sharded checkpoints (our models are small; transformers reads one file).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from alignlab.config import GPTConfig
from alignlab.data.tokenizer_load import inside_folder
from alignlab.errors import UserError
from alignlab.model.gpt import GPT, ROPE_SCALING, Decoder, Rotary

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def quiet_hub() -> None:
    """No telemetry and no per-file progress bars whenever we drive transformers /
    huggingface_hub (called before use, never at import time)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def read_json(path: Path) -> dict:
    """A model folder's JSON file (config.json and the like), which must hold one object."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError("file not found", file=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"not valid JSON ({err})", file=str(path)) from None
    if not isinstance(record, dict):
        raise UserError(f"expected a JSON object, got {type(record).__name__}", file=str(path))
    return record


FAMILIES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}  # model_type -> class transformers builds
_ROPE_KEYS = {"default": (), "linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor")}  # what each scaling cannot go without


def _rope(hf_config: dict) -> dict:
    """The rope dict as transformers 5 resolves it: a 4.x `rope_scaling` wins over 5.x `rope_parameters`."""
    rope = hf_config.get("rope_scaling") or hf_config.get("rope_parameters") or {}
    return rope if isinstance(rope, dict) else {"rope_type": repr(rope)}


def _rope_type(rope: dict) -> str:
    return rope.get("rope_type") or rope.get("type") or "default"


def native_unsupported(hf_config: dict) -> str | None:
    """Why the native engine cannot run this config exactly, or None when it can."""
    family = hf_config.get("model_type")
    if family not in FAMILIES:
        return f"model_type is {family!r}, not one of {', '.join(map(repr, FAMILIES))}"
    if hf_config.get("use_sliding_window"):
        return "it uses sliding-window attention"
    if hf_config.get("hidden_act", "silu") != "silu":
        return f"hidden_act is {hf_config.get('hidden_act')!r}"
    if family == "llama" and (hf_config.get("pretraining_tp") or 1) != 1:
        return (f"pretraining_tp is {hf_config['pretraining_tp']} (transformers 4.x then computes every linear "
                f"in slices, with other rounding)")
    rope = _rope(hf_config)
    if any(isinstance(value, dict) for value in rope.values()):
        return "it has rope parameters per layer type"
    kind = _rope_type(rope)
    if kind not in ROPE_SCALING:
        return f"it uses rope scaling {kind!r} (the native engine has {', '.join(map(repr, ROPE_SCALING))})"
    missing = [key for key in _ROPE_KEYS[kind] if key not in rope]
    if missing:
        return f"its {kind!r} rope scaling lacks {', '.join(missing)}"
    if rope.get("partial_rotary_factor", hf_config.get("partial_rotary_factor")) not in (None, 1, 1.0):
        return "it rotates only part of each head (partial_rotary_factor)"
    return None


def _rope_fields(hf_config: dict, max_positions: int) -> dict:
    """GPTConfig's rope fields from a config.json; scaling factors only for the rope type that reads them."""
    rope = _rope(hf_config)
    kind = _rope_type(rope)
    fields = {"rope_type": kind, "rope_theta": float(rope.get("rope_theta", hf_config.get("rope_theta", 10000.0)))}
    if kind in ("linear", "llama3"):
        fields["rope_factor"] = float(rope["factor"])
    if kind == "llama3":
        # transformers 5 lets a top-level original_max_position_embeddings override the rope dict's, and
        # falls back to max_position_embeddings (`standardize_rope_params`).
        original = hf_config.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
        fields.update(low_freq_factor=float(rope["low_freq_factor"]), high_freq_factor=float(rope["high_freq_factor"]),
                      original_max_position_embeddings=int(original or max_positions))
    return fields


def gpt_config_from_hf(hf_config: dict) -> GPTConfig:
    """A Qwen2 or Llama config.json (transformers 4.x `rope_theta` / `rope_scaling` or 5.x `rope_parameters`;
    also `PretrainedConfig.to_dict()`) -> GPTConfig. Any model_type but 'llama' is read as Qwen2; check
    `native_unsupported` first. Raises KeyError, TypeError or ValueError on a config it cannot read."""
    llama = hf_config.get("model_type") == "llama"
    heads, hidden = hf_config["num_attention_heads"], hf_config["hidden_size"]
    head_dim = hf_config.get("head_dim")
    max_positions = hf_config.get("max_position_embeddings") or (2048 if llama else 32768)  # the families' defaults
    return GPTConfig(
        vocab_size=hf_config["vocab_size"],
        hidden_size=hidden,
        intermediate_size=hf_config["intermediate_size"],
        num_hidden_layers=hf_config["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=hf_config.get("num_key_value_heads") or heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=hf_config.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=hf_config.get("tie_word_embeddings", False),
        architecture="llama" if llama else "qwen2",
        attention_bias=llama and bool(hf_config.get("attention_bias", False)),  # Qwen2's biases are fixed
        mlp_bias=llama and bool(hf_config.get("mlp_bias", False)),
        explicit_head_dim=head_dim if head_dim and head_dim != hidden // heads else None,  # derived stays derived
        **_rope_fields(hf_config, max_positions),
    )


def _rope_parameters(config: GPTConfig) -> dict:
    """transformers 5's `rope_parameters` for a GPTConfig (the 4.x `rope_scaling` is the same less rope_theta)."""
    rope = {"rope_type": config.rope_type, "rope_theta": config.rope_theta}
    if config.rope_type != "default":
        rope["factor"] = config.rope_factor
    if config.rope_type == "llama3":
        rope.update(low_freq_factor=config.low_freq_factor, high_freq_factor=config.high_freq_factor,
                    original_max_position_embeddings=config.original_max_position_embeddings)
    return rope


def hf_config_dict(config: GPTConfig, dtype: torch.dtype, special_ids: dict | None = None) -> dict:
    """GPTConfig -> the config.json `Qwen2ForCausalLM` or `LlamaForCausalLM` (by `config.architecture`)
    `from_pretrained` expects, 4.x and 5.x keys. A default-rope Qwen2 config is written as it always was."""
    rope = _rope_parameters(config)
    family = config.architecture
    extra: dict = {}
    if config.rope_type != "default" or family == "llama":  # 4.x reads scaling only from rope_scaling
        extra["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"} if len(rope) > 2 else None
    if family == "llama":
        extra.update(attention_bias=config.attention_bias, mlp_bias=config.mlp_bias, head_dim=config.head_dim,
                     pretraining_tp=1)
    elif config.explicit_head_dim:
        extra["head_dim"] = config.head_dim
    return {
        "architectures": [FAMILIES[family]],
        "model_type": family,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": config.rope_theta,
        "rope_parameters": rope,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        **({"use_sliding_window": False, "sliding_window": None} if family == "qwen2" else {}),
        **extra,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        **(special_ids or {}),
    }


def _shard_files(directory: Path) -> list[Path]:
    """The shard files a weight index names, each resolved inside `directory` (`inside_folder`): an index
    is data, and its names never make alignlab read a file outside the checkpoint."""
    index_file = directory / INDEX
    index = read_json(index_file)
    weight_map = index.get("weight_map", {}) if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise UserError("expected an object with a 'weight_map' of tensor name -> shard file", file=str(index_file),
                        key="weight_map")
    shards: dict[str, Path] = {}
    for tensor, name in weight_map.items():  # the first tensor naming a bad shard is the one the error names
        shards.setdefault(name, inside_folder(directory, name, named_in=index_file, key=f"weight_map[{tensor!r}]"))
    return [shards[name] for name in sorted(shards)]


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors checkpoint, one file or sharded by an index; every file read is inside
    `directory` (a symlink out of it is refused, the hub cache's own blobs excepted: `inside_folder`)."""
    files = [directory / WEIGHTS]
    if files[0].is_symlink():
        inside_folder(directory, WEIGHTS, named_in=directory)
    if not files[0].exists() and (directory / INDEX).exists():
        files = _shard_files(directory)
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.exists():
            pickles = sorted(p.name for p in directory.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
            if pickles:
                raise UserError(f"no safetensors weights, only {', '.join(pickles)} (a pickle): alignlab never "
                                f"unpickles weights; convert them with transformers' save_pretrained("
                                f"safe_serialization=True)", file=str(directory))
            raise UserError("weights file not found", file=str(file))
        try:
            tensors.update(load_file(str(file)))
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(f"not a readable safetensors file ({err})", file=str(file)) from None
    return tensors


def write_weights(model: GPT, directory: Path) -> None:
    """Write model.safetensors; a tied lm_head is left out, as transformers does."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(directory / WEIGHTS), metadata={"format": "pt"})


def from_hf(path: str | Path, *, dtype: torch.dtype | None = None, device="cpu") -> GPT:
    """Load a Qwen2/Qwen2.5 or Llama (SmolLM2, TinyLlama, Llama 3.x) checkpoint directory into the native
    GPT (exact, no conversion)."""
    directory = Path(path)
    config = _native_config(directory / "config.json")
    state = read_weights(directory)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = GPT(config)
    expected = {k for k in model.state_dict() if not (config.tie_word_embeddings and k == "lm_head.weight")}
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        detail = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(unexpected)[:3]}"
        raise UserError(f"weights do not match the config: {detail}", file=str(directory))
    shapes = model.state_dict()
    wrong = [k for k in sorted(state) if tuple(state[k].shape) != tuple(shapes[k].shape)]
    if wrong:
        k = wrong[0]
        raise UserError(f"weights do not match config.json: {k} has shape {list(state[k].shape)} in the weights, "
                        f"{list(shapes[k].shape)} by the config ({len(wrong)} tensors differ)", file=str(directory))
    target = dtype or next(iter(state.values())).dtype
    model.load_state_dict({k: v.to(target) for k, v in state.items()}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb = Rotary.of(config)  # a buffer, so still on the meta device
    return model.to(device)


def _native_config(file: Path) -> GPTConfig:
    """The GPTConfig of a config.json the native engine runs exactly; UserError when it cannot."""
    hf_config = read_json(file)
    why = native_unsupported(hf_config)
    if why:
        raise UserError(f"the native engine cannot load this model: {why}; use the transformers engine "
                        "(model.engine=hf, or --engine hf on generate)", file=str(file))
    try:
        return gpt_config_from_hf(hf_config)
    except KeyError as err:
        raise UserError("missing (a Qwen2 or Llama config.json has it)", file=str(file), key=str(err.args[0])) from None
    except (TypeError, ValueError) as err:
        raise UserError(f"config.json does not describe a model the native engine can build ({err})",
                        file=str(file)) from None


def load_auto_causal_lm(source: str, *, dtype: torch.dtype | None, device, trust_remote_code: bool):
    """Any transformers causal LM from a local directory or (with network) a hub id."""
    local = Path(source).expanduser()
    if (local / INDEX).is_file():  # transformers joins the index's shard names to the folder as they are
        _shard_files(local)
    quiet_hub()
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype or "auto", trust_remote_code=trust_remote_code,
            use_safetensors=True)  # never unpickle weights (pytorch_model.bin)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"could not load model '{source}' (not a local model directory, and the hub "
                        f"is offline or does not have it): {first}") from None
    return model.to(device)


def set_gradient_checkpointing(model, on: bool) -> None:
    """Recompute each decoder layer's activations in the backward pass (less memory, more time), for the
    native GPT (its Decoder's flag; a reward or value head's backbone too) and any transformers model."""
    for module in model.modules():
        if isinstance(module, Decoder):
            module.gradient_checkpointing = on
        elif getattr(module, "supports_gradient_checkpointing", False):  # a transformers PreTrainedModel
            # transformers >= 5.2x names it activation checkpointing (the old names warn); earlier 5.x has the old
            if hasattr(module, "activation_checkpointing_enable"):
                if on:
                    module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    module.activation_checkpointing_disable()
            elif on:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                module.gradient_checkpointing_disable()


@functools.cache
def _takes_positions(model_class: type) -> bool:
    return "position_ids" in inspect.signature(model_class.forward).parameters


def hf_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
    """A transformers model's forward on a batch that may be left-padded, with position ids that count
    real tokens only, as `generate` builds them. Without them a model numbers a left-padded row from
    its first pad: rotary models do not notice (only relative positions enter attention), but learned
    absolute positions (GPT-2) would score a completion at other positions than it was sampled at.
    A model whose forward takes no `position_ids` gets none. Shapes: (B, T) ids, (B, T) bool mask."""
    mask = attention_mask.long()
    if _takes_positions(type(getattr(model, "module", model))):  # a DDP / FSDP wrapper passes them on
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)  # (B, T); a pad's own value is never read
    return model(input_ids=input_ids, attention_mask=mask, **kwargs)


def causal_lm_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) ids -> (B, T, V) logits for the native GPT and any transformers causal LM alike."""
    if isinstance(model, GPT):
        return model(input_ids, attention_mask)
    if attention_mask is None:
        return model(input_ids=input_ids).logits
    return hf_forward(model, input_ids, attention_mask).logits
