"""Batched generation -> `Rollout`: a KV-cache fast path for the native GPT, `generate` for the rest.

Prompts of different lengths are left-padded; the native path prefills each distinct prompt
once into a preallocated `KVCache` (rows repeating a prompt, as GRPO's groups do, share its
keys and values there) and then decodes one token per step for the whole batch, stopping a
row at any stop id (EOS and friends) or stop string. Other transformers causal LMs go
through `model.generate` with the same arguments, given as a fresh `GenerationConfig` so the
model's own defaults (Qwen's repetition penalty, top_k 20, ...) never leak in.

Randomness comes from the `torch.Generator` passed in (one stream for the batch), or, with
`row_seeds`, from one stream per row (`sampling.RowStreams`), so that on the native path a
row's completion depends on its seed alone, not on the batch it was sampled in: the same
seed gives the same completions; temperature 0 is greedy and ignores both. On the
transformers path `generate` owns the sampling and draws from the global generator for the whole
batch; it is seeded from the generator, or from all the row seeds together, so it stays
reproducible but does depend on the batch layout there.

Prompt length + max_new_tokens is checked against the model's context (`max_position_embeddings`,
when its config has one) before anything is allocated: a KV cache sized by a mistyped
max_new_tokens=100000000 would take all memory before the first token.

Left out: speculative decoding, paged attention, continuous batching (a vLLM backend is a
later step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignlab.config import GenerationConfig
from alignlab.data.batches import left_pad, right_pad
from alignlab.data.tokenizer import Tokenizer
from alignlab.errors import UserError
from alignlab.generation.sampling import RowStreams, derive_seed, sample_next_token
from alignlab.model.gpt import GPT


@dataclass(frozen=True)
class Rollout:
    """Completions for a batch of prompts.

    prompt_ids       (B, P) long, left-padded with the pad id
    prompt_mask      (B, P) bool, True on real prompt tokens
    completion_ids   (B, C) long, right-padded with the pad id (C <= max_new_tokens)
    completion_mask  (B, C) bool, True on generated tokens, the stop token included
    texts            B decoded completions (special tokens skipped)
    lengths          (B,) long, completion_mask.sum(-1)
    truncated        (B,) bool, True when max_new_tokens ran out before a stop
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    texts: list[str]
    lengths: torch.Tensor
    truncated: torch.Tensor


def generate(
    model,
    tokenizer: Tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    config: GenerationConfig,
    generator: torch.Generator | None = None,
    *,
    chat: bool = True,
    row_seeds: Sequence[int] | None = None,
) -> Rollout:
    """Sample one completion per prompt. Strings are rendered with the chat template when
    `chat` (raw text otherwise); token lists are used as they are. `row_seeds` (one int per
    prompt) gives each row its own random stream; `generator` is then not used."""
    if row_seeds is not None and len(row_seeds) != len(prompts):
        raise ValueError(f"{len(row_seeds)} row seeds for {len(prompts)} prompts")
    seqs = [_prompt_ids(tokenizer, p, chat) for p in prompts]
    check_context(model, max(map(len, seqs), default=0), config.max_new_tokens)
    prompt_ids, prompt_mask = left_pad(seqs, tokenizer.pad_id)
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    stop_check = _stop_string_check(tokenizer, config.stop_strings)
    run = generate_native if isinstance(model, GPT) else generate_hf
    if row_seeds is not None:
        generator = RowStreams(list(row_seeds), device)
    completion_ids, completion_mask, truncated = run(
        model, prompt_ids, prompt_mask, config, generator,
        stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id, stop_check=stop_check)
    lengths = completion_mask.sum(-1)
    texts = tokenizer.decode_batch([row[:n].tolist() for row, n in zip(completion_ids, lengths, strict=True)])
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, texts, lengths, truncated)


@dataclass(frozen=True)
class Sampled:
    """Completions of many rows sampled in batches: texts (one per row) and truncated flags."""

    texts: list[str]
    truncated: list[bool]


def sample_rows(model, tokenizer: Tokenizer, prompts: Sequence[str], config: GenerationConfig,
                seeds: Sequence[int], batch_size: int) -> Sampled:
    """One chat completion per prompt, `batch_size` rows at a time, row i from its own stream `seeds[i]`
    (so a row's sample does not depend on the batch it falls in); the model samples in eval mode and
    gets its training mode back. The one sampling loop of every evaluation (`eval`, the trainers'
    held-out check)."""
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} row seeds for {len(prompts)} prompts")
    was_training = model.training
    model.eval()
    texts: list[str] = []
    truncated: list[bool] = []
    try:
        for start in range(0, len(prompts), batch_size):
            rollout = generate(model, tokenizer, prompts[start:start + batch_size], config, chat=True,
                               row_seeds=seeds[start:start + batch_size])
            texts += rollout.texts
            truncated += [bool(cut) for cut in rollout.truncated.tolist()]
    finally:
        model.train(was_training)
    return Sampled(texts, truncated)


def rollout_from_ids(tokenizer: Tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]],
                     completions: Sequence[Sequence[int]], truncated: Sequence[bool], *, chat: bool = True,
                     device: torch.device | str = "cpu") -> Rollout:
    """The `Rollout` that `generate` returns for `prompts`, rebuilt from each row's completion ids
    (stop token included) and truncation flags: for a batch sampled in parts (one per rank) and put
    back together. Same layout as one `generate` call over the whole batch."""
    prompt_ids, prompt_mask = left_pad([_prompt_ids(tokenizer, p, chat) for p in prompts], tokenizer.pad_id)
    completion_ids, completion_mask = right_pad(completions, tokenizer.pad_id)  # (B, C) each
    return Rollout(prompt_ids.to(device), prompt_mask.to(device), completion_ids.to(device),
                   completion_mask.to(device), tokenizer.decode_batch([list(c) for c in completions]),
                   completion_mask.sum(-1).to(device), torch.tensor(list(truncated), dtype=torch.bool, device=device))


def check_context(model, longest_prompt: int, max_new_tokens: int) -> None:
    """UserError (key generation.max_new_tokens) when the longest prompt plus max_new_tokens does not fit
    the model's context: the native GPT's or a transformers config's max_position_embeddings; a model
    whose config has none is not checked."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(context, int) or longest_prompt + max_new_tokens <= context:
        return
    room = (f"at most {context - longest_prompt} new tokens fit" if longest_prompt < context
            else "the prompt alone fills it")
    raise UserError(f"{max_new_tokens} new tokens after the longest prompt ({longest_prompt} tokens) exceed the "
                    f"model's context of {context} tokens (max_position_embeddings): {room}",
                    key="generation.max_new_tokens")


def _prompt_ids(tokenizer: Tokenizer, prompt, chat: bool) -> list[int]:
    if isinstance(prompt, str):
        ids = tokenizer.chat_prompt_ids(prompt) if chat else tokenizer.encode(prompt)
    else:
        ids = list(prompt)
    if not ids:
        raise ValueError("an empty prompt gives the model nothing to continue from")
    return ids


@torch.inference_mode()
def generate_native(model: GPT, prompt_ids, prompt_mask, config: GenerationConfig, generator,
                    *, stop_ids: Sequence[int], pad_id: int, stop_check=None):
    """KV-cache decoding. prompt_ids/mask (B, P) -> completion ids (B, C), mask (B, C), truncated (B,).
    `generator` is a torch.Generator, `RowStreams` or None (greedy).

    The prompts but their last token fill the cache's prompt part (`_prefill`); step t then feeds
    each row's previous token (the last prompt token at t = 0) and samples the next one."""
    b, n, device = prompt_ids.shape[0], config.max_new_tokens, prompt_ids.device
    cache = _prefill(model, prompt_ids, prompt_mask, n)
    position = prompt_mask.sum(-1, keepdim=True) - 1  # (B, 1) position of the last prompt token
    token = prompt_ids[:, -1]  # (B,) left padding puts every row's last prompt token here
    out = torch.full((b, n), pad_id, dtype=torch.long, device=device)
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    ended = torch.full((b,), n, dtype=torch.long, device=device)  # index of each row's stop token
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for t in range(n):
        logits = model(token[:, None], None, position + t, cache=cache)[:, -1]  # (B, V)
        token = sample_next_token(logits, generator, config.temperature, config.top_k, config.top_p, ~done)
        out[:, t] = token.masked_fill(done, pad_id)  # (B,)
        newly = torch.isin(token, stops) & ~done
        if stop_check is not None:
            newly |= stop_check(out[:, : t + 1], done | newly)
        ended = torch.where(newly, t, ended)
        done |= newly
        if bool(done.all()):
            out = out[:, : t + 1]
            break
    return _package(out, ended, pad_id, n)


def _prefill(model: GPT, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new: int):
    """A `KVCache` holding every prompt but its last token, each distinct prompt computed once.

    Rows repeating the row before them (GRPO's groups, N samples per prompt) share their prompt:
    when every run of equal rows has the same length G, the cache keeps one prompt row per group
    and decoding reads it once per group; otherwise each row gets a copy of its run's prompt.
    """
    b, p = prompt_ids.shape
    same = torch.zeros(b, dtype=torch.bool, device=prompt_ids.device)
    same[1:] = (prompt_ids[1:] == prompt_ids[:-1]).all(-1) & (prompt_mask[1:] == prompt_mask[:-1]).all(-1)
    firsts = (~same).nonzero().flatten()  # (U,) the first row of each run
    counts = torch.diff(torch.cat([firsts, firsts.new_tensor([b])]))  # (U,) rows per run
    group = int(counts[0]) if bool((counts == counts[0]).all()) else 1
    mask = prompt_mask[firsts, :-1]  # (U, P - 1)
    mask = mask if not bool(mask.all()) else None  # no padding: no mask anywhere
    cache = model.new_cache(b, max_new, group=group, prompt_len=p - 1,
                            prompt_mask=mask.repeat_interleave(counts // group, dim=0) if mask is not None else None)
    if p == 1:
        return cache
    distinct = cache if group > 1 or len(firsts) == b else model.new_cache(len(firsts), 0, prompt_len=p - 1)
    model.hidden_states(prompt_ids[firsts, :-1], mask, cache=distinct, keys_only=True)
    if distinct is not cache:  # uneven runs: one prompt copy per batch row
        cache.keys[:, :, :, :p - 1] = distinct.keys.repeat_interleave(counts, dim=1)  # (L, B, K, P - 1, D)
        cache.values[:, :, :, :p - 1] = distinct.values.repeat_interleave(counts, dim=1)
        cache.advance(p - 1)
    return cache


def _package(out: torch.Tensor, ended: torch.Tensor, pad_id: int, max_new: int):
    """Raw ids (B, C) and each row's stop index (max_new = none) -> ids, mask (B, C), truncated (B,)."""
    positions = torch.arange(out.shape[1], device=out.device)[None]  # (1, C)
    mask = positions <= ended[:, None]  # (B, C)
    return out.masked_fill(~mask, pad_id), mask, ended >= max_new


def _find_stops(out: torch.Tensor, stops: torch.Tensor, stop_check, max_new: int) -> torch.Tensor:
    """Index of the first stop token or stop-string end per row of finished ids (B, C); max_new if none."""
    is_stop = torch.isin(out, stops)  # (B, C)
    if stop_check is not None:
        for t in range(out.shape[1]):
            is_stop[:, t] |= stop_check(out[:, : t + 1], is_stop[:, : t + 1].any(-1))
    first = is_stop.float().argmax(-1)
    return torch.where(is_stop.any(-1), first, torch.full_like(first, max_new))


def _stop_string_check(tokenizer: Tokenizer, stop_strings: Sequence[str]):
    """A function (ids so far (B, t), rows already done (B,)) -> rows whose text now ends a stop string."""
    if not stop_strings:
        return None
    # Every token decodes to at least one byte, so the tail that can hold a stop string is
    # at most its byte length in tokens.
    window = max(len(s.encode("utf-8")) for s in stop_strings) + 1

    def check(ids: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        hit = torch.zeros_like(done)
        for row in (~done).nonzero().flatten().tolist():
            tail = tokenizer.decode(ids[row, -window:].tolist(), skip_special_tokens=False)
            hit[row] = any(s in tail for s in stop_strings)
        return hit

    return check


@torch.inference_mode()
def generate_hf(model, prompt_ids, prompt_mask, config: GenerationConfig, generator,
                *, stop_ids: Sequence[int], pad_id: int, stop_check=None):
    """transformers `generate` with the same arguments and a seed drawn from `generator`."""
    from transformers import GenerationConfig as HFGenerationConfig

    sample = config.temperature > 0
    hf_config = HFGenerationConfig(
        max_new_tokens=config.max_new_tokens, do_sample=sample,
        temperature=config.temperature if sample else None,
        top_p=config.top_p if sample else None, top_k=config.top_k if sample else None,
        eos_token_id=list(stop_ids) or None, pad_token_id=pad_id)
    seed = None
    if sample and isinstance(generator, RowStreams):  # row seeds: one seed for the batch (see module doc)
        seed = derive_seed(*generator.seeds) % 2**62
    elif sample and generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    device_type = prompt_ids.device.type
    with torch.random.fork_rng(devices=[prompt_ids.device] if device_type == "cuda" else [],
                               enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask.long(),
                             generation_config=hf_config)
    completion = out[:, prompt_ids.shape[1]:]  # (B, C)
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=completion.device)
    ended = _find_stops(completion, stops, stop_check, config.max_new_tokens)
    return _package(completion, ended, pad_id, config.max_new_tokens)
