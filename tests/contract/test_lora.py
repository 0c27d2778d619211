"""LoRA adapters (peft) on the native GPT: reference = adapters off, adapter-only checkpoints that load
with their base (hash checked), peft-format files, merged export that transformers loads, and KV-cache
generation with the adapter equal to the merged model's."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from alignlab.config import GenerationConfig, LoRAConfig  # noqa: E402
from alignlab.errors import UserError  # noqa: E402
from alignlab.generation.engine import generate  # noqa: E402
from alignlab.model.checkpoint import atomic_dir, load_model, save_model, to_hf  # noqa: E402
from alignlab.model.lora import META, WEIGHTS, adapter_record, adapters_off, add_lora, lora_layers, merge_lora  # noqa: E402

IDS = torch.tensor([[5, 17, 99, 3, 42, 7], [8, 8, 1, 250, 64, 2]])


def _adapted(policy_dir, r=4):
    model, tok = load_model(str(policy_dir))
    base_logits = model(IDS).detach()
    add_lora(model, LoRAConfig(r=r, alpha=8.0), str(policy_dir), policy_dir)
    torch.manual_seed(1)
    for layer in lora_layers(model):  # peft starts B at 0 (adapter = identity); give it a real update
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
    return model, tok, base_logits


def test_only_adapters_train_and_adapters_off_is_the_base_exactly(policy_dir):
    model, _, base_logits = _adapted(policy_dir)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not torch.allclose(model(IDS), base_logits)
    with adapters_off(model), torch.no_grad():
        assert torch.equal(model(IDS), base_logits)
    assert all(p.requires_grad for n, p in model.named_parameters() if n in trainable)  # restored


def test_adapter_checkpoint_round_trip_and_base_hash(policy_dir, tmp_path):
    model, tok, _ = _adapted(policy_dir)
    with atomic_dir(tmp_path / "adapter") as tmp:
        save_model(model, tok, tmp)
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {META, WEIGHTS, "adapter_config.json"} <= files and "model.safetensors" not in files
    size = (tmp_path / "adapter" / WEIGHTS).stat().st_size
    assert size < (policy_dir / "model.safetensors").stat().st_size / 5
    loaded, _ = load_model(str(tmp_path / "adapter"))
    with torch.no_grad():
        assert torch.equal(loaded(IDS), model(IDS))
    weights = policy_dir / "model.safetensors"  # the base changes after training: refused on load
    from safetensors.torch import load_file, save_file
    state = load_file(str(weights))
    state["lm_head.weight"] = state["lm_head.weight"] + 1e-3
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(UserError, match="no longer has the weights"):
        load_model(str(tmp_path / "adapter"))


def test_peft_loads_our_adapter_onto_the_transformers_base(policy_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok, _ = _adapted(policy_dir)
    with atomic_dir(tmp_path / "adapter") as tmp:
        save_model(model, tok, tmp)
    hf = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(policy_dir)), str(tmp_path / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=IDS).logits, model(IDS), atol=1e-5, rtol=1e-5)


def test_merged_export_loads_in_transformers_and_greedy_matches(policy_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok, _ = _adapted(policy_dir)
    model.eval()
    with torch.no_grad():
        adapted = model(IDS)
    gen = GenerationConfig(max_new_tokens=16, temperature=0.0)
    prompts = ["plan?", "- 30 分钟"]
    with_adapter = generate(model, tok, prompts, gen).completion_ids
    merged = merge_lora(model)
    assert not lora_layers(merged) and not any("lora_" in n for n, _ in merged.named_parameters())
    assert torch.equal(generate(merged, tok, prompts, gen).completion_ids, with_adapter)
    to_hf(merged, tmp_path / "merged", tok)
    assert not (tmp_path / "merged" / META).exists()
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=IDS).logits, adapted, atol=1e-5, rtol=1e-5)


def test_unknown_target_module_is_a_user_error(policy_dir):
    model, _ = load_model(str(policy_dir))
    with pytest.raises(UserError, match="c_attn.*all-linear"):
        add_lora(model, LoRAConfig(r=2, target_modules=("c_attn",)), str(policy_dir), policy_dir)


def test_all_linear_is_every_projection_but_the_head(policy_dir):
    from alignlab.config.sections import QWEN2_LORA_TARGETS

    model, _ = load_model(str(policy_dir))  # Qwen2 names: the same adapters as the default list
    add_lora(model, LoRAConfig(r=2, target_modules=("all-linear",)), str(policy_dir), policy_dir)
    assert set(adapter_record(model)["lora"]["target_modules"]) == set(QWEN2_LORA_TARGETS)
    assert "lm_head" not in {n.split(".")[-2] for n, _ in model.named_parameters() if "lora_A" in n}


@pytest.mark.parametrize("arch", ["gpt2", "phi3"])
def test_all_linear_adapts_models_with_other_layer_names(arch):
    """GPT-2's projections are transformers' Conv1D, Phi-3 fuses q/k/v and gate/up: the default Qwen2
    names are not there (a one-line error that says what is), all-linear finds them."""
    from transformers import AutoModelForCausalLM, GPT2Config, Phi3Config

    config = (GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=300) if arch == "gpt2" else
              Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, pad_token_id=0))
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UserError, match="all-linear"):
        add_lora(model, LoRAConfig(r=2), "tiny")
    add_lora(model, LoRAConfig(r=2, target_modules=("all-linear",)), "tiny")
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert adapted == ({"c_attn", "c_proj", "c_fc"} if arch == "gpt2" else
                       {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"})
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    loss = model(input_ids=IDS % 300, labels=IDS % 300).loss
    loss.backward()


def test_transformers_engine_takes_adapters_too(policy_dir, tmp_path):
    from alignlab.config import ModelConfig
    from alignlab.model.checkpoint import load_trainable

    model, tok = load_trainable(ModelConfig(path=str(policy_dir), engine="hf"), LoRAConfig(r=2), "cpu", seed=3)
    assert type(model).__name__ == "Qwen2ForCausalLM" and lora_layers(model)
    for layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
    with atomic_dir(tmp_path / "adapter") as tmp:
        save_model(model, tok, tmp)
    loaded, _ = load_model(str(tmp_path / "adapter"), engine="hf")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, model(input_ids=IDS).logits)
        native, _ = load_model(str(tmp_path / "adapter"))  # the same adapter on the native engine
        torch.testing.assert_close(native(IDS), model(input_ids=IDS).logits, atol=1e-5, rtol=1e-5)
