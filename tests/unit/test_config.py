"""Config loading: recipes, overrides, coercion, errors for people, and round trips."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from alignlab.config import (
    GenerationConfig,
    GPTConfig,
    OptimConfig,
    PretrainConfig,
    config_from_dict,
    config_hash,
    config_to_dict,
    describe_config,
    dump_yaml,
    knob,
    load_config,
)
from alignlab.errors import UserError


@dataclass(frozen=True)
class _Optional:
    name: str | None = knob("x", "an optional string")
    count: int | None = knob(3, "an optional int")


def _recipe(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_build_and_sections_keep_their_own_defaults():
    cfg = load_config(PretrainConfig)
    assert cfg == PretrainConfig()
    assert cfg.run.steps == 200 and cfg.optim.lr == 3e-4
    assert cfg.sample.max_new_tokens == 64  # the field's default instance, not GenerationConfig()
    # Setting one key of that section must not reset the others to the class defaults.
    assert load_config(PretrainConfig, None, ["sample.top_k=5"]).sample.max_new_tokens == 64


def test_recipe_then_dotted_and_bare_overrides(tmp_path):
    path = _recipe(tmp_path, "block_size: 64\noptim:\n  lr: 0.001\n  warmup_steps: 3\n"
                             "model:\n  arch:\n    hidden_size: 64\n")
    cfg = load_config(PretrainConfig, path, ["optim.warmup_steps=7", "steps=150", "temperature=0.3"])
    assert cfg.block_size == 64 and cfg.model.arch.hidden_size == 64
    assert cfg.optim.lr == 0.001  # from the recipe, untouched by overrides
    assert cfg.optim.warmup_steps == 7  # the override wins over the recipe
    assert cfg.run.steps == 150 and cfg.sample.temperature == 0.3
    assert cfg.model.arch.num_hidden_layers == 4  # untouched keys keep defaults


def test_base_comes_before_the_recipe(tmp_path):
    path = _recipe(tmp_path, "run:\n  steps: 9\n")
    cfg = load_config(PretrainConfig, path, base={"run": {"steps": 5, "seed": 4}, "lr": 0.01})
    assert (cfg.run.steps, cfg.run.seed, cfg.optim.lr) == (9, 4, 0.01)


def test_float_from_exponent_without_a_dot(tmp_path):
    # PyYAML reads `3e-5` as the string '3e-5' (YAML 1.1 floats need a dot).
    cfg = load_config(PretrainConfig, _recipe(tmp_path, "optim:\n  lr: 3e-5\n"))
    assert cfg.optim.lr == pytest.approx(3e-5) and isinstance(cfg.optim.lr, float)
    assert load_config(OptimConfig, None, ["lr=2e-4"]).lr == pytest.approx(2e-4)
    assert load_config(OptimConfig, None, ["lr=1"]).lr == 1.0  # an int is a fine float


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("False", False), ("yes", True),
                                                ("NO", False), ("on", True), ("off", False),
                                                ("1", True), ("0", False)])
def test_bool_override_words(text, expected):
    cfg = load_config(PretrainConfig, None, [f"run.progress={text}", f"tie_word_embeddings={text}"])
    assert cfg.run.progress is expected and cfg.model.arch.tie_word_embeddings is expected


def test_bool_rejects_other_words():
    with pytest.raises(UserError, match=r"run\.progress: expected true or false, got 'maybe'"):
        load_config(PretrainConfig, None, ["progress=maybe"])


def test_literal_rejection_lists_the_choices():
    with pytest.raises(UserError) as info:
        load_config(PretrainConfig, None, ["run.device=gpu"])
    assert str(info.value) == "run.device: expected one of 'auto', 'cpu', 'cuda', 'mps', got 'gpu'"
    assert load_config(PretrainConfig, None, ["run.device=cpu"]).run.device == "cpu"


def test_tuples_from_yaml_lists_commas_and_flow_lists(tmp_path):
    cfg = load_config(PretrainConfig, _recipe(tmp_path, "sample_prompts: ['Hi ', there]\n"))
    assert cfg.sample_prompts == ("Hi ", "there")
    assert load_config(GenerationConfig, None, ["stop_strings=a,b"]).stop_strings == ("a", "b")
    assert load_config(GenerationConfig, None, ['stop_strings=["x ", "y"]']).stop_strings == ("x ", "y")
    assert load_config(GenerationConfig, None, ["stop_strings="]).stop_strings == ()
    with pytest.raises(UserError, match="expected a list"):
        load_config(PretrainConfig, _recipe(tmp_path, "sample_prompts: 3\n"))


def test_optional_fields_accept_null_words():
    assert load_config(_Optional, None, ["name=none", "count=~"]) == _Optional(name=None, count=None)
    assert load_config(_Optional, None, ["name=null", "count=5"]) == _Optional(name=None, count=5)
    assert load_config(_Optional, None, ["name=bob"]).name == "bob"


def test_strings_from_overrides_are_taken_verbatim():
    cfg = load_config(PretrainConfig, None, ["run.out_dir=2024", "data="])
    assert cfg.run.out_dir == "2024" and cfg.data == ""


def test_unknown_key_suggests_the_closest():
    with pytest.raises(UserError) as info:
        load_config(PretrainConfig, None, ["optim.lrr=1"])
    assert str(info.value) == "optim.lrr: unknown key (did you mean 'optim.lr'?)"
    with pytest.raises(UserError, match=r"did you mean 'run\.steps'\?"):
        load_config(PretrainConfig, None, ["stepz=3"])
    with pytest.raises(UserError, match=r"did you mean 'optim\.lr'\?"):
        load_config(PretrainConfig, None, ["run.lr=3"])  # right name, wrong section


def test_recipe_unknown_key_names_file_and_line(tmp_path):
    path = _recipe(tmp_path, "block_size: 64\noptim:\n  lr: 0.1\n  wamup_steps: 3\n")
    with pytest.raises(UserError) as info:
        load_config(PretrainConfig, path)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), 4, "optim.wamup_steps")
    assert str(err).startswith(f"{path}:4: optim.wamup_steps: unknown key")
    assert "did you mean 'optim.warmup_steps'?" in str(err)


def test_recipe_wrong_type_names_file_line_and_key(tmp_path):
    path = _recipe(tmp_path, "run:\n  seed: 1\n  steps: 1.5\n")
    with pytest.raises(UserError) as info:
        load_config(PretrainConfig, path)
    assert str(info.value) == f"{path}:3: run.steps: expected an int, got 1.5"


@pytest.mark.parametrize(("override", "message"), [
    ("steps=1.5", "run.steps: expected an int, got 1.5"),
    ("steps=true", "run.steps: expected an int, got True"),
    ("lr=abc", "optim.lr: expected a float, got 'abc'"),
    ("lr=false", "optim.lr: expected a float, got False"),
])
def test_override_wrong_type_names_the_key(override, message):
    with pytest.raises(UserError) as info:
        load_config(PretrainConfig, None, [override])
    assert str(info.value) == message


def test_recipe_string_field_rejects_a_number(tmp_path):
    with pytest.raises(UserError, match=r"run\.out_dir: expected a string, got 2024"):
        load_config(PretrainConfig, _recipe(tmp_path, "run:\n  out_dir: 2024\n"))


def test_ambiguous_bare_key_lists_candidates():
    with pytest.raises(UserError) as info:
        load_config(PretrainConfig, None, ["vocab_size=512"])
    assert str(info.value) == ("vocab_size: ambiguous key; use one of 'model.arch.vocab_size', "
                               "'tokenizer.vocab_size'")
    cfg = load_config(PretrainConfig, None, ["tokenizer.vocab_size=512", "arch.vocab_size=300"])
    assert cfg.tokenizer.vocab_size == 512 and cfg.model.arch.vocab_size == 300


def test_a_section_is_not_a_value():
    with pytest.raises(UserError, match=r"^optim: is a section"):
        load_config(PretrainConfig, None, ["optim=3"])


def test_validation_error_names_the_full_key_and_where_it_was_set(tmp_path):
    with pytest.raises(UserError) as info:
        load_config(PretrainConfig, None, ["model.arch.hidden_size=130"])
    assert str(info.value).startswith("model.arch.hidden_size: must be a multiple of num_attention_heads")
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(UserError, match=r"^optim.lr: must be positive"):
        load_config(PretrainConfig, None, ["lr=0"])
    with pytest.raises(UserError, match=r"^top_p: must be in \(0, 1\]"):
        load_config(GenerationConfig, None, ["top_p=0"])  # the top-level class has no prefix
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run:\n  steps: 0\n")
    with pytest.raises(UserError, match=r"r.yaml:2: run.steps: must be >= 1, got 0$"):
        load_config(PretrainConfig, recipe)


def test_direct_construction_validates():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        GPTConfig(num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="head_dim must be even"):
        GPTConfig(hidden_size=12, num_attention_heads=4, num_key_value_heads=2)
    assert GPTConfig(hidden_size=64, num_attention_heads=4).head_dim == 16


def test_bad_recipe_files(tmp_path):
    with pytest.raises(UserError, match="no such recipe file") as info:
        load_config(PretrainConfig, tmp_path / "missing.yaml")
    assert info.value.file == str(tmp_path / "missing.yaml")
    with pytest.raises(UserError) as info:
        load_config(PretrainConfig, _recipe(tmp_path, "run:\n  steps: [1\n  seed: 2\n"))
    assert info.value.file.endswith("recipe.yaml") and info.value.line == 3
    with pytest.raises(UserError, match="must be a mapping") as info:
        load_config(PretrainConfig, _recipe(tmp_path, "# a comment\n- steps\n"))
    assert info.value.line == 2
    with pytest.raises(UserError, match=r"set twice \(first on line 1\)") as info:
        load_config(PretrainConfig, _recipe(tmp_path, "optim.lr: 0.1\noptim:\n  lr: 0.2\n"))
    assert info.value.line == 3
    assert load_config(PretrainConfig, _recipe(tmp_path, "")) == PretrainConfig()


def test_override_without_equals_sign():
    with pytest.raises(UserError, match="expected key=value, got 'steps'"):
        load_config(PretrainConfig, None, ["steps"])


def test_dict_round_trip():
    cfg = load_config(PretrainConfig, None, ["lr=1e-3", "stop_strings=a,b", "model.arch.hidden_size=64"])
    data = config_to_dict(cfg)
    assert data["sample"]["stop_strings"] == ["a", "b"] and data["optim"]["lr"] == 1e-3
    assert config_from_dict(PretrainConfig, data) == cfg
    with pytest.raises(UserError, match="unknown key"):
        config_from_dict(PretrainConfig, {**data, "stepz": 3})
    with pytest.raises(UserError, match="unknown key"):
        config_from_dict(PretrainConfig, {"steps": 3})  # bare names are for overrides only


def test_yaml_round_trip(tmp_path):
    cfg = load_config(PretrainConfig, None, ["lr=1e-5", "eps=1e-9", "run.out_dir=007", "progress=off",
                                             'sample_prompts=["yes", " x "]'])
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg), encoding="utf-8")
    assert load_config(PretrainConfig, path) == cfg


def test_describe_config_lists_every_leaf():
    rows = describe_config(PretrainConfig)
    by_key = {key: (default, why) for key, default, why in rows}
    assert len(rows) == len(by_key) == 61
    assert by_key["run.steps"] == ("200", "optimizer steps")
    assert by_key["sample.max_new_tokens"][0] == "64"
    assert by_key["sample_prompts"][0] == '["The ", "ROMEO:"]'
    assert by_key["run.progress"][0] == "true" and by_key["data"][0] == '""'
    assert "one of: auto, cpu, cuda, mps" in by_key["run.device"][1]
    assert all(why for _, _, why in rows)


def test_every_field_has_a_why():
    for cls in (PretrainConfig, GPTConfig, OptimConfig, GenerationConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("why"), f"{cls.__name__}.{f.name}"


def test_config_hash_is_stable_and_sensitive():
    first = config_hash(PretrainConfig())
    assert len(first) == 16 and int(first, 16) >= 0
    assert config_hash(load_config(PretrainConfig)) == first
    assert config_hash(load_config(PretrainConfig, None, ["seed=1"])) != first


def test_user_error_is_one_line():
    assert str(UserError("expected a float, got 'abc'", file="recipe.yaml", line=12, key="optim.lr")) == \
        "recipe.yaml:12: optim.lr: expected a float, got 'abc'"
    assert str(UserError("unknown key", key="optim.lrr")) == "optim.lrr: unknown key"
    assert str(UserError("no such file", file="a.yaml")) == "a.yaml: no such file"
    err = UserError("two\nlines")
    assert str(err) == "two lines" and err.message == "two lines"
    assert (err.file, err.line, err.key) == (None, None, None)


# Issue 17, P4 and P6: non-finite hyperparameters and unbounded recipes are refused at validation.

def _float_fields():
    import typing

    import alignlab.config as config

    for name in config.__all__:
        cls = getattr(config, name)
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            hints = typing.get_type_hints(cls)
            yield from ((cls, f.name) for f in dataclasses.fields(cls) if hints[f.name] is float)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_field_refuses_non_finite_values(value):
    fields = list(_float_fields())
    assert len(fields) >= 35  # every config class's floats: a new one is covered by _check's finite rule
    for cls, name in fields:
        with pytest.raises(ValueError, match=rf"^{name} must be .*\(a finite number\), got {value}$"):
            cls(**{name: value})


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999", "-1e999", "NaN", "Infinity", str(10**400)])
def test_override_non_finite_floats_are_refused(text):
    with pytest.raises(UserError) as info:
        load_config(PretrainConfig, None, [f"optim.lr={text}"])
    assert str(info.value).startswith("optim.lr: expected a finite float, got ") and text in str(info.value)


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", ".NaN", "1.0e999"])
def test_recipe_non_finite_floats_are_refused_with_file_and_line(tmp_path, text):
    path = _recipe(tmp_path, f"run:\n  steps: 3\noptim:\n  weight_decay: {text}\n")
    with pytest.raises(UserError, match=r"recipe\.yaml:4: optim\.weight_decay: expected a finite float, got "):
        load_config(PretrainConfig, path)


def test_seed_must_fit_torch_manual_seed():
    assert load_config(PretrainConfig, None, [f"run.seed={2**64 - 1}"]).run.seed == 2**64 - 1
    for seed in (-1, 2**64):
        with pytest.raises(UserError, match=r"^run\.seed: must be in \[0, 2\*\*64 - 1\]"):
            load_config(PretrainConfig, None, [f"run.seed={seed}"])


def test_anchors_and_merge_keys_keep_working(tmp_path):
    from alignlab.config import DPOConfig

    @dataclass(frozen=True)
    class Two:
        a: OptimConfig = knob(OptimConfig(), "first")
        b: OptimConfig = knob(OptimConfig(), "second")

    # b inherits a's keys and overrides one: not "set twice", and b.lr's line is where it was written.
    path = _recipe(tmp_path, "a: &base\n  lr: 0.5\n  warmup_steps: 3\nb:\n  <<: *base\n  lr: 0.25\n")
    cfg = load_config(Two, path)
    assert (cfg.a.lr, cfg.b.lr, cfg.b.warmup_steps) == (0.5, 0.25, 3)
    path = _recipe(tmp_path, "a: &base\n  lr: 0.5\nb:\n  <<: *base\n  eps: -1\n")
    with pytest.raises(UserError, match=r"recipe\.yaml:5: b\.eps: must be positive"):
        load_config(Two, path)
    path = _recipe(tmp_path, "data: &files [x.jsonl, y.jsonl]\neval_data: *files\n")
    assert load_config(DPOConfig, path).eval_data == ("x.jsonl", "y.jsonl")


def _laughs(depth: int = 9, width: int = 9) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_before_expansion(tmp_path):
    import time

    from alignlab.config_yaml import MAX_YAML_VALUES, read_yaml_bounded

    path = _recipe(tmp_path, _laughs())  # 9**9 = 387 million strings once expanded
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"recipe\.yaml:\d+: too many values after expanding aliases "
                                        rf"\(limit {MAX_YAML_VALUES}\)$"):
        load_config(PretrainConfig, path)
    with pytest.raises(UserError, match="too many values"):
        read_yaml_bounded(path)
    assert time.monotonic() - start < 5  # linear in the text: well under a second in practice
    small = _recipe(tmp_path, _laughs(depth=3, width=3))  # 3**3 values: fine for the reader
    assert read_yaml_bounded(small)[0]["a2"] == [[["lol"] * 3] * 3] * 3


def test_recursive_aliases_and_deep_nesting_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"recipe\.yaml:1: an alias refers to a collection it is inside"):
        load_config(PretrainConfig, _recipe(tmp_path, "sample_prompts: &p [a, *p]\n"))
    with pytest.raises(UserError, match=r"recipe\.yaml: nested too deeply"):
        load_config(PretrainConfig, _recipe(tmp_path, "sample_prompts: " + "[" * 5000 + "]" * 5000 + "\n"))
    with pytest.raises(UserError, match=r"recipe\.yaml: a file of 1\.\d MiB; a YAML recipe over 1 MiB is refused"):
        load_config(PretrainConfig, _recipe(tmp_path, "# padding\n" * 120_000))


def test_data_on_bad_row_is_the_top_level_key(tmp_path):
    from alignlab.config import DPOConfig, RewardModelConfig, SFTConfig

    for cls in (RewardModelConfig, SFTConfig, DPOConfig):
        assert cls().on_bad_row == "error"
        assert load_config(cls, None, ["data.on_bad_row=skip"]).on_bad_row == "skip"
        assert load_config(cls, _recipe(tmp_path, "data.on_bad_row: skip\n")).on_bad_row == "skip"
    with pytest.raises(UserError, match="^on_bad_row: expected one of 'error', 'skip', got 'maybe'"):
        load_config(SFTConfig, None, ["on_bad_row=maybe"])
    with pytest.raises(UserError, match="data.on_bad_row: unknown key"):
        load_config(PretrainConfig, None, ["data.on_bad_row=skip"])  # pretraining reads text, not rows


def test_typed_layers_apply_between_the_recipe_and_the_overrides_and_name_their_place(tmp_path):
    """A sweep recipe's `set:` reaches load_config as typed values (never as key=value text), after the
    base recipe and before the command line's overrides; a bad value names the layer's file and line."""
    from alignlab.config import GRPOConfig
    from alignlab.config_io import Layer

    recipe = tmp_path / "base.yaml"
    recipe.write_text("beta: 0.1\nreward:\n  mode: shaped\n")
    layer = Layer({"beta": 0.2, "reward.function": "null", "generation.stop_strings": ["a=b", " x "]}, "sweep.yaml", 7)
    cfg = load_config(GRPOConfig, recipe, ["reward.mode=sharp"], layers=[layer])
    assert cfg.beta == 0.2 and cfg.reward.mode == "sharp"  # layer over recipe, override over both
    assert cfg.reward.function == "null" and cfg.generation.stop_strings == ("a=b", " x ")  # kept as typed
    cfg = load_config(GRPOConfig, recipe, ["beta=0.3"], layers=[layer])
    assert cfg.beta == 0.3
    with pytest.raises(UserError, match=r"^sweep\.yaml:9: optim\.lr: expected a float"):
        load_config(GRPOConfig, recipe, layers=[Layer({"optim.lr": "fast"}, "sweep.yaml", 9)])
