"""`alignlab sweep RECIPE`: run variants of one GRPO recipe and compare them on one held-out evaluation.

A sweep recipe (YAML) names a base GRPO recipe and what each variant changes:

    base: grpo_study_plan.yaml          # a GRPO recipe, relative to this file
    policy: demo                         # every variant starts here: "demo" (the demo's cached base
                                         # policy, built if missing) or a checkpoint; else base's model.path
    set: {steps: 150, run.batch_size: 32}   # applied to every variant
    seeds: [0, 1]                        # each variant runs once per seed (run.seed)
    lang: en                             # prompts of one language (study-plan: all, en, zh) for training
                                         # and evaluation; default: the base recipe's lang (all)
    eval: {samples: 5, temperature: 0.7, max_new_tokens: 96}   # one evaluation for every run (EvalConfig)
    variants:                            # named override sets ...
      - {name: naive reward, set: {reward.mode: naive}}
      - {name: sharp reward, set: {reward.mode: sharp}}
    grid: {temperature: [0.7, 0.3]}      # ... and/or a cartesian grid, crossed with the variants
    out_dir: runs/my_sweep

Every run is checked (its full config built) before the first one starts, so a typo in the last
variant costs nothing. The starting policy is evaluated once (`sampling_eval.evaluate` on the held-out
examples of the runs' one task, `lang` and `eval_data`, with the sweep's `EvalConfig`), each trained policy the
same way, so rows differ only by training; the evaluation
settings are the sweep's, not the variant's (a variant trained at temperature 0.3 is still judged
at `eval.temperature`). Each run directory gets its own report.html; the sweep directory gets
sweep.md / sweep.html / sweep.json: a row per variant with the held-out pass rate (pooled over
seeds, 95% Wilson interval, and the per-seed spread), degeneration, the trained reward first ->
last, KL, the reward-hacking verdict of each seed and the time, plus a plot. A finished run leaves
result.json; `--resume` skips those and resumes interrupted ones from their newest checkpoint.

Left out: other trainers than GRPO, sweeping evaluation settings, early stopping of bad variants.
"""

from alignlab.sweep.recipe import Sweep, SweepRun, read_sweep, slugify
from alignlab.sweep.run import plan, run_one, run_sweep

__all__ = ["Sweep", "SweepRun", "plan", "read_sweep", "run_one", "run_sweep", "slugify"]
