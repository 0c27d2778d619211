"""End to end on CPU: pretrain, resume bit-identically, generate, export, and errors for people."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignlab.cli import main
from alignlab.config import PretrainConfig, load_config
from alignlab.trainers.pretrain import pretrain

TINY = ["tokenizer.kind=byte", "model.arch.hidden_size=32", "model.arch.intermediate_size=64",
        "model.arch.num_hidden_layers=2", "model.arch.num_attention_heads=2",
        "model.arch.num_key_value_heads=1", "block_size=32", "run.batch_size=4", "run.log_every=1",
        "run.progress=false", "max_new_tokens=8"]


def _cfg(tmp_path: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [*TINY, f"run.out_dir={tmp_path / 'run'}", *extra])


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "alignlab", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_pretrain_learns_and_writes_a_run(tmp_path):
    run = pretrain(_cfg(tmp_path, "steps=30", "run.save_every=10", "run.eval_every=10", "optim.lr=3e-3"),
                   quiet=True)
    baseline, *records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert baseline["step"] == 0 and "eval/loss" in baseline  # the starting model, evaluated
    losses = [r["loss"] for r in records]
    assert losses[-1] < losses[0] - 1.0  # bytes start at ln(259) = 5.56; 30 steps learn frequencies
    assert records[-1]["eval/loss"] < baseline["eval/loss"] - 1.0
    for name in ("config.yaml", "manifest.json", "samples/final.jsonl"):
        assert (run / name).exists(), name
    final = run / "checkpoints" / "final"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt", "state.json"):
        assert (final / name).exists(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["versions"]["torch"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["final", "step_10", "step_20"]


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    cfg = _cfg(tmp_path, "steps=8", "run.save_every=3", "run.keep_checkpoints=5")
    run = pretrain(cfg, quiet=True)
    uninterrupted = (run / "checkpoints" / "final" / "model.safetensors").read_bytes()
    # Pretend the process died after step 6: only step_3 and step_6 exist.
    shutil.rmtree(run / "checkpoints" / "final")
    pretrain(cfg, resume=True, quiet=True)
    assert (run / "checkpoints" / "final" / "model.safetensors").read_bytes() == uninterrupted
    # And again from step 3.
    shutil.rmtree(run / "checkpoints" / "final")
    shutil.rmtree(run / "checkpoints" / "step_6")
    pretrain(cfg, resume=True, quiet=True)
    assert (run / "checkpoints" / "final" / "model.safetensors").read_bytes() == uninterrupted


def test_run_dir_is_not_clobbered(tmp_path):
    cfg = _cfg(tmp_path, "steps=1")
    pretrain(cfg, quiet=True)
    from alignlab.errors import UserError

    with pytest.raises(UserError, match="already exists"):
        pretrain(cfg, quiet=True)


@pytest.mark.slow
def test_cli_pretrain_generate_export(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "steps=3", f"run.out_dir={out}"]) == 0
    ckpt = out / "checkpoints" / "final"
    done = _cli("generate", str(ckpt), "--prompt", "hi", "--raw", "temperature=0", "max_new_tokens=5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("### hi")
    assert main(["export", str(ckpt), "--to", "hf", str(tmp_path / "hf")]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.model.checkpoint import load_model

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    native, _ = load_model(str(ckpt))
    ids = torch.tensor([tok.encode("hello")])
    with torch.no_grad():
        assert (hf(ids).logits - native(ids)).abs().max() < 1e-5
    assert not (tmp_path / "hf" / "trainer_state.pt").exists()


def _one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_bad_config_key(tmp_path):
    _one_line_error(_cli("pretrain", "optim.lrr=1", cwd=tmp_path), "optim.lrr", "optim.lr")
    assert not (tmp_path / "runs").exists()  # no partial run directory


def test_cli_missing_checkpoint(tmp_path):
    missing = tmp_path / "runs" / "x" / "checkpoints" / "final"
    _one_line_error(_cli("generate", str(missing), "--prompt", "hi"), str(missing), "not found")


def test_cli_corrupt_safetensors(tmp_path, tiny_gpt, byte_tok):
    from alignlab.model.checkpoint import to_hf

    ckpt = to_hf(tiny_gpt, tmp_path / "ckpt", byte_tok)
    (ckpt / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    _one_line_error(_cli("generate", str(ckpt), "--prompt", "hi"), "model.safetensors")
    _one_line_error(_cli("export", str(ckpt), str(tmp_path / "out")), "model.safetensors")
    assert not (tmp_path / "out").exists()
