"""Checks before an RL run spends its first step: the ways a GRPO run silently learns nothing.

`preflight` looks at the tokenizer (a pad id and stop ids that ordinary text never produces),
the chat template (it renders a prompt and keeps its text), the rewards (they honour the
contract on a pilot batch sampled from the policy), and the learning signal on that batch: the
fraction of completions cut by `max_new_tokens` (a truncated completion rarely earns a
reward, and its EOS is never learned) and the fraction of groups whose rewards are all equal
(zero advantage, zero gradient). It probes the reward with the task's attacks on a few train prompts
(`rewards/probe.py`, what `alignlab probe-reward` tabulates) and warns loudly when some attack scores as
well as a good answer: a policy will find it. It times a second pilot generation and a second
forward/backward (the first pays one-off warm-up), and estimates the time per step. Nothing it does
changes the policy, its optimizer or the run's random streams (the pilot has its own generator).

Left out: checks of a reward model's calibration (`alignlab audit-rm` does that), memory
estimates.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from alignlab.data.tokenizer import PROBE_TEXT
from alignlab.errors import UserError
from alignlab.rewards.penalties import snippet
from alignlab.rewards.probe import PREFLIGHT_PROMPTS, probe_reward

TRUNCATION_WARN = 0.5  # most completions cut by the token limit
ZERO_SPREAD_WARN = 0.5  # most groups carry no signal


@dataclass
class PreflightReport:
    """checks: (name, ok, detail) rows; warnings: what to fix before trusting the run."""

    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds_per_step: float = 0.0
    metrics: dict = field(default_factory=dict)

    def format(self, steps: int) -> str:
        lines = ["preflight:"]
        lines += [f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}" for name, ok, detail in self.checks]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        minutes = self.seconds_per_step * steps / 60
        lines.append(f"  estimated {self.seconds_per_step:.2f} s/step, {minutes:.1f} min for {steps} steps (an upper "
                     "bound: the first steps run at this pace, later ones often faster as kernels warm up and "
                     "completions shorten)")
        return "\n".join(lines)


def _tokenizer_checks(tokenizer, prompt: str) -> list[tuple[str, bool, str]]:
    pad, stops = tokenizer.pad_id, list(tokenizer.stop_ids)
    sample = tokenizer.encode(f"{prompt}\n{PROBE_TEXT}")
    leaks = [i for i in [pad, *stops] if i is not None and i in sample]
    checks = [("pad token", pad is not None, f"id {pad}" if pad is not None else "missing: set pad_token"),
              ("stop tokens", bool(stops), f"ids {stops}" if stops else "no EOS: completions never end"),
              ("special ids absent from text", not leaks, "ok" if not leaks else f"ids {leaks} appear in plain text")]
    try:
        ids = tokenizer.chat_prompt_ids(prompt)
        rendered = tokenizer.decode(ids, skip_special_tokens=False)
        kept = prompt in rendered
        plain = getattr(getattr(tokenizer, "hf", None), "chat_template", "") is None  # a base model's tokenizer
        found = f"none: prompts go in as plain text, {len(ids)} tokens" if plain else f"{len(ids)} prompt tokens"
        checks.append(("chat template", kept, found if kept else "prompt text lost"))
    except Exception as err:  # any failure to render is the finding
        checks.append(("chat template", False, f"{type(err).__name__}: {err}"))
    return checks


def _no_spread_advice(m: dict, mode: str) -> str:
    """What to do when most pilot groups' rewards are equal: GRPO's advantages are then zero."""
    advice = (f"{m['zero_spread_fraction']:.0%} of pilot groups have equal rewards (zero advantage): raise "
              "num_generations or temperature, or use a reward with partial credit")
    if m["pass_rate"] == 0 and mode != "shaped":  # a 0% start under an all-or-nothing reward learns nothing
        advice += (f"; no pilot completion passes and reward.mode={mode} gives them all the same score: train "
                   "with reward.mode=shaped, or run `alignlab sft` first so some answers pass")
    return advice


def _probe_check(report: PreflightReport, scorer, train: list[dict], seed: int) -> None:
    """A small probe of the run's reward (PREFLIGHT_PROMPTS train prompts): a check row, and a loud
    warning naming the exploitable families and the best-scoring attack."""
    if scorer.task.attacks is None:
        return
    started = time.perf_counter()
    examples = random.Random(seed).sample(train, min(PREFLIGHT_PROMPTS, len(train)))
    result, scored = probe_reward(scorer.reward, scorer.task, examples, seed=seed)
    report.checks.append(("reward probe", result.robust, f"{result.verdict} ({len(scored)} completions on "
                          f"{len(examples)} prompts, {time.perf_counter() - started:.1f} s)"))
    if result.robust:
        return
    worst = result.worst_examples(1)[0]
    hint = ("; reward.judge_weight=1 adds a judge of sense against salad"
            if "salad" in result.exploitable and "judge" not in scorer.reward.rewards else "")
    report.warnings.append(f"THE REWARD IS EXPLOITABLE ({len(result.exploitable)} attack families score as well as "
                           f"good answers): e.g. {worst.family} scores {worst.reward:+.3f} >= the good answers' median "
                           f"{result.reference_median:+.3f} with {snippet(worst.completion, 60)}; a policy can learn "
                           f"that instead of the task (the table: alignlab probe-reward){hint}")


def preflight(source, compute_loss, model, examples: list[dict], seed: int) -> PreflightReport:
    """Run the checks with `source` (a RolloutSource) on a pilot batch of `examples`; see the module doc.

    `compute_loss(batch) -> (loss, metrics)` is the trainer's own, timed with one backward whose
    gradients are dropped. Fails (UserError) on a broken tokenizer or reward; warns on weak signal and on
    an exploitable reward.
    """
    report = PreflightReport(checks=_tokenizer_checks(source.tokenizer, examples[0]["prompt"]))
    failed = [f"{name}: {detail}" for name, ok, detail in report.checks if not ok]
    if failed:
        raise UserError("preflight failed: " + "; ".join(failed), key="model.path")
    # pilot streams of their own (training's generation batches are numbered 0, 1, ...)
    batch, _, _ = source.generate_batch(examples, "preflight")  # raises RewardContractError on a broken reward
    report.checks.append(("rewards", True, f"{len(batch.advantages)} completions scored by "
                          f"{', '.join(source.scorer.reward.rewards)}"))
    _probe_check(report, source.scorer, source.examples, seed)
    started = time.perf_counter()  # timed again: the first call pays one-off kernel and allocator warm-up
    source.generate_batch(examples, "preflight timing")
    making = time.perf_counter() - started  # sampling, scoring, old and reference log-probs
    m = batch.metrics
    report.metrics = m
    report.checks.append(("signal", True, f"truncated {m['truncation_rate']:.0%}, groups with zero reward spread "
                          f"{m['zero_spread_fraction']:.0%}, reward mean {m['reward_mean']:+.3f}, "
                          f"pass rate {m['pass_rate']:.0%}"))
    if m["truncation_rate"] > TRUNCATION_WARN:
        report.warnings.append(f"{m['truncation_rate']:.0%} of pilot completions hit max_new_tokens="
                               f"{source.cfg.generation.max_new_tokens}: raise it, or the policy never learns to stop")
    if m["zero_spread_fraction"] > ZERO_SPREAD_WARN:
        report.warnings.append(_no_spread_advice(m, source.cfg.reward.mode))
    update = 0.0
    for _ in range(2):  # the second pass is the one timed, as for generation
        started = time.perf_counter()
        for i in range(0, batch.advantages.shape[0], source.micro):
            loss, _ = compute_loss(batch.rows(i, i + source.micro))
            loss.backward()
        model.zero_grad(set_to_none=True)
        update = time.perf_counter() - started
    report.seconds_per_step = making / source.cfg.num_iterations + update
    return report
