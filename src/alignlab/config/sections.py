"""The config sections every command shares: the model and its architecture, LoRA, the tokenizer,
the optimizer, the run, sampling and the reward; `knob` (a field with its reason) and `_check`.
Commands' configs are in `config/trainers.py`; `alignlab.config` re-exports both."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from alignlab.config_io import ConfigError


def knob(default: Any, why: str) -> Any:
    """A config field: its default and a one-line reason, shown by `describe_config`."""
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        # A section's default is a frozen instance; a factory keeps dataclasses from rejecting it.
        return dataclasses.field(default_factory=lambda: default, metadata={"why": why})
    return dataclasses.field(default=default, metadata={"why": why})


SEED_MAX = 2**64 - 1  # torch.manual_seed's upper bound; negative seeds are refused too (one range to explain)


def _check(cfg: Any, rule: str, test: Any, *names: str) -> None:
    """ValueError naming the first field in `names` whose value fails `test`.

    A non-finite float (nan, inf) fails whatever `test` says: `inf >= 0` holds, and nan makes
    every comparison False, so a test alone would let inf through and word nan's refusal oddly.
    The error carries the field as data (`ConfigError.field`): `config_io._build` points at its key.
    """
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(name, f"must be {rule} (a finite number), got {value}")
        if not test(value):
            raise ConfigError(name, f"must be {rule}, got {value}")


@dataclass(frozen=True)
class GPTConfig:
    """The architecture of the native model, Qwen2 or Llama; names match transformers' `Qwen2Config` /
    `LlamaConfig` (rope scaling as flat `rope_*` fields, `explicit_head_dim` for their `head_dim`)."""

    vocab_size: int = knob(2048, "token ids the embedding holds (set from the tokenizer when training)")
    hidden_size: int = knob(128, "width of the residual stream")
    intermediate_size: int = knob(384, "width of the SwiGLU MLP")
    num_hidden_layers: int = knob(4, "decoder blocks")
    num_attention_heads: int = knob(4, "query heads")
    num_key_value_heads: int = knob(2, "key/value heads (grouped-query attention)")
    max_position_embeddings: int = knob(1024, "longest sequence the model is meant for")
    rope_theta: float = knob(10000.0, "RoPE base frequency")
    rms_norm_eps: float = knob(1e-6, "RMSNorm epsilon")
    tie_word_embeddings: bool = knob(True, "share the input embedding with the output head")
    architecture: Literal["qwen2", "llama"] = knob(
        "qwen2", "family: the biases it has and the config.json it saves as (qwen2: q/k/v biases; llama: "
                 "attention_bias / mlp_bias)")
    attention_bias: bool = knob(False, "llama only: biases on q/k/v and o_proj (Llama's attention_bias)")
    mlp_bias: bool = knob(False, "llama only: biases on the MLP projections (Llama's mlp_bias)")
    explicit_head_dim: int | None = knob(None, "width of an attention head when a config.json's head_dim is not "
                                               "hidden_size // num_attention_heads; null = that quotient")
    rope_type: Literal["default", "linear", "llama3"] = knob(
        "default", "RoPE frequency scaling: none, linear (positions / rope_factor) or llama3 (Llama 3.1+)")
    rope_factor: float = knob(8.0, "linear / llama3 scaling factor (Llama 3.1: 8, Llama 3.2: 32)")
    low_freq_factor: float = knob(1.0, "llama3: wavelengths above original_max / this are divided by rope_factor")
    high_freq_factor: float = knob(4.0, "llama3: wavelengths below original_max / this are kept as they are")
    original_max_position_embeddings: int = knob(8192, "llama3: the context length the model was pretrained on")

    def __post_init__(self):
        _check(self, "positive", lambda v: v > 0, "vocab_size", "hidden_size", "intermediate_size",
               "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
               "rope_theta", "rms_norm_eps", "rope_factor", "low_freq_factor", "original_max_position_embeddings")
        _check(self, "positive or null", lambda v: v is None or v > 0, "explicit_head_dim")
        # Literals are checked when read from YAML, not when built in Python (gpt_config_from_hf).
        _check(self, "qwen2 or llama", lambda v: v in ("qwen2", "llama"), "architecture")
        _check(self, "default, linear or llama3", lambda v: v in ("default", "linear", "llama3"), "rope_type")
        _check(self, f"above low_freq_factor ({self.low_freq_factor}): llama3 blends between the two",
               lambda v: v > self.low_freq_factor, "high_freq_factor")
        _check(self, f"a multiple of num_attention_heads ({self.num_attention_heads})",
               lambda v: v % self.num_attention_heads == 0, "hidden_size")
        _check(self, f"a multiple of num_key_value_heads ({self.num_key_value_heads})",
               lambda v: v % self.num_key_value_heads == 0, "num_attention_heads")
        derived = "explicit_head_dim" if self.explicit_head_dim else "head_dim = hidden_size // num_attention_heads"
        _check(self, f"even for rotary embeddings ({derived})", lambda v: v % 2 == 0, "head_dim")
        # Qwen2ForCausalLM has its biases fixed, so a qwen2 config.json could not say otherwise.
        _check(self, "false for architecture qwen2 (its q/k/v biases are fixed; set architecture=llama)",
               lambda v: not v or self.architecture == "llama", "attention_bias", "mlp_bias")

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class ModelConfig:
    """Which model to train: an existing checkpoint, or a new native GPT."""

    path: str = knob("", 'alignlab checkpoint dir, HF model dir or hub id; "" = a new native GPT from arch')
    arch: GPTConfig = knob(GPTConfig(), "architecture of a new native GPT (ignored when path is set)")
    engine: Literal["auto", "native", "hf"] = knob(
        "auto", "auto: native fast path for Qwen2 / Llama weights, transformers otherwise")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = knob(
        "auto", "weight dtype; auto keeps the checkpoint's own (float32 for a new model)")
    trust_remote_code: bool = knob(False, "let transformers run model code shipped with the weights")
    gradient_checkpointing: bool = knob(False, "recompute each decoder layer's activations in the backward pass: "
                                               "less memory for real models, about a third more compute")
    allow_unverified_base: bool = knob(False, "load a LoRA adapter whose adapter.json records no SHA-256 of "
                                              "its base (the base then cannot be checked)")


QWEN2_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters (peft's LoRA) on the policy's linear layers; r = 0 trains every weight."""

    r: int = knob(0, "adapter rank; 0 = no adapters (full fine-tuning)")
    alpha: float = knob(16.0, "scaling numerator: the update is (alpha / r) * B @ A")
    dropout: float = knob(0.0, "dropout on the adapter's input")
    target_modules: tuple[str, ...] = knob(QWEN2_LORA_TARGETS, "layers that get adapters (Qwen2 / Llama names: "
                                                               "attention q/k/v/o and the MLP projections); "
                                                               "all-linear: every linear layer but the output head")

    def __post_init__(self):
        _check(self, ">= 0", lambda v: v >= 0, "r")
        _check(self, "> 0", lambda v: v > 0, "alpha")
        _check(self, "in [0, 1)", lambda v: 0 <= v < 1, "dropout")
        _check(self, "non-empty", lambda v: len(v) > 0, "target_modules")

    @property
    def enabled(self) -> bool:
        return self.r > 0


@dataclass(frozen=True)
class TokenizerConfig:
    """The tokenizer for a new model (ignored when model.path brings one)."""

    kind: Literal["bpe", "byte"] = knob("bpe", "bpe: trained on the corpus; byte: 256 byte ids, no training")
    vocab_size: int = knob(2048, "BPE vocabulary size, special tokens included")
    path: str = knob("", "a tokenizer dir to load instead of training one")

    def __post_init__(self):
        _check(self, "positive", lambda v: v > 0, "vocab_size")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = knob(3e-4, "peak learning rate")
    weight_decay: float = knob(0.1, "AdamW decoupled weight decay")
    beta1: float = knob(0.9, "AdamW first-moment decay")
    beta2: float = knob(0.95, "AdamW second-moment decay (0.95 is steadier than 0.999 for small LMs)")
    eps: float = knob(1e-8, "AdamW denominator epsilon")
    fused: bool = knob(False, "AdamW's fused kernel (TRL's optim=adamw_torch_fused): the optimizer step ~4x faster "
                       "on CPU; its numbers differ from the default's in the last bits, so a run's figures are "
                       "not those of fused=false (each setting is still reproducible to the bit)")
    schedule: Literal["cosine", "linear", "constant"] = knob("cosine", "decay after warmup")
    warmup_steps: int = knob(10, "optimizer steps of linear warmup from 0")
    min_lr_ratio: float = knob(0.1, "final learning rate as a fraction of lr")
    grad_clip: float = knob(1.0, "max global gradient norm; 0 disables")
    grad_accum: int = knob(1, "micro-batches per optimizer step: run.batch_size is split into this many")
    nan_policy: Literal["stop", "skip_step"] = knob(
        "stop", "a non-finite loss or gradient norm: stop (the last good checkpoint stays) or skip_step (no update)")

    def __post_init__(self):
        _check(self, "positive", lambda v: v > 0, "lr", "eps")
        _check(self, "<= 10 (a learning rate beyond that is a typo: the first step would overflow)",
               lambda v: v <= 10, "lr")
        _check(self, ">= 0", lambda v: v >= 0, "weight_decay", "warmup_steps", "grad_clip")
        _check(self, "in [0, 1)", lambda v: 0 <= v < 1, "beta1", "beta2")
        _check(self, "in [0, 1]", lambda v: 0 <= v <= 1, "min_lr_ratio")
        _check(self, ">= 1", lambda v: v >= 1, "grad_accum")


@dataclass(frozen=True)
class RunConfig:
    """Where and how long a run goes."""

    out_dir: str = knob("runs/run", "run directory: config, metrics, samples, checkpoints")
    steps: int = knob(200, "optimizer steps")
    batch_size: int = knob(16, "examples per optimizer step, whatever the trainer (sequences, pairs, completions); "
                               "optim.grad_accum splits it into micro-batches")
    seed: int = knob(0, "seeds initial weights, data order and sampling")
    device: Literal["auto", "cpu", "cuda", "mps"] = knob("auto", "auto: cuda, then mps, then cpu")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = knob(
        "auto", "auto: bf16 autocast on cuda, fp16 on mps, fp32 on cpu")
    save_every: int = knob(100, "steps between checkpoints; 0 = only the final one")
    keep_checkpoints: int = knob(2, "newest step_N checkpoints kept (final is always kept)")
    log_every: int = knob(10, "steps between metric lines")
    eval_every: int = knob(50, "steps between validation passes; 0 disables")
    progress: bool = knob(True, "print a progress line while training")
    fsdp: bool = knob(False, "under torchrun: shard weights, gradients and optimizer state (FSDP) instead of DDP")

    def __post_init__(self):
        _check(self, "a folder, not empty", lambda v: bool(v.strip()), "out_dir")
        _check(self, ">= 1", lambda v: v >= 1, "steps", "batch_size", "log_every")
        _check(self, ">= 0", lambda v: v >= 0, "save_every", "keep_checkpoints", "eval_every")
        _check(self, "in [0, 2**64 - 1] (torch.manual_seed's range)", lambda v: 0 <= v <= SEED_MAX, "seed")


@dataclass(frozen=True)
class GenerationConfig:
    """How completions are sampled."""

    max_new_tokens: int = knob(128, "tokens generated per completion at most")
    temperature: float = knob(0.7, "softmax temperature; 0 = greedy")
    top_p: float = knob(1.0, "nucleus sampling mass; 1 = off")
    top_k: int = knob(0, "sample among the k likeliest tokens; 0 = off")
    stop_strings: tuple[str, ...] = knob((), "generation stops after any of these strings")

    def __post_init__(self):
        _check(self, ">= 1", lambda v: v >= 1, "max_new_tokens")
        _check(self, ">= 0 (0 = greedy / off)", lambda v: v >= 0, "temperature", "top_k")
        _check(self, "in (0, 1]", lambda v: 0 < v <= 1, "top_p")
        _check(self, "non-empty strings (an empty one matches at once: every completion would stop after "
                     "one token)", lambda v: all(isinstance(s, str) and s for s in v), "stop_strings")


@dataclass(frozen=True)
class EvalConfig:
    """One sampling evaluation of a policy on a task's held-out examples: `eval`, `compare`, `sweep`
    and the demo judge with it (their defaults are these)."""

    samples: int = knob(5, "completions sampled per prompt (pass@k is reported for k up to it)")
    temperature: float = knob(0.7, "sampling temperature; 0 = greedy")
    max_new_tokens: int = knob(128, "tokens generated per completion at most")
    prompts: int = knob(0, "the first N held-out prompts; 0 = all")
    seed: int = knob(0, "row i samples from the stream derive_seed(seed, i), at any batch size")
    batch_size: int = knob(32, "sequences generated at once")

    def __post_init__(self):
        _check(self, ">= 1", lambda v: v >= 1, "samples", "max_new_tokens", "batch_size")
        _check(self, ">= 0", lambda v: v >= 0, "temperature", "prompts")
        _check(self, "in [0, 2**64 - 1] (torch.manual_seed's range)", lambda v: 0 <= v <= SEED_MAX, "seed")

    def generation(self) -> GenerationConfig:
        """How each completion is sampled."""
        return GenerationConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature)


@dataclass(frozen=True)
class RewardConfig:
    """What a policy is rewarded by: the task's rules, a trained reward model, or a weighted sum of both."""

    mode: Literal["naive", "shaped", "sharp"] = knob(
        "sharp", "rule reward: naive (content only, hackable), shaped (partial credit), sharp (clear negatives)")
    rules_weight: float = knob(1.0, "weight of the rule reward in the total; 0 = reward model only")
    model: str = knob("", "reward model checkpoint (alignlab train-rm output); empty = rules only")
    model_weight: float = knob(1.0, "weight of the reward model's score in the total")
    function: str = knob("", 'your reward function, "file.py:name" or "package.module:name", TRL signature')
    function_weight: float = knob(1.0, "weight of reward.function in the total")
    timeout_s: float = knob(300.0, "seconds one reward.function call may take before the run stops naming it "
                                   "(a hung function never stalls a run silently); 0 = no limit")
    judge_weight: float = knob(0.0, "weight of the judge's penalty -clip((NLL - fluent references' NLL) / "
                                    "judge_margin, 0, 1) per completion (closes word salad); 0 = off, no judge loaded")
    judge_model: str = knob("smollm2-135m-instruct", "the judge (rewards/judge.py): any causal LM, a checkpoint, "
                                                     "transformers folder, .gguf or smollm2-135m-instruct")
    judge_margin: float = knob(1.5, "nats per token above the fluent references' mean NLL where the judge's "
                                    "penalty is full (one completion spreads wider than eval's set margin 0.4)")

    def __post_init__(self):
        _check(self, ">= 0", lambda v: v >= 0, "rules_weight", "model_weight", "function_weight", "judge_weight")
        _check(self, "finite and >= 0 (0 = no limit)", lambda v: 0 <= v < float("inf"), "timeout_s")
        _check(self, "> 0", lambda v: v > 0, "judge_margin")
        _check(self, "set when judge_weight > 0 (a causal LM to judge with)",
               lambda v: bool(v.strip()) or self.judge_weight == 0, "judge_model")
        if self.rules_weight == 0 and not (self.model or self.function):
            raise ConfigError("rules_weight", "must be > 0 when neither reward.model nor reward.function is set, got 0")
