"""LoRA through the trainers on a tiny native policy: GRPO (beta > 0: the reference is the policy with its
adapters off) trains only adapters and resumes exactly; SFT, DPO and PPO take `lora.r`; eval, generate
and `export --merge` accept the adapter checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")

from alignlab.backends.grpo import grpo  # noqa: E402
from alignlab.cli import main  # noqa: E402
from alignlab.config import DPOConfig, GRPOConfig, PPOConfig, SFTConfig, load_config  # noqa: E402
from alignlab.errors import UserError  # noqa: E402
from alignlab.model.checkpoint import load_model  # noqa: E402
from alignlab.model.lora import META, WEIGHTS, adapters_off  # noqa: E402
from alignlab.trainers.dpo import dpo  # noqa: E402
from alignlab.trainers.ppo import VALUE, ppo  # noqa: E402
from alignlab.trainers.sft import sft  # noqa: E402

LORA = ["lora.r=4", "lora.alpha=8"]
IDS = torch.tensor([[5, 17, 99, 3, 42, 7, 8, 1]])


def _grpo_cfg(policy_dir, out, *extra):
    return load_config(GRPOConfig, None, [
        f"model.path={policy_dir}", f"run.out_dir={out}", "num_generations=4", "run.batch_size=8",
        "max_new_tokens=12", "steps=4", "run.progress=false", "run.log_every=1", "run.eval_every=0",
        "run.save_every=2", "optim.lr=1e-2", "preflight=false", "beta=0.04", "reward.mode=shaped",
        "max_new_tokens=24", *LORA, *extra])


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_grpo_with_lora_trains_only_the_adapter_and_resumes_exactly(policy_dir, tmp_path):
    run = grpo(_grpo_cfg(policy_dir, tmp_path / "run"), quiet=True)
    final = run / "checkpoints" / "final"
    assert (final / META).is_file() and not (final / "model.safetensors").exists()
    records = _records(run)
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-7) and records[-1]["kl"] > 0  # adapters off = reference
    adapted, _ = load_model(str(final))
    base, _ = load_model(str(policy_dir))
    names = dict(adapted.named_parameters())
    for name, weight in base.named_parameters():  # every base weight untouched ...
        key = name.replace(".weight", ".base_layer.weight") if f"{name[:-7]}.base_layer.weight" in names else name
        key = key.replace(".bias", ".base_layer.bias") if key not in names else key
        assert torch.equal(names[key], weight), name
    with torch.no_grad():  # ... the adapters moved, and switching them off gives the base exactly
        assert not torch.allclose(adapted(IDS), base(IDS))
        with adapters_off(adapted):
            assert torch.equal(adapted(IDS), base(IDS))
    partial = tmp_path / "partial"
    grpo(_grpo_cfg(policy_dir, partial, "steps=3"), quiet=True)
    shutil.rmtree(partial / "checkpoints" / "final")
    resumed = grpo(_grpo_cfg(policy_dir, partial), resume=True, quiet=True)
    assert (resumed / "checkpoints" / "final" / WEIGHTS).read_bytes() == (final / WEIGHTS).read_bytes()


def test_adapter_checkpoint_through_eval_generate_and_merged_export(policy_dir, tmp_path, capsys):
    run = grpo(_grpo_cfg(policy_dir, tmp_path / "run", "steps=2"), quiet=True)
    final = run / "checkpoints" / "final"
    assert main(["generate", str(final), "--prompt", "plan?", "max_new_tokens=4"]) == 0
    assert main(["eval", str(final), "--samples", "1", "--max-new-tokens", "8"]) == 0
    assert main(["export", str(final), str(tmp_path / "plain")]) == 2  # an adapter needs --merge
    assert "--merge" in capsys.readouterr().err
    assert main(["export", str(final), "--merge", str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForCausalLM

    adapted, _ = load_model(str(final))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=IDS).logits, adapted(IDS), atol=1e-5, rtol=1e-5)


def test_sft_dpo_and_ppo_take_lora(policy_dir, tmp_path):
    common = ["run.progress=false", "run.log_every=1", "optim.lr=1e-3", *LORA]
    s = sft(load_config(SFTConfig, None, [f"model.path={policy_dir}", f"run.out_dir={tmp_path / 'sft'}", "steps=2",
                                          "run.batch_size=4", "synthetic_per_prompt=1", "max_length=96",
                                          "run.eval_every=0", *common]), quiet=True)
    assert (s / "checkpoints" / "final" / META).is_file()
    d = dpo(load_config(DPOConfig, None, [f"model.path={policy_dir}", f"run.out_dir={tmp_path / 'dpo'}", "steps=2",
                                          "run.batch_size=4", "dummy_pairs=12", "max_length=96", "run.eval_every=0",
                                          "precompute_ref=false", *common]), quiet=True)
    assert _records(d)[0]["loss"] == pytest.approx(0.6931, abs=1e-4)  # the reference is the adapter-free policy
    p = ppo(load_config(PPOConfig, None, [f"model.path={policy_dir}", f"run.out_dir={tmp_path / 'ppo'}", "steps=2",
                                          "run.batch_size=4", "generation.max_new_tokens=8", "run.eval_every=0",
                                          *common]), quiet=True)
    final = p / "checkpoints" / "final"
    critic = load_file(str(final / VALUE))
    assert (final / META).is_file() and all("lora_" in k or k == "score.weight" for k in critic)
    with pytest.raises(UserError, match="model.path"):
        sft(load_config(SFTConfig, None, [f"run.out_dir={tmp_path / 'new'}", *common]), quiet=True)


def test_reward_model_with_lora_saves_adapters_and_head_and_resumes_exactly(policy_dir, tmp_path):
    from alignlab.config import RewardModelConfig
    from alignlab.model.heads import load_reward_model
    from alignlab.trainers.reward_model import train_reward_model

    def cfg(out, *extra):
        return load_config(RewardModelConfig, None, [f"model.path={policy_dir}", f"run.out_dir={out}", "steps=4",
                                                     "run.batch_size=4", "dummy_pairs=16", "max_length=96",
                                                     "run.eval_every=0", "run.save_every=2", *LORA, "optim.lr=1e-2",
                                                     "run.progress=false", *extra])

    run = train_reward_model(cfg(tmp_path / "rm"), quiet=True)
    final = run / "checkpoints" / "final"
    assert {META, WEIGHTS, "score.safetensors", "reward_model.json"} <= {p.name for p in final.iterdir()}
    assert not (final / "model.safetensors").exists()
    rm, tok = load_reward_model(str(run))
    base, _ = load_model(str(policy_dir))
    ids = torch.tensor([tok.encode("- 30 分钟 read\n- 1 hour math\n")])
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad(), adapters_off(rm.model):  # adapters off: the base body, untouched by training
        torch.testing.assert_close(rm.model(ids, mask), base.hidden_states(ids, mask))
    partial = tmp_path / "partial"
    train_reward_model(cfg(partial, "steps=3"), quiet=True)
    shutil.rmtree(partial / "checkpoints" / "final")
    resumed = train_reward_model(cfg(partial), resume=True, quiet=True)
    for name in (WEIGHTS, "score.safetensors"):
        assert (resumed / "checkpoints" / "final" / name).read_bytes() == (final / name).read_bytes(), name
