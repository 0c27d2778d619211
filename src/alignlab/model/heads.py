"""Scalar heads on a backbone: `RewardModel`, one reward per sequence; `ValueModel`, one value per token.

The reward is a linear read-out (no bias: Bradley-Terry only sees differences) of the
backbone's features, pooled at the last real token for decoders (as
`Qwen2ForSequenceClassification` and TRL's reward models do) or averaged over real tokens
for encoders (the pooling sentence-transformers trains MiniLM with).

Backbones: the native GPT body (new, or from an alignlab / Qwen2 checkpoint; saved so that
`AutoModelForSequenceClassification` loads it) or any transformers `AutoModel` directory
(e.g. a BERT-family encoder; saved as that directory plus `score.safetensors`). Every saved
reward model carries `reward_model.json` (backbone kind and pooling) and its tokenizer.

`ValueModel` is PPO's critic: the same backbone + linear read-out applied at every position
(V_t, the value of the state before completion token t), started from a reward model (TRL's
default: the critic already knows what scores well) or from the policy's body with a zero head
(every value starts at 0). It must be causal: a value may not see the tokens after it, so an
encoder reward model (mean / cls pooling) cannot start one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignlab.config import GPTConfig, LoRAConfig
from alignlab.data.tokenizer import Tokenizer
from alignlab.data.tokenizer_load import load_tokenizer
from alignlab.errors import UserError
from alignlab.model.checkpoint import checked_base, resolve_source
from alignlab.model.gpt import GPT, Decoder, Rotary
from alignlab.model.hf import (
    WEIGHTS,
    from_hf,
    gpt_config_from_hf,
    hf_config_dict,
    hf_forward,
    native_unsupported,
    quiet_hub,
    read_json,
    read_weights,
)
from alignlab.model.lora import META as LORA_META
from alignlab.model.lora import (
    adapter_record,
    add_lora,
    has_lora,
    load_adapter_weights,
    save_adapter,
    set_adapter_record,
)

META = "reward_model.json"
HEAD = "score.safetensors"
POOLINGS = ("last", "mean", "cls")


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """hidden (B, T, C), mask (B, T) bool -> (B, C) at the last real token, the mean, or the first.

    >>> h = torch.arange(6.0).view(1, 3, 2)  # tokens [0, 1], [2, 3], [4, 5]; the last is padding
    >>> m = torch.tensor([[True, True, False]])
    >>> pool(h, m, "last").tolist(), pool(h, m, "mean").tolist()
    ([[2.0, 3.0]], [[1.0, 2.0]])
    """
    if how == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
        last = (positions * mask.long()).argmax(-1)  # (B,) works for left and right padding
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if how == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return hidden[:, 0]


class RewardModel(nn.Module):
    """backbone -> pooled features -> one scalar reward per sequence (float32)."""

    def __init__(self, backbone: nn.Module, hidden_size: int, *, pooling: str = "last",
                 arch: GPTConfig | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise UserError(f"pooling must be one of {POOLINGS}, got {pooling!r}", key="pooling")
        self.model = backbone  # named as in Qwen2ForSequenceClassification
        self.score = nn.Linear(hidden_size, 1, bias=False)
        nn.init.normal_(self.score.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        self.pooling = pooling
        self.arch = arch  # the native body's architecture; None for a transformers backbone

    @property
    def native(self) -> bool:
        return self.arch is not None

    @classmethod
    def new(cls, arch: GPTConfig) -> RewardModel:
        """A native GPT body with random weights (train from scratch)."""
        return cls(Decoder(arch), arch.hidden_size, pooling="last", arch=arch)

    @property
    def device(self) -> torch.device:
        return self.score.weight.device

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and bool mask -> pooled features (B, C)."""
        if self.native:
            hidden = self.model(input_ids, attention_mask)  # (B, T, C)
        else:
            hidden = hf_forward(self.model, input_ids, attention_mask).last_hidden_state
        return pool(hidden, attention_mask.bool(), self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and bool mask -> rewards (B,) float32."""
        return self.score(self.features(input_ids, attention_mask)).squeeze(-1).float()


def reward_model_from(source: str, *, pooling: str = "auto", engine: str = "auto", dtype=None,
                      device="cpu", trust_remote_code: bool = False) -> tuple[RewardModel, Tokenizer]:
    """A reward model whose backbone starts from `source`: a saved reward model (loaded as is),
    an alignlab / Qwen2 LM checkpoint (native body) or any transformers model directory."""
    directory = resolve_source(source)
    if (directory / META).exists():
        return load_reward_model(str(directory), device=device)
    hf_config = read_json(directory / "config.json")
    tokenizer = load_tokenizer(str(directory), trust_remote_code=trust_remote_code)
    if engine != "hf" and native_unsupported(hf_config) is None:
        gpt = from_hf(directory, dtype=dtype, device=device)
        model = RewardModel(gpt.model, gpt.config.hidden_size, arch=gpt.config,
                            pooling="last" if pooling == "auto" else pooling)
        return model.to(device), tokenizer
    quiet_hub()
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(str(directory), dtype=dtype or torch.float32, use_safetensors=True,
                                         trust_remote_code=trust_remote_code)
    decoder = any(a.endswith("ForCausalLM") for a in hf_config.get("architectures") or [])
    chosen = pooling if pooling != "auto" else ("last" if decoder else "mean")
    model = RewardModel(backbone, backbone.config.hidden_size, pooling=chosen)
    return model.to(device), tokenizer


def save_reward_model(model: RewardModel, tokenizer: Tokenizer, directory: str | Path) -> None:
    """Write a reward model into an existing directory (wrap in `atomic_dir`)."""
    directory = Path(directory)
    meta = {"backbone": "native" if model.native else "hf", "pooling": model.pooling, "format": 1}
    if has_lora(model.model):  # LoRA on the backbone: its adapters (model/lora.py) + the head
        save_adapter(model.model, tokenizer, directory)
        save_file({"score.weight": model.score.weight.detach().contiguous()}, str(directory / HEAD))
        meta.update(backbone="lora", base=adapter_record(model.model)["base"])
        (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
        return
    if model.native:
        special = {"pad_token_id": tokenizer.pad_id, "eos_token_id": tokenizer.eos_id}
        arch = dataclasses.replace(model.arch, tie_word_embeddings=False)
        config = hf_config_dict(arch, model.score.weight.dtype, special)
        config.update(architectures=["Qwen2ForSequenceClassification"], num_labels=1)
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS), metadata={"format": "pt"})
    else:
        model.model.save_pretrained(str(directory), safe_serialization=True)
        save_file({"score.weight": model.score.weight.detach().contiguous()}, str(directory / HEAD))
    (directory / META).write_text(json.dumps(meta, indent=2) + "\n")
    tokenizer.save(str(directory))


def load_reward_model(path: str, *, device="cpu") -> tuple[RewardModel, Tokenizer]:
    """(reward model, tokenizer) from a saved reward model, or a run directory (its best, else final)."""
    directory = Path(path).expanduser()
    for candidate in (directory / "checkpoints" / "best", directory / "checkpoints" / "final"):
        if not (directory / META).exists() and (candidate / META).exists():
            directory = candidate
            break
    if not (directory / META).exists():  # a LoRA reward model has no config.json of its own
        directory = resolve_source(str(directory))
    if not (directory / META).exists():
        raise UserError(f"not a reward model (no {META}); train one with `alignlab train-rm`",
                        file=str(directory))
    meta = read_json(directory / META)
    tokenizer = load_tokenizer(str(directory))
    if meta.get("backbone") == "lora":  # the base's reward model (or LM body) + the adapters + the head
        lora = read_json(directory / LORA_META)
        base = checked_base(lora, directory)  # found from the adapter's folder (never the current directory)
        model, _ = reward_model_from(base, pooling=meta["pooling"], device=device)
        add_lora(model.model, LoRAConfig(**{**lora["lora"], "target_modules": tuple(lora["lora"]["target_modules"])}),
                 meta["base"])
        set_adapter_record(model.model, lora)
        restore_lora_reward_model(model, directory)
        return model.to(device), tokenizer
    if meta.get("backbone") == "native":
        arch = dataclasses.replace(gpt_config_from_hf(read_json(directory / "config.json")),
                                   tie_word_embeddings=False)
        with torch.device("meta"):
            model = RewardModel(GPT(arch).model, arch.hidden_size, pooling=meta["pooling"], arch=arch)
        state = read_weights(directory)
        model.load_state_dict(state, strict=True, assign=True)
        model.model.rotary_emb = Rotary.of(arch)  # buffers are not in the state dict: rebuilt, scaling included
        return model.to(device), tokenizer
    quiet_hub()
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(str(directory), dtype=torch.float32, use_safetensors=True)
    model = RewardModel(backbone, backbone.config.hidden_size, pooling=meta["pooling"])
    head = load_file(str(directory / HEAD))
    model.score.weight.data.copy_(head["score.weight"])
    return model.to(device), tokenizer


def restore_lora_reward_model(model: RewardModel, directory: Path) -> None:
    """Copy a LoRA reward model's saved adapters and head into `model` (same configuration)."""
    load_adapter_weights(model.model, directory)
    model.score.weight.data.copy_(load_file(str(directory / HEAD))["score.weight"].to(model.score.weight.device))


class ValueModel(RewardModel):
    """backbone -> per-token features -> one value per position (float32); see the module docstring."""

    @classmethod
    def from_reward_model(cls, rm: RewardModel, scale: float = 1.0) -> ValueModel:
        """A critic with a copy of `rm`'s weights (the reward model itself stays untouched), its head
        multiplied by `scale`: the reward model's weight in the score, so that the first values are on
        the score's scale (a critic 10x off the returns makes every first advantage noise)."""
        if not rm.native and rm.pooling != "last":
            raise UserError(f"the reward model pools by {rm.pooling!r}, so its backbone is an encoder that sees "
                            f"the whole sequence; a value model must be causal: use value_init=policy",
                            key="value_init")
        value = cls(copy.deepcopy(rm.model), rm.score.in_features, pooling="last", arch=rm.arch)
        value.score.weight.data.copy_(rm.score.weight.data * scale)
        return value.to(rm.device)

    @classmethod
    def from_policy(cls, policy: nn.Module) -> ValueModel:
        """A critic on a copy of the policy's body (native GPT or a transformers causal LM), head at zero."""
        if isinstance(policy, GPT):
            value = cls(copy.deepcopy(policy.model), policy.config.hidden_size, arch=policy.config)
        else:
            value = cls(copy.deepcopy(policy.base_model), policy.config.hidden_size)
        nn.init.zeros_(value.score.weight)
        return value.to(next(policy.parameters()).device)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and bool mask -> hidden states (B, T, C)."""
        if self.native:
            return self.model(input_ids, attention_mask)
        return hf_forward(self.model, input_ids, attention_mask).last_hidden_state

    def completion_values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int) -> torch.Tensor:
        """Values (B, n) float32 of the states before each of the last `n` tokens (the completion):
        positions -n-1 .. -2, the same positions whose logits predict those tokens."""
        hidden = self.hidden(input_ids, attention_mask)[:, -n - 1:-1]  # (B, n, C)
        return self.score(hidden).squeeze(-1).float()
