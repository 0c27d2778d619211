"""Study-plan prompts by language (`lang` = all | en | zh): counts, languages, splits, the frozen `all`
selection, and `lang` threaded through configs, the task registry, SFT / dummy pairs, sweep, demo,
`alignlab eval --lang` and a GRPO run.

The SHA-256 pins below were computed from the prompt table before the `en` phrasings were added:
`all` must keep those exact prompts, order and split so that earlier runs and the demo reproduce.
"""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
import yaml

from alignlab import demo
from alignlab.backends.grpo import grpo
from alignlab.cli import build_parser, main
from alignlab.config import DPOConfig, EvalConfig, GRPOConfig, PPOConfig, RewardModelConfig, SFTConfig, load_config
from alignlab.errors import UserError
from alignlab.sweep import read_sweep
from alignlab.sweep import run as sweep_run
from alignlab.tasks import study_plan as sp
from alignlab.tasks.registry import get_task
from alignlab.tasks.study_plan.rules import study_plan_verdict
from alignlab.trainers.reward_model import load_pairs
from alignlab.trainers.sft import load_conversations

ALL_SHA = "5a0f6b754869def38a2179d17466390a5e829ede620dcf4161b942f350168699"  # the 147, joined by "\n"
TRAIN_SHA = "a337f3a4c1f60d1f44073e503eee310106451911ef4767d4680e5084a8f60552"  # its 110 train prompts
HELD_SHA = "117cfa2c95f66c57c3ebe50423aee325d97c60cc4a3917759ce0eda79564dc3c"  # its 37 held-out prompts
# json.dumps(..., ensure_ascii=False, sort_keys=True) of the demo's SFT data (synthetic_completions(train_prompts(),
# 8, 0.3, seed=0)) and of train-rm's 200 dummy pairs (seed 0), before the change: same data, same runs.
SFT_DATA_SHA = "088f24eb93a74b31efd58f88da88505bb5949400dc70425f73f40b66abcd9dbb"
PAIRS_SHA = "b1a4533a33ba3b848c6fffa63b8ea3de292ed79197a4d397b3de54fffe22ecc7"


def _sha(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()


def _json_sha(value) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def test_all_is_todays_147_prompts_order_and_split():
    assert _sha(sp.all_prompts()) == _sha(sp.all_prompts("all")) == _sha(list(sp.PROMPTS)) == ALL_SHA
    train, held = sp.split_prompts()
    assert (_sha(train), _sha(held)) == (TRAIN_SHA, HELD_SHA)
    assert (train, held) == sp.split_prompts(0.25, 0, "all") == (sp.train_prompts("all"), sp.held_out_prompts("all"))
    assert (len(sp.all_prompts()), len(train), len(held)) == (147, 110, 37)
    assert not set(sp.EXTRA_EN) & set(sp.PROMPTS)  # the new phrasings never join `all`


def test_synthetic_data_and_dummy_pairs_of_all_are_unchanged():
    assert _json_sha(sp.synthetic_completions(sp.train_prompts(), 8, 0.3, seed=0)) == SFT_DATA_SHA
    assert _json_sha(sp.preference_pairs(200, seed=0)) == PAIRS_SHA
    # No original phrasing names an English-only subject, so their completions keep their subjects.
    assert {sp.subject_of(p) for p in sp.PROMPTS} <= {*sp.SUBJECTS, sp.GENERIC}


def test_counts_per_language():
    counts = {lang: (len(sp.all_prompts(lang)), *map(len, sp.split_prompts(lang=lang))) for lang in sp.LANGS}
    assert counts == {"all": (147, 110, 37), "en": (180, 143, 37), "zh": (91, 66, 25)}
    english = sp.all_prompts("en")
    assert len(english) >= 80 and len(set(english)) == len(english)
    assert english[:56] == [p for p in sp.PROMPTS if not sp.is_chinese(p)]  # today's English ones first
    assert english[56:] == list(sp.EXTRA_EN)
    assert sp.all_prompts("zh") == [p for p in sp.PROMPTS if sp.is_chinese(p)]


def test_every_prompt_is_in_its_language():
    for prompt in sp.all_prompts("en"):
        assert not sp.is_chinese(prompt) and prompt.isascii(), prompt
    for prompt in sp.all_prompts("zh"):
        assert sp.is_chinese(prompt), prompt
    assert sp.CANONICAL_PROMPT == sp.all_prompts("zh")[0]


def test_english_phrasings_vary_in_wording_subject_and_duration_example():
    english = sp.all_prompts("en")
    for example in ("e.g. 30 minutes", "(like 45 min)", "each with a time like 1 hour", "for example 1.5 hours"):
        assert any(example in p for p in english), example
    subjects = {sp.subject_of(p).key for p in english}
    assert {"statistics", "world_history", "public_speaking", "sql", "python", "cooking"} <= subjects
    assert len({p.split(" ")[0] for p in english}) >= 10  # many different openings, not one template


@pytest.mark.parametrize("lang", sp.LANGS)
def test_splits_are_disjoint_covering_ordered_and_deterministic(lang):
    train, held = sp.split_prompts(lang=lang)
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(sp.all_prompts(lang))
    order = {p: i for i, p in enumerate(sp.all_prompts(lang))}
    assert [order[p] for p in train] == sorted(order[p] for p in train)
    assert [order[p] for p in held] == sorted(order[p] for p in held)
    assert (train, held) == sp.split_prompts(lang=lang) == (sp.train_prompts(lang), sp.held_out_prompts(lang))
    assert sp.split_prompts(0.25, seed=1, lang=lang) != (train, held)
    assert sp.split_prompts(0.0, lang=lang)[1] == []


def test_language_splits_agree_with_the_all_split():
    """An original phrasing keeps its side whatever the selection: a policy trained on `all` is never
    judged on its own train prompts by an `en` or `zh` evaluation."""
    train, held = map(set, sp.split_prompts())
    for lang in ("en", "zh"):
        lang_train, lang_held = sp.split_prompts(lang=lang)
        assert {p for p in lang_train if p in sp.PROMPTS} <= train
        assert {p for p in lang_held if p in sp.PROMPTS} <= held
    assert sp.CANONICAL_PROMPT in sp.train_prompts("zh")
    english_held = sp.held_out_prompts("en")
    assert len([p for p in english_held if p in sp.PROMPTS]) == 12  # old phrasings held out ...
    assert len([p for p in english_held if p in sp.EXTRA_EN]) == 25  # ... and new ones


def test_new_english_split_is_stable_when_phrasings_are_added_or_removed(monkeypatch):
    held, removed = set(sp.held_out_prompts("en")), set(sp.EXTRA_EN[1::2])
    monkeypatch.setattr(sp.prompts, "EXTRA_EN", sp.EXTRA_EN[::2])  # half the phrasings gone: the rest keep their side
    assert set(sp.held_out_prompts("en")) == held - removed


def test_unknown_language_is_a_user_error():
    for call in (lambda: sp.all_prompts("fr"), lambda: sp.split_prompts(lang="EN"), lambda: sp.train_prompts("de")):
        with pytest.raises(UserError, match="expected one of all, en, zh") as err:
            call()
        assert err.value.key == "lang"


def test_synthetic_completions_of_english_prompts_are_english_and_pass_the_rules():
    records = sp.synthetic_completions(sp.all_prompts("en"), 2, 1.0, seed=5)
    assert len(records) == 2 * 180
    for record in records:
        assert not sp.is_chinese(record["completion"]), record
        assert study_plan_verdict(record["prompt"], record["completion"]).passed, record
    sql = next(p for p in sp.EXTRA_EN if "SQL" in p)
    assert "quer" in " ".join(r["completion"] for r in sp.synthetic_completions([sql], 4, 1.0, seed=0))
    for record in sp.synthetic_completions(sp.all_prompts("en")[:40], 1, 0.0, seed=1):  # failure styles too
        assert not sp.is_chinese(record["completion"]), record


def test_preference_pairs_of_a_language_use_its_train_prompts():
    pairs = sp.preference_pairs(60, seed=0, lang="en")
    assert {p["prompt"] for p in pairs} <= set(sp.train_prompts("en"))
    assert not any(sp.is_chinese(p["chosen"] + p["rejected"]) for p in pairs)
    assert {p["prompt"] for p in sp.preference_pairs(30, seed=0, lang="zh")} <= set(sp.train_prompts("zh"))


@pytest.mark.parametrize("cls", [GRPOConfig, PPOConfig, SFTConfig, DPOConfig, RewardModelConfig])
def test_every_trainer_config_takes_lang_and_task_lang(cls):
    assert load_config(cls).lang == "all"
    assert load_config(cls, None, ["lang=en"]).lang == "en"
    assert load_config(cls, None, ["task.lang=zh"]).lang == "zh"
    if cls in (GRPOConfig, PPOConfig):  # any registered task's languages: the task checks them
        with pytest.raises(UserError, match="has prompts in: all, en, zh; got 'fr'"):
            get_task(load_config(cls, None, ["lang=fr"]).task).train_examples("", "fr")
    else:
        with pytest.raises(UserError, match="expected one of 'all', 'en', 'zh'"):
            load_config(cls, None, ["lang=fr"])


def test_gsm8k_refuses_a_language(tmp_path, policy_dir, capsys):
    for command in ("grpo", "ppo"):  # before anything is loaded or written
        assert main([command, "task=gsm8k", "task.lang=en", f"model.path={policy_dir}",
                     f"run.out_dir={tmp_path / command}"]) == 2
        assert "lang: task gsm8k has no language selection" in capsys.readouterr().err
        assert not (tmp_path / command).exists()
    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps({"question": "1 + 1?", "answer": "2\n#### 2"}) + "\n", encoding="utf-8")
    assert get_task("gsm8k").train_examples(str(data), "all")
    with pytest.raises(UserError, match="no language selection") as err:
        get_task("gsm8k").train_examples(str(data), "en")
    assert err.value.key == "lang"


def test_task_registry_hands_out_the_language_and_never_filters_files(tmp_path):
    task = get_task("study-plan")
    assert [e["prompt"] for e in task.train_examples("", "en")] == sp.train_prompts("en")
    assert [e["prompt"] for e in task.held_out_examples("", "zh")] == sp.held_out_prompts("zh")
    assert [e["prompt"] for e in task.held_out_examples("")] == sp.held_out_prompts()
    mine = tmp_path / "p.jsonl"
    mine.write_text(json.dumps({"prompt": "请给我一个学习计划"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert task.train_examples(str(mine), "en") == [{"prompt": "请给我一个学习计划"}]


def test_sft_data_and_dummy_pairs_follow_lang():
    conversations, _ = load_conversations(load_config(SFTConfig, None, ["lang=en", "synthetic_per_prompt=1"]))
    users = [m["content"] for c in conversations for m in c if m["role"] == "user"]
    assert users == sp.train_prompts("en")
    assert not any(sp.is_chinese(m["content"]) for c in conversations for m in c)
    for cls in (RewardModelConfig, DPOConfig):
        train, held, _ = load_pairs(load_config(cls, None, ["task.lang=en", "dummy_pairs=40"]))
        assert {p.prompt[-1]["content"] for p in [*train, *held]} <= set(sp.train_prompts("en"))


def _sweep_recipe(tmp_path, policy_dir, **extra) -> str:
    body = {"policy": str(policy_dir), "set": {"steps": 1, "num_generations": 2, "run.batch_size": 4},
            "variants": [{"name": "a", "set": {"reward.mode": "naive"}}, {"name": "b", "set": {}}],
            "out_dir": str(tmp_path / "sweep"), **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return str(path)


def test_sweep_recipe_key_and_overrides_set_the_language(tmp_path, policy_dir):
    assert {r.config.lang for r in read_sweep(_sweep_recipe(tmp_path, policy_dir)).runs} == {"all"}
    assert {r.config.lang for r in read_sweep(_sweep_recipe(tmp_path, policy_dir, lang="en")).runs} == {"en"}
    assert {r.config.lang for r in read_sweep(_sweep_recipe(tmp_path, policy_dir), ["task.lang=zh"]).runs} == {"zh"}
    with pytest.raises(UserError, match="has prompts in: all, en, zh; got 'fr'"):
        read_sweep(_sweep_recipe(tmp_path, policy_dir, lang="fr"))
    mixed = [{"name": "en", "set": {"lang": "en"}}, {"name": "zh", "set": {"lang": "zh"}}]
    with pytest.raises(UserError, match="variants differ in lang"):
        read_sweep(_sweep_recipe(tmp_path, policy_dir, variants=mixed))


def test_sweep_evaluates_on_the_runs_language(tmp_path, policy_dir):
    run = read_sweep(_sweep_recipe(tmp_path, policy_dir, lang="en")).runs[0]
    out = tmp_path / "before"
    _, samples = sweep_run._evaluate(str(policy_dir), EvalConfig(samples=1, max_new_tokens=4, prompts=3), run.config,
                                 out, "before", "cpu")
    assert [s.prompt for s in samples] == sp.held_out_prompts("en")[:3]
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["lang"] == "en"


def test_demo_builds_and_evaluates_in_the_language(tmp_path, monkeypatch):
    """`demo --lang en`: the cached base is SFT on English train prompts (a cache entry per language)."""
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    seen = []
    monkeypatch.setattr(demo, "sft", lambda cfg, overwrite: seen.append(cfg))
    monkeypatch.setattr(demo, "swap_in", lambda building, home: None)
    english, everything = demo.base_policy(lang="en"), demo.base_policy()
    assert [cfg.lang for cfg in seen] == ["en", "all"] and english != everything
    assert build_parser().parse_args(["demo", "--lang", "en"]).lang == "en"
    assert build_parser().parse_args(["demo"]).lang == "all"


def test_eval_lang_en_evaluates_only_english_held_out_prompts(policy_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(policy_dir), "--lang", "en", "--samples", "1", "--max-new-tokens", "4",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert "on 37 prompts" in capsys.readouterr().out
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s["prompt"] for s in samples] == sp.held_out_prompts("en")
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["lang"] == "en"
    assert main(["eval", str(policy_dir), "--lang", "en", "--task", "gsm8k"]) == 2
    assert "lang: task gsm8k has no language selection" in capsys.readouterr().err


def test_grpo_lang_en_trains_on_english_prompts_only(policy_dir, tmp_path):
    cfg = load_config(GRPOConfig, None, [
        f"model.path={policy_dir}", f"run.out_dir={tmp_path / 'run'}", "num_generations=2", "run.batch_size=8",
        "max_new_tokens=4", "steps=1", "run.progress=false", "run.eval_every=0", "preflight=false", "task.lang=en"])
    run = grpo(cfg, quiet=True)
    with gzip.open(run / "rollouts.jsonl.gz", "rt", encoding="utf-8") as handle:
        prompts = {json.loads(line)["prompt"] for line in handle}
    assert len(prompts) == 4 and prompts <= set(sp.train_prompts("en"))
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["lang"] == "en"
