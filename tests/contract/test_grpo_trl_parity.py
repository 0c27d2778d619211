"""GRPO parity with TRL's GRPOTrainer through the model forward, not just on given log-prob tensors.

Same weights (a native GPT, and its transformers export loaded twice: TRL patches the forward of
its copy with a fused LM head), same left-padded prompts and right-padded completions, same
advantages, old and reference log-probs. Checked: the completion log-probs and entropies at
temperature 0.7, then for loss types "grpo" and "dapo" the loss and every parameter's gradient.
The loss-only parity on tensors is tests/unit/test_grpo_math.py::test_loss_parity_with_trl; this
one also catches a shifted position, a missed temperature or padding leaking into the gradient.
"""

from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlab.config import GPTConfig, GRPOConfig, load_config
from alignlab.data.tokenizer import byte_tokenizer
from alignlab.model.checkpoint import to_hf
from alignlab.model.gpt import GPT
from alignlab.trainers.grpo import make_loss
from alignlab.trainers.grpo_rollouts import GRPOBatch
from alignlab.trainers.logps import policy_logps

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
transformers = pytest.importorskip("transformers")
from trl.trainer import add_fused_lm_head  # noqa: E402

B, P, C, TEMPERATURE = 4, 5, 6, 0.7
PROMPT_LENGTHS, COMPLETION_LENGTHS = [5, 3, 4, 2], [6, 4, 1, 5]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(native GPT, HF copy for alignlab, HF copy patched like TRL's GRPOTrainer), all with the same weights."""
    tok = byte_tokenizer()
    torch.manual_seed(0)
    native = GPT(GPTConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           tie_word_embeddings=False))
    directory = to_hf(native, tmp_path_factory.mktemp("hf") / "policy", tok)

    def load():
        return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)

    hf, trl_model = load(), load()
    add_fused_lm_head(trl_model, temperature=TEMPERATURE, outputs=("log_probs", "entropy"))
    return native, hf, trl_model


def _tokens():
    """Left-padded prompts and right-padded completions, pad id 256 in the padding: (ids, mask) each."""
    generator = torch.Generator().manual_seed(1)
    prompt_mask = torch.arange(P).flip(0).unsqueeze(0) < torch.tensor(PROMPT_LENGTHS).unsqueeze(1)  # (B, P)
    completion_mask = torch.arange(C).unsqueeze(0) < torch.tensor(COMPLETION_LENGTHS).unsqueeze(1)  # (B, C)
    prompt_ids = torch.randint(0, 256, (B, P), generator=generator).masked_fill(~prompt_mask, 256)
    completion_ids = torch.randint(0, 256, (B, C), generator=generator).masked_fill(~completion_mask, 256)
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def _trl_stand_in(loss_type: str, beta: float):
    """What `_compute_loss` and `_get_per_token_logps_and_entropies` read on a single-process train step."""
    stand_in = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28, use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=C, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics={"train": defaultdict(list)},
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        accelerator=SimpleNamespace(num_processes=1, reduce=lambda x, reduction: x, gather=lambda x: x,
                                    autocast=contextlib.nullcontext, is_main_process=False))  # False: no profiling logs
    stand_in._get_per_token_logps_and_entropies = functools.partial(
        trl_grpo.GRPOTrainer._get_per_token_logps_and_entropies, stand_in)
    return stand_in


def test_logps_and_entropy_match_trl(models):
    prompt_ids, prompt_mask, completion_ids, completion_mask = _tokens()
    ids, mask = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():
        theirs, their_entropy, _ = _trl_stand_in("dapo", 0.0)._get_per_token_logps_and_entropies(
            models[2], ids, mask.long(), C, compute_entropy=True)
        for model in models[:2]:
            ours, our_entropy = policy_logps(model, ids, mask, completion_ids, TEMPERATURE, entropy=True)
            torch.testing.assert_close(ours[completion_mask], theirs[completion_mask], atol=1e-5, rtol=0)
            torch.testing.assert_close(our_entropy[completion_mask], their_entropy[completion_mask], atol=1e-5,
                                       rtol=0)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_loss_and_gradients_match_trl(models, loss_type):
    native, hf, trl_model = models
    prompt_ids, prompt_mask, completion_ids, completion_mask = _tokens()
    ids, mask = torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1)
    with torch.no_grad():
        logps, _ = policy_logps(hf, ids, mask, completion_ids, TEMPERATURE)
    generator = torch.Generator().manual_seed(2)
    old_logps = logps + 0.3 * torch.randn(B, C, generator=generator)  # ratios away from 1: some tokens clip
    ref_logps = logps + 0.3 * torch.randn(B, C, generator=generator)
    advantages = torch.tensor([1.0, -0.7, 0.4, -1.2])
    for model in models:
        model.zero_grad(set_to_none=True)

    stand_in = _trl_stand_in(loss_type, beta=0.04)
    theirs = trl_grpo.GRPOTrainer._compute_loss(stand_in, trl_model, {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask.long(), "completion_ids": completion_ids,
        "completion_mask": completion_mask.long(), "advantages": advantages, "old_per_token_logps": old_logps,
        "ref_per_token_logps": ref_logps, "num_items_in_batch": completion_mask.sum().float()})
    theirs.backward()

    cfg = load_config(GRPOConfig, None, [f"temperature={TEMPERATURE}", "beta=0.04", f"loss_type={loss_type}",
                                         "epsilon=0.2", "epsilon_high=0.28", f"max_new_tokens={C}",
                                         "num_generations=2", f"run.batch_size={B}", "model.path=x"])
    batch = GRPOBatch(ids, mask, completion_ids, completion_mask, advantages, old_logps, ref_logps,
                      token_normaliser=float(completion_mask.sum()), metrics={})
    their_grads = dict(trl_model.named_parameters())
    for model in (hf, native):
        ours, metrics = make_loss(model, cfg)(batch)
        ours.backward()
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
        assert metrics["clip_fraction"] == pytest.approx(stand_in._metrics["train"]["clip_ratio/region_mean"][0])
        for name, parameter in model.named_parameters():
            their_grad = their_grads[name].grad
            assert their_grad is not None and their_grad.abs().sum() > 0, name
            torch.testing.assert_close(parameter.grad, their_grad, atol=1e-6, rtol=1e-4,
                                       msg=lambda text, name=name: f"{name}: {text}")
    assert metrics["clip_fraction"] > 0
