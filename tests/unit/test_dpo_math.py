"""DPO, IPO and hinge losses by hand, padding invariance of the reply log-probs, and parity with TRL."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlab.algorithms.dpo import dpo_loss, sequence_logps

# Two pairs. Log-ratios: pair 0 chosen -1 - (-2) = 1, rejected -3 - (-2) = -1, delta = 2;
# pair 1 chosen -2 - (-2) = 0, rejected -1 - (-2) = 1, delta = -1.
PC, PR, RC, RR = (torch.tensor(v) for v in ([-1.0, -2.0], [-3.0, -1.0], [-2.0, -2.0], [-2.0, -2.0]))


def _softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def test_sigmoid_by_hand():
    # beta 0.5: -log sigmoid(1) = softplus(-1) = 0.31326; -log sigmoid(-0.5) = softplus(0.5) = 0.97408.
    result = dpo_loss(PC, PR, RC, RR, beta=0.5)
    assert result.loss.item() == pytest.approx((_softplus(-1.0) + _softplus(0.5)) / 2)
    assert result.chosen_rewards.tolist() == [0.5, 0.0] and result.rejected_rewards.tolist() == [-0.5, 0.5]
    assert result.accuracy == 0.5 and result.margin == pytest.approx((1.0 - 0.5) / 2)


def test_label_smoothing_by_hand():
    # eps 0.1, beta 0.5, pair 0 (beta*delta = 1): 0.9 * softplus(-1) + 0.1 * softplus(1).
    pair0 = 0.9 * _softplus(-1.0) + 0.1 * _softplus(1.0)
    pair1 = 0.9 * _softplus(0.5) + 0.1 * _softplus(-0.5)
    result = dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    assert result.loss.item() == pytest.approx((pair0 + pair1) / 2)


def test_hinge_and_ipo_by_hand():
    # hinge, beta 0.5: relu(1 - 1) = 0 and relu(1 + 0.5) = 1.5 -> 0.75.
    assert dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="hinge").loss.item() == pytest.approx(0.75)
    # ipo, beta 0.5 (target 1 / (2 * 0.5) = 1), no lengths: (2 - 1)^2 = 1, (-1 - 1)^2 = 4 -> 2.5.
    assert dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo").loss.item() == pytest.approx(2.5)
    # with reply lengths chosen [2, 1], rejected [1, 4]: pair 0 delta 1/2 - (-1)/1 = 1.5 -> 0.25;
    # pair 1 delta 0/1 - 1/4 = -0.25 -> 1.5625; mean 0.90625.
    lengths = torch.tensor([2, 1, 1, 4])
    assert dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo", lengths=lengths).loss.item() == pytest.approx(0.90625)


def test_reply_logps_ignore_prompt_and_padding():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    reply = torch.tensor([[False, False, True, True, True]])
    expected = sum(torch.log_softmax(logits[0, t - 1], -1)[ids[0, t]] for t in (2, 3, 4))
    assert sequence_logps(logits, ids, reply).item() == pytest.approx(expected.item(), rel=1e-6)
    padded_logits = torch.cat([logits, torch.randn(1, 3, 7)], 1)  # three pad positions, any logits
    padded_ids = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    padded_reply = torch.cat([reply, torch.zeros(1, 3, dtype=torch.bool)], 1)
    assert sequence_logps(padded_logits, padded_ids, padded_reply).item() == pytest.approx(expected.item(), rel=1e-6)
    other_prompt = logits.clone()
    other_prompt[0, 0] += 5.0  # logits at position 0 predict token 1, a prompt token: no effect
    assert sequence_logps(other_prompt, ids, reply).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_parity_with_trl_on_identical_logps(loss_type):
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    torch.manual_seed(0)
    b, t = 3, 6
    per_token = -torch.rand(2 * b, t - 1)  # policy log-probs of tokens 1..T-1
    completion_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 1, 1],
                                    [0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0]])
    shift = completion_mask[:, 1:].bool()
    ref = -torch.rand(2 * b) * 3
    zeros = torch.zeros(2 * b, t - 1)
    fake_out = SimpleNamespace(log_probs=per_token * shift, entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool())
    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=0.3, use_weighting=False, label_smoothing=0.0,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * b, t, dtype=torch.long), "attention_mask": torch.ones(2 * b, t),
              "completion_mask": completion_mask, "ref_chosen_logps": ref[:b], "ref_rejected_logps": ref[b:]}
    theirs = dpo_trainer.DPOTrainer._compute_loss(stand_in, lambda **kw: fake_out, inputs, False)
    logps = (per_token * shift).sum(-1)
    ours = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], beta=0.3, loss_type=loss_type,
                    lengths=completion_mask.sum(-1))
    assert ours.loss.item() == pytest.approx(theirs.item(), rel=1e-6)
