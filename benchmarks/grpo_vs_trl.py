"""One GRPO optimizer step on CPU: alignlab's `grpo` (native and transformers engines) against TRL's GRPOTrainer.

    python benchmarks/grpo_vs_trl.py [--sizes 128x4,256x6] [--betas 0,0.04] [--steps 6] [--rounds 2]
                                     [--engines native,hf,trl] [--threads 0] [--seed 0]
    python benchmarks/grpo_vs_trl.py --model smollm2 [--lora 16] [--steps 4] [--rounds 1] [--adamw fused|foreach]

With --model, the real model (SmolLM2-135M-Instruct, or any checkpoint / .gguf) replaces the random
sizes: 4 English prompts x 4 completions per step, and each engine's generation and update are also
printed as a fraction of this machine's float32 floor for them: the GEMM rate for the model's shapes
at 1,024 rows (the update), and for decoding the rate of one step's weight products over the model's
own weights at 16 rows (`decode_floor`: a decode step reads every weight again, from memory).

Per size (hidden x layers; 4 heads, 2 kv heads, MLP 3x hidden, byte tokenizer) one random Qwen2
model is saved with `to_hf`, and every run of every engine loads that same directory: alignlab
with `model.engine=native` or `hf`, TRL through `AutoModelForCausalLM`. Both sides get the first
64 study-plan train prompts as one chat-templated user message, the sharp rule reward
(`study_plan_reward("sharp")`), 8 prompts x 4 generations = 32 completions per step, at most 64
new tokens, temperature 0.7, top-k/top-p off, loss "dapo", lr 1e-5 constant, one optimizer step
per generation batch, float32 (TRL's bf16 and gradient checkpointing defaults are turned off),
the same AdamW kernel (--adamw; fused by default, as TRL's default on torch >= 2.8), the same
torch thread count. A random byte-level model samples one of its 2 stop ids (of 259) often
enough that ~40% of completions end before 64 tokens; both sides decode until their longest row
ends, so step times compare, and the table gives each side's completion tokens.

Each run takes --steps steps; the first min(2, steps - 1) are warm-up and dropped; medians pool
the remaining steps of all --rounds rounds, which alternate the engines (native, hf, trl, native,
...). Timed per step:
  step    alignlab: `Loop.optimizer_step` (its logged step_time); TRL: on_step_begin -> on_step_end
          (generation, scoring, loss, backward, clip, AdamW; logging is outside on both sides)
  gen     alignlab: its logged gen_time (tokenize, sample, decode); TRL: `trainer._generate`, wrapped
          here (tokenize, `model.generate`, decode, length metrics)
  update  step - gen: rewards, reference log-probs (beta > 0), forward + backward, optimizer
  tok/s   completion tokens of the step / step seconds; gen tok/s: the same over gen seconds
ratio = TRL median step / engine median step (above 1: faster than TRL).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from alignlab.backends.grpo import grpo
from alignlab.cli import keep_freed_memory
from alignlab.config import GPTConfig, GRPOConfig, load_config
from alignlab.data.tokenizer import byte_tokenizer
from alignlab.model.checkpoint import load_model, to_hf
from alignlab.model.gpt import GPT
from alignlab.rewards.base import study_plan_reward
from alignlab.tasks.study_plan.prompts import train_prompts

PROMPTS, GENERATIONS, PROMPTS_PER_STEP, MAX_NEW, TEMPERATURE, LR = 64, 4, 8, 64, 0.7, 1e-5
BATCH = PROMPTS_PER_STEP * GENERATIONS  # completions per optimizer step
LANG = "all"  # study-plan phrasings; a real English model gets the English ones (--model smollm2)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="128x4,256x6", help="hidden x layers, comma-separated")
    p.add_argument("--betas", default="0,0.04", help="KL weights, comma-separated")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first 2 are warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds over the engines")
    p.add_argument("--engines", default="native,hf,trl", help="any of native, hf, trl")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="", help="a real model instead of random sizes: smollm2 (SmolLM2-135M-Instruct,"
                   " 4 English prompts x 4 completions per step), or any checkpoint / .gguf path")
    p.add_argument("--lora", type=int, default=0, help="LoRA rank on both sides (0: full fine-tuning)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="activation checkpointing on both sides")
    p.add_argument("--adamw", choices=("fused", "foreach"), default="fused", help="the AdamW kernel on both sides: "
                   "fused (TRL's default on torch >= 2.8, adamw_torch_fused; alignlab optim.fused=true) or foreach "
                   "(alignlab's default; TRL optim=adamw_torch)")
    args = p.parse_args()
    args.sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    args.betas = [float(b) for b in args.betas.split(",")]
    args.engines = args.engines.split(",")
    args.skip = min(2, args.steps - 1)
    return args


def save_policy(hidden: int, layers: int, seed: int, directory: Path) -> None:
    """A random float32 Qwen2 policy + byte tokenizer, readable by alignlab and transformers alike."""
    tokenizer = byte_tokenizer()
    arch = GPTConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, intermediate_size=3 * hidden,
                     num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=1024)
    torch.manual_seed(seed)
    to_hf(GPT(arch), directory, tokenizer)


def same_start(model_dir: Path) -> float:
    """Max |logit difference| between alignlab's native load and transformers' load of the policy."""
    from transformers import AutoModelForCausalLM

    ours, tokenizer = load_model(str(model_dir), engine="native", dtype=torch.float32)
    theirs = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer.chat_prompt_ids(train_prompts()[0])])  # (1, T)
    with torch.no_grad():
        return (ours.eval()(ids) - theirs(input_ids=ids).logits).abs().max().item()


def run_alignlab(model_dir: Path, engine: str, beta: float, args: argparse.Namespace, root: Path) -> list[dict]:
    """Per-step {step, gen, update, tokens} of one `grpo` run, read back from its metrics.jsonl."""
    lora = [f"lora.r={args.lora}", f"lora.alpha={2 * args.lora}"] if args.lora else []
    lora += [f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
             f"optim.fused={str(args.adamw == 'fused').lower()}"]
    overrides = [f"model.path={model_dir}", f"model.engine={engine}", "model.dtype=float32", *lora, f"lang={LANG}",
                 f"num_generations={GENERATIONS}", f"run.batch_size={BATCH}", f"prompts={PROMPTS}",
                 f"generation.max_new_tokens={MAX_NEW}", f"generation.temperature={TEMPERATURE}", f"beta={beta}",
                 "loss_type=dapo", "reward.mode=sharp", f"optim.lr={LR}", f"run.steps={args.steps}",
                 f"run.out_dir={root}", f"run.seed={args.seed}", "run.device=cpu", "run.precision=fp32",
                 "run.progress=false", "run.save_every=0", "run.eval_every=0", "run.log_every=1", "preflight=false"]
    run_dir = grpo(load_config(GRPOConfig, None, overrides), overwrite=True, quiet=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step_time"], "gen": r["gen_time"], "update": r["step_time"] - r["gen_time"],
             "tokens": r["completion_length_mean"] * BATCH} for r in records if "step_time" in r]


def trl_clock():
    """A TrainerCallback timing each optimizer step, with a wrapper that times TRL's generation inside it."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.rows, self.started, self.gen, self.tokens = [], 0.0, 0.0, 0

        def on_step_begin(self, args, state, control, **kwargs):
            self.started, self.gen, self.tokens = time.perf_counter(), 0.0, 0

        def on_step_end(self, args, state, control, **kwargs):
            step = time.perf_counter() - self.started
            self.rows.append({"step": step, "gen": self.gen, "update": step - self.gen, "tokens": self.tokens})

        def timed(self, generate):
            def wrapper(*a, **kw):
                start = time.perf_counter()
                out = generate(*a, **kw)  # (prompt_ids, completion_ids, ...): lists of token ids
                self.gen += time.perf_counter() - start
                self.tokens += sum(len(ids) for ids in out[1])
                return out
            return wrapper

    return StepClock()


def run_trl(model_dir: Path, beta: float, args: argparse.Namespace, root: Path) -> list[dict]:
    """Per-step {step, gen, update, tokens} of one GRPOTrainer.train() run."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    prompts = train_prompts(LANG)[:PROMPTS]
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora, lora_alpha=2 * args.lora, lora_dropout=0.0, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
    config = TRLConfig(output_dir=str(root), max_steps=args.steps, per_device_train_batch_size=BATCH,
                       generation_batch_size=BATCH, num_generations=GENERATIONS, max_completion_length=MAX_NEW,
                       temperature=TEMPERATURE, top_p=1.0, top_k=0, beta=beta, num_iterations=1,
                       loss_type="dapo", learning_rate=LR, lr_scheduler_type="constant", logging_steps=1,
                       report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=args.gradient_checkpointing,
                       save_strategy="no", dataloader_num_workers=0, disable_tqdm=True, seed=args.seed,
                       optim="adamw_torch_fused" if args.adamw == "fused" else "adamw_torch")
    trainer = GRPOTrainer(model=model, reward_funcs=[study_plan_reward("sharp")], args=config,
                          train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(str(model_dir)),
                          peft_config=peft_config)
    trainer.remove_callback(PrinterCallback)  # it prints every logged metrics dict
    clock = trl_clock()
    trainer.add_callback(clock)
    trainer._generate = clock.timed(trainer._generate)  # instance attribute: TRL's code is untouched
    trainer.train()
    return clock.rows


def run_engine(engine: str, model_dir: Path, beta: float, args: argparse.Namespace, root: Path) -> list[dict]:
    threads = torch.get_num_threads()
    rows = (run_trl(model_dir, beta, args, root) if engine == "trl"
            else run_alignlab(model_dir, engine, beta, args, root))
    if torch.get_num_threads() != threads:
        print(f"  note: {engine} changed torch threads {threads} -> {torch.get_num_threads()}; reset")
        torch.set_num_threads(threads)
    return rows[args.skip:]


def report(rows: dict[str, list[dict]], hidden: int, layers: int, beta: float) -> None:
    med = {name: {k: statistics.median(r[k] for r in steps) for k in ("step", "gen", "update")}
           for name, steps in rows.items()}
    print(f"\nhidden {hidden} x {layers} layers, beta {beta} (medians over {len(next(iter(rows.values())))} steps)")
    print(f"  {'engine':<9} {'step s':>8} {'gen s':>8} {'update s':>9} {'tok/s':>8} {'gen tok/s':>10} "
          f"{'tokens':>7} {'vs TRL':>7}")
    for name, steps in rows.items():
        m = med[name]
        rate = statistics.median(r["tokens"] / r["step"] for r in steps)
        gen_rate = statistics.median(r["tokens"] / r["gen"] for r in steps)
        tokens = statistics.median(r["tokens"] for r in steps)
        ratio = f"{med['trl']['step'] / m['step']:6.2f}x" if "trl" in med else "      -"
        print(f"  {name:<9} {m['step']:8.3f} {m['gen']:8.3f} {m['update']:9.3f} {rate:8.1f} {gen_rate:10.1f} "
              f"{tokens:7.0f} {ratio}")
    for name in (n for n in rows if n != "trl" and "trl" in rows):
        print(f"  alignlab {name} is {med['trl']['step'] / med[name]['step']:.2f}x TRL per step "
              f"(TRL {med['trl']['step']:.3f} s / {name} {med[name]['step']:.3f} s; gen "
              f"{med['trl']['gen'] / med[name]['gen']:.2f}x, update {med['trl']['update'] / med[name]['update']:.2f}x)")


def quiet_transformers() -> None:
    """No progress bars, no warnings: TRL's output would drown the tables."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bar()
    datasets.logging.set_verbosity_error()


def bench_size(hidden: int, layers: int, args: argparse.Namespace, tmp: Path) -> None:
    model_dir = tmp / f"policy_{hidden}x{layers}"
    save_policy(hidden, layers, args.seed, model_dir)
    print(f"\npolicy {hidden}x{layers}: {sum(p.numel() for p in load_model(str(model_dir))[0].parameters()):,} "
          f"parameters; native vs transformers logits differ by at most {same_start(model_dir):.1e}")
    for beta in args.betas:
        rows: dict[str, list[dict]] = {name: [] for name in args.engines}
        for round_ in range(args.rounds):
            for name in args.engines:
                rows[name] += run_engine(name, model_dir, beta, args, tmp / f"{hidden}x{layers}_{beta}_{round_}_{name}")
        report(rows, hidden, layers, beta)


def best_of(measure, trials: int = 3) -> float:
    """The highest of `trials` readings: this shared VM's rates swing by 30% between readings, and a
    floor must be what the machine can do, not one slow moment of it."""
    return max(measure() for _ in range(trials))


def gemm_rate(shapes: list[tuple[int, int, int]], repeats: int = 20) -> float:
    """This machine's float32 matrix-product rate (GFLOP/s) over the (rows, in, out) shapes of a step:
    with each matrix held in cache: the floor of the update (1,024 rows reuse every weight many times)."""
    flops = seconds = 0.0
    for rows, inner, outer in shapes:
        a, b = torch.randn(rows, inner), torch.randn(inner, outer)
        torch.mm(a, b)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        seconds += time.perf_counter() - started
        flops += 2.0 * rows * inner * outer * repeats
    return flops / seconds / 1e9


def decode_floor(model: torch.nn.Module, rows: int = 16, repeats: int = 5) -> float:
    """GFLOP/s of one decode step's weight products and nothing else: every linear weight of `model` (the
    output head included) applied once to `rows` rows, in order. Between two decode steps every weight is
    read again and the model does not fit in cache, so this, not a product whose matrix stays in cache
    (`gemm_rate`), is the floor a step of decoding can reach."""
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}

    def step() -> None:
        for w in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w)

    with torch.no_grad():
        step()  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            step()
        seconds = time.perf_counter() - started
    return 2.0 * rows * sum(w.numel() for w in weights) * repeats / seconds / 1e9


def bench_model(args: argparse.Namespace, tmp: Path) -> None:
    """--model: one real model, its step timed per engine, with generation and update as a fraction of the
    machine's GEMM rate for the model's shapes (2 FLOPs per weight per token forward, 6 forward+backward;
    attention scores left out: small next to the weights at these lengths)."""
    from alignlab.model.checkpoint import resolve_source

    model_dir = resolve_source("smollm2-135m-instruct" if args.model == "smollm2" else args.model)
    model = load_model(str(model_dir), dtype=torch.float32)[0]
    cfg = model.config
    body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    head = cfg.vocab_size * cfg.hidden_size  # the output head is a product whether tied or not
    print(f"\nmodel {model_dir}: {sum(p.numel() for p in model.parameters()):,} parameters; lora r={args.lora}")
    shapes = [(rows, cfg.hidden_size, cfg.intermediate_size) for rows in (16, 1024)]
    shapes += [(rows, cfg.hidden_size, cfg.hidden_size) for rows in (16, 1024)]
    cached = best_of(lambda: gemm_rate(shapes[0::2]))
    peak = {16: best_of(lambda: decode_floor(model, 16)), 1024: best_of(lambda: gemm_rate(shapes[1::2]))}
    print(f"float32 GEMM rate for its shapes (best of 3 readings): {peak[1024]:.0f} GFLOP/s at 1024 rows "
          f"(update); at 16 rows (decoding) {peak[16]:.0f} with every weight of the model read once per step, as "
          f"decoding reads them (the floor used below), {cached:.0f} with one matrix held in cache")
    for beta in args.betas:
        rows: dict[str, list[dict]] = {name: [] for name in args.engines}
        for round_ in range(args.rounds):
            for name in args.engines:
                rows[name] += run_engine(name, model_dir, beta, args, tmp / f"model_{beta}_{round_}_{name}")
        report(rows, cfg.hidden_size, cfg.num_hidden_layers, beta)
        tokenizer = load_model(str(model_dir))[1]
        prompt = sum(len(tokenizer.chat_prompt_ids(p)) for p in train_prompts(LANG)[:PROMPTS]) / PROMPTS
        print(f"  FLOPs the step needs: each prompt ({prompt:.0f} chat-templated tokens on average) once per group, "
              f"each completion token once, the output head only for completion tokens; LoRA's frozen weights "
              f"need no weight gradient (4 of 6 FLOPs per weight)")
        for name, steps in rows.items():
            tokens = statistics.median(r["tokens"] for r in steps)
            gen = statistics.median(r["gen"] for r in steps)
            update = statistics.median(r["update"] for r in steps)
            needed = tokens + prompt * PROMPTS_PER_STEP  # the body's tokens; only completion tokens need the head
            work = body * needed + head * tokens
            update_flops, gen_flops = (6.0 if not args.lora else 4.0) * work, 2.0 * work
            print(f"  {name:<7} update {update_flops / update / 1e9:6.0f} GFLOP/s = "
                  f"{update_flops / update / 1e9 / peak[1024]:.0%} of peak; generation "
                  f"{gen_flops / gen / 1e9:6.0f} GFLOP/s = {gen_flops / gen / 1e9 / peak[16]:.0%} of peak")


def main() -> None:
    args = parse_args()
    if args.model:  # a real model: the step (4 prompts x 4 completions x 64 new tokens)
        global PROMPTS_PER_STEP, BATCH, LANG
        PROMPTS_PER_STEP, LANG = 4, "en"
        BATCH = PROMPTS_PER_STEP * GENERATIONS
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # what the alignlab command does; process-wide, so TRL's side gets it too
    import transformers
    import trl

    quiet_transformers()
    print(f"cpu, float32, threads {torch.get_num_threads()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, trl {trl.__version__}; {PROMPTS} prompts, {PROMPTS_PER_STEP} x "
          f"{GENERATIONS} completions per step, {MAX_NEW} new tokens max, temperature {TEMPERATURE}; "
          f"{args.steps} steps per run ({args.skip} warm-up dropped), {args.rounds} alternating rounds; "
          f"{args.adamw} AdamW on every side; freed memory kept for reuse (glibc, every side): {kept}")
    print(f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work skews every time)")
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            bench_model(args, Path(tmp))
            return
        for hidden, layers in args.sizes:
            bench_size(hidden, layers, args, Path(tmp))


if __name__ == "__main__":
    main()
