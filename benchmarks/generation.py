"""Tokens/s of the native KV-cache sampler against `transformers.generate` on the same weights.

    python benchmarks/generation.py [--device cpu] [--rounds 3] [--hidden 256 --layers 6 ...]

Defaults follow the foundation issue: hidden 256, 6 layers, 4 heads, 2 kv heads, batch 16,
prompt 32, 128 new tokens, float32, CPU. Both engines sample (temperature 1) with no stop
token, so each produces exactly batch x new tokens; runs alternate and the medians are
compared. A third row times only the weight matrix products of the same decode steps (no
attention, no sampling, no Python around them): the floor any engine computing this model in
this dtype pays, so "best possible ratio" = transformers time / floor.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from alignlab.config import GenerationConfig, GPTConfig
from alignlab.data.tokenizer import byte_tokenizer
from alignlab.generation.engine import generate_hf, generate_native
from alignlab.model.checkpoint import to_hf
from alignlab.model.gpt import GPT


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, args.dtype)
    tok = byte_tokenizer()
    arch = GPTConfig(vocab_size=tok.vocab_size, hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                     num_hidden_layers=args.layers, num_attention_heads=args.heads,
                     num_key_value_heads=args.kv_heads, max_position_embeddings=1024)
    torch.manual_seed(0)
    native = GPT(arch).eval()
    with tempfile.TemporaryDirectory() as tmp:
        to_hf(native, tmp, tok)
        hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype).to(args.device).eval()
    native = native.to(args.device, dtype)
    prompts = torch.randint(0, 256, (args.batch, args.prompt), device=args.device)
    mask = torch.ones_like(prompts, dtype=torch.bool)
    cfg = GenerationConfig(max_new_tokens=args.new, temperature=1.0)
    engines = {"native": (generate_native, native), "transformers": (generate_hf, hf),
               "gemm floor": (_weight_gemms_only, native)}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for round_ in range(args.rounds + 1):  # round 0 warms up both
        for name, (run, model) in engines.items():
            gen = torch.Generator(device=args.device).manual_seed(round_)
            _sync(args.device)
            start = time.perf_counter()
            ids, mask_out, _ = run(model, prompts, mask, cfg, gen, stop_ids=[], pad_id=tok.pad_id)
            _sync(args.device)
            assert mask_out is None or int(mask_out.sum()) == args.batch * args.new
            if round_:
                times[name].append(time.perf_counter() - start)
    tokens = args.batch * args.new
    rates = {name: tokens / statistics.median(t) for name, t in times.items()}
    print(f"device {args.device}, {args.dtype}, hidden {args.hidden}, layers {args.layers}, heads "
          f"{args.heads}/{args.kv_heads}, batch {args.batch}, prompt {args.prompt}, new {args.new}, "
          f"{args.rounds} alternating rounds, threads {torch.get_num_threads()}")
    for name, rate in rates.items():
        print(f"  {name:<13} {rate:10.1f} tokens/s   (median {statistics.median(times[name]):.3f} s)")
    print(f"  ratio native / transformers: {rates['native'] / rates['transformers']:.2f}x "
          f"(best possible at the gemm floor: {rates['gemm floor'] / rates['transformers']:.2f}x)")


@torch.inference_mode()
def _weight_gemms_only(model: GPT, prompts, mask, cfg, generator, *, stop_ids, pad_id):
    """The weight matrix products of cfg.max_new_tokens decode steps, and nothing else."""
    x = torch.randn(prompts.shape[0], model.config.hidden_size, device=prompts.device, dtype=model.dtype)
    h = torch.randn(prompts.shape[0], model.config.intermediate_size, device=x.device, dtype=x.dtype)
    for _ in range(cfg.max_new_tokens):
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                F.linear(x, proj.weight, proj.bias)
            for proj in (attn.o_proj, mlp.gate_proj, mlp.up_proj):
                F.linear(x, proj.weight)
            F.linear(h, mlp.down_proj.weight)
        F.linear(x, model.lm_head.weight)
    return None, None, None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
