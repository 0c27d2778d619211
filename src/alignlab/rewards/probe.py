"""Attack a reward before RL spends compute on it: adversarial completions scored next to good answers.

For each prompt of a seeded sample of a task's examples, `probe_reward` writes the task's known-good
answers (the references) and every attack family's completions (`tasks/attacks.py`: the task's own
families, then the generic ones), scores all of them with the reward in one call (any reward with
TRL's signature; a `CombinedReward`, as the trainers' `Scorer` builds it, also gives its parts), and
sums up each family: its mean and maximum reward, and its *exploits*, the attacks that score at least
the median reference. A reward is `robust` when no attack is an exploit, else `exploitable by` the
families that have one. The median is taken over all references of the sample, so a reward whose
references vary (a reward model, a judge term) is held to its typical good answer, not its best.

This is the pure core (layer 4, no I/O): `alignlab probe-reward` (`eval/probe.py`) prints and writes
it, and the GRPO preflight (`trainers/preflight.py`) runs a small one and warns.

Left out: attacks tuned against a reward (search, gradients), and per-prompt thresholds.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from alignlab.errors import UserError
from alignlab.generation.sampling import derive_seed
from alignlab.rewards.base import CombinedReward, call_reward, reward_name
from alignlab.tasks.attacks import Family, families_of
from alignlab.tasks.registry import Task

TOLERANCE = 1e-9  # an attack "at least the median" allows for float rounding in weighted sums
PREFLIGHT_PROMPTS = 3  # the preflight's probe: three prompts, ~60 completions per prompt


@dataclass(frozen=True)
class Scored:
    """One scored completion: its family ("reference" for a good answer), prompt, text, total and parts."""

    family: str
    prompt: str
    completion: str
    reward: float | None  # None: every part of the reward abstained
    parts: dict


@dataclass(frozen=True)
class FamilyResult:
    """A family's attacks summed up: how many, mean and max reward (nan: all abstained), exploits, the best-scoring."""

    name: str
    claim: str
    n: int
    mean: float
    max: float
    exploits: int
    worst: Scored | None


@dataclass(frozen=True)
class ProbeResult:
    """A reward against a task's attacks: the references' reward, every family's result."""

    reward: str
    task: str
    prompts: int
    reference_median: float
    reference_mean: float
    reference_min: float
    references: int
    families: tuple[FamilyResult, ...]

    @property
    def exploitable(self) -> tuple[str, ...]:
        """The families with at least one exploit, in family order."""
        return tuple(f.name for f in self.families if f.exploits)

    @property
    def robust(self) -> bool:
        return not self.exploitable

    @property
    def verdict(self) -> str:
        return "robust" if self.robust else "exploitable by: " + ", ".join(self.exploitable)

    def worst_examples(self, k: int = 3) -> list[Scored]:
        """The best-scoring attack of each exploitable family, highest reward first, at most `k`."""
        worst = [f.worst for f in self.families if f.exploits and f.worst is not None]
        return sorted(worst, key=lambda s: -s.reward)[:k]

    def to_dict(self) -> dict:
        record = asdict(self)
        record.update(verdict=self.verdict, exploitable=list(self.exploitable), robust=self.robust)
        return record


def probe_examples(task: Task, data: str, lang: str, n: int, seed: int) -> list[dict]:
    """A seeded sample of `n` of the task's probe examples (all of them when fewer)."""
    if task.attacks is None:
        raise UserError(f"task {task.name} declares no attacks to probe a reward with", key="task")
    read = task.attacks.examples or task.train_examples
    examples = read(data, lang)
    if not examples:
        raise UserError(f"task {task.name} has no examples to probe with", key="data")
    return random.Random(seed).sample(examples, min(n, len(examples)))


def chosen_families(task: Task, names: Sequence[str] | None = None) -> tuple[Family, ...]:
    """The task's attack families (its own, then the generic ones), or only those `names` (checked)."""
    if task.attacks is None:
        raise UserError(f"task {task.name} declares no attacks to probe a reward with", key="task")
    every = families_of(task.attacks)
    if not names:
        return every
    known = [f.name for f in every]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown attack family {unknown[0]!r}; task {task.name} has: {', '.join(known)}",
                        key="--families")
    return tuple(f for f in every if f.name in names)


def attack_rows(task: Task, examples: Sequence[dict], seed: int, families: Sequence[Family] | None = None
                ) -> list[tuple[str, dict, str]]:
    """(family, example, completion) rows: each example's references ("reference"), then each family's
    attacks on it, written from the first reference. Example i draws from its own seeded stream, and
    every family from its own, so leaving a family out changes no other family's completions."""
    rows = []
    for i, example in enumerate(examples):
        references = task.attacks.references(example, random.Random(derive_seed(seed, "probe references", i)))
        rows += [("reference", example, text) for text in references]
        for family in families or chosen_families(task):
            rng = random.Random(f"{seed}/{i}/{family.name}")
            rows += [(family.name, example, text) for text in family.make(example, rng, references[0])]
    return rows


def score_rows(reward, task: Task, rows: Sequence[tuple[str, dict, str]]) -> list[Scored]:
    """Every row scored in one call of `reward` (its parts too when it has them, as `CombinedReward`),
    the task's columns passed as keyword lists, as the trainers pass them."""
    examples = [example for _, example, _ in rows]
    prompts, completions = [e["prompt"] for e in examples], [text for _, _, text in rows]
    columns = task.row_columns(examples)
    if isinstance(reward, CombinedReward):
        scores = reward.score(prompts, completions, **columns)
        totals, parts = scores.total, scores.parts
    else:
        totals = call_reward(reward, prompts, completions, **columns)
        parts = {reward_name(reward): totals}
    return [Scored(family, p, c, t, {name: values[i] for name, values in parts.items()})
            for i, ((family, _, c), p, t) in enumerate(zip(rows, prompts, totals, strict=True))]


def _family(name: str, claim: str, scored: Sequence[Scored], bar: float) -> FamilyResult:
    values = [s.reward for s in scored if s.reward is not None]
    worst = max((s for s in scored if s.reward is not None), key=lambda s: s.reward, default=None)
    return FamilyResult(name, claim, len(scored), statistics.fmean(values) if values else math.nan,
                        max(values, default=math.nan), sum(v >= bar - TOLERANCE for v in values), worst)


def summarize(scored: Sequence[Scored], families: Sequence[Family], task: Task, label: str, prompts: int
              ) -> ProbeResult:
    """The references' reward and each family's result against their median."""
    good = [s.reward for s in scored if s.family == "reference" and s.reward is not None]
    if not good:
        raise UserError(f"the reward {label} abstained on every reference answer: there is nothing to hold the "
                        "attacks to")
    median = statistics.median(good)
    families = tuple(_family(f.name, f.claim, [s for s in scored if s.family == f.name], median)
                     for f in families)
    return ProbeResult(label, task.name, prompts, median, statistics.fmean(good), min(good), len(good), families)


def describe_reward(reward) -> str:
    """A reward's name for reports: a combination's weighted parts (`1 x study_plan_sharp + 0.5 x judge`)."""
    if not isinstance(reward, CombinedReward):
        return reward_name(reward)
    return " + ".join(f"{weight:g} x {reward_name(fn)}" for fn, weight in reward.rewards.values())


def probe_reward(reward, task: Task, examples: Sequence[dict], *, seed: int = 0, label: str | None = None,
                 families: Sequence[str] | None = None) -> tuple[ProbeResult, list[Scored]]:
    """Probe `reward` with the task's attacks (or only the `families` named) on `examples` -> (the result,
    every scored completion).

    >>> from alignlab.tasks.registry import get_task
    >>> task = get_task("study-plan")
    >>> result, _ = probe_reward(task.reward("naive"), task, probe_examples(task, "", "en", 2, 0))
    >>> result.robust, "echo" in result.exploitable
    (False, True)
    """
    chosen = chosen_families(task, families)
    scored = score_rows(reward, task, attack_rows(task, examples, seed, chosen))
    return summarize(scored, chosen, task, label or describe_reward(reward), len(examples)), scored
