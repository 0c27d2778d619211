"""A judge of sense as a reward term: each completion's likelihood under a judge model, against fluent answers.

The rules see shape, not sense: `- Practise a three 20 mins` has three bullets and a duration. A judge
(any causal LM) reads each completion after its prompt, both rendered with the judge's own chat
template and tokenizer, and the completion's mean token negative log-likelihood (`completion_nll`,
nats per token) is its incoherence. This module is that scoring core, shared by the coherence
verdict of evaluation (`eval/judge.py`) and the reward term `reward.judge_weight` (`JudgeReward`).

The term (`judge_penalty`): -clip((NLL - reference NLL) / margin, 0, 1), where the reference NLL is
the mean over the task's hand-written fluent answers (`Task.references`) judged the same way, in the
prompt's language (Chinese prompts against the Chinese answers, others against the rest): no penalty
for text as likely as fluent answers, the full penalty from `margin` nats per token less likely,
linear between. An empty completion has nothing to read and gets the full penalty. Weighted by
`reward.judge_weight` it is added to the other rewards.

The margin (`PENALTY_MARGIN`, `reward.judge_margin`) is wider than evaluation's set margin (0.4,
`eval/judge.py`): one completion's NLL spreads far more than a set's mean. Measured with
SmolLM2-135M-Instruct as judge, mean NLL per token (range) after held-out English prompts: fluent
references 2.92 (2.11-3.54), synthetic compliant plans 3.68 (3.21-4.41), the tiny demo policy's kind of
salad (`- Practise a three 20 mins`) 4.39 (3.88-4.75), random words of the task's vocabulary in the
right shape 5.65 (5.18-6.13); so at 1.5 the penalties are about 0, -0.5, -1 and -1. SmolLM2 is an
English model: in Chinese it finds synthetic plans (3.01) and salad (3.12) alike, against fluent 2.19,
so there the term penalises both about equally and separates nothing; use a judge that reads Chinese.

Left out: per-token attribution, and references written by the judge itself (a model always finds its
own text likely: the references are written by people).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from alignlab.data.batches import right_pad
from alignlab.errors import UserError
from alignlab.model.hf import causal_lm_logits
from alignlab.rewards.base import completion_text, prompt_text
from alignlab.tasks.study_plan.rules import is_chinese

PENALTY_MARGIN = 1.5  # nats per token past the fluent references' mean where the penalty is full (see above)
MAX_ANSWER_TOKENS = 256  # the judge term reads a completion's first 256 tokens: enough to tell sense


def _sequences(tokenizer, prompts: Sequence[str], completions: Sequence[str], max_length: int,
               max_answer: int | None):
    """(ids, first completion position) per pair; the answer is cut to `max_answer` tokens, the prompt from
    the left to fit."""
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        answer = tokenizer.encode(completion)[: min(max_length - 1, max_answer or max_length)]
        context = tokenizer.chat_prompt_ids(prompt)[-(max_length - len(answer)):]
        out.append((context + answer, len(context)))
    return out


@torch.no_grad()
def completion_nll(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], *, batch_size: int = 16,
                   max_length: int = 1024, max_answer: int | None = None) -> list[float]:
    """Mean negative log-likelihood per token of each completion (its first `max_answer` tokens) after
    its prompt, under `model` (nan for an empty completion: nothing to judge). The prompt is rendered
    with the judge's chat template (`Tokenizer.chat_prompt_ids`), so the judge reads an answer to the
    question asked. Sequences are batched by length (less padding; the numbers do not depend on it)."""
    model.eval()
    device = next(model.parameters()).device
    sequences = _sequences(tokenizer, prompts, completions, max_length, max_answer)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    out = [math.nan] * len(sequences)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = right_pad([sequences[i][0] for i in rows], tokenizer.pad_id or 0)  # (B, T)
        ids, mask = ids.to(device), mask.to(device)
        logits = causal_lm_logits(model, ids, mask).float()  # (B, T, V)
        # position t predicts token t+1: (B, V, T-1) against (B, T-1) -> per-token NLL (B, T-1)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        for row, i in enumerate(rows):
            seq, first = sequences[i]
            scored = nll[row, max(first, 1) - 1:len(seq) - 1]  # the completion's tokens
            out[i] = scored.mean().item() if scored.numel() else math.nan
    return out


def judge_penalty(nll: float, reference_nll: float, margin: float = PENALTY_MARGIN) -> float:
    """-clip((nll - reference_nll) / margin, 0, 1); the full penalty -1 for nan (an empty completion).

    Closes right-shaped word salad, which every rule passes: salad is far less likely than fluent text.

    >>> judge_penalty(2.75, 2.5, 0.5), judge_penalty(2.0, 2.5, 0.5), judge_penalty(4.0, 2.5, 0.5)
    (-0.5, 0.0, -1.0)
    >>> judge_penalty(float("nan"), 2.5)
    -1.0
    """
    if not math.isfinite(nll):
        return -1.0
    excess = min(max((nll - reference_nll) / margin, 0.0), 1.0)
    return -excess if excess else 0.0


class JudgeReward:
    """`judge_penalty` of each completion as a reward with TRL's signature (values in [-1, 0]).

    `reference_nll[zh]`: the fluent references' mean NLL for Chinese prompts (zh True) and the others.
    """

    def __init__(self, model, tokenizer, reference_nll: Mapping[bool, float], margin: float = PENALTY_MARGIN,
                 name: str = "judge", batch_size: int = 16):
        self.model, self.tokenizer, self.reference_nll = model, tokenizer, dict(reference_nll)
        self.margin, self.batch_size, self.__name__ = margin, batch_size, name

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        prompts = [prompt_text(p) for p in prompts]
        nlls = completion_nll(self.model, self.tokenizer, prompts, [completion_text(c) for c in completions],
                              batch_size=self.batch_size, max_answer=MAX_ANSWER_TOKENS)
        return [judge_penalty(nll, self.reference_nll[is_chinese(p)], self.margin)
                for p, nll in zip(prompts, nlls, strict=True)]


def reference_nlls(model, tokenizer, references: Sequence[tuple[str, str]], batch_size: int = 16) -> dict[bool, float]:
    """The mean NLL of the fluent (prompt, answer) pairs, by prompt language (Chinese: True); a language
    without references takes the mean of all."""
    nlls = completion_nll(model, tokenizer, [p for p, _ in references], [a for _, a in references],
                          batch_size=batch_size, max_answer=MAX_ANSWER_TOKENS)
    judged = [(is_chinese(p), v) for (p, _), v in zip(references, nlls, strict=True) if math.isfinite(v)]
    if not judged:
        raise UserError("the judge found no fluent reference answer to compare with", key="reward.judge_model")
    every = statistics.fmean(v for _, v in judged)
    return {zh: statistics.fmean([v for z, v in judged if z == zh] or [every]) for zh in (True, False)}


def load_judge_reward(source: str, references: Sequence[tuple[str, str]] | None, *, device="cpu",
                      margin: float = PENALTY_MARGIN) -> JudgeReward:
    """The judge term with the causal LM at `source` (a checkpoint, a transformers folder, a .gguf or
    smollm2-135m-instruct), calibrated on the task's fluent `references`."""
    from alignlab.model.checkpoint import load_model

    if not references:
        raise UserError("the judge term needs the task's fluent reference answers to compare with, and this task "
                        "has none: set reward.judge_weight=0", key="reward.judge_weight")
    model, tokenizer = load_model(source, device=device)
    model.requires_grad_(False)
    return JudgeReward(model, tokenizer, reference_nlls(model, tokenizer, references), margin,
                       name=f"judge({source})")
