"""Hostile and messy inputs through the real CLI (issue 17, "nothing lost, nothing silently wrong").

P4: non-finite or out-of-range hyperparameters are refused at validation, naming file, line and key;
a summary.json holding NaN / Infinity / null is refused by `compare`.
P6: work is bounded on any input: YAML alias bombs, recursive aliases, deep nesting, huge recipes,
gzip bombs that inflate to one endless line, deeply nested JSON, runaway chat templates, and a
max_new_tokens beyond the model's context all stop fast with one error line.
P10: a few malformed rows stop `score`, `eval --prompts`, `audit-rm` and the data-reading trainers by
default; `--skip-bad-rows` / `on_bad_row=skip` leave them out, counted, the first few shown.
P3: DPO's cached reference log-probs are keyed by hashes, not by a count.

Every CLI case asserts the exit code (2, or 0 for the skip cases), one `alignlab <command>: error:`
line on stderr for failures, and that no file outside the expected run directory was created or
changed. The reviewable text inputs are HOSTILE below (written into tmp_path); bombs, huge files
and broken checkpoints are made by `_corpus`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from alignlab.cli import main

# 8 good pairs and 4 bad rows: an HH dialogue whose rejected side ends on a Human turn (line 3), a missing
# field (5), a line that is not an object (7), broken JSON (9): what public preference sets hold.
PAIRS_MESSY = r"""{"prompt": "Plan a study day", "chosen": "- read 30 min\n- practice 1 hour", "rejected": "no"}
{"prompt": "Plan a study week", "chosen": "- math 1 hour\n- rest", "rejected": "whatever"}
{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: more?"}
{"prompt": "Plan my evening", "chosen": "- review 20 min", "rejected": "sleep"}
{"prompt": "Plan a revision", "chosen": "- flashcards 15 min"}
{"chosen": "\n\nHuman: plan?\n\nAssistant: - read 30 min", "rejected": "\n\nHuman: plan?\n\nAssistant: later"}
["not", "an", "object"]
{"prompt": [{"role": "user", "content": "plan?"}], "chosen": "- a", "rejected": [{"role": "assistant", "content": "b"}]}
{"prompt": "Plan a test", "chosen":
{"prompt": "Plan a morning", "chosen": "- run 10 min", "rejected": "nothing"}
{"prompt": "Plan lunch", "chosen": "- eat 30 min", "rejected": "skip it"}
{"prompt": "Plan a night", "chosen": "- sleep 8 hours", "rejected": "stay up"}
"""

HOSTILE = {
    "hostile_pairs_messy.jsonl": PAIRS_MESSY,
    "hostile_pairs_all_bad.jsonl": '{"prompt": "p", "chosen": "a"}\n["x"]\n',
    # 5 good examples; a missing response (2), an empty reply (4), a line that is not JSON (6).
    "hostile_sft_messy.jsonl": "\n".join([
        '{"prompt": "plan?", "response": "- read 30 min"}', '{"prompt": "plan?"}',
        '{"prompt": "a day?", "response": "- math 1 hour"}', '{"prompt": "p", "response": ""}',
        '{"prompt": "a week?", "response": "- rest 1 day"}', "this is not json",
        '{"prompt": "tonight?", "response": "- sleep"}', '{"prompt": "noon?", "response": "- eat"}']) + "\n",
    # 2 good prompts; an empty prompt (2), a missing field (3), a list (5).
    "hostile_prompts_messy.jsonl": '{"prompt": "Plan my study day"}\n{"prompt": ""}\n{"text": "x"}\n'
                                   '{"prompt": "Plan my week"}\n[1, 2]\n',
    # valid JSON, not text: a lone surrogate escape (a broken emoji from a bad exporter)
    "hostile_surrogate_pairs.jsonl": r'{"prompt": "Plan a day \ud83d", "chosen": "- read 30 min", "rejected": "no"}'
                                     + "\n",
    "hostile_surrogate_completions.jsonl": r'{"prompt": "p", "completion": "- read \udfff 30 min"}' + "\n",
    "hostile_nan.yaml": "optim:\n  lr: .nan\n",
    "hostile_inf_temperature.yaml": "generation:\n  temperature: .inf\n",
    "hostile_recursive.yaml": "sample_prompts: &p [a, *p]\n",
    "hostile_laughs.yaml": "".join(  # 9 anchors, each a list of 9 aliases to the previous: 9**9 values
        [f"a0: &a0 [{', '.join(['lol'] * 9)}]\n"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n"
                                                    for i in range(1, 9)]),
}
HOSTILE["hostile_sweep_laughs.yaml"] = HOSTILE["hostile_laughs.yaml"]

EMITS_GIGABYTES = "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'xxxxxxxxxx' }}{% endfor %}{% endfor %}"
SPINS_SILENTLY = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
ONE_HUGE_STRING = "{{ 'x' * 1000000000 }}"

TINY_RM = ["steps=1", "run.batch_size=2", "max_length=64", "run.eval_every=0", "run.progress=false",
           "tokenizer.kind=byte", "run.save_every=0", "run.log_every=1"]
TINY_POLICY = ["model.path={policy}", "steps=1", "run.batch_size=2", "max_length=64", "run.eval_every=0",
               "run.progress=false", "run.save_every=0", "run.log_every=1"]

# (id, argv with {c} (corpus) / {policy} / {rm} / {work} placeholders, exit code, text the error line (or
# stdout, for exit 0) must contain, run directory the command may create (relative to work) or None)
CASES = [
    # P4: hyperparameters
    ("lr-nan", ["sft", "optim.lr=nan"], 2, "optim.lr: expected a finite float, got 'nan'", None),
    ("lr-inf", ["sft", "optim.lr=inf"], 2, "optim.lr: expected a finite float, got 'inf'", None),
    ("weight-decay-minus-inf", ["sft", "weight_decay=-inf"], 2, "optim.weight_decay: expected a finite float", None),
    ("lr-overflows", ["train-rm", "optim.lr=1e999"], 2, "optim.lr: expected a finite float, got '1e999'", None),
    ("temperature-overflow", ["grpo", "temperature=1e999"], 2, "generation.temperature: expected a finite float",
     None),
    ("dpo-beta-nan", ["dpo", "model.path={policy}", "beta=nan"], 2, "beta: expected a finite float", None),
    ("rm-center-inf", ["train-rm", "center_rewards_coefficient=inf"], 2,
     "center_rewards_coefficient: expected a finite float", None),
    ("ppo-kl-nan", ["ppo", "kl_coef=nan"], 2, "kl_coef: expected a finite float", None),
    ("recipe-yaml-nan", ["sft", "{c}/hostile_nan.yaml"], 2,
     "hostile_nan.yaml:2: optim.lr: expected a finite float, got nan", None),
    ("recipe-yaml-inf", ["grpo", "{c}/hostile_inf_temperature.yaml"], 2,
     "hostile_inf_temperature.yaml:2: generation.temperature: expected a finite float, got inf", None),
    ("seed-negative", ["sft", "run.seed=-1"], 2, "run.seed: must be in [0, 2**64 - 1]", None),
    ("seed-too-big", ["dpo", "model.path={policy}", f"seed={2**64}"], 2, "run.seed: must be in [0, 2**64 - 1]",
     None),
    ("generate-temperature-nan", ["generate", "{policy}", "--prompt", "x", "temperature=nan"], 2,
     "temperature: expected a finite float", None),
    ("on-bad-row-unknown", ["sft", "data.on_bad_row=maybe"], 2, "on_bad_row: expected one of 'error', 'skip'", None),
    ("compare-nan-summary", ["compare", "{c}/nan_eval"], 2,
     "nan_eval/summary.json: pass_rate: expected a finite number, got NaN", None),
    ("compare-null-summary", ["compare", "{c}/null_eval/summary.json"], 2,
     "null_eval/summary.json: reward_mean: expected a finite number, got null", None),
    ("compare-infinity-ci", ["compare", "{c}/inf_eval"], 2,
     "inf_eval/summary.json: pass_rate_ci[1]: expected a finite number, got Infinity", None),
    ("dpo-lone-surrogate", ["dpo", "model.path={policy}", "data={c}/hostile_surrogate_pairs.jsonl"], 2,
     "hostile_surrogate_pairs.jsonl:1: prompt: a lone surrogate escape", None),
    ("check-lone-surrogate", ["check", "--task", "study-plan", "{c}/hostile_surrogate_completions.jsonl", "--out",
                              "{work}/checked.jsonl"], 2, "hostile_surrogate_completions.jsonl:1: completion: a lone",
     None),
    # P6: bounded work
    ("yaml-billion-laughs", ["sft", "{c}/hostile_laughs.yaml"], 2,
     "hostile_laughs.yaml:6: too many values after expanding aliases (limit 100000)", None),
    ("sweep-billion-laughs", ["sweep", "{c}/hostile_sweep_laughs.yaml", "--dry-run"], 2,
     "hostile_sweep_laughs.yaml:6: too many values after expanding aliases", None),
    ("yaml-recursive-alias", ["sft", "{c}/hostile_recursive.yaml"], 2,
     "hostile_recursive.yaml:1: an alias refers to a collection it is inside", None),
    ("yaml-deep-nesting", ["train-rm", "{c}/deep.yaml"], 2, "deep.yaml: nested too deeply", None),
    ("yaml-huge-recipe", ["dpo", "{c}/huge.yaml"], 2, "huge.yaml: a file of 2.0 MiB; a YAML recipe over 1 MiB", None),
    ("jsonl-gzip-bomb", ["sft", "data={c}/bomb.jsonl.gz"], 2,
     "bomb.jsonl.gz:1: a line longer than 4 MiB is refused", None),
    ("json-deep", ["sft", "data={c}/deep.jsonl"], 2, "deep.jsonl:2: nested deeper than 64 levels", None),
    ("json-recursion", ["train-rm", "data={c}/recursion.jsonl"], 2, "recursion.jsonl:1: nested deeper than 64", None),
    ("json-huge-int", ["score", "{rm}", "--pairs", "{c}/huge_int.jsonl"], 2, "huge_int.jsonl:1: invalid JSON", None),
    ("template-emits-gigabytes", ["generate", "{c}/emits", "--prompt", "x"], 2,
     "emits: chat_template: rendering a conversation exceeded the limit of 1000000 characters", None),
    ("template-one-huge-string", ["eval", "{c}/huge_string", "--samples", "1", "--max-new-tokens", "2"], 2,
     "huge_string: chat_template: rendering a conversation exceeded the limit of 1000000 characters", None),
    ("template-spins", ["generate", "{c}/spins", "--prompt", "x"], 2,
     "spins: chat_template: rendering a conversation exceeded the limit of 1 seconds", None),
    ("generate-max-new-tokens", ["generate", "{policy}", "--prompt", "x", "max_new_tokens=100000000"], 2,
     "generation.max_new_tokens: 100000000 new tokens after the longest prompt", None),
    ("eval-max-new-tokens", ["eval", "{policy}", "--max-new-tokens", "100000000", "--samples", "1"], 2,
     "exceed the model's context of 256 tokens", None),
    # P10: a few bad rows stop the command by default...
    ("score-bad-row", ["score", "{rm}", "--pairs", "{c}/hostile_pairs_messy.jsonl"], 2,
     "hostile_pairs_messy.jsonl:3: rejected: no final", None),
    ("audit-bad-row", ["audit-rm", "{rm}", "--pairs", "{c}/hostile_pairs_messy.jsonl"], 2,
     "hostile_pairs_messy.jsonl:3: rejected", None),
    ("eval-prompts-bad-row", ["eval", "{policy}", "--prompts", "{c}/hostile_prompts_messy.jsonl"], 2,
     "hostile_prompts_messy.jsonl:2: prompt: empty prompt", None),
    ("train-rm-bad-row", ["train-rm", "data={c}/hostile_pairs_messy.jsonl"], 2,
     "hostile_pairs_messy.jsonl:3: rejected", None),
    ("dpo-bad-row", ["dpo", "model.path={policy}", "data={c}/hostile_pairs_messy.jsonl"], 2,
     "hostile_pairs_messy.jsonl:3: rejected", None),
    ("sft-bad-row", ["sft", "data={c}/hostile_sft_messy.jsonl"], 2, "hostile_sft_messy.jsonl:6: invalid JSON",
     None),  # a line that is not JSON is found while the file is read, before any record is checked
    ("skip-all-bad", ["train-rm", "data={c}/hostile_pairs_all_bad.jsonl", "on_bad_row=skip"], 2,
     "hostile_pairs_all_bad.jsonl: no usable records: every row was malformed and skipped", None),
    ("skip-not-for-gsm8k", ["eval", "{policy}", "--task", "gsm8k", "--skip-bad-rows"], 2,
     "--skip-bad-rows: applies to a file of prompts; task gsm8k", None),
    # ...and are left out, counted and shown, when asked
    ("score-skip", ["score", "{rm}", "--pairs", "{c}/hostile_pairs_messy.jsonl", "--skip-bad-rows",
                    "--max-length", "64", "--show", "1"], 0,
     "skipped 4 bad rows (on_bad_row=skip):\n  {c}/hostile_pairs_messy.jsonl:3: rejected: no final", None),
    ("audit-skip", ["audit-rm", "{rm}", "--pairs", "{c}/hostile_pairs_messy.jsonl", "--skip-bad-rows",
                    "--max-length", "64"], 0, "skipped 4 bad rows", None),
    ("eval-prompts-skip", ["eval", "{policy}", "--prompts", "{c}/hostile_prompts_messy.jsonl", "--skip-bad-rows",
                           "--samples", "1", "--max-new-tokens", "2"], 0,
     "skipped 3 bad rows (on_bad_row=skip):\n  {c}/hostile_prompts_messy.jsonl:2: prompt: empty prompt", None),
    ("train-rm-skip", ["train-rm", "data={c}/hostile_pairs_messy.jsonl", "on_bad_row=skip", *TINY_RM,
                       "run.out_dir={work}/rm"], 0, "done:", "rm"),
    ("dpo-skip", ["dpo", "data={c}/hostile_pairs_messy.jsonl", "data.on_bad_row=skip", *TINY_POLICY,
                  "eval_batch_size=4", "run.out_dir={work}/dpo"], 0, "done:", "dpo"),
    ("sft-skip", ["sft", "data={c}/hostile_sft_messy.jsonl", "data.on_bad_row=skip", *TINY_POLICY,
                  "run.out_dir={work}/sft"], 0, "done:", "sft"),
]

FAST = {"yaml-billion-laughs", "sweep-billion-laughs", "jsonl-gzip-bomb", "json-recursion",
        "template-emits-gigabytes", "template-one-huge-string", "generate-max-new-tokens", "eval-max-new-tokens"}


def _summary_files(root: Path) -> None:
    from alignlab.eval.metrics import score_sample, summarize

    good = summarize([score_sample("p", "- read 30 min\n- practice 1 hour\n- rest 20 min"),
                      score_sample("p", "ok")]).to_dict()
    for name, changes in (("nan_eval", {"pass_rate": float("nan")}), ("null_eval", {"reward_mean": None}),
                          ("inf_eval", {"pass_rate_ci": [0.0, float("inf")]})):
        (root / name).mkdir()
        (root / name / "summary.json").write_text(json.dumps({**good, **changes}))  # NaN / Infinity tokens
        (root / name / "samples.jsonl").write_text('{"prompt": "p", "completion": "ok"}\n')  # a complete folder


def _checkpoints(root: Path, policy: Path) -> None:
    """A reward model, and policies whose tokenizer_config.json carries a runaway chat template."""
    from alignlab.model.heads import reward_model_from, save_reward_model

    model, tokenizer = reward_model_from(str(policy))
    (root / "rm").mkdir()
    save_reward_model(model, tokenizer, root / "rm")
    for name, template in (("emits", EMITS_GIGABYTES), ("spins", SPINS_SILENTLY), ("huge_string", ONE_HUGE_STRING)):
        shutil.copytree(policy, root / name)
        config_file = root / name / "tokenizer_config.json"
        config = json.loads(config_file.read_text())
        config_file.write_text(json.dumps({**config, "chat_template": template}))


def _corpus(root: Path, policy: Path) -> Path:
    corpus = root / "corpus"
    corpus.mkdir()
    for name, text in HOSTILE.items():
        (corpus / name).write_text(text, encoding="utf-8")
    (corpus / "deep.yaml").write_text("sample_prompts: " + "[" * 5000 + "]" * 5000 + "\n")
    (corpus / "huge.yaml").write_text("# padding\n" * 209_716)
    with gzip.open(corpus / "bomb.jsonl.gz", "wb", compresslevel=1) as bomb:  # 256 MiB of one line, ~1 MB on disk
        for _ in range(256):
            bomb.write(b"a" * 2**20)
    good = '{"prompt": "hi", "response": "there"}\n'
    (corpus / "deep.jsonl").write_text(good + '{"prompt": "x", "response": ' + "[" * 100 + "]" * 100 + "}\n")
    (corpus / "recursion.jsonl").write_text('{"prompt": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    (corpus / "huge_int.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": '
                                           + "9" * 5000 + "}\n")
    _summary_files(corpus)
    _checkpoints(corpus, policy)
    return corpus


def _snapshot(root: Path, allowed: Path | None) -> dict[str, tuple]:
    """Every file and folder under `root` but `allowed`, with size, mtime and SHA-256 of files."""
    out = {}
    for path in root.rglob("*"):
        if allowed is not None and (path == allowed or allowed in path.parents):
            continue
        if path.is_file():
            stat = path.stat()
            out[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns,
                                                hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            out[str(path.relative_to(root))] = ("dir",)
    return out


@pytest.mark.parametrize(("argv", "code", "expected", "out"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_inputs(argv, code, expected, out, request, tmp_path, policy_dir, monkeypatch, capsys):
    import alignlab.data.template_limits as template_limits

    monkeypatch.setattr(template_limits, "MAX_TEMPLATE_SECONDS", 1.0)  # the silent loop stops in 1 s, not 10
    corpus = _corpus(tmp_path, policy_dir)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # default outputs (runs/...) would land here
    allowed = work / out if out else None
    before = _snapshot(tmp_path, allowed)
    names = {"c": corpus, "policy": policy_dir, "rm": corpus / "rm", "work": work}
    args = [a.format(**names) for a in argv]
    bounded = request.node.callspec.id in FAST
    if bounded:
        tracemalloc.start()
    start = time.monotonic()
    rc = main(args)
    elapsed = time.monotonic() - start
    if bounded:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == code, captured.err
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith(f"alignlab {args[0]}: error: "), captured.err
        assert expected.format(**names) in lines[0], lines[0]
    else:
        assert not any(line.startswith(f"alignlab {args[0]}: error") for line in lines), captured.err
        assert expected.format(**names) in captured.out, captured.out
    assert _snapshot(tmp_path, allowed) == before
    if bounded:  # boundedness, not speed: generous upper bounds
        assert elapsed < 5, f"took {elapsed:.1f} s"
        assert peak < 64 * 2**20, f"peak Python allocation {peak / 2**20:.0f} MiB"


def test_the_corpus_is_at_least_twenty_five_cases_and_every_text_is_used():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)
    used = {Path(part).name for _, argv, *_ in CASES for arg in argv for part in arg.split("=")}
    assert set(HOSTILE) <= used


def test_skipped_rows_are_recorded_in_the_manifest_and_printed(tmp_path, monkeypatch, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(PAIRS_MESSY)
    monkeypatch.chdir(tmp_path)
    assert main(["train-rm", f"data={data}", "on_bad_row=skip", *TINY_RM, f"run.out_dir={tmp_path / 'rm'}"]) == 0
    assert f"{data}:3: rejected" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "rm" / "manifest.json").read_text())
    assert manifest["skipped_rows"]["count"] == 4 and manifest["skipped_rows"]["by_file"] == {str(data): 4}


# P3: the DPO reference cache is keyed by hashes of the tokenized pairs, the reference weights and max_length.

def _items(offset: int):
    from alignlab.trainers.dpo import DPOItem

    return [DPOItem([1, 2, 3 + i + offset], 2, [1, 2, 9 + i], 2) for i in range(4)]


def test_dpo_cache_is_keyed_by_the_data_not_its_count(tmp_path, tiny_gpt):
    from alignlab.trainers.dpo import REFERENCE, reference_key, with_reference

    cache = tmp_path / REFERENCE
    first, note = with_reference(_items(0), tiny_gpt, 0, 2, "cpu", cache, key=reference_key(_items(0), tiny_gpt, 64))
    assert note is None and cache.is_file()
    again, note = with_reference(_items(0), tiny_gpt, 0, 2, "cpu", cache, key=reference_key(_items(0), tiny_gpt, 64))
    assert note is None and again == first  # same pairs, same reference: reused
    other = _items(1)  # same count, different pairs: a count match must not reuse the cache
    recomputed, note = with_reference(other, tiny_gpt, 0, 2, "cpu", cache, key=reference_key(other, tiny_gpt, 64))
    assert note == f"reference log-probs: {REFERENCE} was made for other pairs; recomputing them"
    assert [i.ref_chosen for i in recomputed] != [i.ref_chosen for i in first]
    assert [i.ref_rejected for i in recomputed] == pytest.approx([i.ref_rejected for i in first])  # unchanged side


def test_dpo_cache_is_keyed_by_the_reference_weights_and_max_length(tmp_path, tiny_gpt):
    from alignlab.trainers.dpo import REFERENCE, reference_key, with_reference

    cache = tmp_path / REFERENCE
    items = _items(0)
    with_reference(items, tiny_gpt, 0, 2, "cpu", cache, key=reference_key(items, tiny_gpt, 64))
    with torch.no_grad():
        next(tiny_gpt.parameters()).add_(0.01)
    _, note = with_reference(items, tiny_gpt, 0, 2, "cpu", cache, key=reference_key(items, tiny_gpt, 64))
    assert note is not None and "other reference weights" in note
    _, note = with_reference(items, tiny_gpt, 0, 2, "cpu", cache, key=reference_key(items, tiny_gpt, 32))
    assert note is not None and "another max_length" in note
    cache.write_bytes(b"not a safetensors file")
    _, note = with_reference(items, tiny_gpt, 0, 2, "cpu", cache, key=reference_key(items, tiny_gpt, 32))
    assert note is not None and "unreadable" in note
