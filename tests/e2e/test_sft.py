"""SFT: the loss sees assistant tokens only; a tiny policy learns the study-plan format on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.cli import main
from alignlab.config import SFTConfig, load_config
from alignlab.data.conversations import read_conversations
from alignlab.errors import UserError
from alignlab.trainers.sft import collate, sft, tokenize_example

TINY = ["model.arch.hidden_size=48", "model.arch.intermediate_size=96", "model.arch.num_hidden_layers=2",
        "model.arch.num_attention_heads=2", "model.arch.num_key_value_heads=1", "run.progress=false",
        "run.log_every=1"]


def test_loss_mask_covers_the_reply_only(byte_tok):
    convo = read_conversations([{"prompt": "plan?", "response": "- a 30 分钟"}])[0]
    example, truncated = tokenize_example(byte_tok, convo, max_length=256)
    batch = collate([example, example], byte_tok.pad_id)
    labelled = batch.labels[0][batch.loss_mask[0]].tolist()
    assert byte_tok.decode(labelled, skip_special_tokens=False) == "- a 30 分钟<|im_end|>"
    assert not truncated and batch.input_ids.shape == batch.labels.shape == batch.loss_mask.shape


def test_padding_rows_add_no_loss(byte_tok):
    short = tokenize_example(byte_tok, read_conversations([{"prompt": "p", "response": "r"}])[0], 64)[0]
    long = tokenize_example(byte_tok, read_conversations([{"prompt": "p" * 30, "response": "rr"}])[0], 64)[0]
    batch = collate([short, long], byte_tok.pad_id)
    real = batch.loss_mask.sum(-1).tolist()
    assert real == [2, 3]  # "r" + <|im_end|>, "rr" + <|im_end|>


def test_read_conversations_errors(tmp_path):
    bad = tmp_path / "sft.jsonl"
    bad.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p"}\n')
    with pytest.raises(UserError, match=r"sft.jsonl:2: response"):
        read_conversations(str(bad))
    convo = read_conversations([{"messages": [{"role": "user", "content": "u"},
                                              {"role": "assistant", "content": "a"}]}])[0]
    assert convo[-1] == {"role": "assistant", "content": "a"}


@pytest.mark.slow
def test_sft_learns_the_format(tmp_path):
    cfg = load_config(SFTConfig, None, [*TINY, "synthetic_per_prompt=2", "steps=60", "run.batch_size=8",
                                        "optim.lr=3e-3", "run.eval_every=30", f"run.out_dir={tmp_path / 'sft'}"])
    run = sft(cfg, quiet=True)
    baseline, *records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert baseline["step"] == 0 and set(baseline) >= {"eval/loss"}  # the starting model, evaluated
    assert records[-1]["loss"] < records[0]["loss"] - 1.0
    assert records[-1]["eval/loss"] < baseline["eval/loss"] - 1.0
    from alignlab.model.checkpoint import load_model

    model, tok = load_model(str(run / "checkpoints" / "final"))
    assert tok.hf.chat_template is not None and model.config.hidden_size == 48


def test_sft_on_a_transformers_model(tmp_path, byte_tok):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=byte_tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=256)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    byte_tok.save(tmp_path / "gpt2")
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"q{i}", "response": f"- a {i} 分钟"}) for i in range(20)))
    assert main(["sft", *TINY, f"model.path={tmp_path / 'gpt2'}", f"data={data}", "steps=2", "run.batch_size=4",
                 f"run.out_dir={tmp_path / 'run'}"]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoints" / "final")
    assert type(hf).__name__ == "GPT2LMHeadModel"
    before = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2")
    assert not torch.equal(before.transformer.wte.weight, hf.transformer.wte.weight)
