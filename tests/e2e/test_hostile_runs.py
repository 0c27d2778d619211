"""Hand-edited run folders and hostile reward functions (found by a hostile-input exploration): a run that
lost its manifest is never trained over, a user's copy inside checkpoints/ is never pruned or resumed
from, the rollout ledger is never emptied or mislabelled, an edited reward file is a changed run, and a
reward too large for float32 statistics is one line instead of a run that silently learns nothing."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from alignlab.cli import main
from alignlab.config import RewardConfig
from alignlab.errors import UserError
from alignlab.rewards.base import RewardContractError, call_reward
from alignlab.tasks.registry import get_task
from alignlab.tasks.study_plan.prompts import train_prompts
from alignlab.trainers.ledger import Ledger, ledger_records
from alignlab.trainers.rl_data import Scorer

SFT = ["sft", "tokenizer.kind=byte", "synthetic_per_prompt=1", "steps=3", "run.batch_size=4", "max_length=64",
       "model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_hidden_layers=1",
       "model.arch.num_attention_heads=2", "model.arch.num_key_value_heads=1", "run.save_every=1", "run.eval_every=0",
       "run.log_every=1", "run.progress=false", "run.keep_checkpoints=1"]
GRPO = ["grpo", "num_generations=4", "run.batch_size=8", "max_new_tokens=12", "steps=1", "run.progress=false",
        "run.eval_every=0", "run.save_every=1", "preflight=false"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_run_that_lost_its_manifest_is_not_trained_over(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*SFT, f"run.out_dir={run}"]) == 0
    (run / "manifest.json").unlink()
    before = _files(run)
    capsys.readouterr()
    for extra in ([], ["--resume"]):
        assert main([*SFT, f"run.out_dir={run}", "optim.lr=0.05", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "manifest.json is missing" in err, err
        assert _files(run) == before
    assert main([*SFT, f"run.out_dir={run}", "--overwrite"]) == 0  # ours by its marker: replaceable when asked


def test_a_users_copy_inside_checkpoints_is_never_pruned_or_resumed_from(tmp_path):
    run = tmp_path / "run"
    assert main([*SFT, f"run.out_dir={run}"]) == 0
    backup = run / "checkpoints" / "step_3_backup"
    shutil.copytree(run / "checkpoints" / "final", backup)
    state = json.loads((backup / "state.json").read_text())
    (backup / "state.json").write_text(json.dumps({**state, "step": 99}))  # the newest, if it counted
    kept = _files(backup)
    longer = ["steps=5" if a == "steps=3" else a for a in SFT]
    assert main([*longer, f"run.out_dir={run}", "--resume"]) == 0
    assert _files(backup) == kept
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 5 and 4 in steps  # resumed from step 3, not from the copy's "99"


def test_the_ledger_is_never_emptied_by_a_resume_when_it_is_not_gzip(tmp_path):
    path = tmp_path / "rollouts.jsonl.gz"
    path.write_text('{"step": 1}\n{"step": 2}\n')  # a user's `zcat > same name`
    with pytest.raises(UserError, match="not a gzip file"):
        Ledger(path).keep_until(1)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    with gzip.open(path, "wt") as handle:
        handle.write('{"step": 1}\n{"step": 2}\n{"step": 3')  # a killed writer's half line
    Ledger(path).keep_until(1)
    with gzip.open(path, "rt") as handle:
        assert handle.read() == '{"step": 1}\n'


def test_an_example_column_never_overwrites_the_ledgers_own_fields():
    class Done:
        texts, truncated, lengths = ["- a"], [False], [3]

    class Verdict:
        passed, failed, reasons, degenerate_reasons = False, (), (), ()

    class Scores:
        totals, parts, verdicts = [0.5], {"rules": [0.5]}, [Verdict()]

    (record,) = ledger_records(7, 4, [{"prompt": "p", "step": 100, "group": "recipes"}], Done(), Scores())
    assert record["step"] == 7 and record["group"] == 0
    assert record["example_step"] == 100 and record["example_group"] == "recipes"


def test_an_edited_reward_file_is_a_changed_run_on_resume(tmp_path, policy_dir, capsys):
    fn = tmp_path / "my_reward.py"
    fn.write_text("def reward(prompts, completions, **kw):\n    return [0.5 for _ in completions]\n")
    argv = [*GRPO, f"model.path={policy_dir}", f"reward.function={fn}:reward", f"run.out_dir={tmp_path / 'run'}"]
    assert main(argv) == 0
    fn.write_text("def reward(prompts, completions, **kw):\n    return [-100.0 for _ in completions]\n")
    capsys.readouterr()
    assert main([*argv, "steps=2", "--resume"]) == 2
    assert f"data file {fn.resolve()} (contents changed" in capsys.readouterr().err


@pytest.mark.parametrize("value", [10**400, 1e20])
def test_a_reward_beyond_float32_statistics_is_one_clear_error(value):
    with pytest.raises(RewardContractError, match="returned (inf|1e\\+20)"):
        call_reward(lambda prompts, completions, **kw: [value for _ in completions], ["p"], ["- a"])


def test_a_reward_function_named_like_a_built_in_part_keeps_both(tmp_path):
    fn = tmp_path / "named.py"
    fn.write_text("def rules(prompts, completions, **kw):\n    return [0.0 for _ in completions]\n")
    task = get_task("study-plan")
    scorer = Scorer(task, RewardConfig(mode="sharp", function=f"{fn}:rules", function_weight=0.5), "cpu")
    example = {"prompt": train_prompts("en")[0]}
    scores = scorer([example], ["nonsense"])
    assert set(scores.parts) == {"rules", "function_rules"}
    assert scores.parts["function_rules"] == [0.0] and scores.totals == scores.parts["rules"]
    assert scores.parts["rules"][0] < 0  # the task's own rules still score (a function did not replace them)


def test_leftover_cleanup_touches_only_alignlab_s_own_siblings(tmp_path):
    from alignlab.outputs import clean_leftovers, write_marker

    (tmp_path / "results").mkdir()
    backup = tmp_path / ".results.old-2023-backup"  # a user's hidden folders named like leftovers
    draft = tmp_path / ".thesis.old-1999-draftxyz"
    for folder in (backup, draft):
        folder.mkdir()
        (folder / "notes.txt").write_text("mine\n")
    dead = 2**22 + 12345  # beyond pid_max on Linux: no such process
    ours_tmp, ours_old = tmp_path / f".results.tmp-{dead}-abcd1234", tmp_path / f".exp.old-{dead}-abcd1234"
    ours_tmp.mkdir()
    ours_old.mkdir()
    write_marker(ours_old, "export")
    clean_leftovers(tmp_path / "results")
    clean_leftovers(tmp_path / "thesis")
    clean_leftovers(tmp_path / "exp")
    assert (backup / "notes.txt").exists() and (draft / "notes.txt").exists() and not (tmp_path / "thesis").exists()
    assert not ours_tmp.exists()  # a dead process's temporary folder goes
    assert (tmp_path / "exp").is_dir() and not ours_old.exists()  # an old output whose replacement never came back


def test_a_lock_that_is_a_symbolic_link_is_refused_and_its_target_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*SFT, f"run.out_dir={run}"]) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").symlink_to(victim)
    capsys.readouterr()
    longer = ["steps=4" if a == "steps=3" else a for a in SFT]
    assert main([*longer, f"run.out_dir={run}", "--resume"]) == 2
    assert ".lock" in capsys.readouterr().err and victim.read_text() == "precious\n"


def _aside(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A finished run `name` moved aside by a dead process's --overwrite, and its (empty) replacement."""
    from alignlab.outputs import write_marker

    run = tmp_path / name
    assert main([*SFT, f"run.out_dir={run}"]) == 0
    old = tmp_path / f".{name}.old-{2**22 + 7}-abcd1234"
    run.rename(old)
    (run / "checkpoints").mkdir(parents=True)
    write_marker(run, "run")
    return run, old


def test_an_overwrite_that_stopped_before_a_checkpoint_gives_the_old_run_back(tmp_path):
    from alignlab.outputs import clean_leftovers

    run, old = _aside(tmp_path, "a")
    kept = _files(old)
    clean_leftovers(run)
    assert _files(run) == kept and not old.exists()
    run, old = _aside(tmp_path, "b")  # the replacement saved step 1: resumable, so the old run stays aside
    step = next((old / "checkpoints").glob("step_*"))
    shutil.copytree(step, run / "checkpoints" / step.name)
    clean_leftovers(run)
    assert old.exists() and (run / "checkpoints" / step.name).exists()
    shutil.copytree(old / "checkpoints" / "final", run / "checkpoints" / "final")  # it finished: now it goes
    clean_leftovers(run)
    assert not old.exists()


def test_brackets_in_a_path_are_part_of_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*SFT, "run.out_dir=exp[1]"]) == 0
    before = _files(tmp_path / "exp[1]")
    capsys.readouterr()
    assert main([*SFT, "model.path=exp[1]/checkpoints/final", "run.out_dir=exp[1]", "--overwrite"]) == 2
    assert "overlaps an input" in capsys.readouterr().err and _files(tmp_path / "exp[1]") == before
    (tmp_path / "data[v2]").mkdir()
    (tmp_path / "data[v2]" / "sft.jsonl").write_text(json.dumps({"prompt": "p", "response": "- a"}) + "\n")
    assert main([*SFT, "data=data[v2]/sft.jsonl[:1]", "run.out_dir=r"]) == 0
    assert "data[v2]/sft.jsonl" in json.loads((tmp_path / "r" / "manifest.json").read_text())["data"]


def test_an_adapters_base_is_an_input_that_no_output_may_replace(tmp_path, policy_dir, capsys):
    exp, lora = tmp_path / "exp", tmp_path / "lora"
    assert main(["export", str(policy_dir), str(exp)]) == 0
    assert main([*GRPO, f"model.path={exp}", "lora.r=4", "lora.alpha=8", f"run.out_dir={lora}"]) == 0
    before = _files(exp)
    capsys.readouterr()
    assert main(["export", str(lora / "checkpoints" / "final"), str(exp), "--merge", "--overwrite"]) == 2
    assert "overlaps an input" in capsys.readouterr().err and _files(exp) == before
    assert main([*GRPO, f"model.path={lora / 'checkpoints' / 'final'}", f"run.out_dir={exp}", "--overwrite"]) == 2
    assert "overlaps an input" in capsys.readouterr().err and _files(exp) == before


def test_an_output_through_a_symbolic_link_lands_where_it_points(tmp_path, policy_dir):
    (tmp_path / "bigdisk").mkdir()
    link = tmp_path / "out_link"
    link.symlink_to(tmp_path / "bigdisk" / "models")  # dangling until the export makes the folder
    assert main(["export", str(policy_dir), str(link)]) == 0
    assert link.is_symlink() and (tmp_path / "bigdisk" / "models" / "config.json").is_file()
    assert main(["export", str(policy_dir), str(link), "--overwrite"]) == 0
    assert link.is_symlink() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_run_folder_name_that_is_not_utf8_is_one_line_and_makes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*SFT, "run.out_dir=run\udcff"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not UTF-8" in err and not list(tmp_path.iterdir())


def test_a_resume_that_cannot_work_changes_nothing_in_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*SFT, f"run.out_dir={run}"]) == 0
    capsys.readouterr()
    wider = ["model.arch.hidden_size=64" if a == "model.arch.hidden_size=32" else a for a in SFT]
    before = _files(run)
    assert main([*wider, f"run.out_dir={run}", "--resume", "--allow-config-change"]) == 2
    assert "cannot change model.arch.hidden_size" in capsys.readouterr().err and _files(run) == before
    for checkpoint in (run / "checkpoints").iterdir():  # every checkpoint damaged: refused before any write
        (checkpoint / "state.json").unlink()
    before = _files(run)
    assert main([*SFT, f"run.out_dir={run}", "--resume", "--allow-config-change", "optim.lr=0.01"]) == 2
    assert "no intact checkpoint" in capsys.readouterr().err and _files(run) == before


def test_compare_inside_a_run_never_takes_its_evaluations_for_trained_checkpoints(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main([*SFT, f"run.out_dir={run}"]) == 0
    for name in ("eval_a", "eval_b"):
        assert main(["eval", str(run / "checkpoints" / "final"), "--samples", "1", "--max-new-tokens", "2",
                     "--out", str(run / name)]) == 0
    monkeypatch.chdir(run)
    capsys.readouterr()
    assert main(["compare", "eval_a", "eval_b"]) == 0
    assert "training" not in capsys.readouterr().out  # two evaluations, not two SFT runs of 3 steps


def test_a_checkpoint_of_another_model_or_a_bad_byte_in_metrics_is_no_traceback(tmp_path, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    assert main([*SFT, f"run.out_dir={run}"]) == 0
    wider = ["model.arch.hidden_size=64" if a == "model.arch.hidden_size=32" else a for a in SFT]
    assert main([*wider, f"run.out_dir={other}"]) == 0
    with open(run / "metrics.jsonl", "ab") as handle:
        handle.write(b'{"step": 2, "note": "caf\xe9"}\n')  # a hand edit in another encoding
    longer = ["steps=4" if a == "steps=3" else a for a in SFT]
    assert main([*longer, f"run.out_dir={run}", "--resume"]) == 0
    shutil.copytree(other / "checkpoints" / "final", run / "checkpoints" / "step_9")
    state = json.loads((run / "checkpoints" / "step_9" / "state.json").read_text())
    (run / "checkpoints" / "step_9" / "state.json").write_text(json.dumps({**state, "step": 9}))  # the newest
    capsys.readouterr()
    assert main([*["steps=12" if a == "steps=3" else a for a in SFT], f"run.out_dir={run}", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit this run's model" in err, err


def test_a_replacing_run_in_progress_is_never_deleted_by_another_start(tmp_path):
    import subprocess
    import sys

    from alignlab.outputs import clean_leftovers

    run, old = _aside(tmp_path, "c")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from alignlab.folder_lock import FolderLock; FolderLock(Path(sys.argv[1])).acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(run)],
                              stdout=subprocess.PIPE, text=True)  # a live process trains there, nothing saved yet
    try:
        assert holder.stdout.readline().strip() == "held"
        clean_leftovers(run)
        assert run.is_dir() and old.exists()
    finally:
        holder.kill()
        holder.wait()
    clean_leftovers(run)  # once it is gone, the old run comes back
    assert not old.exists() and (run / "checkpoints" / "final").is_dir()
