"""Reward-model training steps/s and scoring samples/s, beside the seed's own figures and TRL.

    python benchmarks/reward_model.py [--steps 20] [--rounds 3] [--threads 0] [--quick]

CPU, float32, byte tokenizer (vocab 259), 128-token sequences of random byte ids (no padding),
the seed's three sizes (layers/hidden/heads 2/64/2, 4/128/4, 6/256/4; kv heads = heads, MLP
3x hidden). The seed's figures were taken on an Apple-silicon CPU, so ratios compare
machines as well as code.

1. Training: one optimizer step of `trainers.loop.Loop.optimizer_step` (the product's step:
   forward of 4 chosen + 4 rejected sequences stacked, Bradley-Terry loss and pair metrics as
   `train-rm` computes them, backward, clip, AdamW) on a fixed batch; median over --steps steps
   after warm-up.
2. Inference: `rewards.learned.score_ids` (no grad) on batch 1/4/8/64; a sample is one scored
   sequence; median over --steps calls after one warm-up call.
3. Against TRL (when installed): the 2/64 model saved with `save_reward_model` and loaded twice,
   by alignlab and as transformers' `Qwen2ForSequenceClassification`, so both start from the
   same weights; the same 64 pre-tokenized pairs; --steps optimizer steps of batch 4 pairs, the
   same AdamW settings (lr 1e-4, no weight decay, beta2 0.999, clip 1.0, linear decay). Timed:
   alignlab `Loop(...)` + `.train()` (final checkpoint write skipped) against
   `RewardTrainer.train()` (trainer built outside the timer), alternating for --rounds rounds.
   TRL's float32 is asked for explicitly: its defaults on this CPU would be bf16 autocast and
   activation checkpointing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from alignlab.algorithms.bradley_terry import pairwise_stats, reward_model_loss
from alignlab.config import GPTConfig, OptimConfig, RunConfig
from alignlab.data.batches import PreferenceBatch, PreferenceCollator, ShuffledBatches, TokenizedPair
from alignlab.data.tokenizer import byte_tokenizer
from alignlab.model.heads import RewardModel, load_reward_model, save_reward_model
from alignlab.rewards.learned import score_ids
from alignlab.runs import Run
from alignlab.runtime import resolve_runtime
from alignlab.trainers.loop import Loop, TrainSpec

SIZES = ((2, 64, 2), (4, 128, 4), (6, 256, 4))  # (layers, hidden, heads), the seed's three models
SEED_STEPS_PER_S = {(2, 64): 10.0, (4, 128): 5.0, (6, 256): 2.0}
SEED_SAMPLES_PER_S = {1: 20.0, 4: 40.0, 8: 50.0}  # the 2/64 model
INFERENCE_BATCHES = (1, 4, 8, 64)
BLOCK, PAIRS_PER_BATCH, TRL_PAIRS = 128, 4, 64
# TRL's RewardConfig defaults, which alignlab is set to match (TRL's lr 1e-4 is also the seed's).
OPTIM = OptimConfig(lr=1e-4, weight_decay=0.0, beta2=0.999, warmup_steps=0, schedule="linear",
                    min_lr_ratio=0.0, grad_clip=1.0)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed steps (training, TRL) / calls (inference)")
    p.add_argument("--rounds", type=int, default=3, help="alternating alignlab / TRL rounds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="2 steps, 1 round: a smoke test, not a measurement")
    args = p.parse_args()
    if args.quick:
        args.steps, args.rounds = 2, 1
    return args


def arch_for(layers: int, hidden: int, heads: int, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=3 * hidden,
                     num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                     max_position_embeddings=512)


def new_model(arch: GPTConfig) -> RewardModel:
    torch.manual_seed(0)
    return RewardModel.new(arch)


def random_ids(rows: int, seed: int) -> torch.Tensor:
    """(rows, BLOCK) long byte ids in [0, 256): never a special token, so never padding."""
    return torch.randint(0, 256, (rows, BLOCK), generator=torch.Generator().manual_seed(seed))


class FixedBatches:
    """A `BatchSource` that hands out the same batch every step (no collation in the timing)."""

    def __init__(self, batch: PreferenceBatch):
        self.batch = batch

    def next_batch(self) -> PreferenceBatch:
        return self.batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def bradley_terry_step(model: RewardModel):
    """The loss `train-rm` optimizes, with the pair metrics it logs every step."""
    def compute_loss(batch: PreferenceBatch):
        rewards = model(batch.input_ids, batch.attention_mask)  # (2B,)
        chosen, rejected = rewards.chunk(2)
        loss = reward_model_loss(chosen, rejected, batch.margin, 0.0)
        stats = pairwise_stats(chosen, rejected)
        return loss, {"accuracy": stats.accuracy, "margin": stats.margin,
                      "tokens": int(batch.attention_mask.sum())}
    return compute_loss


def make_loop(model: RewardModel, source, steps: int, root: Path) -> Loop:
    root.mkdir(parents=True, exist_ok=True)
    spec = TrainSpec(model, source, bradley_terry_step(model), lambda directory: None)
    run_cfg = RunConfig(out_dir=str(root), steps=steps, batch_size=PAIRS_PER_BATCH, save_every=0,
                        log_every=steps, eval_every=0, progress=False)
    loop = Loop(spec, OPTIM, run_cfg, resolve_runtime("cpu"), Run(root, quiet=True))
    loop.save = lambda directory: None  # TRL's save_strategy="no" writes no final checkpoint either
    return loop


def training_rate(layers: int, hidden: int, heads: int, steps: int, vocab_size: int) -> float:
    """Median optimizer steps/s of Loop.optimizer_step on one fixed batch of 4 pairs x 128 tokens."""
    model = new_model(arch_for(layers, hidden, heads, vocab_size))
    ids = random_ids(2 * PAIRS_PER_BATCH, seed=1)  # (2B, T): chosen rows then rejected rows
    batch = PreferenceBatch(ids, torch.ones_like(ids, dtype=torch.bool))
    warmup = 2
    with tempfile.TemporaryDirectory() as tmp:
        loop = make_loop(model, FixedBatches(batch), warmup + steps, Path(tmp))
        times = []
        for _ in range(warmup + steps):
            start = time.perf_counter()
            loop.optimizer_step()
            times.append(time.perf_counter() - start)
            loop.step += 1
    return 1.0 / statistics.median(times[warmup:])


def inference_rate(model: RewardModel, batch: int, calls: int, pad_id: int) -> float:
    """Median samples/s of score_ids on `batch` sequences of 128 tokens, one batch per call."""
    sequences = random_ids(batch, seed=2).tolist()
    score_ids(model, sequences, pad_id, batch_size=batch)  # warm-up
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        score_ids(model, sequences, pad_id, batch_size=batch)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def versus_seed(rate: float, seed: float | None) -> str:
    if seed is None:
        return f"{'-':>8} {'-':>8}"
    return f"{seed:8.0f} {rate / seed:7.1f}x"


def report_training(args: argparse.Namespace, vocab_size: int) -> None:
    print(f"\n1. training: Loop.optimizer_step, {PAIRS_PER_BATCH} pairs x {BLOCK} tokens "
          f"({2 * PAIRS_PER_BATCH} sequences), median of {args.steps} steps after 2 warm-up")
    print(f"  {'model':<14} {'params':>9} {'steps/s':>9} {'seed':>8} {'ratio':>8}")
    for layers, hidden, heads in SIZES:
        params = sum(p.numel() for p in new_model(arch_for(layers, hidden, heads, vocab_size)).parameters())
        rate = training_rate(layers, hidden, heads, args.steps, vocab_size)
        print(f"  {f'{layers}L/{hidden}':<14} {params:>9,} {rate:9.1f} "
              f"{versus_seed(rate, SEED_STEPS_PER_S[(layers, hidden)])}")


def report_inference(args: argparse.Namespace, vocab_size: int, pad_id: int) -> None:
    print(f"\n2. inference: score_ids (no grad), {BLOCK}-token sequences, median of {args.steps} calls; "
          "the seed's figures are for 2L/64")
    print(f"  {'model':<14} {'batch':>6} {'samples/s':>11} {'seed':>8} {'ratio':>8}")
    for layers, hidden, heads in SIZES:
        model = new_model(arch_for(layers, hidden, heads, vocab_size))
        for batch in INFERENCE_BATCHES:
            rate = inference_rate(model, batch, args.steps, pad_id)
            seed = SEED_SAMPLES_PER_S.get(batch) if (layers, hidden) == (2, 64) else None
            print(f"  {f'{layers}L/{hidden}':<14} {batch:>6} {rate:11.1f} {versus_seed(rate, seed)}")


def quiet_transformers() -> None:
    """No progress bars, no warnings: TRL's output would drown the table."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bar()
    datasets.logging.set_verbosity_error()


def trl_pairs() -> list[TokenizedPair]:
    ids = random_ids(2 * TRL_PAIRS, seed=3).tolist()
    return [TokenizedPair(ids[i], ids[TRL_PAIRS + i]) for i in range(TRL_PAIRS)]


def time_alignlab(model_dir: Path, pairs: list[TokenizedPair], steps: int, tokenizer, root: Path):
    """(whole, steps only) seconds: Loop construction + train(), and train() alone; batches are drawn
    through ShuffledBatches + PreferenceCollator as `train-rm` draws them."""
    model, _ = load_reward_model(str(model_dir))
    source = ShuffledBatches(pairs, PreferenceCollator(tokenizer, BLOCK).collate, PAIRS_PER_BATCH, seed=0, device="cpu")
    start = time.perf_counter()
    loop = make_loop(model, source, steps, root)
    inner = time.perf_counter()
    loop.train()
    end = time.perf_counter()
    return end - start, end - inner


def make_trl_trainer(model_dir: Path, pairs: list[TokenizedPair], steps: int, tokenizer, out_dir: Path):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_id
    dataset = Dataset.from_dict({"chosen_ids": [p.chosen_ids for p in pairs],
                                 "rejected_ids": [p.rejected_ids for p in pairs]})
    config = RewardConfig(output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=PAIRS_PER_BATCH,
                          learning_rate=OPTIM.lr, logging_steps=steps, save_strategy="no", report_to=[],
                          use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, bf16=False,
                          activation_checkpointing=False, max_length=BLOCK, seed=0)
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer.hf)
    trainer.remove_callback(PrinterCallback)  # it prints the logged metrics dict; they are still computed
    return trainer


def time_trl(model_dir: Path, pairs: list[TokenizedPair], steps: int, tokenizer, out_dir: Path):
    """(whole, steps only) seconds: the train() call, and TRL's own train_runtime (which starts after
    train() has built the dataloader, optimizer and scheduler and prepared the model)."""
    trainer = make_trl_trainer(model_dir, pairs, steps, tokenizer, out_dir)
    start = time.perf_counter()
    output = trainer.train()
    return time.perf_counter() - start, output.metrics["train_runtime"]


def same_start(model_dir: Path, pairs: list[TokenizedPair]) -> float:
    """Max |reward difference| of the two loads of the saved weights on 8 sequences (should be ~1e-6)."""
    from transformers import AutoModelForSequenceClassification

    ours, _ = load_reward_model(str(model_dir))
    theirs = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = torch.tensor([p.chosen_ids for p in pairs[:8]])  # (8, T)
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        theirs_rewards = theirs(input_ids=ids, attention_mask=mask.long()).logits.squeeze(-1)  # (8,)
        return (ours(ids, mask) - theirs_rewards).abs().max().item()


def report_trl(args: argparse.Namespace, tokenizer) -> None:
    try:
        import trl
    except ImportError:
        print("\n3. against TRL: skipped (trl is not importable; pip install trl)")
        return
    quiet_transformers()
    layers, hidden, heads = SIZES[0]
    pairs = trl_pairs()
    times: dict[str, list[tuple[float, float]]] = {"alignlab": [], "TRL": []}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "rm"
        model_dir.mkdir()
        save_reward_model(new_model(arch_for(layers, hidden, heads, tokenizer.vocab_size)), tokenizer, model_dir)
        gap = same_start(model_dir, pairs)
        for round_ in range(args.rounds + 1):  # round 0 warms up both (first-call imports, allocator)
            root = Path(tmp) / f"round{round_}"
            ours = time_alignlab(model_dir, pairs, args.steps, tokenizer, root / "alignlab")
            theirs = time_trl(model_dir, pairs, args.steps, tokenizer, root / "trl")
            if round_:
                times["alignlab"].append(ours)
                times["TRL"].append(theirs)
    print(f"\n3. against TRL {trl.__version__} RewardTrainer: {layers}L/{hidden}, {TRL_PAIRS} random pairs x "
          f"{BLOCK} tokens, {args.steps} steps of {PAIRS_PER_BATCH} pairs per run, {args.rounds} alternating rounds "
          "after a warm-up round")
    print(f"  same weights: initial rewards differ by at most {gap:.1e}")
    print(f"  {'':<9} {'whole call':>22} {'steps only':>22}")
    rates = {}
    for name, pairs_of_times in times.items():
        whole, steps_only = (statistics.median(column) for column in zip(*pairs_of_times, strict=True))
        rates[name] = (args.steps / whole, args.steps / steps_only)
        print(f"  {name:<9} {rates[name][0]:9.1f} steps/s ({whole:5.2f} s) {rates[name][1]:9.1f} steps/s "
              f"({steps_only:5.2f} s)")
    print(f"  ratio alignlab / TRL: {rates['alignlab'][0] / rates['TRL'][0]:.2f}x whole call, "
          f"{rates['alignlab'][1] / rates['TRL'][1]:.2f}x steps only")
    print("  whole call: alignlab Loop(...) + train() vs TRL trainer.train() (its set-up included); steps only: "
          "train() vs TRL's train_runtime")


def main() -> None:
    args = parse_args()
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import transformers

    tokenizer = byte_tokenizer()
    try:
        from trl import __version__ as trl_version
    except ImportError:
        trl_version = "not installed"
    print(f"device cpu, float32, threads {torch.get_num_threads()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, trl {trl_version}; byte tokenizer (vocab {tokenizer.vocab_size}), "
          f"--steps {args.steps}, --rounds {args.rounds}{' (--quick: smoke test only)' if args.quick else ''}")
    print(f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work skews every rate); "
          "seed's figures: their Apple-silicon CPU, so ratios compare machines as well as code")
    report_training(args, tokenizer.vocab_size)
    report_inference(args, tokenizer.vocab_size, tokenizer.pad_id)
    report_trl(args, tokenizer)


if __name__ == "__main__":
    main()
