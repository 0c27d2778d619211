"""Hostile input through the real CLI: user code is contained, and files a checkpoint names stay inside it.

User code (P7): a `reward.function` that calls sys.exit, raises KeyboardInterrupt or hangs, in a call or
while its file runs, ends the command with exit 2 and one line `alignlab grpo: error: ...` naming the
function, never with the user's exit code or a silent stall; a real stop signal still works (one SIGTERM:
checkpoint and exit 143; a second: stop at once, exit 143; Ctrl-C outside the loop: 130).

Checkpoint files (P8): a weight index or tokenizer config naming a file outside the checkpoint folder
(absolute, `..`, a symlink out) is refused naming the file and the entry; an adapter's base is found from
the adapter's folder, never the current directory, a base that loops is refused, and an adapter with no
recorded base hash loads only with --allow-unverified-base.

Every case checks that no file that was there before was deleted or changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from alignlab.cli import main

GRPO = ["grpo", "preflight=false", "steps=1", "num_generations=2", "run.batch_size=2", "max_new_tokens=4",
        "run.progress=false", "run.eval_every=0", "eval_prompts=1", "eval_samples=1"]
GOOD = "def reward(prompts, completions, **kwargs):\n    return [float(len(c)) for c in completions]\n"
HANG = "import time\n\n\ndef reward(prompts, completions, **kwargs):\n    time.sleep(30)\n    return [0.0]\n"
# Signals sent by the reward itself; refused unless the loop's handler is installed (else pytest would die).
SIGNALS = """import os, signal, time
calls = []


def reward(prompts, completions, **kwargs):
    calls.append(1)
    if len(calls) == {at}:
        for n in range({times}):
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                raise RuntimeError("no stop-signal handler installed")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)  # the main thread handles it before the next one
        time.sleep({linger})
    return [0.0] * len(completions)
"""


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _run(argv: list[str], root: Path, capsys) -> tuple[int, str]:
    """main(argv) -> (exit code, its one stderr line); every file under `root` before is still there, unchanged."""
    before = _snapshot(root)
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    after = _snapshot(root)
    assert before.items() <= after.items(), sorted(set(before.items()) - set(after.items()))
    if code != 0:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"alignlab {argv[0]}: "), err
    return code, err


@pytest.fixture
def work(tmp_path, policy_dir, monkeypatch):
    """tmp_path holds the policy; the current directory is tmp_path/work (default outputs land there)."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def _user_file(root: Path, name: str, text: str) -> Path:
    (root / "user").mkdir(exist_ok=True)
    path = root / "user" / f"hostile_code_{name}.py"
    path.write_text(text, encoding="utf-8")
    return path


def _grpo(root: Path, reward: Path, *extra: str) -> list[str]:
    return [*GRPO, f"model.path={root / 'policy'}", f"run.out_dir={root / 'run'}", f"reward.function={reward}:reward",
            *extra]


# ---- P7: user code is contained ----------------------------------------------------------------------

CONTAINED = [  # (id, file text, overrides, what the error line says after "reward function 'reward'")
    ("exit-in-call", "import sys\n\n\ndef reward(prompts, completions, **kwargs):\n    sys.exit(3)\n", [],
     "called sys.exit(3)"),
    ("systemexit-raised", "def reward(prompts, completions, **kwargs):\n    raise SystemExit('bye')\n", [],
     "called sys.exit('bye')"),
    ("keyboardinterrupt-in-call", "def reward(prompts, completions, **kwargs):\n    raise KeyboardInterrupt\n", [],
     "raised KeyboardInterrupt itself"),
    ("hang-in-call", HANG, ["reward.timeout_s=0.5"], "did not return within 0.5 s (reward.timeout_s"),
    ("exit-on-import", "import sys\nsys.exit(4)\n" + GOOD, [], "running the file called sys.exit(4)"),
    ("keyboardinterrupt-on-import", "raise KeyboardInterrupt\n" + GOOD, [], "raised KeyboardInterrupt itself"),
    ("hang-on-import", "import time\ntime.sleep(30)\n" + GOOD, ["reward.timeout_s=0.5"],
     "did not finish within 0.5 s (reward.timeout_s)"),
]


@pytest.mark.parametrize(("text", "extra", "expected"), [c[1:] for c in CONTAINED], ids=[c[0] for c in CONTAINED])
def test_user_reward_code_is_contained(text, extra, expected, work, capsys):
    reward = _user_file(work, "reward", text)
    code, err = _run(_grpo(work, reward, *extra), work, capsys)
    assert code == 2, err
    assert "reward function 'reward'" in err and expected in err, err
    assert str(reward) in err  # where the function came from


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_reward_timeout_must_be_finite_and_not_negative(value, work, capsys):
    code, err = _run(_grpo(work, _user_file(work, "good", GOOD), f"reward.timeout_s={value}"), work, capsys)
    assert code == 2 and "reward.timeout_s: " in err and ("finite" in err or ">= 0" in err), err


def test_the_trl_backend_calls_the_reward_through_the_same_containment(work, capsys):
    pytest.importorskip("trl")
    reward = _user_file(work, "exit", "import sys\n\n\ndef reward(prompts, completions, **kwargs):\n    sys.exit(5)\n")
    code, err = _run(_grpo(work, reward, "backend=trl"), work, capsys)
    assert code == 2 and "reward function 'reward'" in err and "called sys.exit(5)" in err, err


def test_a_contained_reward_returns_the_same_values(tmp_path):
    from alignlab.rewards.base import call_reward
    from alignlab.rewards.user_code import load_reward_function

    path = _user_file(tmp_path, "good", GOOD + "\n\ndef abstain(prompts, completions, **kwargs):\n"
                                               "    return [None, 0.25]\n")
    contained = load_reward_function(f"{path}:reward", timeout_s=5)
    assert contained.__name__ == "reward"
    assert call_reward(contained, ["p", "q"], ["ab", "abc"]) == [2.0, 3.0]
    assert call_reward(load_reward_function(f"{path}:abstain", 5), ["p", "q"], ["a", "b"]) == [None, 0.25]
    assert not (tmp_path / "user" / "__pycache__").exists()  # nothing written beside the user's file


def test_a_stop_signal_from_outside_passes_through_reward_wrappers():
    from alignlab.errors import ForcedStop
    from alignlab.rewards.base import call_reward, combine

    def stopped(prompts, completions, **kwargs):  # as if a second SIGTERM arrived during the call
        raise ForcedStop("second SIGTERM: stopped at once", signal.SIGTERM)

    with pytest.raises(ForcedStop) as caught:
        combine({"r": (stopped, 1.0)}).score(["p"], ["c"])
    assert caught.value.exit_code == 143 and isinstance(caught.value, KeyboardInterrupt)
    with pytest.raises(ForcedStop):
        call_reward(stopped, ["p"], ["c"])


def test_one_sigterm_saves_a_checkpoint_after_the_step_and_exits_143(work, capsys):
    reward = _user_file(work, "sigterm_once", SIGNALS.format(at=1, times=1, linger=0))
    code, err = _run(_grpo(work, reward, "steps=3"), work, capsys)
    assert code == 143, err
    assert "stopped: SIGTERM after step 1: checkpoint saved" in err and "--resume" in err, err
    assert (work / "run" / "checkpoints" / "step_1" / "state.json").is_file()


def test_a_second_sigterm_stops_at_once_keeping_the_last_checkpoint(work, capsys):
    reward = _user_file(work, "sigterm_twice", SIGNALS.format(at=2, times=2, linger=20))
    code, err = _run(_grpo(work, reward, "steps=3", "run.save_every=1"), work, capsys)
    assert code == 143, err
    assert "stopped: second SIGTERM: stopped at once" in err, err
    kept = sorted(p.name for p in (work / "run" / "checkpoints").iterdir())
    assert kept == ["step_1"], kept  # the step in flight left nothing, not even a hidden temporary folder
    assert (work / "run" / "checkpoints" / "step_1" / "state.json").is_file()


def test_ctrl_c_outside_the_training_loop_exits_130(work, capsys, monkeypatch):
    import alignlab.model.checkpoint as checkpoint

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "load_model", interrupted)
    code, err = _run(["generate", work / "policy", "--prompt", "x"], work, capsys)
    assert code == 130 and err == "alignlab generate: interrupted", err


def test_a_real_process_exits_2_not_with_the_users_code(work):
    reward = _user_file(work, "exit7", "import sys\n\n\ndef reward(prompts, completions, **kwargs):\n    sys.exit(7)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    before = _snapshot(work)
    proc = subprocess.run([sys.executable, "-m", "alignlab", *_grpo(work, reward)], cwd=work / "work", env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert before.items() <= _snapshot(work).items()
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("alignlab grpo: error: ") and "reward function 'reward'" in line, proc.stderr
    assert "called sys.exit(7)" in line


# ---- P8: files named inside a checkpoint stay inside it -----------------------------------------------

def _sharded(root: Path, name: str) -> Path:
    """A copy of the policy with its weights in two shards and an index (a valid sharded checkpoint)."""
    ckpt = root / name
    shutil.copytree(root / "policy", ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(ckpt / shard), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    return ckpt


def _point_shard(ckpt: Path, target: str) -> str:
    """Let the index map the second shard's tensors to `target`; returns one of those tensor names."""
    index_file = ckpt / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    moved = sorted(k for k, v in index["weight_map"].items() if v == "model-00002-of-00002.safetensors")
    index["weight_map"].update(dict.fromkeys(moved, target))
    index_file.write_text(json.dumps(index))
    return moved[0]


def _outside_copy(root: Path, ckpt: Path) -> Path:
    """The second shard moved out of the checkpoint: a valid file, so reading it would 'work' silently."""
    (root / "outside").mkdir(exist_ok=True)
    return Path(shutil.move(ckpt / "model-00002-of-00002.safetensors", root / "outside" / "shard.safetensors"))


def test_a_sharded_checkpoint_inside_its_folder_loads(work, capsys):
    code, err = _run(["generate", _sharded(work, "sharded"), "--prompt", "x", "max_new_tokens=2"], work, capsys)
    assert code == 0, err


def test_a_hub_cache_snapshot_whose_files_link_into_its_blobs_loads(work, capsys):
    """The hub cache's own layout: snapshots/<rev>/<file> -> ../../blobs/<sha>, symlinks out of the snapshot."""
    repo = work / "hub" / "models--org--tiny"
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, path in enumerate(sorted(_sharded(work, "sharded").iterdir())):
        shutil.copy(path, blobs / f"blob{i}")
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    code, err = _run(["generate", snapshot, "--prompt", "x", "max_new_tokens=2"], work, capsys)
    assert code == 0, err


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_a_weight_index_naming_a_file_outside_the_checkpoint_is_refused(how, work, capsys):
    ckpt = _sharded(work, "sharded")
    outside = _outside_copy(work, ckpt)
    if how == "symlink":
        (ckpt / "model-00002-of-00002.safetensors").symlink_to(outside)
        entry = "model-00002-of-00002.safetensors"
    else:
        entry = str(outside) if how == "absolute" else "../outside/shard.safetensors"
    tensor = _point_shard(ckpt, entry) if how != "symlink" else None
    code, err = _run(["generate", ckpt, "--prompt", "x", "max_new_tokens=2"], work, capsys)
    assert code == 2, err
    assert "model.safetensors.index.json" in err and repr(entry) in err and "outside the checkpoint folder" in err
    if tensor is not None:
        assert f"weight_map[{tensor!r}]" in err


@pytest.mark.parametrize(("key", "how"), [("tokenizer_file", "absolute"), ("vocab_file", "dotdot"),
                                          ("merges_file", "absolute")])
def test_a_tokenizer_config_naming_a_file_outside_the_checkpoint_is_refused(key, how, work, capsys):
    ckpt = work / "tok"
    shutil.copytree(work / "policy", ckpt)
    (work / "outside").mkdir()
    shutil.copy(ckpt / "tokenizer.json", work / "outside" / "tokenizer.json")
    name = str(work / "outside" / "tokenizer.json") if how == "absolute" else "../outside/tokenizer.json"
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    (ckpt / "tokenizer_config.json").write_text(json.dumps({**config, key: name}))
    code, err = _run(["generate", ckpt, "--prompt", "x", "max_new_tokens=2"], work, capsys)
    assert code == 2, err
    assert f"tokenizer_config.json: {key}: {name!r} is outside the checkpoint folder" in err, err


def test_a_tokenizer_file_symlinked_out_of_the_checkpoint_is_refused(work, capsys):
    ckpt = work / "tok"
    shutil.copytree(work / "policy", ckpt)
    (work / "outside").mkdir()
    shutil.move(ckpt / "tokenizer.json", work / "outside" / "tokenizer.json")
    (ckpt / "tokenizer.json").symlink_to(work / "outside" / "tokenizer.json")
    code, err = _run(["eval", ckpt, "--samples", "1", "--max-new-tokens", "2"], work, capsys)
    assert code == 2 and "'tokenizer.json' is a symlink that resolves outside the checkpoint folder" in err, err


# ---- P8: an adapter's base is found from the adapter's folder --------------------------------------------

def _adapter(root: Path, base: str, cwd: Path, name: str = "adapter") -> Path:
    """An adapter trained from `base` as typed in `cwd` (so `base` may be relative), saved to root/name."""
    pytest.importorskip("peft")
    from alignlab.config import LoRAConfig
    from alignlab.model.checkpoint import atomic_dir, load_model, save_model
    from alignlab.model.lora import add_lora

    here = Path.cwd()
    os.chdir(cwd)
    try:
        model, tokenizer = load_model(base)
        add_lora(model, LoRAConfig(r=2, alpha=4.0), base, Path(base))
        with atomic_dir(root / name) as tmp:
            save_model(model, tokenizer, tmp)
    finally:
        os.chdir(here)
    return root / name


def _edit_record(adapter: Path, **changes) -> None:
    """Rewrite adapter.json; a None value removes the key (a record written before base_abs existed)."""
    record = json.loads((adapter / "adapter.json").read_text())
    record.update(changes)
    record = {k: v for k, v in record.items() if v is not None or k == "base_sha256"}
    (adapter / "adapter.json").write_text(json.dumps(record))


@pytest.fixture
def elsewhere(work, tiny_gpt, byte_tok):
    """A directory holding a different model named `policy`: what a cwd-relative base would wrongly pick."""
    from alignlab.model.checkpoint import save_model

    other = work / "elsewhere"
    (other / "policy").mkdir(parents=True)
    with torch.no_grad():
        tiny_gpt.lm_head.weight.add_(1.0)
    save_model(tiny_gpt, byte_tok, other / "policy")
    return other


def test_a_relative_base_is_found_from_the_adapter_not_the_current_directory(work, elsewhere, capsys, monkeypatch):
    adapter = _adapter(work, "policy", cwd=work)
    monkeypatch.chdir(elsewhere)  # holds another `policy`: its different hash would be refused
    code, err = _run(["generate", adapter, "--prompt", "x", "max_new_tokens=2"], work, capsys)
    assert code == 0, err
    _edit_record(adapter, base_abs=None, base_rel=None, base_hub=None)  # an old record: `base` alone
    code, err = _run(["generate", adapter, "--prompt", "x", "max_new_tokens=2"], work, capsys)
    assert code == 2 and "adapter.json: base: the base model 'policy' is not found" in err, err
    assert "never the current directory" in err
    _edit_record(adapter, base="../policy")  # relative to the adapter's folder
    code, err = _run(["generate", adapter, "--prompt", "x", "max_new_tokens=2"], work, capsys)
    assert code == 0, err


def test_a_moved_tree_still_finds_its_base(work, capsys):
    (work / "project").mkdir()
    shutil.copytree(work / "policy", work / "project" / "policy")
    _adapter(work / "project", "policy", cwd=work / "project")
    shutil.move(work / "project", work / "moved")
    code, err = _run(["generate", work / "moved" / "adapter", "--prompt", "x", "max_new_tokens=2"], work, capsys)
    assert code == 0, err  # base_abs is gone with the move; base_rel (relative to the adapter) finds it


@pytest.mark.parametrize("edit", ["relative", "absolute", "recorded-folder"])
def test_an_adapter_whose_base_is_itself_is_refused(edit, work, capsys):
    adapter = _adapter(work, str(work / "policy"), cwd=work)
    changes = {"relative": {"base": "."},  # base_abs still names the policy: an edited `base` wins over it
               "absolute": {"base": str(adapter)}, "recorded-folder": {"base_abs": str(adapter)}}[edit]
    _edit_record(adapter, **changes)
    code, err = _run(["generate", adapter, "--prompt", "x"], work, capsys)
    assert code == 2 and "adapter.json: base: the adapter names its own folder as its base" in err, err


def test_adapters_whose_bases_loop_are_refused(work, capsys):
    first = _adapter(work, str(work / "policy"), cwd=work, name="first")
    second = _adapter(work, str(work / "policy"), cwd=work, name="second")
    _edit_record(first, base="../second")  # its recorded base_abs no longer describes `base`: ignored
    _edit_record(second, base=str(first), base_abs=None, base_rel=None, base_hub=None)
    code, err = _run(["generate", first, "--prompt", "x"], work, capsys)
    assert code == 2 and "the adapters' bases loop" in err and "first" in err and "second" in err, err


def test_an_unverified_base_loads_only_when_asked(work, capsys):
    adapter = _adapter(work, str(work / "policy"), cwd=work)
    _edit_record(adapter, base_sha256=None)
    code, err = _run(["generate", adapter, "--prompt", "x", "max_new_tokens=2"], work, capsys)
    assert code == 2 and "adapter.json: base_sha256:" in err and "--allow-unverified-base" in err, err
    code, err = _run(["generate", adapter, "--prompt", "x", "max_new_tokens=2", "--allow-unverified-base"], work,
                     capsys)
    assert code == 0, err
    code, err = _run(["export", adapter, work / "merged", "--merge", "--allow-unverified-base"], work, capsys)
    assert code == 0 and (work / "merged" / "model.safetensors").is_file(), err
    code, err = _run([*GRPO, f"model.path={adapter}", f"run.out_dir={work / 'run'}"], work, capsys)
    assert code == 2 and "model.allow_unverified_base=true" in err, err
