"""GRPO with beta = 0.04 on the hidden-256 / 6-layer model, with and without LoRA: peak memory,
trained parameters, checkpoint size and step time, side by side.

    python benchmarks/lora_memory.py [--steps 4] [--rank 16] [--vocab 4096] [--device cpu] [--grad-accum 1]

One random Qwen2-architecture native model (hidden 256, 6 layers, 4 heads, 2 kv heads, MLP 768,
untied embeddings, a BPE-sized vocabulary of --vocab ids over the byte tokenizer's 259) is saved
once. Each variant then runs `alignlab grpo` on it in a fresh Python process (8 prompts x 4
completions, 64 new tokens, beta 0.04, sharp reward), so peak memory is that process's alone:
  full   every weight trained; the reference for the KL is a frozen deep copy of the policy
  lora   rank --rank adapters on q/k/v/o and the MLP projections, base frozen; the reference is
         the policy with its adapters off (no copy)
Reported per variant: trained parameters, the final checkpoint's size on disk, the peak resident
set (ru_maxrss: interpreter, torch and everything else included) and, on CUDA, torch's peak
allocated bytes, plus the median step time. The model-state estimate (weights + reference +
gradients + AdamW's two moments, float32) says what the difference should be.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, torch
from alignlab.config import GRPOConfig, load_config
from alignlab.backends.grpo import grpo
overrides, device = json.loads(sys.argv[1]), sys.argv[2]
run = grpo(load_config(GRPOConfig, None, overrides), quiet=True)
records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
final = run / "checkpoints" / "final"
print(json.dumps({
    "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    "step_times": [r["step_time"] for r in records if "step_time" in r],
    "checkpoint_bytes": sum(p.stat().st_size for p in final.iterdir() if p.suffix == ".safetensors"),
}))
"""


def make_model(directory: Path, vocab: int) -> int:
    import torch

    from alignlab.config import GPTConfig
    from alignlab.data.tokenizer import byte_tokenizer
    from alignlab.model.checkpoint import to_hf
    from alignlab.model.gpt import GPT

    torch.manual_seed(0)
    tokenizer = byte_tokenizer()
    model = GPT(GPTConfig(vocab_size=max(vocab, tokenizer.vocab_size), hidden_size=256, intermediate_size=768,
                          num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                          tie_word_embeddings=False))
    to_hf(model, directory, tokenizer)
    return model.num_parameters()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--vocab", type=int, default=4096, help="embedding rows (the demo's BPE has ~2.4k ids)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (fewer activations at once)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lora_memory_"))
    total = make_model(work / "base", args.vocab)
    print(f"model: hidden 256, 6 layers, vocab {args.vocab}: {total:,} parameters ({total * 4 / 2**20:.1f} MiB fp32)")
    print(f"model state, estimated: full = 5 x weights (policy, reference, gradients, 2 AdamW moments) = "
          f"{5 * total * 4 / 2**20:.1f} MiB; LoRA = 1 x weights + 4 x adapters")
    base = [f"model.path={work / 'base'}", "num_generations=4", "run.batch_size=32", "max_new_tokens=64",
            "beta=0.04", f"steps={args.steps}", "run.eval_every=0", "run.save_every=0", "preflight=false",
            "run.progress=false", f"run.device={args.device}", "prompts=64", f"optim.grad_accum={args.grad_accum}"]
    variants = {"full": [], "lora": [f"lora.r={args.rank}", f"lora.alpha={2 * args.rank}"]}
    rows = []
    for name, extra in variants.items():
        overrides = [*base, f"run.out_dir={work / name}", *extra]
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(overrides), args.device], check=True,
                             capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        result = json.loads(out.stdout.strip().splitlines()[-1])
        trained = _trained(work / name, total, args.rank if name == "lora" else 0)
        times = result["step_times"][1:] or result["step_times"]
        rows.append((name, trained, result["checkpoint_bytes"], result["rss_mib"], result["cuda_peak_mib"],
                     statistics.median(times)))
    print(f"{'variant':8} {'trained params':>15} {'checkpoint':>12} {'peak RSS':>10} {'CUDA peak':>10} {'step':>8}")
    for name, trained, size, rss, cuda, step in rows:
        cuda_text = f"{cuda:.0f} MiB" if cuda is not None else "-"
        print(f"{name:8} {trained:>15,} {size / 2**20:>9.2f} MiB {rss:>6.0f} MiB {cuda_text:>10} {step:>7.2f}s")
    (full, lora) = rows
    print(f"LoRA / full: trained {lora[1] / full[1]:.3%}, checkpoint {lora[2] / full[2]:.2%}, "
          f"peak RSS {lora[3] - full[3]:+.0f} MiB")


def _trained(run: Path, total: int, rank: int) -> int:
    """Trained parameters: every weight, or the adapters saved in the final checkpoint."""
    if not rank:
        return total
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(run / "checkpoints" / "final" / "adapter_model.safetensors")).values())


if __name__ == "__main__":
    main()
