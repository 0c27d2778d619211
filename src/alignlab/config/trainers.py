"""One config per command (pretrain, train-rm, sft, dpo, grpo, ppo), built from the sections of
`config/sections.py`. `run.batch_size` is the optimizer step's batch in every one of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from alignlab.config.sections import (
    GenerationConfig,
    GPTConfig,
    LoRAConfig,
    ModelConfig,
    OptimConfig,
    RewardConfig,
    RunConfig,
    TokenizerConfig,
    _check,
    knob,
)
from alignlab.config_io import ConfigError


def _check_micro_batches(cfg: Any) -> None:
    """run.batch_size is the whole optimizer step in every trainer; optim.grad_accum must split it evenly."""
    if cfg.run.batch_size % cfg.optim.grad_accum:
        raise ConfigError("run.batch_size", f"({cfg.run.batch_size}) must be a multiple of optim.grad_accum "
                          f"({cfg.optim.grad_accum}): it is the whole optimizer step, split into micro-batches")


class _StepBatch:
    """`micro_batch_size` of a trainer config whose run.batch_size is split by optim.grad_accum."""

    @property
    def micro_batch_size(self) -> int:
        return self.run.batch_size // self.optim.grad_accum


@dataclass(frozen=True)
class PretrainConfig(_StepBatch):
    """`alignlab pretrain`: a causal LM trained on a text file."""

    data: str = knob("", 'a UTF-8 text file; "" = the built-in corpus')
    block_size: int = knob(128, "tokens per training sequence")
    val_fraction: float = knob(0.05, "tail of the corpus held out for validation loss")
    model: ModelConfig = knob(ModelConfig(), "the model to train")
    tokenizer: TokenizerConfig = knob(TokenizerConfig(), "the tokenizer of a new model")
    optim: OptimConfig = knob(OptimConfig(), "optimizer and schedule")
    run: RunConfig = knob(RunConfig(), "run directory, length and cadence")
    sample: GenerationConfig = knob(GenerationConfig(max_new_tokens=64), "samples printed at the end")
    sample_prompts: tuple[str, ...] = knob(("The ", "ROMEO:"), "prompts for the final samples")

    def __post_init__(self):
        _check(self, ">= 1", lambda v: v >= 1, "block_size")
        _check(self, "in [0, 1)", lambda v: 0 <= v < 1, "val_fraction")
        _check_micro_batches(self)


LANG_WHY = ("the built-in study-plan prompts' language: all (the original 147 phrasings), en (English only, "
            "more phrasings), zh (Chinese only); prompts from files are not filtered; also task.lang")


@dataclass(frozen=True)
class RewardModelConfig(_StepBatch):
    """`alignlab train-rm`: a Bradley-Terry reward model on (prompt, chosen, rejected) pairs."""

    data: tuple[str, ...] = knob((), 'preference JSONL(.gz) files, each may be sliced "f.jsonl.gz[:1354]"; '
                                     "empty = dummy study-plan pairs")
    eval_data: tuple[str, ...] = knob((), "held-out preference files; empty = the tail of data")
    on_bad_row: Literal["error", "skip"] = knob(
        "error", "a malformed data row: error (stop at its file:line) or skip it (counted, the first few printed, "
                 "the count in manifest.json); also data.on_bad_row")
    dummy_pairs: int = knob(200, "dummy pairs (compliant vs non-compliant study plans) when data is empty")
    lang: Literal["all", "en", "zh"] = knob("all", "prompts of the dummy pairs: " + LANG_WHY)
    eval_fraction: float = knob(0.1, "tail of data held out when eval_data is empty")
    max_length: int = knob(128, "tokens per prompt + response (the seed's block_size)")
    pooling: Literal["auto", "last", "mean", "cls"] = knob(
        "auto", "feature read by the head; auto: last real token (decoders), mean (encoders)")
    center_rewards_coefficient: float = knob(0.0, "weight of mean((r_c + r_r)^2), keeps rewards near 0")
    eval_batch_size: int = knob(64, "pairs per scoring batch in evaluation")
    model: ModelConfig = knob(ModelConfig(arch=GPTConfig(hidden_size=64, intermediate_size=192,
                                                         num_hidden_layers=2, num_attention_heads=2,
                                                         num_key_value_heads=2, max_position_embeddings=512)),
                              "backbone: path to an LM / HF model dir, or a new native GPT from arch")
    lora: LoRAConfig = knob(LoRAConfig(), "LoRA adapters instead of full fine-tuning (r > 0; alignlab[peft])")
    tokenizer: TokenizerConfig = knob(TokenizerConfig(vocab_size=1024), "tokenizer of a new backbone")
    optim: OptimConfig = knob(OptimConfig(lr=3e-4, weight_decay=0.0), "optimizer and schedule")
    run: RunConfig = knob(RunConfig(out_dir="runs/rm", steps=200, batch_size=8, eval_every=50),
                          "run directory, length and cadence")

    def __post_init__(self):
        _check(self, ">= 8", lambda v: v >= 8, "max_length")
        _check(self, ">= 1", lambda v: v >= 1, "eval_batch_size")
        _check(self, ">= 0", lambda v: v >= 0, "dummy_pairs", "center_rewards_coefficient")
        _check(self, "in [0, 1)", lambda v: 0 <= v < 1, "eval_fraction")
        _check_micro_batches(self)


@dataclass(frozen=True)
class SFTConfig(_StepBatch):
    """`alignlab sft`: supervised fine-tuning on (prompt, response) pairs, loss on response tokens only."""

    data: tuple[str, ...] = knob((), "JSONL(.gz) of {prompt, response} or {messages}, each may be sliced "
                                     '"f.jsonl[:500]"; empty = synthetic study-plan completions')
    on_bad_row: Literal["error", "skip"] = knob(
        "error", "a malformed data row: error (stop at its file:line) or skip it (counted, the first few printed, "
                 "the count in manifest.json); also data.on_bad_row")
    synthetic_per_prompt: int = knob(8, "synthetic completions per train prompt when data is empty")
    lang: Literal["all", "en", "zh"] = knob("all", "prompts of the synthetic completions: " + LANG_WHY)
    compliance_rate: float = knob(1.0, "share of compliant synthetic completions (low = a weak base policy)")
    eval_fraction: float = knob(0.05, "tail of the examples held out for validation loss")
    max_length: int = knob(256, "tokens per example; longer ones lose the start of the prompt")
    model: ModelConfig = knob(ModelConfig(), "model to fine-tune: path, or a new native GPT from arch")
    lora: LoRAConfig = knob(LoRAConfig(), "LoRA adapters instead of full fine-tuning (r > 0; alignlab[peft])")
    tokenizer: TokenizerConfig = knob(TokenizerConfig(vocab_size=1024), "tokenizer of a new model")
    optim: OptimConfig = knob(OptimConfig(lr=1e-3, weight_decay=0.0), "optimizer and schedule")
    run: RunConfig = knob(RunConfig(out_dir="runs/sft", steps=300, batch_size=16, eval_every=100),
                          "run directory, length and cadence")

    def __post_init__(self):
        _check(self, ">= 8", lambda v: v >= 8, "max_length")
        _check(self, ">= 1", lambda v: v >= 1, "synthetic_per_prompt")
        _check(self, "in [0, 1]", lambda v: 0 <= v <= 1, "compliance_rate")
        _check(self, "in [0, 1)", lambda v: 0 <= v < 1, "eval_fraction")
        _check_micro_batches(self)


@dataclass(frozen=True)
class DPOConfig(_StepBatch):
    """`alignlab dpo`: Direct Preference Optimization of a policy on (prompt, chosen, rejected) pairs."""

    data: tuple[str, ...] = knob((), 'preference JSONL(.gz) files (the reward model\'s formats), each may be sliced '
                                     '"f.jsonl[:500]"; empty = synthetic study-plan pairs')
    eval_data: tuple[str, ...] = knob((), "held-out preference files; empty = the tail of data")
    on_bad_row: Literal["error", "skip"] = knob(
        "error", "a malformed data row: error (stop at its file:line) or skip it (counted, the first few printed, "
                 "the count in manifest.json); also data.on_bad_row")
    dummy_pairs: int = knob(400, "synthetic study-plan pairs (compliant vs not) when data is empty")
    lang: Literal["all", "en", "zh"] = knob("all", "prompts of the synthetic pairs: " + LANG_WHY)
    eval_fraction: float = knob(0.1, "tail of data held out when eval_data is empty")
    beta: float = knob(0.1, "strength of the pull towards the reference (DPO's beta; IPO's tau)")
    loss_type: Literal["sigmoid", "hinge", "ipo"] = knob("sigmoid", "sigmoid (DPO), hinge (SLiC), ipo (IPO)")
    label_smoothing: float = knob(0.0, "sigmoid only: probability that a pair's label is wrong (cDPO)")
    precompute_ref: bool = knob(True, "reference log-probs computed once before training (cached in the run "
                                      "directory) instead of a second model in memory")
    max_length: int = knob(256, "tokens per prompt + reply; longer ones lose the start of the prompt")
    eval_batch_size: int = knob(32, "pairs per batch in evaluation and reference precomputation")
    model: ModelConfig = knob(ModelConfig(), "the policy to train: model.path (alignlab checkpoint or HF model)")
    lora: LoRAConfig = knob(LoRAConfig(), "LoRA adapters instead of full fine-tuning (r > 0; alignlab[peft])")
    optim: OptimConfig = knob(OptimConfig(lr=1e-5, weight_decay=0.0, warmup_steps=5, schedule="cosine"),
                              "optimizer and schedule")
    run: RunConfig = knob(RunConfig(out_dir="runs/dpo", steps=200, batch_size=8, eval_every=50),
                          "run directory, length and cadence; batch_size counts pairs")

    def __post_init__(self):
        _check(self, "> 0", lambda v: v > 0, "beta")
        _check(self, "in [0, 0.5)", lambda v: 0 <= v < 0.5, "label_smoothing")
        _check(self, ">= 8", lambda v: v >= 8, "max_length")
        _check(self, ">= 1", lambda v: v >= 1, "eval_batch_size")
        _check(self, ">= 0", lambda v: v >= 0, "dummy_pairs")
        _check(self, "in [0, 1)", lambda v: 0 <= v < 1, "eval_fraction")
        _check_micro_batches(self)


@dataclass(frozen=True)
class GRPOConfig:
    """`alignlab grpo`: Group Relative Policy Optimization of a policy on a task's prompts.

    A step samples `num_generations` completions for each of batch_size / num_generations
    prompts; names follow TRL's GRPOConfig where TRL has the knob.
    """

    task: str = knob("study-plan", "a registered task (tasks/registry.py: study-plan, gsm8k, or your own): "
                                   "examples, pass check and reward")
    data: str = knob("", "the task's train examples (JSONL); empty = its built-in prompts (gsm8k needs a file)")
    eval_data: str = knob("", "held-out examples (JSONL); empty = the task's built-in held-out prompts, if any")
    lang: str = knob("all", "the task's built-in prompts of one language (its own list; all = every prompt): "
                            + LANG_WHY)
    backend: Literal["alignlab", "trl"] = knob("alignlab", "training engine: alignlab's, or TRL's GRPOTrainer "
                                                           "(pip install 'alignlab[trl]') with alignlab's rewards")
    prompts: int = knob(0, "train prompts used (the first N of the task's); 0 = all")
    num_generations: int = knob(8, "completions per prompt (the group size G)")
    num_iterations: int = knob(1, "optimizer steps on each generation batch (mu); > 1 reuses old log-probs")
    epsilon: float = knob(0.2, "lower clip of the importance ratio: 1 - epsilon")
    epsilon_high: float = knob(0.0, "upper clip 1 + epsilon_high (DAPO clip-higher); 0 = same as epsilon; "
                                     "cispo: the cap on the importance weight itself (> 1, e.g. 5.0)")
    delta: float | None = knob(None, "clipped loss types: also cap the unclipped ratio at delta (INTELLECT-2 "
                                     "two-sided clip, > 1; e.g. 4); null = no cap")
    beta: float = knob(0.0, "weight of the k3 KL to the frozen initial policy; 0 = no reference model at all")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = knob(
        "dapo", "clipped, aggregated as grpo (sequence mean), dr_grpo (constant), dapo (batch token mean; TRL's "
                "default), bnpo (micro-batch token mean), luspo (sequence sum); or cispo (capped detached "
                "weight), sapo (soft gate), vespo (gamma sequence weight); algorithms/grpo_losses.py")
    importance_sampling_level: Literal["token", "sequence"] = knob(
        "token", "importance ratio per token, or one per sequence, the mean log ratio (GSPO; luspo is meant for "
                 "it, but TRL 1.16 accepts token too, and so does alignlab)")
    sapo_temperature_pos: float = knob(1.0, "sapo: gate temperature where the advantage is > 0")
    sapo_temperature_neg: float = knob(1.05, "sapo: gate temperature elsewhere (higher: negative updates fade faster)")
    vespo_k_pos: float = knob(2.0, "vespo, advantage >= 0: power k of the gamma weight w^k e^(lambda (1 - w))")
    vespo_lambda_pos: float = knob(3.0, "vespo, advantage >= 0: decay lambda of the gamma weight")
    vespo_k_neg: float = knob(3.0, "vespo, advantage < 0: power k of the gamma weight")
    vespo_lambda_neg: float = knob(2.0, "vespo, advantage < 0: decay lambda of the gamma weight")
    scale_rewards: Literal["group", "batch", "none"] = knob("group", "divide advantages by the group std, "
                                                                     "the batch std, or not at all (Dr. GRPO)")
    mask_truncated_completions: bool = knob(False, "leave completions cut by max_new_tokens out of the loss")
    reward: RewardConfig = knob(RewardConfig(), "the reward")
    generation: GenerationConfig = knob(GenerationConfig(max_new_tokens=64, temperature=0.7),
                                        "sampling of training completions (evaluation uses the same)")
    eval_prompts: int = knob(0, "held-out prompts evaluated every run.eval_every steps; 0 = all")
    eval_samples: int = knob(2, "completions per held-out prompt in those evaluations")
    preflight: bool = knob(True, "check tokenizer, chat template, rewards and signal on a pilot batch first")
    model: ModelConfig = knob(ModelConfig(), "the policy to train: model.path (alignlab checkpoint or HF model)")
    lora: LoRAConfig = knob(LoRAConfig(), "LoRA adapters instead of full fine-tuning (r > 0; alignlab[peft])")
    optim: OptimConfig = knob(OptimConfig(lr=1e-5, weight_decay=0.0, warmup_steps=0, schedule="constant"),
                              "optimizer and schedule")
    run: RunConfig = knob(RunConfig(out_dir="runs/grpo", steps=100, batch_size=32, save_every=50, log_every=1,
                                    eval_every=25), "run directory, length and cadence; batch_size counts "
                                                    "completions per optimizer step")

    def __post_init__(self):
        _check(self, ">= 2 (a group needs at least two completions to compare)", lambda v: v >= 2,
               "num_generations")
        _check(self, ">= 1", lambda v: v >= 1, "num_iterations", "eval_samples")
        _check(self, ">= 0", lambda v: v >= 0, "prompts", "eval_prompts", "epsilon", "epsilon_high", "beta")
        self._check_loss_knobs()
        if self.run.batch_size % self.num_generations:
            raise ConfigError("run.batch_size", f"({self.run.batch_size}) must be a multiple of num_generations "
                              f"({self.num_generations}): each step samples whole groups")
        _check_micro_batches(self)

    def _check_loss_knobs(self) -> None:
        """Each loss-type knob against its type. TRL 1.16 refuses none of these (it warns about luspo or
        vespo at an unusual importance level, which alignlab accepts likewise); alignlab refuses what
        would silently do nothing, divide by zero or cap every weight below 1."""
        types = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
        clipped = ("grpo", "dr_grpo", "dapo", "bnpo", "luspo")  # the types whose ratio delta caps
        _check(self, f"one of {', '.join(types)}", lambda v: v in types, "loss_type")
        _check(self, "token or sequence", lambda v: v in ("token", "sequence"), "importance_sampling_level")
        _check(self, "> 0 (the gate divides by it)", lambda v: v > 0, "sapo_temperature_pos", "sapo_temperature_neg")
        _check(self, ">= 0", lambda v: v >= 0, "vespo_k_pos", "vespo_k_neg")
        _check(self, "> 0", lambda v: v > 0, "vespo_lambda_pos", "vespo_lambda_neg")
        _check(self, "null or > 1 (a cap on the importance ratio)", lambda v: v is None or v > 1, "delta")
        _check(self, f"null with loss_type {self.loss_type} (it caps the ratio of {', '.join(clipped)} only)",
               lambda v: v is None or self.loss_type in clipped, "delta")
        _check(self, "> 1 with loss_type cispo, where it caps the importance weight itself (ScaleRL uses 5.0); "
                     "0 would fall back to epsilon, as in TRL, and cap every weight below 1",
               lambda v: self.loss_type != "cispo" or v > 1, "epsilon_high")

    @property
    def loss_knobs(self) -> dict:
        """The loss-type keywords `grpo_loss` and TRL's GRPOConfig share, by TRL's names."""
        names = ("importance_sampling_level", "delta", "sapo_temperature_pos", "sapo_temperature_neg",
                 "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg")
        return {name: getattr(self, name) for name in names}

    @property
    def prompts_per_step(self) -> int:
        return self.run.batch_size // self.num_generations


@dataclass(frozen=True)
class PPOConfig:
    """`alignlab ppo`: PPO of a policy with a learned critic against a reward model, rules, or both.

    A rollout samples one completion for each of run.batch_size prompts; it then serves
    num_ppo_epochs passes of num_mini_batches optimizer steps (each over grad_accum micro-batches),
    so run.steps counts optimizer steps. Names follow TRL's PPOConfig where TRL has the knob.
    """

    task: str = knob("study-plan", "a registered task (tasks/registry.py: study-plan, gsm8k, or your own): "
                                   "examples, pass check and rule reward")
    data: str = knob("", "the task's train examples (JSONL); empty = its built-in prompts (gsm8k needs a file)")
    eval_data: str = knob("", "held-out examples (JSONL); empty = the task's built-in held-out prompts, if any")
    lang: str = knob("all", "the task's built-in prompts of one language (its own list; all = every prompt): "
                            + LANG_WHY)
    prompts: int = knob(0, "train prompts used (the first N of the task's); 0 = all")
    num_ppo_epochs: int = knob(4, "passes over each rollout")
    num_mini_batches: int = knob(2, "optimizer steps per pass (the rollout split into shuffled mini-batches)")
    cliprange: float = knob(0.2, "policy ratio clip: 1 -/+ cliprange")
    cliprange_value: float = knob(0.2, "new values kept within this of the rollout's values in the value loss")
    vf_coef: float = knob(0.1, "weight of the value loss in the total")
    gamma: float = knob(1.0, "discount per token")
    lam: float = knob(0.95, "GAE lambda: 1 = Monte-Carlo returns, 0 = one-step TD")
    kl_coef: float = knob(0.05, "per-token k1 KL penalty to the frozen initial policy, folded into the reward; "
                                "0 = no reference model at all")
    adaptive_kl_target: float = knob(0.0, "target KL per completion for the adaptive controller; 0 = fixed kl_coef")
    adaptive_kl_horizon: int = knob(10000, "the adaptive controller's horizon in completions")
    early_stop_approx_kl: float = knob(0.0, "end a rollout's updates when a mini-batch's approx KL to the rollout "
                                            "policy exceeds this; 0 = never")
    whiten_rewards: bool = knob(False, "whiten the per-token rewards of each rollout before GAE")
    missing_eos_penalty: float = knob(0.0, "subtracted from the score of completions cut by max_new_tokens")
    value_init: Literal["auto", "reward_model", "policy"] = knob(
        "auto", "critic's starting weights: the reward model (needs the policy's tokenizer) or the policy's body "
                "with a zero head; auto = reward_model when reward.model is set")
    reward: RewardConfig = knob(RewardConfig(), "the score: rules, reward.model, reward.function, weighted")
    generation: GenerationConfig = knob(GenerationConfig(max_new_tokens=64, temperature=0.7),
                                        "sampling of rollouts (evaluation uses the same)")
    eval_prompts: int = knob(0, "held-out prompts evaluated every run.eval_every steps; 0 = all")
    eval_samples: int = knob(2, "completions per held-out prompt in those evaluations")
    model: ModelConfig = knob(ModelConfig(), "the policy to train: model.path (alignlab checkpoint or HF model)")
    lora: LoRAConfig = knob(LoRAConfig(), "LoRA adapters instead of full fine-tuning (r > 0; alignlab[peft])")
    optim: OptimConfig = knob(OptimConfig(lr=1e-5, weight_decay=0.0, warmup_steps=0, schedule="constant"),
                              "optimizer (one AdamW over policy and critic, as TRL) and schedule")
    run: RunConfig = knob(RunConfig(out_dir="runs/ppo", steps=200, batch_size=32, save_every=50, log_every=1,
                                    eval_every=40), "run directory, length and cadence; batch_size counts "
                                                    "prompts (= completions) per rollout")

    def __post_init__(self):
        _check(self, ">= 1", lambda v: v >= 1, "num_ppo_epochs", "num_mini_batches", "eval_samples",
               "adaptive_kl_horizon")
        _check(self, ">= 0", lambda v: v >= 0, "prompts", "eval_prompts", "cliprange", "cliprange_value", "vf_coef",
               "kl_coef", "adaptive_kl_target", "early_stop_approx_kl", "missing_eos_penalty")
        _check(self, "in [0, 1]", lambda v: 0 <= v <= 1, "gamma", "lam")
        if self.adaptive_kl_target > 0 and self.kl_coef == 0:
            raise ConfigError("kl_coef", "must be > 0 for the adaptive KL controller (it scales kl_coef), got 0")
        mini, rest = divmod(self.run.batch_size, self.num_mini_batches)
        if rest or mini % self.optim.grad_accum:
            raise ConfigError("run.batch_size", f"({self.run.batch_size}) must split into num_mini_batches "
                              f"({self.num_mini_batches}) mini-batches of a multiple of optim.grad_accum "
                              f"({self.optim.grad_accum}) rows")

    @property
    def mini_batch_size(self) -> int:
        return self.run.batch_size // self.num_mini_batches

    @property
    def updates_per_rollout(self) -> int:
        return self.num_ppo_epochs * self.num_mini_batches
