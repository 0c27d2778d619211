"""A careless user and a hostile input against the guarantees of issue 17, through the real CLI:
alignlab never deletes or replaces what it did not write; one writer per run; resume resumes the
same run from an intact checkpoint; non-finite numbers never end as "done"; output folders are
complete or absent; every operating-system error and bad number is one line, exit 2.

Each refusal asserts the exit code, the one stderr line and that no user file changed
(`_snapshot`: every file's bytes under the test's folder, before and after).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignlab.cli import main

RM = ["sft", "tokenizer.kind=byte", "synthetic_per_prompt=1", "steps=3", "run.batch_size=4", "max_length=64",
      "model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_hidden_layers=1",
      "model.arch.num_attention_heads=2", "model.arch.num_key_value_heads=1", "run.save_every=1", "run.eval_every=0",
      "run.log_every=1", "run.progress=false", "run.keep_checkpoints=3"]  # a tiny policy: seconds per run


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(argv: list[str], capsys, expected: str) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"alignlab {argv[0]}: error: "), err
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny SFT run (checkpoints step_1, step_2, final), made once; tests copy it."""
    run = tmp_path_factory.mktemp("trained") / "rm"
    assert main([*RM, f"run.out_dir={run}"]) == 0
    return run


@pytest.fixture
def work(tmp_path, monkeypatch, trained) -> Path:
    """tmp_path as the current directory, with a copy of the trained run and a user's folder of notes."""
    shutil.copytree(trained, tmp_path / "rm")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work\n")
    (tmp_path / "notes.txt").write_text("a user's file\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _final(work: Path) -> Path:
    return work / "rm" / "checkpoints" / "final"


# 1. Never delete or replace what alignlab did not write ----------------------------------------------

@pytest.mark.parametrize(("out", "expected"), [
    ("mine", "not written by alignlab"),
    ("rm/checkpoints/final", "overlaps an input"),
    ("rm", "overlaps an input"),
    ("rm/checkpoints", "overlaps an input"),
    (".", "current directory"),
    ("..", "ancestor of the current directory"),
    ("", "empty export path"),
    ("notes.txt", "not a folder"),
    ("rm/checkpoints/final/inside", "overlaps an input"),
])
def test_export_never_destroys(work, capsys, out, expected):
    before = _snapshot(work)
    _refused(["export", _final(work), out], capsys, expected)
    assert _snapshot(work) == before


def test_export_replaces_only_its_own_export_with_overwrite(work, capsys):
    assert main(["export", str(_final(work)), "exported"]) == 0
    assert json.loads((work / "exported" / ".alignlab.json").read_text())["kind"] == "export"
    before = _snapshot(work)
    _refused(["export", _final(work), "exported"], capsys, "--overwrite")
    assert _snapshot(work) == before
    assert main(["export", str(_final(work)), "exported", "--overwrite"]) == 0
    assert (work / "exported" / "config.json").is_file()
    assert not [p for p in work.iterdir() if p.name.startswith(".exported")]  # no .tmp / .old left


def test_look_alike_user_folders_are_never_taken_for_old_outputs(work, capsys):
    """Folders from before markers are recognised by what alignlab wrote in them, not by file names a
    user's folder may share: a model folder of their own, a project with a manifest.json and a
    config.yaml, their own summary.json."""
    mine_model = work / "my_model"  # a transformers model folder the user made: what an old export looked like
    shutil.copytree(_final(work), mine_model, ignore=shutil.ignore_patterns(".alignlab.json", "*.pt", "state.json"))
    project = work / "project"
    project.mkdir()
    (project / "manifest.json").write_text('{"name": "my app"}\n')
    (project / "config.yaml").write_text("debug: true\n")
    results = work / "results"
    results.mkdir()
    (results / "summary.json").write_text('{"accuracy": 0.9}\n')
    (results / "summary.md").write_text("my notes\n")
    (work / "experiments").mkdir()  # the user's own sweep recipe beside their notes
    (work / "experiments" / "sweep.yaml").write_text("base: recipes/grpo_study_plan.yaml\n")
    (work / "experiments" / "notes.md").write_text("ideas\n")
    from alignlab.outputs import owned

    assert not owned(work / "experiments", "sweep")
    before = _snapshot(work)
    _refused(["export", _final(work), "my_model", "--overwrite"], capsys, "my_model")
    _refused([*RM, "run.out_dir=project", "--overwrite"], capsys, "not an alignlab run directory")
    _refused(["eval", str(_final(work)), "--samples", "1", "--max-new-tokens", "2", "--out", "results"],
             capsys, "results")
    assert _snapshot(work) == before


def test_export_into_an_empty_folder(work):
    (work / "empty").mkdir()
    assert main(["export", str(_final(work)), "empty"]) == 0
    assert (work / "empty" / "model.safetensors").is_file()


@pytest.mark.parametrize(("out", "expected"), [
    ("mine", "not an alignlab run directory"),
    (".", "current directory"),
    ("..", "ancestor of the current directory"),
    ("", "run.out_dir: must be a folder, not empty"),
    ("notes.txt", "not a folder"),
])
def test_overwrite_never_removes_a_folder_alignlab_did_not_make(work, capsys, out, expected):
    before = _snapshot(work)
    _refused([*RM, f"run.out_dir={out}", "--overwrite"], capsys, expected)
    assert _snapshot(work) == before


def test_overwrite_refuses_a_run_holding_the_model_it_trains(work, capsys):
    before = _snapshot(work)
    _refused([*RM, "run.out_dir=rm", f"model.path={_final(work)}", "--overwrite"], capsys, "overlaps an input")
    assert _snapshot(work) == before


def test_overwrite_replaces_alignlab_run_and_leaves_nothing_hidden(work):
    (work / "rm" / "checkpoints" / "step_1" / "marker_of_old_run").write_text("old\n")
    assert main([*RM, "run.out_dir=rm", "--overwrite"]) == 0
    assert not (work / "rm" / "checkpoints" / "step_1" / "marker_of_old_run").exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".rm.")]
    assert (work / "mine" / "thesis.tex").read_text() == "years of work\n"


def test_a_run_of_an_earlier_version_is_recognised_by_its_manifest(work):
    (work / "rm" / ".alignlab.json").unlink()  # written before markers existed
    assert main([*RM, "run.out_dir=rm", "--overwrite"]) == 0


def test_existing_run_without_flags_asks_for_resume_or_overwrite(work, capsys):
    before = _snapshot(work)
    _refused([*RM, "run.out_dir=rm"], capsys, "--resume")
    assert _snapshot(work) == before


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_replacement_is_finished_on_the_next_start(work):
    from alignlab.outputs import clean_leftovers, write_marker

    pid = _dead_pid()
    old = work / f".ev.old-{pid}-abc_1234"  # named as mkdtemp names them, and an alignlab output
    old.mkdir()
    (old / "summary.json").write_text("{}")
    write_marker(old, "eval")
    (work / f".ev.tmp-{pid}-xyz_5678").mkdir()
    clean_leftovers(work / "ev")  # the target vanished between the two renames: the old one comes back
    assert (work / "ev" / "summary.json").is_file()
    assert not [p for p in work.iterdir() if p.name.startswith(".ev.")]


def test_a_failed_output_leaves_neither_half_nor_temp(work, capsys, monkeypatch):
    from alignlab.eval import sampling_eval

    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sampling_eval, "write_samples", broken)
    code = main(["eval", str(_final(work)), "--samples", "1", "--max-new-tokens", "2", "--out", "ev"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "No space left" in err[0], err
    assert not (work / "ev").exists() and not [p for p in work.iterdir() if p.name.startswith(".ev")]


def test_a_failed_file_write_leaves_no_temp_and_keeps_the_old_file(tmp_path, monkeypatch):
    from alignlab.errors import UserError
    from alignlab.outputs import write_file_atomic

    target = tmp_path / "checked.jsonl"
    target.write_text("old\n")
    real_replace = os.replace

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(UserError, match="checked.jsonl: cannot write the samples: No space left"):
        write_file_atomic(target, "new\n", what="samples")
    monkeypatch.setattr(os, "replace", real_replace)
    with pytest.raises(UnicodeEncodeError):  # text that is not text fails before any file exists
        write_file_atomic(target, "\udfff")
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["checked.jsonl"]
    write_file_atomic(target, "new\n")
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["checked.jsonl"]


# 2. One writer per run directory ---------------------------------------------------------------------

def _hold_lock(run: Path) -> subprocess.Popen:
    """Another process holding the run's lock (as a running `alignlab` would), until killed."""
    code = ("import fcntl, json, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'h', "
            "'since': 'now'}).encode()); print('ready', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run / ".lock")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_a_run_in_use_is_refused_before_anything_is_written(work, capsys, flag):
    holder = _hold_lock(work / "rm")
    try:
        before = _snapshot(work)
        _refused([*RM, "run.out_dir=rm", "steps=4", flag], capsys, f"in use by another alignlab process (pid "
                 f"{holder.pid}")
        assert _snapshot(work) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_whose_process_is_gone_is_taken_over_with_a_warning(work, capsys):
    (work / "rm" / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": "h", "since": "then"}))
    assert main([*RM, "run.out_dir=rm", "steps=4", "--resume"]) == 0
    assert "taking over the lock" in capsys.readouterr().err
    assert (work / "rm" / ".lock").read_text() == ""  # released at the end: no stale owner


def test_the_lock_is_held_while_training(work):
    from alignlab.folder_lock import FolderLock

    lock = FolderLock(work / "rm").acquire()
    try:
        fd = os.open(work / "rm" / ".lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    finally:
        lock.release()


# 3. Resume resumes the same run ----------------------------------------------------------------------

@pytest.mark.parametrize(("change", "key"), [
    ("optim.lr=1e-2", "optim.lr"), ("run.seed=7", "run.seed"), ("max_length=40", "max_length"),
    ("compliance_rate=0.5", "compliance_rate"), ("model.arch.hidden_size=64", "model.arch.hidden_size"),
])
def test_resume_refuses_a_config_that_changes_the_run(work, capsys, change, key):
    before = _snapshot(work)
    line = _refused([*RM, "run.out_dir=rm", "steps=4", change, "--resume"], capsys, key)
    # a new shape cannot be allowed at all: the checkpoints hold the old model's weights
    assert ("cannot change" in line) if key.startswith("model.arch.") else ("--allow-config-change" in line)
    assert _snapshot(work) == before


def test_resume_records_safe_and_allowed_changes(work):
    assert main([*RM, "run.out_dir=rm", "steps=4", "run.log_every=2", "--resume"]) == 0
    manifest = json.loads((work / "rm" / "manifest.json").read_text())
    assert manifest["resumes"][-1]["changed"]["run.steps"] == [3, 4]
    assert manifest["resumes"][-1]["meaning_changed"] == []
    assert main([*RM, "run.out_dir=rm", "steps=5", "optim.lr=2e-3", "--resume", "--allow-config-change"]) == 0
    manifest = json.loads((work / "rm" / "manifest.json").read_text())
    assert manifest["resumes"][-1]["meaning_changed"] == ["optim.lr"]


def test_resume_refuses_a_data_file_whose_contents_changed(work, capsys):
    pairs = work / "pairs.jsonl"
    rows = [{"prompt": f"question {i}", "response": "an answer"} for i in range(12)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [*RM, "run.out_dir=fresh", f"data={pairs}"]
    assert main(args) == 0
    pairs.write_text("".join(json.dumps({**r, "response": "changed"}) + "\n" for r in rows))
    before = _snapshot(work)
    _refused([*args, "steps=4", "--resume"], capsys, "contents changed")
    assert _snapshot(work) == before


@pytest.mark.parametrize(("damage", "named"), [
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:99]), "model.safetens"),
    (lambda c: (c / "trainer_state.pt").unlink(), "trainer_state.pt is missing"),
    (lambda c: (c / "state.json").write_text('{"step": 2, "fi'), "state.json"),
    (lambda c: (c / "state.json").unlink(), "state.json"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(work, capsys, damage, named):
    shutil.rmtree(work / "rm" / "checkpoints" / "final")  # the newest is then step_2
    damage(work / "rm" / "checkpoints" / "step_2")
    assert main([*RM, "run.out_dir=rm", "steps=3", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "step_2 is damaged" in err and named in err and "step_1" in err, err


def test_no_intact_checkpoint_is_an_error_not_a_silent_restart(work, capsys):
    for checkpoint in (work / "rm" / "checkpoints").iterdir():
        (checkpoint / "model.safetensors").write_bytes(b"garbage")
    before = _snapshot(work)
    _refused([*RM, "run.out_dir=rm", "steps=4", "--resume"], capsys, "no intact checkpoint")
    assert _snapshot(work) == before


def test_checkpoints_record_the_sha256_of_their_files(work):
    from alignlab.run_resume import file_sha256

    state = json.loads((_final(work) / "state.json").read_text())
    assert state["files"]["model.safetensors"] == file_sha256(_final(work) / "model.safetensors")
    assert "trainer_state.pt" in state["files"]


# 4. Non-finite values never end as "done" ------------------------------------------------------------

def test_metrics_stay_valid_json_with_non_finite_values(tmp_path):
    from alignlab.runs import Run

    run = Run(tmp_path, quiet=True)
    run.log(1, {"loss": float("nan"), "kl": float("inf"), "ok": 1.0})
    record = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert record["loss"] is None and record["kl"] is None and record["ok"] == 1.0


def test_weights_that_turn_non_finite_stop_the_run_before_any_save(tmp_path):
    import torch

    from alignlab.config import OptimConfig, RunConfig
    from alignlab.errors import NonFinite
    from alignlab.runs import Run
    from alignlab.runtime import resolve_runtime
    from alignlab.trainers.loop import Loop, TrainSpec

    model = torch.nn.Linear(2, 1)

    class Source:
        def next_batch(self):
            return torch.ones(1, 2)

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    def loss(batch):  # a finite loss and gradient, while the weights overflow (as a bad update would)
        with torch.no_grad():
            model.bias.fill_(float("inf"))
        return (model.weight ** 2).sum(), {}

    cfg = RunConfig(out_dir=str(tmp_path / "run"), steps=3, save_every=1, progress=False)
    run = Run.create(cfg.out_dir, cfg, quiet=True)
    spec = TrainSpec(model, Source(), loss, lambda d: None)
    with pytest.raises(NonFinite, match="weights are not finite"):
        Loop(spec, OptimConfig(), cfg, resolve_runtime("cpu", "fp32"), run).train()
    assert not list((tmp_path / "run" / "checkpoints").iterdir())


# 5. An evaluation folder is complete or absent -------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["eval", "{final}", "--samples", "1", "--max-new-tokens", "2", "--out", "mine"],
    ["compare", "{final}", "--samples", "1", "--max-new-tokens", "2", "--out", "mine"],
    ["audit-rm", "{final}", "--pairs", "{pairs}", "--out", "mine"],
    ["compare", "{final}", "--out", "rm"],
    ["eval", "{final}", "--out", "rm/checkpoints"],
    ["compare", "{final}", "--out", "."],
    ["eval", "{final}", "--out", "notes.txt"],
    ["check", "{checked}", "--out", "notes.txt"],
    ["check", "{checked}", "--out", "{checked}"],
])
def test_outputs_never_land_on_a_users_files(work, capsys, command):
    checked = work / "completions.jsonl"
    checked.write_text(json.dumps({"prompt": "p", "completion": "- a 30 分钟"}) + "\n")
    pairs = work / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    args = [a.format(final=_final(work), pairs=pairs, checked=checked) for a in command]
    before = _snapshot(work)
    code = main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"alignlab {args[0]}: error: "), lines
    assert _snapshot(work) == before


def test_eval_folder_is_marked_complete_and_replaced_only_whole(work, capsys):
    args = ["eval", str(_final(work)), "--samples", "1", "--max-new-tokens", "2", "--out", "ev"]
    assert main(args) == 0
    assert json.loads((work / "ev" / ".alignlab.json").read_text())["kind"] == "eval"
    assert main([*args, "--seed", "3"]) == 0  # its own kind: replaced
    assert json.loads((work / "ev" / "summary.json").read_text())["seed"] == 3


def test_compare_refuses_an_incomplete_evaluation(work, capsys):
    assert main(["eval", str(_final(work)), "--samples", "1", "--max-new-tokens", "2", "--out", "ev"]) == 0
    (work / "ev" / ".alignlab.json").unlink()
    (work / "ev" / "samples.jsonl").unlink()  # as if killed between two files by an earlier version
    _refused(["compare", "ev", str(_final(work)), "--samples", "1", "--max-new-tokens", "2"], capsys, "incomplete")


# 9. Every operating-system error and bad number is one line ------------------------------------------

@pytest.mark.parametrize(("argv", "expected"), [
    (["eval", "{final}", "--samples", "0"], "--samples: expected a positive integer"),
    (["eval", "{final}", "--samples", "-3"], "--samples"),
    (["eval", "{final}", "--temperature", "-1"], "--temperature"),
    (["eval", "{final}", "--temperature", "nan"], "--temperature"),
    (["eval", "{final}", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["eval", "{final}", "--seed", "-1"], "--seed"),
    (["generate", "{final}", "--prompt", "x", "--seed", str(2**64)], "--seed"),
    (["generate", "{final}", "--prompt", "x", "--samples", "0"], "--samples"),
    (["compare", "{final}", "--temperature", "inf"], "--temperature"),
    (["score", "{final}", "--pairs", "p.jsonl", "--max-length", "0"], "--max-length"),
    (["score", "{final}", "--pairs", "p.jsonl", "--show", "-1"], "--show"),
    (["audit-rm", "{final}", "--pairs", "p.jsonl", "--batch-size", "0"], "--batch-size"),
    (["sweep", "r.yaml", "--jobs", "0"], "--jobs"),
    (["demo", "--steps", "0"], "--steps"),
    (["eval", "{final}", "--samples", "many"], "--samples"),
    (["eval", "{final}", "--no-such-flag"], "unrecognized arguments"),
])
def test_bad_numbers_are_one_line(work, capsys, argv, expected):
    before = _snapshot(work)
    with pytest.raises(SystemExit) as stop:
        main([a.format(final=_final(work)) for a in argv])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and "error:" in lines[0] and expected in lines[0], lines
    assert _snapshot(work) == before


def test_disk_full_while_checkpointing_says_what_is_kept(work, capsys, monkeypatch):
    import torch

    def full(obj, path, *args, **kwargs):  # torch.save writes only checkpoints' trainer state here
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    line = _refused([*RM, "run.out_dir=rm", "steps=5", "--resume"], capsys, "No space left")
    assert "final is kept" in line
    assert not [p for p in (work / "rm" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_read_only_location_is_one_line(work, capsys, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    _refused(["export", _final(work), "out"], capsys, "Read-only file system")
    assert not (work / "out").exists()


def test_sigterm_before_training_is_one_line_and_143_with_cleanup(monkeypatch, capsys):
    """A scheduler's SIGTERM while a command loads or evaluates (before the loop defers signals) is
    what Ctrl-C is there: cleanups run (`finally` blocks, the run's lock), one line, exit 143; the
    process's own handler is back afterwards."""
    import signal
    import time

    from alignlab import cli

    cleaned = []

    def loading(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the signal lands here, as in a model load
            return 0
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setitem(cli.HANDLERS, "generate", loading)
    assert cli.main(["generate", "x", "--prompt", "hi"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alignlab generate: stopped: SIGTERM outside the training steps"), err
    assert cleaned == [True] and signal.getsignal(signal.SIGTERM) is before
