"""Coherence judged by a model: how likely a judge language model finds each completion.

The rules see shape, not sense: `- Practise a three 20 mins` has three bullets and a duration.
A judge (any causal LM) reads each completion after its prompt, both rendered with the judge's
own chat template and tokenizer (so any policy can be judged by any judge), and the completion's
mean token negative log-likelihood (nats per token) is its incoherence: fluent text is likely,
word salad is not.

Two lessons from measuring it (SmolLM2-135M-Instruct as judge, mean NLL per token): the tiny demo
policy's passing answers 3.60 (n=15, range 2.85-5.07), three hand-written fluent compliant
answers 2.83 (2.52-3.04), SmolLM2's own samples 1.31. So:
- never use the judge's own samples as the reference: a model always finds its own text likely;
  the reference is a set of fluent answers written by people (the task's `reference_answers`);
- never judge one sample alone: the ranges overlap; sets are compared, with an interval.
`coherence_verdict` calls a policy "incoherent" when its set's mean NLL exceeds the reference
set's by at least `INCOHERENT_MARGIN` and the 95% interval of that difference excludes zero.

The per-completion scoring (`completion_nll`) lives in `rewards/judge.py`, where the reward term
`reward.judge_weight` uses the same numbers: training pressure and this verdict measure alike.

Left out: judging with a reward model, and per-token attribution (which words the judge balked at).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from alignlab.rewards.judge import completion_nll

__all__ = ["INCOHERENT_MARGIN", "Coherence", "CoherenceVerdict", "coherence_verdict", "completion_nll", "judge",
           "judge_evaluation", "summarize", "t975"]

# Half the measured gap between fluent references (2.83) and word salad of the right shape (3.60)
# with SmolLM2-135M as judge: a policy 0.4 nats/token less likely than fluent text, per token, is
# e^0.4 = 1.5 times less likely at every token; smaller gaps are within what wording alone moves.
INCOHERENT_MARGIN = 0.4
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # Student's t, 97.5% quantile, 1..30 degrees of freedom


def t975(df: float) -> float:
    """Student's t 97.5% quantile (two-sided 95%); the normal 1.96 beyond 30 degrees of freedom.

    >>> t975(1), t975(4.6), t975(1000)
    (12.706, 2.776, 1.96)
    """
    if df >= 31:
        return 1.96
    return _T975[max(int(df), 1) - 1]


@dataclass(frozen=True)
class Coherence:
    """A set of completions judged: mean token NLL per completion (nats), their mean and 95% interval."""

    judge: str
    n: int
    nll_mean: float
    nll_ci: tuple[float, float]
    per_sample: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"judge": self.judge, "n": self.n, "nll_mean": self.nll_mean, "nll_ci": list(self.nll_ci),
                "nll_min": min(self.per_sample, default=math.nan), "nll_max": max(self.per_sample, default=math.nan)}


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.inf


def summarize(judge: str, nlls: Sequence[float]) -> Coherence:
    """The set's mean NLL with a t interval (infinite for one sample: one sample says nothing).

    >>> c = summarize("j", [2.0, 3.0, 4.0])
    >>> c.nll_mean, [round(x, 3) for x in c.nll_ci]
    (3.0, [0.516, 5.484])
    """
    values = [v for v in nlls if math.isfinite(v)]
    if not values:
        return Coherence(judge, 0, math.nan, (math.nan, math.nan), ())
    mean, sd = _mean_sd(values)
    half = t975(len(values) - 1) * sd / math.sqrt(len(values))
    return Coherence(judge, len(values), mean, (mean - half, mean + half), tuple(values))


def judge(model, tokenizer, name: str, prompts: Sequence[str], completions: Sequence[str], *,
          batch_size: int = 16) -> Coherence:
    """`completion_nll` of a set, summarised (`summarize`)."""
    return summarize(name, completion_nll(model, tokenizer, prompts, completions, batch_size=batch_size))


@dataclass(frozen=True)
class CoherenceVerdict:
    """The policy's set against the fluent reference set, judged the same way."""

    incoherent: bool
    difference: float  # policy mean NLL - reference mean NLL (nats / token)
    difference_ci: tuple[float, float]
    margin: float
    note: str

    def to_dict(self) -> dict:
        return {"label": "incoherent" if self.incoherent else "coherent", "difference": self.difference,
                "difference_ci": list(self.difference_ci), "margin": self.margin, "note": self.note}


def coherence_verdict(policy: Coherence, reference: Coherence, margin: float = INCOHERENT_MARGIN) -> CoherenceVerdict:
    """Incoherent when the policy's mean NLL exceeds the reference's by >= `margin` and the 95%
    Welch interval of the difference excludes zero (a set, not a sample, is judged)."""
    if policy.n < 2 or reference.n < 2:
        return CoherenceVerdict(False, math.nan, (math.nan, math.nan), margin,
                                "too few judged completions to compare (need 2 on each side)")
    (m1, s1), (m2, s2) = _mean_sd(policy.per_sample), _mean_sd(reference.per_sample)
    v1, v2 = s1 * s1 / policy.n, s2 * s2 / reference.n
    df = (v1 + v2) ** 2 / ((v1 * v1) / (policy.n - 1) + (v2 * v2) / (reference.n - 1)) if v1 + v2 > 0 else 1e9
    diff, half = m1 - m2, t975(df) * math.sqrt(v1 + v2)
    incoherent = diff >= margin and diff - half > 0
    note = (f"mean NLL {m1:.2f} vs fluent reference {m2:.2f} nats/token: {diff:+.2f} "
            f"(95% CI [{diff - half:+.2f}, {diff + half:+.2f}]; incoherent from +{margin:.2f})")
    return CoherenceVerdict(incoherent, diff, (diff - half, diff + half), margin, note)


def judge_evaluation(judge_source: str, summary, samples, references: Sequence[tuple[str, str]], *, device="cpu",
                     batch_size: int = 16, allow_unverified_base: bool = False):
    """`summary` (an EvalSummary) with the coherence of `samples` (ScoredSample) under the judge model
    at `judge_source` (any causal LM: a checkpoint, a transformers folder, a .gguf or a known name),
    compared with the fluent `references` (prompt, answer) pairs judged the same way."""
    import dataclasses

    from alignlab.model.checkpoint import load_model

    model, tokenizer = load_model(judge_source, device=device, allow_unverified_base=allow_unverified_base)
    policy = judge(model, tokenizer, judge_source, [s.prompt for s in samples], [s.completion for s in samples],
                   batch_size=batch_size)
    fields = {"coherence_nll": policy.nll_mean, "coherence_nll_ci": policy.nll_ci}
    if references:
        reference = judge(model, tokenizer, judge_source, [p for p, _ in references], [a for _, a in references],
                          batch_size=batch_size)
        verdict = coherence_verdict(policy, reference)
        fields.update(coherence_reference_nll=reference.nll_mean, coherence_note=verdict.note,
                      coherence="incoherent" if verdict.incoherent else "coherent")
    if policy.n == 0:  # nothing to judge (every completion empty): say so rather than report nan
        fields = {"coherence_note": "no completion to judge (all empty)"}
    return dataclasses.replace(summary, **fields)
