"""Rewards with TRL's signature: the study-plan `Reward` in three modes, the contract every
reward call is checked against, and `combine` for weighted sums of reward functions.

A reward is any callable `fn(prompts, completions, **kwargs) -> list[float | None]`, called with
keywords as TRL's GRPOTrainer does; completions are strings or chat message lists. `None` means
"abstain": callers leave that sample out (in GRPO: out of its group's baseline); it is never
turned into 0. `call_reward` is the one place alignlab calls a reward function, its own or
a user's, and turns every broken promise (wrong length, a bool, a string, NaN, an exception)
into a `RewardContractError` naming the function, the sample and its completion.

A user's function (`reward.function`) is loaded and called contained: `rewards/user_code.py`.

`Reward` modes (`study_plan_reward(mode)`), over the rules of `tasks/study_plan/rules.py` and `penalties.py`:
- naive: content only, the fraction of lines naming a duration, no structure, no penalties.
  Hackable on purpose: it is the seed's reward and reproduces its hacking (an echoed prompt
  already holds "30 分钟").
- shaped: weighted mean of the format rules' partial credit, minus each failed penalty's
  weight times (1 - its score); a penalty scores <= 0.5 when it fails. Range [-2.5, 1] with the
  default weights, 1.0 for a compliant answer.
- sharp: +1 for a compliant answer; -1 when a penalty fails (echo, repetition, too long, not text); any
  other violation -0.5 - 0.5 x (failed format weight / total format weight), so in [-1, -0.5].

Left out: learned rewards (`learned.py`), reward normalisation (GRPO normalises per group),
and asynchronous or batched-remote reward calls.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from alignlab.errors import UserError
from alignlab.rewards.penalties import MAX_CHARS, RuleResult, snippet
from alignlab.tasks.study_plan.rules import FORMAT_RULES, check_content, study_plan_checks

RewardFn = Callable[..., list]  # (prompts=..., completions=..., **kwargs) -> list[float | None]
Check = Callable[[str, str], RuleResult]  # (prompt, completion) -> RuleResult

MODES = ("naive", "shaped", "sharp")
DEFAULT_WEIGHTS = {"structure": 1.0, "count": 1.0, "durations": 1.0, "activities": 1.0, "extra_text": 1.0,  # format
                   "language": 1.0,
                   "echo": 1.0, "repetition": 1.0, "length": 0.5, "garbled": 1.0}  # penalties: length mildest
CONTENT = "content"


class RewardContractError(UserError):
    """A reward function broke the contract: one finite float (or None) per completion."""


def _message_content(messages: Sequence, role: str) -> str:
    """Content of the last message with `role`, else of the last message."""
    chosen = [m for m in messages if isinstance(m, Mapping) and m.get("role") == role] or list(messages)
    last = chosen[-1] if chosen else {"content": ""}
    return str(last.get("content", "")) if isinstance(last, Mapping) else str(last)


def completion_text(completion) -> str:
    """A completion as text: a string, or the last assistant message of a chat message list.

    >>> completion_text([{"role": "assistant", "content": "- 复习（30 分钟）"}])
    '- 复习（30 分钟）'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        return _message_content(completion, "assistant")
    raise UserError(f"expected a completion string or a list of {{role, content}} messages, "
                    f"got {type(completion).__name__}")


def prompt_text(prompt) -> str:
    """A prompt as text: a string, or the last user message of a chat message list."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        return _message_content(prompt, "user")
    raise UserError(f"expected a prompt string or a list of {{role, content}} messages, got {type(prompt).__name__}")


@dataclass(frozen=True)
class WeightedCheck:
    """A rule or penalty with its weight in the shaped and sharp totals (0 switches it off)."""

    name: str
    check: Check
    weight: float


def _naive(reward: Reward, results: Mapping[str, RuleResult]) -> float:
    return results[CONTENT].score


def _shaped(reward: Reward, results: Mapping[str, RuleResult]) -> float:
    total_weight = sum(rule.weight for rule in reward.rules)
    credit = sum(rule.weight * results[rule.name].score for rule in reward.rules) / total_weight
    return credit - sum(p.weight * (1.0 - results[p.name].score) for p in reward.penalties)


def _sharp(reward: Reward, results: Mapping[str, RuleResult]) -> float:
    if any(p.weight > 0 and not results[p.name].passed for p in reward.penalties):
        return -1.0
    failed = sum(rule.weight for rule in reward.rules if not results[rule.name].passed)
    if failed == 0:
        return 1.0
    return -0.5 - 0.5 * failed / sum(rule.weight for rule in reward.rules)


_TOTALS = {"naive": _naive, "shaped": _shaped, "sharp": _sharp}


class Reward:
    """A reward built from weighted rules and penalties, callable with TRL's signature.

    `Reward(mode)` is the study-plan reward: its format rules and penalties weighted by
    DEFAULT_WEIGHTS (`weights` overrides them by name), length bounded by `max_chars`.
    For another task pass `rules` (format / content checks giving partial credit), `penalties`
    (anti-hacking checks) and `content` (the lenient check the naive mode returns).
    `__name__` is what TRL logs (`rewards/<name>/mean`).
    """

    def __init__(self, mode: str = "sharp", *, weights: Mapping[str, float] | None = None,
                 max_chars: int = MAX_CHARS, name: str | None = None, rules: Sequence[WeightedCheck] | None = None,
                 penalties: Sequence[WeightedCheck] = (), content: Check = check_content):
        if mode not in _TOTALS:
            raise UserError(f"unknown reward mode {mode!r}; expected one of {', '.join(MODES)}", key="mode")
        builtin = rules is None
        if builtin:
            if penalties:
                raise UserError("penalties without rules: pass both, or neither for the study-plan reward",
                                key="penalties")
            rules, penalties = _study_plan_checks(_validated_weights(weights), max_chars)
        elif weights is not None:
            raise UserError("weights apply to the built-in study-plan rules; give custom checks their weight "
                            "in WeightedCheck", key="weights")
        if sum(rule.weight for rule in rules) <= 0:
            raise UserError("expected at least one rule with a positive weight", key="weights")
        self.rules, self.penalties, self.content, self.mode = tuple(rules), tuple(penalties), content, mode
        self.__name__ = name or f"{'study_plan' if builtin else 'reward'}_{mode}"

    def __repr__(self) -> str:
        return f"Reward({self.__name__!r}, mode={self.mode!r})"

    def explain(self, prompt, completion) -> dict[str, RuleResult]:
        """Every rule's, penalty's and the content check's result on one sample."""
        p, c = prompt_text(prompt), completion_text(completion)
        results = {check.name: check.check(p, c) for check in (*self.rules, *self.penalties)}
        results[CONTENT] = self.content(p, c)
        return results

    def score(self, prompt, completion) -> float:
        """This mode's reward for one sample."""
        return _TOTALS[self.mode](self, self.explain(prompt, completion))

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        _same_length(prompts, completions)
        return [self.score(p, c) for p, c in zip(prompts, completions, strict=True)]

    def breakdown(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[dict[str, float]]:
        """Per sample: every check's score, `passed` (1.0 / 0.0, all weighted checks) and `total`."""
        _same_length(prompts, completions)
        rows = []
        for p, c in zip(prompts, completions, strict=True):
            results = self.explain(p, c)
            row = {name: result.score for name, result in results.items()}
            weighted = [check.name for check in (*self.rules, *self.penalties) if check.weight > 0]
            row["passed"] = float(all(results[name].passed for name in weighted))
            row["total"] = _TOTALS[self.mode](self, results)
            rows.append(row)
        return rows


def _same_length(prompts: Sequence, completions: Sequence) -> None:
    if len(prompts) != len(completions):
        raise UserError(f"expected one prompt per completion, got {len(prompts)} prompts and "
                        f"{len(completions)} completions")


def _validated_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    merged = dict(DEFAULT_WEIGHTS)
    for name, weight in (weights or {}).items():
        if name not in DEFAULT_WEIGHTS:
            raise UserError(f"unknown rule {name!r}; expected one of {', '.join(DEFAULT_WEIGHTS)}", key="weights")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight < math.inf:
            raise UserError(f"expected a finite weight >= 0, got {weight!r}", key=f"weights.{name}")
        merged[name] = float(weight)
    return merged


def _study_plan_checks(w: Mapping[str, float], max_chars: int) -> tuple[list[WeightedCheck], list[WeightedCheck]]:
    """The study plan's checks (`rules.study_plan_checks`, the verdict's own list) weighted by `w`:
    (format rules, penalties)."""
    checks = [WeightedCheck(name, check, w[name]) for name, check in study_plan_checks(max_chars).items()]
    return [c for c in checks if c.name in FORMAT_RULES], [c for c in checks if c.name not in FORMAT_RULES]


def study_plan_reward(mode: str = "sharp", weights: Mapping[str, float] | None = None,
                      max_chars: int = MAX_CHARS, name: str | None = None) -> Reward:
    """The study-plan reward in `mode`, named `study_plan_<mode>`; `weights` override
    DEFAULT_WEIGHTS by rule name.

    >>> reward = study_plan_reward("sharp")
    >>> reward.__name__, reward(["三条计划"], ["- 复习（30 分钟）\\n- 练习（1 小时）\\n- 总结（半小时）"])
    ('study_plan_sharp', [1.0])
    """
    return Reward(mode, weights=weights, max_chars=max_chars, name=name)


def reward_name(fn) -> str:
    """How errors and logs name a reward function."""
    return getattr(fn, "__name__", None) or repr(fn)


def _completion_snippet(completion) -> str:
    try:
        return snippet(completion_text(completion), 60)
    except UserError:
        return snippet(repr(completion), 60)


def _one_sample(kwargs: Mapping, i: int, n: int) -> dict:
    """The i-th entry of every per-sample keyword list (dataset columns); others as given."""
    return {k: [v[i]] if isinstance(v, list | tuple) and len(v) == n else v for k, v in kwargs.items()}


def _locate_failure(fn, prompts: list, completions: list, kwargs: Mapping, error: Exception) -> RewardContractError:
    """Re-run `fn` one sample at a time to name the first completion it fails on."""
    name, n = reward_name(fn), len(completions)
    for i in range(n):
        try:
            fn(prompts=[prompts[i]], completions=[completions[i]], **_one_sample(kwargs, i, n))
        except RewardContractError:
            raise  # contained (`UserReward`: a hang, sys.exit) or nested: already named
        except Exception as single:  # any failure of user code is reported
            return RewardContractError(f"reward function {name!r} raised {type(single).__name__}: {single} "
                                       f"on completion {i}: {_completion_snippet(completions[i])}")
    return RewardContractError(f"reward function {name!r} raised {type(error).__name__}: {error} on a batch of "
                               f"{n} completions; no single completion reproduces it")


REWARD_LIMIT = 1e15  # |reward| past this: float32 group statistics overflow or lose every difference


def _checked_value(name: str, value, i: int, completion) -> float | None:
    if value is None:
        return None
    where = f"for completion {i}: {_completion_snippet(completion)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RewardContractError(f"reward function {name!r} returned {value!r} ({type(value).__name__}) {where}; "
                                  f"expected a float, or None to abstain")
    try:
        number = float(value)
    except OverflowError:  # an int or Fraction beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise RewardContractError(f"reward function {name!r} returned {number} {where}; expected a finite float")
    if abs(number) > REWARD_LIMIT:
        raise RewardContractError(f"reward function {name!r} returned {number:.3g} {where}; rewards beyond "
                                  f"+-{REWARD_LIMIT:g} lose their differences in float32 (a group's spread "
                                  "overflows and every advantage becomes 0): scale it down")
    return number


def call_reward(fn: RewardFn, prompts: Sequence, completions: Sequence, **kwargs) -> list[float | None]:
    """Call a reward function as TRL does (keywords) and enforce its contract: one finite
    float or None (abstain, passed through as None) per completion.

    >>> call_reward(lambda prompts, completions, **kw: [1, None], ["p", "p"], ["a", "b"])
    [1.0, None]
    >>> def broken(prompts, completions, **kw):
    ...     return [float("nan")]
    >>> call_reward(broken, ["p"], ["- 复习"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    alignlab.rewards.base.RewardContractError: reward function 'broken' returned nan for completion 0: '- 复习'; ...
    """
    prompts, completions, name = list(prompts), list(completions), reward_name(fn)
    _same_length(prompts, completions)
    try:
        values = fn(prompts=prompts, completions=completions, **kwargs)
    except RewardContractError:
        raise  # a nested call_reward or a `UserReward` already named the culprit
    except Exception as error:  # any failure of user code is reported
        raise _locate_failure(fn, prompts, completions, kwargs, error) from error
    except SystemExit as stop:  # a plain callable given in Python; KeyboardInterrupt here may be a real Ctrl-C
        raise RewardContractError(f"reward function {name!r} called sys.exit({stop.code!r})") from None
    if hasattr(values, "tolist") and not isinstance(values, list | tuple):
        values = values.tolist()  # numpy arrays and tensors
    if not isinstance(values, list | tuple):
        raise RewardContractError(f"reward function {name!r} returned {type(values).__name__}; "
                                  f"expected a list of {len(completions)} floats (None to abstain)")
    if len(values) != len(completions):
        raise RewardContractError(f"reward function {name!r} returned {len(values)} values for "
                                  f"{len(completions)} completions; expected one per completion")
    return [_checked_value(name, v, i, c) for i, (v, c) in enumerate(zip(values, completions, strict=True))]


@dataclass(frozen=True)
class CombinedScores:
    """total[i]: the weighted sum for sample i (None when every component abstained).
    parts[name][i]: component `name`'s unweighted value (None: it abstained)."""

    total: list[float | None]
    parts: dict[str, list[float | None]]


def _weighted_total(values: Sequence[float | None], weights: Sequence[float]) -> float | None:
    present = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None]
    return sum(v * w for v, w in present) if present else None


class CombinedReward:
    """A weighted sum of reward functions, each called through `call_reward`.

    Abstention rule (the same as TRL's GRPOTrainer, which sums weighted rewards with nansum, so
    a recipe totals the same in both backends): a sample's total is the weighted sum over the
    components that did not abstain, weights not renormalised; it is None only when every
    component abstained. Parts keep their None, so logs show who abstained.
    """

    def __init__(self, rewards: Mapping[str, tuple[RewardFn, float]], name: str = "combined"):
        self.rewards, self.__name__ = dict(rewards), name

    def score(self, prompts: Sequence, completions: Sequence, **kwargs) -> CombinedScores:
        parts = {name: call_reward(fn, prompts, completions, **kwargs) for name, (fn, _) in self.rewards.items()}
        weights = [weight for _, weight in self.rewards.values()]
        total = [_weighted_total(column, weights) for column in zip(*parts.values(), strict=True)]
        return CombinedScores(total, parts)

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float | None]:
        return self.score(prompts, completions, **kwargs).total


def combine(rewards: Mapping[str, tuple[RewardFn, float]], name: str = "combined") -> CombinedReward:
    """Weighted sum of named reward functions `{name: (fn, weight)}`; see CombinedReward.

    >>> both = combine({"a": (lambda prompts, completions, **kw: [1.0, None], 2.0),
    ...                 "b": (lambda prompts, completions, **kw: [0.5, None], 1.0)})
    >>> both.score(["p", "p"], ["x", "y"])
    CombinedScores(total=[2.5, None], parts={'a': [1.0, None], 'b': [0.5, None]})
    """
    if not rewards:
        raise UserError("expected at least one reward function to combine", key="rewards")
    for key, entry in rewards.items():
        if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[0])):
            raise UserError(f"expected a (reward function, weight) pair, got {entry!r}", key=key)
        weight = entry[1]
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise UserError(f"expected a finite number as weight, got {weight!r}", key=key)
    return CombinedReward(rewards, name)
