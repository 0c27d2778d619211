"""`alignlab pretrain`: a native GPT (and its tokenizer) trained on any UTF-8 text file.

Reads the text, trains a byte-level BPE (or takes the byte tokenizer, or the tokenizer of
`model.path`), samples random blocks with a seeded generator whose state is the data
position, and hands the rest to `trainers/loop.py`. Ends by printing a few samples (its closing summary).

Left out: document-aware packing and streaming of corpora larger than memory.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import torch

from alignlab.algorithms.sft import next_token_loss
from alignlab.config import GenerationConfig, PretrainConfig
from alignlab.data.batches import LMBatch
from alignlab.data.tokenizer_load import tokenizer_for_new_model
from alignlab.errors import UserError
from alignlab.generation.engine import generate
from alignlab.generation.sampling import derive_seed
from alignlab.model.checkpoint import load_model, save_model
from alignlab.model.gpt import GPT
from alignlab.model.hf import set_gradient_checkpointing
from alignlab.runs import Run, print_nothing
from alignlab.runtime import Runtime, make_generator, parse_dtype, resolve_runtime, seed_everything
from alignlab.trainers.lifecycle import RunOptions, run_training
from alignlab.trainers.loop import TrainSpec


def read_corpus(path: str) -> tuple[str, list[Path]]:
    """The text to train on and the data files it came from (none for the built-in corpus)."""
    if not path:
        return resources.files("alignlab.assets").joinpath("shakespeare.txt").read_text("utf-8"), []
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("data file not found", file=path, key="data") from None
    except UnicodeDecodeError as err:
        raise UserError(f"not UTF-8 text (byte {err.start})", file=path, key="data") from None
    if not text.strip():
        raise UserError("data file is empty", file=path, key="data")
    return text, [file]


class TokenBlocks:
    """Random (input, next-token) blocks from one token stream; the generator state is the position.
    `part` keeps one process's slice of each batch (all processes draw the same starts)."""

    def __init__(self, tokens: torch.Tensor, block_size: int, batch_size: int, seed: int, device,
                 part: slice | None = None):
        if tokens.numel() < block_size + 2:
            raise UserError(f"the corpus has {tokens.numel()} tokens, fewer than block_size + 2 = "
                            f"{block_size + 2}; use a smaller block_size or more text", key="block_size")
        self.tokens, self.block, self.batch, self.device = tokens, block_size, batch_size, device
        self.generator = make_generator(seed)
        self.part = part or slice(None)

    def next_batch(self) -> LMBatch:
        high = self.tokens.numel() - self.block - 1
        starts = torch.randint(0, high, (self.batch,), generator=self.generator)[self.part]
        rows = torch.stack([self.tokens[s: s + self.block + 1] for s in starts.tolist()])  # (B, T+1)
        rows = rows.to(self.device)
        return LMBatch(input_ids=rows[:, :-1], labels=rows[:, 1:], loss_mask=None)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def build_model(cfg: PretrainConfig, runtime: Runtime, text: str, resume_from: Path | None):
    """(model, tokenizer): loaded from model.path, or a new native GPT sized to its tokenizer."""
    if cfg.model.path:
        return load_model(cfg.model.path, engine=cfg.model.engine, dtype=parse_dtype(cfg.model.dtype),
                          device=runtime.device, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = tokenizer_for_new_model(cfg.tokenizer, text.splitlines(), resume_from)
    seed_everything(cfg.run.seed)  # initial weights depend on the seed alone
    arch = dataclasses.replace(cfg.model.arch, vocab_size=tokenizer.vocab_size)
    model = GPT(arch).to(device=runtime.device, dtype=parse_dtype(cfg.model.dtype) or torch.float32)
    return model, tokenizer


def pretrain(cfg: PretrainConfig, *, resume: bool = False, overwrite: bool = False,
             quiet: bool = False, allow_changes: bool = False) -> Path:
    """Train and return the run directory; the model ends in <run>/checkpoints/final."""
    text, files = read_corpus(cfg.data)
    runtime = resolve_runtime(cfg.run.device, cfg.run.precision)
    part = runtime.dist.shard(cfg.micro_batch_size)
    previous = Run(Path(cfg.run.out_dir)).latest_checkpoint(warn=print_nothing) if resume else None
    model, tokenizer = build_model(cfg, runtime, text, previous)
    set_gradient_checkpointing(model, cfg.model.gradient_checkpointing)
    tokens = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    n_val = int(tokens.numel() * cfg.val_fraction)
    train_tokens, val_tokens = tokens[: tokens.numel() - n_val], tokens[tokens.numel() - n_val:]
    source = TokenBlocks(train_tokens, cfg.block_size, cfg.micro_batch_size, cfg.run.seed, runtime.device, part)
    options = RunOptions(resume=resume, overwrite=overwrite, quiet=quiet, allow_changes=allow_changes)

    def describe(run: Run) -> str:
        return (f"pretrain: {model.num_parameters() if isinstance(model, GPT) else '?'} parameters, "
                f"{tokens.numel()} tokens ({tokenizer.kind} tokenizer, vocab {tokenizer.vocab_size}), "
                f"{runtime.device} {runtime.precision} -> {run.root}")

    def compute_loss(batch: LMBatch):
        logits = model(batch.input_ids)  # (B, T, V)
        return next_token_loss(logits, batch.labels, batch.loss_mask), {"tokens": batch.labels.numel()}

    def build(run: Run) -> TrainSpec:  # the closing samples are written into the run
        return TrainSpec(model, source, compute_loss, lambda d: save_model(model, tokenizer, d),
                         evaluate=_val_loss(model, val_tokens, cfg, runtime) if n_val > cfg.block_size + 1 else None,
                         close=lambda last: _print_samples(model, tokenizer, cfg.sample, cfg.sample_prompts,
                                                           cfg.run.seed, run))

    return run_training(cfg, runtime, options, build=build, describe=describe, data_files=files, dtype=model.dtype)


def _val_loss(model, val_tokens: torch.Tensor, cfg: PretrainConfig, runtime: Runtime):
    """Held-out loss on fixed blocks, identical at every evaluation and, on purpose, for every run.seed
    (the blocks' stream is keyed by purpose only), so runs of different seeds compare on one set."""

    def evaluate() -> dict:
        blocks = TokenBlocks(val_tokens, cfg.block_size, min(cfg.run.batch_size, 16),
                             derive_seed(0, "validation blocks"), runtime.device)
        batch = blocks.next_batch()
        model.eval()
        with torch.no_grad(), runtime.autocast():
            loss = next_token_loss(model(batch.input_ids), batch.labels)
        return {"loss": loss.item()}

    return evaluate


def _print_samples(model, tokenizer, gen: GenerationConfig, prompts, seed: int, run: Run) -> None:
    if not prompts:
        return
    model.eval()
    generator = make_generator(seed, next(model.parameters()).device)
    rollout = generate(model, tokenizer, list(prompts), gen, generator, chat=False)
    records = [{"prompt": p, "completion": t} for p, t in zip(prompts, rollout.texts, strict=True)]
    run.write_jsonl("samples/final.jsonl", records)
    for record in records:
        run.print(f"--- {record['prompt']!r}\n{record['prompt']}{record['completion']}")
