"""Multi-process training through real `torchrun` processes (gloo on CPU): N processes with the same global
batch and seed compute what one process computes.

Each check launches `python -m torch.distributed.run --standalone --nproc_per_node 2 -m alignlab ...`, runs
the same command in one process (in this one, through the CLI's `main`, to save a start-up), then compares
the logged metrics and the final weights. They agree to
float tolerance, not bit for bit: a rank's forward runs on its half of each batch (other matmul shapes,
other padding widths) and DDP sums the two halves' gradients in another order. The measured differences
are printed (`pytest -s`); tolerances sit well above them.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignlab.cli import main

pytestmark = pytest.mark.slow

TINY = ["model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_hidden_layers=2",
        "model.arch.num_attention_heads=2", "model.arch.num_key_value_heads=1", "tokenizer.kind=byte"]
COMMON = ["run.progress=false", "run.log_every=1"]
RM = ["train-rm", *TINY, *COMMON, "dummy_pairs=48", "steps=6", "run.batch_size=4", "run.eval_every=3",
      "max_length=48", "run.save_every=0"]
GRPO = ["grpo", *COMMON, "num_generations=4", "run.batch_size=16", "optim.grad_accum=2", "max_new_tokens=12",
        "run.eval_every=2", "eval_prompts=2", "eval_samples=2", "optim.lr=1e-3", "preflight=false",
        "reward.mode=shaped", "beta=0.04", "loss_type=dapo", "num_iterations=2"]
WEIGHT_TOL = 1e-4  # measured: well below (see the printed differences)
METRIC_TOL = 1e-4


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _failure(stderr: str) -> str:
    """The ranks' Python errors (torchrun's own summary would hide them at the tail) and the tail."""
    errors = [line for line in stderr.splitlines() if "Error" in line or "Traceback" in line]
    return "\n".join(errors[:30]) + "\n...\n" + stderr[-1500:]


def _alignlab(args: list[str], processes: int = 1, *extra: str) -> subprocess.CompletedProcess | None:
    """`alignlab ARGS EXTRA` in `processes` torchrun processes (in this process when 1)."""
    if processes == 1:
        assert main([*args, *extra]) == 0
        return None
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                "-m", "alignlab"]
    done = subprocess.run([*launcher, *args, *extra], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, _failure(done.stderr)
    return done


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights_diff(a: Path, b: Path) -> float:
    ours, theirs = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ours.keys() == theirs.keys()
    return max((ours[k] - theirs[k]).abs().max().item() for k in ours)


def _metrics_diff(a: Path, b: Path, keys: tuple[str, ...]) -> float:
    one, two = _metrics(a), _metrics(b)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    gaps = [0.0]
    for x, y in zip(one, two, strict=True):
        for key in (k for k in keys if k in x):
            assert key in y, (x["step"], key)
            gaps.append(abs(x[key] - y[key]))
    return max(gaps)


def _ledger(run: Path) -> list[dict]:
    with gzip.open(run / "rollouts.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _report(name: str, weights: float, metrics: float) -> None:
    print(f"\n[distributed] {name}: 1 vs 2 processes, max |weight diff| {weights:.2e}, max |metric diff| {metrics:.2e}")


def test_distributed_reward_model_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _alignlab(RM, 1, f"run.out_dir={one}")
    out = _alignlab(RM, 2, f"run.out_dir={two}")
    assert out.stdout.count("train-rm:") == 1  # rank 0 alone prints
    weights = _weights_diff(one / "checkpoints" / "final", two / "checkpoints" / "final")
    metrics = _metrics_diff(one, two, ("loss", "accuracy", "margin", "grad_norm", "eval/accuracy", "eval/margin",
                                       "final/accuracy", "final/margin"))
    _report("train-rm", weights, metrics)
    assert weights < WEIGHT_TOL and metrics < METRIC_TOL
    assert _metrics(one)[-2]["tokens"] == _metrics(two)[-2]["tokens"]  # counts are summed over ranks
    assert (two / "checkpoints" / "best" / "model.safetensors").is_file()


def test_distributed_grpo_matches_one_process(tmp_path, policy_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*GRPO, f"model.path={policy_dir}", "steps=4", "run.save_every=1", "run.keep_checkpoints=5"]
    _alignlab(args, 1, f"run.out_dir={one}")
    _alignlab(args, 2, f"run.out_dir={two}")
    weights = _weights_diff(one / "checkpoints" / "final", two / "checkpoints" / "final")
    metrics = _metrics_diff(one, two, ("loss", "reward_mean", "reward_std", "pass_rate", "grad_norm",
                                       "completion_length_mean", "eval/pass_rate", "eval/reward_mean"))
    _report("grpo", weights, metrics)
    assert weights < WEIGHT_TOL and metrics < METRIC_TOL
    ledger_one, ledger_two = _ledger(one), _ledger(two)
    assert len(ledger_one) == 2 * 16  # 4 steps, a generation batch every num_iterations=2 steps
    assert [r["completion"] for r in ledger_one] == [r["completion"] for r in ledger_two]
    assert [r["group"] for r in ledger_two[:8]] == [0, 0, 0, 0, 1, 1, 1, 1]
    # FSDP: generation and evaluation run on the gathered model, under inference mode
    sharded = tmp_path / "fsdp"
    _alignlab(args, 2, f"run.out_dir={sharded}", "run.fsdp=true")
    weights = _weights_diff(one / "checkpoints" / "final", sharded / "checkpoints" / "final")
    metrics = _metrics_diff(one, sharded, ("loss", "reward_mean", "grad_norm", "eval/pass_rate", "eval/reward_mean"))
    _report("grpo with fsdp", weights, metrics)
    assert weights < WEIGHT_TOL and metrics < METRIC_TOL
    assert [r["completion"] for r in _ledger(sharded)] == [r["completion"] for r in ledger_one]
    # the other way round: 2 processes saved step_3 mid generation batch (gathered whole); 1 process resumes
    crashed = tmp_path / "crashed"
    shutil.copytree(two, crashed)
    shutil.rmtree(crashed / "checkpoints" / "final")
    _alignlab(args, 1, f"run.out_dir={crashed}", "--resume")
    weights = _weights_diff(one / "checkpoints" / "final", crashed / "checkpoints" / "final")
    metrics = _metrics_diff(one, crashed, ("loss", "reward_mean", "grad_norm", "eval/pass_rate"))
    _report("grpo resume (2 -> 1 process at step 3)", weights, metrics)
    assert weights < WEIGHT_TOL and metrics < METRIC_TOL


def test_distributed_resume_from_a_one_process_checkpoint(tmp_path, policy_dir):
    """One process to step 3 (mid generation batch: num_iterations=2), then two processes resume to the end."""
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    args = [*GRPO, f"model.path={policy_dir}", "steps=4", "run.save_every=1", "run.keep_checkpoints=5"]
    _alignlab(args, 1, f"run.out_dir={full}")
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "final")  # the newest left is step_3 (the last step saves only final)
    out = _alignlab(args, 2, f"run.out_dir={crashed}", "--resume")
    assert out.stdout.count("resuming from") == 1
    weights = _weights_diff(full / "checkpoints" / "final", crashed / "checkpoints" / "final")
    metrics = _metrics_diff(full, crashed, ("loss", "reward_mean", "grad_norm", "eval/pass_rate"))
    _report("grpo resume (1 -> 2 processes at step 3)", weights, metrics)
    assert weights < WEIGHT_TOL and metrics < METRIC_TOL
    steps = [r["step"] for r in _ledger(crashed)]
    assert steps == [1] * 16 + [3] * 16  # no generation logged twice


def test_distributed_sft_pretrain_dpo_and_fsdp_match_one_process(tmp_path, policy_dir):
    runs = {"sft": ["sft", *TINY, *COMMON, "synthetic_per_prompt=1", "steps=3", "run.batch_size=4",
                    "run.eval_every=2", "run.save_every=2"],
            "pretrain": ["pretrain", *TINY, *COMMON, "block_size=32", "run.batch_size=4", "steps=3",
                         "max_new_tokens=8", "run.save_every=0"],
            "dpo": ["dpo", *COMMON, f"model.path={policy_dir}", "dummy_pairs=16", "steps=3", "run.batch_size=4",
                    "max_length=96", "run.eval_every=3", "run.save_every=0", "optim.lr=1e-3"]}
    for name, args in runs.items():
        one, two = tmp_path / f"{name}1", tmp_path / f"{name}2"
        _alignlab(args, 1, f"run.out_dir={one}")
        _alignlab(args, 2, f"run.out_dir={two}")
        weights = _weights_diff(one / "checkpoints" / "final", two / "checkpoints" / "final")
        metrics = _metrics_diff(one, two, ("loss", "grad_norm", "eval/loss", "accuracy", "margin"))
        _report(name, weights, metrics)
        assert weights < WEIGHT_TOL and metrics < METRIC_TOL, name
    # FSDP (FULL_SHARD over gloo): the same SFT run, sharded, saves whole weights and the same numbers
    sharded = tmp_path / "sft_fsdp"
    _alignlab(runs["sft"], 2, f"run.out_dir={sharded}", "run.fsdp=true")
    weights = _weights_diff(tmp_path / "sft1" / "checkpoints" / "final", sharded / "checkpoints" / "final")
    metrics = _metrics_diff(tmp_path / "sft1", sharded, ("loss", "grad_norm", "eval/loss"))
    _report("sft with fsdp", weights, metrics)
    assert weights < WEIGHT_TOL and metrics < METRIC_TOL
    state = torch.load(sharded / "checkpoints" / "step_2" / "trainer_state.pt", weights_only=True)
    assert state["optimizer_by_name"] and state["step"] == 2


def test_distributed_refuses_a_batch_that_does_not_split(tmp_path, policy_dir):
    args = [*GRPO, f"model.path={policy_dir}", "run.batch_size=8", "steps=1", f"run.out_dir={tmp_path / 'run'}"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "alignlab"]
    done = subprocess.run([*launcher, *args], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "run.batch_size:" in done.stderr and "num_generations=4" in done.stderr
    assert not (tmp_path / "run").exists()


def test_distributed_ppo_matches_one_process(tmp_path, policy_dir):
    """Ranks sample alternate rows of each rollout (row seeds), gather them and split each micro-batch; the
    early stop is agreed."""
    args = ["ppo", *COMMON, f"model.path={policy_dir}", "steps=4", "run.batch_size=8", "num_mini_batches=2",
            "num_ppo_epochs=2", "generation.max_new_tokens=12", "run.eval_every=2", "eval_prompts=2",
            "optim.lr=1e-3", "kl_coef=0.1", "early_stop_approx_kl=1e-5", "run.save_every=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    _alignlab(args, 1, f"run.out_dir={one}")
    _alignlab(args, 2, f"run.out_dir={two}")
    weights = _weights_diff(one / "checkpoints" / "final", two / "checkpoints" / "final")
    critic = max((a - b).abs().max().item() for a, b in zip(
        load_file(one / "checkpoints" / "final" / "value.safetensors").values(),
        load_file(two / "checkpoints" / "final" / "value.safetensors").values(), strict=True))
    metrics = _metrics_diff(one, two, ("loss", "policy_loss", "value_loss", "score_mean", "kl", "grad_norm",
                                       "rollouts", "early_stops", "eval/pass_rate"))
    _report("ppo", max(weights, critic), metrics)
    assert max(weights, critic) < WEIGHT_TOL and metrics < METRIC_TOL
    assert [r["completion"] for r in _ledger(one)] == [r["completion"] for r in _ledger(two)]
