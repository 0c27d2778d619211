"""Checkpoints: atomic directories, loading errors for people, no network surprises."""

from __future__ import annotations

import pytest
import torch

from alignlab.errors import UserError
from alignlab.model.checkpoint import atomic_dir, load_model, to_hf
from alignlab.model.gpt import GPT


def test_atomic_dir_is_complete_or_absent(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with atomic_dir(target) as tmp:  # replacing keeps no trace of the old directory
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_load_model_round_trip_same_logits(tiny_gpt, byte_tok, tmp_path):
    to_hf(tiny_gpt, tmp_path / "m", byte_tok)
    model, tok = load_model(str(tmp_path / "m"))
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids), tiny_gpt(ids))
    assert tok.kind == "byte" and tok.encode("ab") == [97, 98]


def test_engine_hf_uses_transformers(tiny_gpt, byte_tok, tmp_path):
    to_hf(tiny_gpt, tmp_path / "m", byte_tok)
    model, _ = load_model(str(tmp_path / "m"), engine="hf")
    assert not isinstance(model, GPT) and type(model).__name__ == "Qwen2ForCausalLM"


def test_missing_and_non_model_directories(tmp_path):
    with pytest.raises(UserError, match="not found") as err:
        load_model(str(tmp_path / "runs" / "x" / "checkpoints" / "final"))
    assert str(tmp_path) in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_hub_id_offline_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        load_model("someorg/not-a-real-model")
    message = str(err.value)
    assert "someorg/not-a-real-model" in message and "HF_HUB_OFFLINE=1" in message
    assert "\n" not in message


def test_unsupported_qwen2_variant_refused_by_native(tiny_gpt, tmp_path):
    import json

    to_hf(tiny_gpt, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["use_sliding_window"] = True
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="sliding-window"):
        load_model(str(tmp_path / "m"), engine="native")
