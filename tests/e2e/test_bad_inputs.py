"""The bad-input corpus through the real CLI: each case must end with one stderr line
`alignlab <command>: error: ...` naming the file / line / key and what was expected, exit code 2,
and leave no new file behind.

Text inputs live in tests/bad_inputs/; inputs that cannot be stored as reviewable text (non-UTF-8
bytes, a 10 MB line, a truncated gzip, broken checkpoints, a pickle) are made by `made` below.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch

from alignlab.cli import main

BAD = Path(__file__).resolve().parents[1] / "bad_inputs"
GRPO = ["grpo", "model.path={policy}", "preflight=false"]

# (id, argv with {bad} / {made} / {policy} placeholders, text the error line must contain)
CASES = [
    # recipes
    ("recipe-unknown-key", ["sft", "{bad}/recipe_unknown_key.yaml"], "recipe_unknown_key.yaml:1: stepz: unknown key"),
    ("recipe-wrong-type", ["sft", "{bad}/recipe_wrong_type.yaml"],
     "recipe_wrong_type.yaml:2: run.steps: expected an int"),
    ("recipe-negative-steps", ["sft", "{bad}/recipe_negative_steps.yaml"],
     "recipe_negative_steps.yaml:2: run.steps: must be >= 1, got -5"),
    ("recipe-empty-out-dir", ["sft", "{bad}/recipe_empty_out_dir.yaml"],
     "recipe_empty_out_dir.yaml:3: run.out_dir: must be a folder, not empty"),
    ("recipe-batch-not-groups", ["grpo", "{bad}/recipe_batch_not_groups.yaml", "model.path={policy}"],
     "multiple of num_generations"),
    ("recipe-unknown-task", ["grpo", "{bad}/recipe_unknown_task.yaml"],
     "recipe_unknown_task.yaml:1: task: unknown task 'poetry'; expected one of: study-plan, gsm8k"),
    ("recipe-unknown-reward-mode", ["grpo", "{bad}/recipe_unknown_reward_mode.yaml"], "reward.mode: expected one of"),
    ("recipe-bad-yaml", ["sft", "{bad}/recipe_bad_yaml.yaml"], "recipe_bad_yaml.yaml:3: not a valid YAML recipe"),
    ("recipe-not-a-mapping", ["sft", "{bad}/recipe_not_a_mapping.yaml"], "must be a mapping"),
    ("recipe-key-twice", ["sft", "{bad}/recipe_key_twice.yaml"], "recipe_key_twice.yaml:3: run.steps: set twice"),
    ("recipe-lr-not-float", ["train-rm", "{bad}/recipe_lr_not_float.yaml"], "optim.lr: expected a float"),
    ("recipe-missing", ["grpo", "{bad}/no_such_recipe.yaml"], "no such recipe file"),
    ("override-unknown-key", ["sft", "stepz=3"], "stepz: unknown key"),
    ("sweep-unknown-key", ["sweep", "{bad}/sweep_unknown_key.yaml", "--dry-run"], "stepz: unknown key"),
    # data files
    ("data-not-json", ["sft", "data={bad}/sft_not_json.jsonl"], "sft_not_json.jsonl:2"),
    ("data-missing-field", ["sft", "data={bad}/sft_missing_field.jsonl"], "sft_missing_field.jsonl:2"),
    ("data-empty-response", ["sft", "data={bad}/sft_empty_response.jsonl"], "sft_empty_response.jsonl:1"),
    ("data-wrong-type", ["sft", "data={bad}/sft_wrong_type.jsonl"], "sft_wrong_type.jsonl:1"),
    ("data-empty-file", ["sft", "data={bad}/sft_empty.jsonl"], "sft_empty.jsonl"),
    ("data-non-utf8", ["sft", "data={made}/non_utf8.jsonl"], "non_utf8.jsonl:1"),
    ("data-10mb-line", ["sft", "data={made}/long_line.jsonl"], "long_line.jsonl:2"),
    ("data-truncated-gzip", ["sft", "data={made}/truncated.jsonl.gz"], "truncated.jsonl.gz"),
    ("pairs-missing-rejected", ["train-rm", "data={bad}/pairs_missing_rejected.jsonl"],
     "pairs_missing_rejected.jsonl:1"),
    ("pairs-not-object", ["score", "{policy}", "--pairs", "{bad}/pairs_not_object.jsonl"], "pairs_not_object.jsonl:1"),
    ("check-missing-prompt", ["check", "{bad}/check_missing_prompt.jsonl"], "check_missing_prompt.jsonl:1"),
    ("gsm8k-no-hashes", [*GRPO, "task=gsm8k", "data={bad}/gsm8k_no_hashes.jsonl"], "gsm8k_no_hashes.jsonl:1: answer"),
    ("eval-prompts-not-json", ["eval", "{policy}", "--prompts", "{bad}/sft_not_json.jsonl"], "sft_not_json.jsonl:2"),
    ("reward-function-missing", [*GRPO, "reward.function={bad}/nothing.py:f"], "nothing.py: reward.function"),
    # checkpoints
    ("ckpt-missing-dir", ["generate", "{made}/no_such_ckpt", "--prompt", "x"], "no_such_ckpt"),
    ("ckpt-missing-weights", ["eval", "{made}/no_weights"], "model.safetensors"),
    ("ckpt-truncated-safetensors", ["generate", "{made}/truncated_weights", "--prompt", "x"], "model.safetensors"),
    ("ckpt-shape-mismatch", ["eval", "{made}/shape_mismatch"], "shape"),
    ("ckpt-config-not-an-object", ["generate", "{made}/config_array", "--prompt", "hi"],
     "config_array/config.json: expected a JSON object, got list"),
    ("ckpt-vocab-mismatch", ["generate", "{made}/vocab_mismatch", "--prompt", "x"], "vocabulary"),
    ("ckpt-pickle-only", ["generate", "{made}/pickle_only", "--prompt", "x"], "never unpickles weights"),
    ("ckpt-pickle-as-safetensors", ["eval", "{made}/pickle_as_safetensors"], "model.safetensors"),
    ("rm-ckpt-is-a-policy", ["audit-rm", "{policy}", "--pairs", "{bad}/pairs_missing_rejected.jsonl"],
     "pairs_missing_rejected.jsonl:1"),
    # command line
    ("cli-missing-path", ["report", "{made}/no_such_run"], "no_such_run: no such run directory"),
    ("cli-unwritable-out", ["eval", "{policy}", "--samples", "1", "--max-new-tokens", "2", "--out",
                            "{made}/blocker/sub"], "blocker"),
    ("cli-run-dir-exists", ["sft", "run.out_dir={made}/existing_run", "steps=1"], "not an alignlab run directory"),
    ("cli-compare-twice", ["compare", "{policy}", "{policy}"], "the same path is given twice"),
]


def _made(root: Path, policy: Path) -> Path:
    """Inputs that are not reviewable text, written fresh for each case."""
    made = root / "made"
    made.mkdir()
    (made / "non_utf8.jsonl").write_bytes(b'{"prompt": "caf\xe9", "response": "x"}\n')
    good = json.dumps({"prompt": "hi", "response": "there"}) + "\n"
    (made / "long_line.jsonl").write_text(good + json.dumps({"prompt": "a" * 10_000_000, "response": "x"}) + "\n")
    full = gzip.compress((good * 200).encode())
    (made / "truncated.jsonl.gz").write_bytes(full[: len(full) // 2])
    for name in ("no_weights", "truncated_weights", "shape_mismatch", "vocab_mismatch", "pickle_only",
                 "pickle_as_safetensors", "config_array"):
        shutil.copytree(policy, made / name)
    (made / "no_weights" / "model.safetensors").unlink()
    weights = (made / "truncated_weights" / "model.safetensors").read_bytes()
    (made / "truncated_weights" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    config = json.loads((policy / "config.json").read_text())
    (made / "config_array" / "config.json").write_text("[]")
    (made / "shape_mismatch" / "config.json").write_text(json.dumps({**config, "hidden_size": 2 * config["hidden_size"],
                                                                     "head_dim": None}))
    from alignlab.data.tokenizer import train_bpe

    train_bpe(["a few words to learn merges from, " * 50 + str(i) for i in range(40)], 400).save(
        made / "vocab_mismatch")  # a 400-id tokenizer beside a 259-row embedding
    state = {"w": torch.zeros(2)}
    (made / "pickle_only" / "model.safetensors").unlink()
    torch.save(state, made / "pickle_only" / "pytorch_model.bin")
    torch.save(state, made / "pickle_as_safetensors" / "model.safetensors")
    (made / "blocker").write_text("a file, not a directory\n")
    (made / "existing_run").mkdir()
    (made / "existing_run" / "notes.txt").write_text("someone's earlier run\n")
    return made


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_inputs(argv, expected, tmp_path, policy_dir, monkeypatch, capsys):
    policy = tmp_path / "policy"
    made = _made(tmp_path, policy)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # default outputs (runs/...) would land here
    before = _tree(tmp_path)
    args = [a.format(bad=BAD, made=made, policy=policy) for a in argv]
    code = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"alignlab {args[0]}: error: "), err
    assert expected in lines[0], lines[0]
    assert _tree(tmp_path) == before, sorted(_tree(tmp_path) - before)


def test_the_corpus_is_at_least_thirty_cases_and_uses_every_stored_input():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
    used = {Path(part).name for _, argv, _ in CASES for arg in argv for part in arg.split("=")}
    assert {p.name for p in BAD.iterdir()} <= used
