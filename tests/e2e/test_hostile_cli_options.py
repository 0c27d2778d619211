"""Hostile command-line options: each is refused as one `alignlab <cmd>: error: ...` line, exit 2, no
traceback, nothing written. Empty or non-UTF-8 prompts, devices that are not there, slices that select
no records, empty stop strings (a trailing comma), an absurd learning rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignlab.cli import main
from alignlab.errors import UserError

SFT = ["sft", "tokenizer.kind=byte", "synthetic_per_prompt=1", "steps=1", "run.batch_size=2", "max_length=64",
       "model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_hidden_layers=1",
       "model.arch.num_attention_heads=2", "model.arch.num_key_value_heads=1", "run.eval_every=0",
       "run.progress=false"]
ARCH = SFT[6:11]


def _refused(argv: list, capsys, expected: str) -> str:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith(f"alignlab {argv[0]}: error: "), captured.err
    assert "Traceback" not in captured.err
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def files(tmp_path, monkeypatch) -> Path:
    """tmp_path as the current directory, with three preference pairs and three SFT records."""
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "pairs.jsonl", "w") as out:
        for i in range(3):
            out.write(json.dumps({"prompt": f"p{i}", "chosen": "good", "rejected": "bad"}) + "\n")
    with open(tmp_path / "sft.jsonl", "w") as out:
        for i in range(3):
            out.write(json.dumps({"prompt": f"p{i}", "response": "an answer"}) + "\n")
    return tmp_path


# generate --prompt ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("prompt", ["", "   "])
def test_generate_refuses_an_empty_prompt(policy_dir, capsys, raw, prompt):
    argv = ["generate", policy_dir, "--prompt", prompt, "max_new_tokens=2", *(["--raw"] if raw else [])]
    _refused(argv, capsys, "--prompt: empty prompt")


@pytest.mark.parametrize("raw", [True, False])
def test_generate_refuses_a_prompt_that_is_not_utf8(policy_dir, capsys, raw):
    prompt = b"caf\xe9".decode("utf-8", "surrogateescape")  # what Python makes of $'caf\xe9' in argv
    argv = ["generate", policy_dir, "--prompt", "fine", "--prompt", prompt, "max_new_tokens=2",
            *(["--raw"] if raw else [])]
    _refused(argv, capsys, "--prompt: not UTF-8 text")


def test_generate_still_runs_with_a_good_prompt(policy_dir, capsys):
    assert main(["generate", str(policy_dir), "--raw", "--prompt", "café", "max_new_tokens=2"]) == 0
    assert "### café" in capsys.readouterr().out


# --device ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("device", "expected"), [
    ("nonsense", "unknown device 'nonsense'; expected auto, cpu, cuda, cuda:N or mps"),
    ("meta", "device type 'meta' is not supported; expected auto, cpu, cuda, cuda:N or mps"),
    ("cuda:99", "'cuda:99'"),
])
@pytest.mark.parametrize("cmd", ["generate", "eval"])
def test_unusable_devices_are_refused(policy_dir, capsys, device, expected, cmd):
    extra = ["--prompt", "hi", "max_new_tokens=2"] if cmd == "generate" else ["--samples", "1"]
    _refused([cmd, policy_dir, *extra, "--device", device], capsys, f"device: {expected}")


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_refused(policy_dir, capsys, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _refused(["generate", policy_dir, "--prompt", "hi", "--device", device], capsys,
             "CUDA is not available on this machine")


def test_resolve_device_names_what_it_accepts(monkeypatch):
    from alignlab.runtime import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cpu:0").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"has 2 CUDA devices \(cuda:0 to cuda:1\)") as err:
        resolve_device("cuda:2")
    assert err.value.key == "device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("alignlab.runtime._mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("xla", "", "cuda:-1", "gpu"):
        with pytest.raises(UserError, match="expected auto, cpu, cuda, cuda:N or mps"):
            resolve_device(name)


# slices that select nothing ---------------------------------------------------------------------------

@pytest.mark.parametrize("part", ["[:0]", "[100:]", "[-1:0]"])
def test_score_refuses_a_slice_that_selects_nothing(files, policy_dir, capsys, part):
    _refused(["score", policy_dir, "--pairs", f"pairs.jsonl{part}"], capsys,
             f"pairs.jsonl: the slice {part} selects no records (the file has 3)")


def test_training_refuses_a_slice_that_selects_nothing(files, policy_dir, capsys):
    _refused([*SFT, "data=sft.jsonl[5:]", "run.out_dir=runs/sft"], capsys,
             "sft.jsonl: the slice [5:] selects no records (the file has 3)")
    _refused(["train-rm", "tokenizer.kind=byte", "data=pairs.jsonl[:0]", "steps=1", "run.batch_size=2",
              "max_length=64", *ARCH, "run.out_dir=runs/rm"], capsys, "the slice [:0] selects no records")
    assert not (files / "runs").exists()


def test_a_slice_that_selects_something_still_reads(files):
    from alignlab.data.conversations import read_conversations
    from alignlab.data.preferences import read_preferences

    assert len(read_preferences("pairs.jsonl[1:]")) == 2
    assert len(read_conversations("sft.jsonl[:1]")) == 1
    with pytest.raises(UserError, match=r"the slice \[1:\] selects no records \(the list has 1\)"):
        read_preferences([{"prompt": "p", "chosen": "a", "rejected": "b"}], limit=slice(1, None))


# stop_strings and comma lists -------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "expected"), [
    ("stop_strings=zzz,", "stop_strings: an empty item in the comma-separated list 'zzz,' (a trailing"),
    ("stop_strings=a,,b", "stop_strings: an empty item"),
    ('stop_strings=[""]', "stop_strings: must be non-empty strings"),
    ('stop_strings=[zzz, ""]', "stop_strings: must be non-empty strings"),
])
def test_generate_refuses_empty_stop_strings(policy_dir, capsys, override, expected):
    _refused(["generate", policy_dir, "--raw", "--prompt", "ROMEO:", "temperature=0", override], capsys, expected)


def test_a_trailing_comma_in_data_is_named(files, capsys):
    line = _refused([*SFT, "data=sft.jsonl,", "run.out_dir=runs/sft"], capsys, "data: an empty item")
    assert "trailing" in line and "not a file" not in line
    assert not (files / "runs").exists()


def test_generation_config_refuses_an_empty_stop_string():
    from alignlab.config import GenerationConfig
    from alignlab.config_io import ConfigError

    with pytest.raises(ConfigError) as err:
        GenerationConfig(stop_strings=("zzz", ""))
    assert err.value.field == "stop_strings"
    assert GenerationConfig(stop_strings=("zzz", "\n\n")).stop_strings == ("zzz", "\n\n")


# optim.lr ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lr", ["1e39", "11"])
def test_an_absurd_learning_rate_is_refused(files, capsys, lr):
    _refused([*SFT, f"optim.lr={lr}", "run.out_dir=runs/sft"], capsys, "optim.lr: must be <= 10")
    assert not (files / "runs").exists()
