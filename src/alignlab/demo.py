"""`alignlab demo`: the study-plan experiment end to end, offline, in minutes on a laptop CPU.

(a) A base policy: a BPE tokenizer and a tiny Qwen2-architecture GPT trained from scratch
    (SFT) on synthetic study-plan answers of which only `COMPLIANCE` follow the instructions,
    so it starts out mostly wrong in the ways real models are (preamble, numbering, a fourth
    bullet, missing times). It is cached under `$ALIGNLAB_CACHE` (default ~/.cache/alignlab),
    keyed by its config hash, so a second demo skips it.
(b) Evaluation on the held-out prompts, `EVAL.samples` completions each.
`lang` (all, en, zh; `alignlab demo --lang`) picks the study-plan phrasings of every step: the
base policy's SFT data, GRPO's prompts and both evaluations (a base per language is cached).
(c) GRPO with the sharp rule reward (`recipes/grpo_study_plan.yaml` holds the same settings).
(d) Evaluation again, same prompts and seed.
(e) `report.html` / `report.md` in the run directory, and the before/after table printed.

Left out: the reward-model leg of design.md's sketch (train-rm has its own quick recipe,
`recipes/rm_quick.yaml`); `recipes/grpo_study_plan_naive.yaml` is the hackable counterpart.
"""

from __future__ import annotations

from pathlib import Path

from alignlab.backends.grpo import grpo
from alignlab.config import EvalConfig, GRPOConfig, SFTConfig, config_hash, load_config
from alignlab.eval.metrics import format_table
from alignlab.eval.report import write_report
from alignlab.eval.sampling_eval import eval_info, evaluate, held_out, write_eval
from alignlab.eval.verdict import compare_verdict, format_verdict, single_verdict
from alignlab.model.checkpoint import load_model
from alignlab.outputs import check_replaceable, swap_in
from alignlab.runtime import cache_dir, resolve_device
from alignlab.tasks.registry import get_task
from alignlab.trainers.sft import sft

COMPLIANCE = 0.3  # share of instruction-following answers in the base policy's SFT data
SEED = 0
EVAL = EvalConfig(samples=5, max_new_tokens=96, seed=SEED)  # the before / after evaluations on held-out prompts
# A vocabulary large enough for every Chinese character of the data as one token (the corpus stops
# the BPE at ~2,400): with 1,024, characters split into bytes and a policy under RL emits broken ones.
BASE = ["compliance_rate=0.3", "synthetic_per_prompt=8", "steps=400", "run.batch_size=16", "optim.lr=1e-3",
        "tokenizer.vocab_size=4096", "run.eval_every=100", "run.save_every=0", f"run.seed={SEED}"]
POLICY = ["num_generations=8", "run.batch_size=64", "max_new_tokens=96", "temperature=0.7", "reward.mode=sharp",
          "optim.lr=3e-4", "optim.schedule=cosine", "optim.warmup_steps=5", "run.eval_every=50", "eval_samples=2",
          "run.save_every=50", f"run.seed={SEED}"]
STEPS = 350


def base_policy(fresh: bool = False, lang: str = "all") -> Path:
    """The cached base policy's checkpoint (SFT on `lang`'s train prompts), built first if missing (or `fresh`)."""
    cfg = load_config(SFTConfig, None, [*BASE, f"lang={lang}"])
    home = cache_dir() / "demo" / f"base-{config_hash(cfg)[:12]}"
    final = home / "checkpoints" / "final"
    if (final / "state.json").is_file() and not fresh:
        print(f"(a) base policy: cached at {final}")
        return final
    print(f"(a) base policy: SFT of a tiny GPT on synthetic answers, {COMPLIANCE:.0%} of them compliant "
          f"(cached at {home} for the next demo)")
    building = home.with_name(home.name + ".building")
    check_replaceable(home, "run", replace=True)  # ALIGNLAB_CACHE may point anywhere: only our own is replaced
    sft(load_config(SFTConfig, None, [*BASE, f"lang={lang}", f"run.out_dir={building}"]), overwrite=True)
    swap_in(building, home)
    return final


def _evaluate(checkpoint: Path, label: str, lang: str):
    model, tokenizer = load_model(str(checkpoint), device=resolve_device("auto"))
    task = get_task("study-plan")
    samples, summary = evaluate(model, tokenizer, task, held_out(task, EVAL, lang=lang), EVAL)
    print(f"    {label}: pass rate {summary.pass_rate:.1%} on {summary.n_samples} held-out samples")
    return samples, summary


def _save_eval(out: Path, name: str, checkpoint: Path, samples, summary, lang: str) -> None:
    info = eval_info(str(checkpoint), get_task("study-plan"), EVAL, lang=lang)
    write_eval(out, name, samples, summary, single_verdict(summary, samples), info)


def run_demo(out: str = "runs/demo", steps: int = STEPS, fresh: bool = False, progress: bool = True,
             lang: str = "all") -> Path:
    """Run (a)-(e) on `lang`'s prompts and return the run directory (policy in checkpoints/final,
    report.html beside it)."""
    base = base_policy(fresh, lang)
    print(f"(b) evaluating the base policy: {len(get_task('study-plan').held_out_examples('', lang))} held-out "
          f"prompts x {EVAL.samples} samples")
    before_samples, before = _evaluate(base, "before", lang)
    print(f"(c) GRPO with the sharp rule reward, {steps} steps")
    cfg = load_config(GRPOConfig, None, [*POLICY, f"model.path={base}", f"steps={steps}", f"run.out_dir={out}",
                                         f"run.progress={str(progress).lower()}", f"lang={lang}"])
    run_dir = grpo(cfg, overwrite=True)
    _save_eval(run_dir / "eval_before", "before", base, before_samples, before, lang)
    final = run_dir / "checkpoints" / "final"
    print("(d) evaluating the trained policy on the same prompts and seed")
    after_samples, after = _evaluate(final, "after", lang)
    _save_eval(run_dir / "eval_after", "after", final, after_samples, after, lang)
    html, md = write_report(run_dir, title="alignlab demo: GRPO on the study-plan task")
    print("(e) before / after on held-out prompts:\n")
    print(format_table({"before (base)": before, "after (GRPO)": after}))
    print()
    print(format_verdict(compare_verdict(before, after, after_samples)))
    example = ("Give me a three-bullet study plan, a time in each" if lang == "en"
               else "给我一个三点式学习计划，每条包含时间")
    print(f"\nreport: {html}  (and {md.name})\npolicy: {final}\n"
          f"try:    alignlab generate {final} --prompt '{example}'")
    return run_dir
