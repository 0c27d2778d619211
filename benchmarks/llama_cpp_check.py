"""A policy exported with `alignlab export --to gguf`, greedy-decoded by llama.cpp itself, next to alignlab.

    python benchmarks/llama_cpp_check.py LLAMA_SIMPLE CHECKPOINT [--tokens 32] [--dtypes f32,f16,q8_0]

LLAMA_SIMPLE is llama.cpp's `llama-simple` example binary (greedy decoding of one prompt), built for
example from the llama.cpp that llama-cpp-python's source distribution vendors:
    cmake -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON && cmake --build build --target llama-simple
CHECKPOINT is any alignlab checkpoint of a Llama or Qwen2 model. For each dtype the checkpoint is
exported (`alignlab export --to gguf`) into a temporary folder; each of four chat prompts, rendered
with the checkpoint's chat template, is decoded greedily for --tokens tokens by llama.cpp and by
alignlab's native engine, and the script prints where the two first differ and alignlab's margin
between its top two logits there (a margin within float rounding is a tie, not an error).
Run by hand (llama.cpp is not a dependency); nothing here is part of CI.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import torch

from alignlab.config import GenerationConfig
from alignlab.generation.engine import generate
from alignlab.model.checkpoint import load_model

PROMPTS = ["Give me a three-point study plan for learning Go.", "Plan my evening of revising statistics, please.",
           "How should I spend two hours practising the piano?", "What is a good way to prepare for a chemistry exam?"]


def alignlab_greedy(model, tok, ids: list[int], n: int) -> tuple[list[int], str, list[float]]:
    """alignlab's greedy tokens and text, and its top-two logit margin at each generated position."""
    with torch.no_grad():
        out = generate(model, tok, [ids], GenerationConfig(max_new_tokens=n, temperature=0.0))
        tokens = out.completion_ids[0][: int(out.lengths[0])].tolist()
        logits = model(torch.tensor([ids + tokens]))[0, len(ids) - 1:-1]  # (n, V)
        top = logits.topk(2, -1).values
    return tokens, out.texts[0], (top[:, 0] - top[:, 1]).tolist()


def llama_cpp_greedy(binary: str, gguf: Path, text: str, n: int) -> str:
    """llama.cpp's greedy continuation of `text` (special tokens parsed, as llama-simple does)."""
    done = subprocess.run([binary, "-m", str(gguf), "-n", str(n), text], capture_output=True, text=True, check=True)
    return done.stdout[len(text):] if done.stdout.startswith(text) else done.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("llama_simple")
    p.add_argument("checkpoint")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--dtypes", default="f32,f16,q8_0")
    args = p.parse_args()
    model, tok = load_model(args.checkpoint, engine="native", dtype=torch.float32)[:2]
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for dtype in args.dtypes.split(","):
            files[dtype] = Path(tmp) / f"policy_{dtype}.gguf"
            subprocess.run(["alignlab", "export", args.checkpoint, "--to", "gguf", str(files[dtype]), "--dtype",
                            dtype], check=True, capture_output=True)
        for prompt in PROMPTS:
            ids = tok.chat_prompt_ids(prompt)
            tokens, text, margins = alignlab_greedy(model, tok, ids, args.tokens)
            print(f"\n{prompt!r}\n  alignlab   {text!r}")
            for dtype, gguf in files.items():
                theirs = llama_cpp_greedy(args.llama_simple, gguf, tok.hf.decode(ids, skip_special_tokens=False),
                                          args.tokens)
                their_ids = tok.hf(theirs, add_special_tokens=False)["input_ids"]
                first = next((i for i, (a, b) in enumerate(zip(tokens, their_ids, strict=False)) if a != b), None)
                where = "all equal" if first is None and text.strip() == theirs.replace("<|im_end|>", "").strip() \
                    else f"first difference at token {first} (alignlab's top-two margin there " \
                         f"{margins[first]:.4f})" if first is not None and first < len(margins) else "texts differ"
                print(f"  {dtype:<10} {theirs!r}\n             {where}")


if __name__ == "__main__":
    main()
