"""The GRPO loss family (TRL 1.16's loss types and importance levels): by hand, invariants, TRL parity, refusals.

Parity runs TRL's own `GRPOTrainer._compute_loss` on a stand-in `self` holding exactly what that method
reads on a single-process train step (the approach of test_grpo_math.py), with the policy log-probs handed
in as a leaf tensor, so loss and gradient compare on identical inputs. TRL 1.16's KL term is multiplied by
the importance ratio by default (`use_bias_correction_kl=True`); alignlab's is the plain k3, so the stand-in
sets it False: that TRL feature is not implemented here. TRL's vLLM corrections, off-policy mask and
entropy terms are off, as alignlab has none of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlab.algorithms.grpo import BATCH_TOKEN_TYPES, LOSS_TYPES, grpo_loss
from alignlab.config import GRPOConfig, load_config
from alignlab.errors import UserError
from alignlab.trainers import grpo as grpo_trainer
from alignlab.trainers.grpo_rollouts import GRPOBatch

E_HALF, E_MINUS_HALF = math.exp(0.5), math.exp(-0.5)  # 1.64872, 0.60653
KNOBS = {  # per type, the non-default parameters the parity tests use (cispo's cap must clip some tokens)
    "grpo": {"epsilon_high": 0.28}, "dr_grpo": {"epsilon_high": 0.28}, "dapo": {"epsilon_high": 0.28},
    "bnpo": {"epsilon_high": 0.28, "delta": 1.5}, "luspo": {"epsilon_high": 0.28}, "cispo": {"epsilon_high": 1.3},
    "sapo": {"sapo_temperature_pos": 0.9, "sapo_temperature_neg": 1.2},
    "vespo": {"vespo_k_pos": 1.5, "vespo_lambda_pos": 2.5}}


def _tiny():
    """Two rows of two tokens, the second row's last token padding (its 9.0 must never count).

    log ratios [0.5, -0.5] per row -> ratios [e^0.5, e^-0.5] = [1.6487, 0.6065]; A = [+1, -1].
    """
    logps = torch.tensor([[-0.5, -1.5], [-0.5, 9.0]], requires_grad=True)
    old_logps = torch.tensor([[-1.0, -1.0], [-1.0, 9.0]])
    return logps, old_logps, torch.tensor([1.0, -1.0]), torch.tensor([[True, True], [True, False]])


# Clipped per-token losses at eps 0.2: row 0 (A = +1): min(1.6487, 1.2) -> -1.2; min(0.6065, 0.8) -> -0.6065.
# Row 1 (A = -1): -min(-1.6487, -1.2) -> 1.6487. Kept sum -1.2 - 0.6065 + 1.6487 = -0.1578 over 3 tokens.
CLIPPED_SUM = -1.2 - E_MINUS_HALF + E_HALF
BY_HAND = {
    "grpo": ((-1.2 - E_MINUS_HALF) / 2 + E_HALF) / 2,  # row means -0.9033 and 1.6487 -> 0.3727
    "dapo": CLIPPED_SUM / 3,  # -0.0526
    "bnpo": CLIPPED_SUM / 3,  # the same maths on one batch; only the trainer's micro-batch rescaling differs
    "dr_grpo": CLIPPED_SUM / (2 * 4),  # max_completion_length 4: -0.0197
    "luspo": ((-1.2 - E_MINUS_HALF) + E_HALF) / 2,  # row sums -1.8065 and 1.6487 -> -0.0789
    # cispo, cap 5 (no clip): -w * A * logp = [-1.6487 * -0.5, -0.6065 * -1.5] = [0.8244, 0.9098]; row 1:
    # -1.6487 * -1 * -0.5 = -0.8244. Token mean: 0.9098 / 3 = 0.3033.
    "cispo": (E_HALF * 0.5 + E_MINUS_HALF * 1.5 - E_HALF * 0.5) / 3,
    # sapo: row 0 (tau 1) -4 * sigmoid(r - 1) = [-4 * 0.6567, -4 * 0.4029] = [-2.6269, -1.6115], mean -2.1192;
    # row 1 (tau 1.05) +(4 / 1.05) * sigmoid(1.05 * 0.6487) = 2.5295. Mean of rows 0.2052.
    "sapo": ((-4 / (1 + math.exp(-(E_HALF - 1))) - 4 / (1 + math.exp(-(E_MINUS_HALF - 1)))) / 2
             + 4 / 1.05 / (1 + math.exp(-1.05 * (E_HALF - 1)))) / 2,
    # vespo: row 0 log w = 0.5 - 0.5 = 0, phi 1: -1 * 1 * [-0.5, -1.5] = [0.5, 1.5]; row 1 log w = 0.5 (k 3,
    # lambda 2): log phi = 2 + 1.5 - 2 * 1.6487 = 0.2026, phi 1.2245: -1.2245 * -1 * -0.5 = -0.6123. Mean 0.4626.
    "vespo": (0.5 + 1.5 - 0.5 * math.exp(2 + 1.5 - 2 * E_HALF)) / 3,
}


@pytest.mark.parametrize("loss_type", sorted(BY_HAND))
def test_loss_family_by_hand(loss_type):
    assert set(BY_HAND) == set(LOSS_TYPES)
    logps, old_logps, advantages, mask = _tiny()
    epsilon_high = 5.0 if loss_type == "cispo" else None
    result = grpo_loss(logps, old_logps, advantages, mask, loss_type=loss_type, max_completion_length=4,
                       epsilon_high=epsilon_high)
    assert math.isclose(result.loss.item(), BY_HAND[loss_type], rel_tol=1e-5, abs_tol=1e-7)


def test_loss_family_sequence_level_by_hand():
    # GSPO weights: row 0 mean log ratio (0.5 - 0.5) / 2 = 0 -> 1; row 1 only its kept 0.5 -> e^0.5 = 1.6487.
    # Clipped: row 0 (A = +1) -1 on each token; row 1 (A = -1) -min(-1.6487, -1.2) = 1.6487 on its one token.
    logps, old_logps, advantages, mask = _tiny()
    grpo = grpo_loss(logps, old_logps, advantages, mask, importance_sampling_level="sequence")
    assert math.isclose(grpo.loss.item(), (-1 + E_HALF) / 2, rel_tol=1e-6)  # row means -1 and 1.6487: 0.3244
    assert grpo.ratio_mean == pytest.approx((1 + E_HALF) / 2) and grpo.clip_fraction == 0.0  # per sequence
    luspo = grpo_loss(logps, old_logps, advantages, mask, loss_type="luspo", importance_sampling_level="sequence")
    assert math.isclose(luspo.loss.item(), (-1 * 2 + E_HALF * 1) / 2, rel_tol=1e-6)  # times lengths 2, 1: -0.1756


def test_loss_family_gradients_by_hand():
    # cispo and vespo detach their weights: d loss / d logp = -w * A / (tokens); the weight gets no gradient.
    logps, old_logps, advantages, mask = _tiny()
    cispo = grpo_loss(logps, old_logps, advantages, mask, loss_type="cispo", epsilon_high=1.3)
    (grad,) = torch.autograd.grad(cispo.loss, logps)
    # weights min(r, 1.3) = [1.3, 0.6065] / [1.3]; over 3 tokens: [-1.3 / 3, -0.6065 / 3], [1.3 / 3]
    expected = torch.tensor([[-1.3 / 3, -E_MINUS_HALF / 3], [1.3 / 3, 0.0]])
    torch.testing.assert_close(grad, expected)
    assert cispo.clip_fraction == pytest.approx(1 / 3)  # only row 0's first token: above the cap with A > 0
    # on-policy, sapo's slope is the plain policy gradient: 4 * sigmoid'(0) = 1, so d/dlogp = -A / length / B
    on = torch.zeros(2, 2, requires_grad=True)
    sapo = grpo_loss(on, on.detach(), advantages, mask, loss_type="sapo")
    (grad,) = torch.autograd.grad(sapo.loss, on)
    torch.testing.assert_close(grad, torch.tensor([[-0.25, -0.25], [0.5, 0.0]]))
    # GSPO on-policy: d ratio_seq / d logp_t = 1 / length, the same gradient as token level
    gspo = grpo_loss(on, on.detach(), advantages, mask, importance_sampling_level="sequence")
    torch.testing.assert_close(torch.autograd.grad(gspo.loss, on)[0], grad)


def test_loss_family_delta_by_hand():
    # A = -1, ratio e^1 = 2.7183: clipped objective -min(-2.7183, -1.2) = 2.7183; delta 2 caps it at 2.
    logps, mask = torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool)
    plain = grpo_loss(logps, torch.zeros(1, 1), torch.tensor([-1.0]), mask)
    capped = grpo_loss(logps, torch.zeros(1, 1), torch.tensor([-1.0]), mask, delta=2.0)
    assert plain.loss.item() == pytest.approx(math.e) and capped.loss.item() == pytest.approx(2.0)


def _random(seed: int, batch: int, tokens: int, empty_row: bool = False):
    """Random log-probs, old and reference log-probs 0.4 apart (ratios != 1), advantages of both signs,
    right padding (every row >= 1 kept token unless `empty_row`, which makes row 0 all padding)."""
    generator = torch.Generator().manual_seed(seed)
    logps = -torch.rand(batch, tokens, generator=generator) * 3
    old_logps = logps + 0.4 * torch.randn(batch, tokens, generator=generator)
    ref_logps = logps + 0.4 * torch.randn(batch, tokens, generator=generator)
    advantages = torch.randn(batch, generator=generator)
    advantages[0], advantages[1] = abs(advantages[0]) + 0.1, -abs(advantages[1]) - 0.1
    lengths = torch.randint(1, tokens + 1, (batch,), generator=generator)
    if empty_row:
        lengths[0] = 0
    mask = torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    return logps.requires_grad_(True), old_logps, ref_logps, advantages, mask


def _stand_in(loss_type: str, level: str, beta: float, knobs: dict, logps: torch.Tensor, *,
              max_completion_length: int, accumulation: int = 1):
    """What TRL 1.16's `_compute_loss` reads from `self`, single process; `logps` stands in for the model."""
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    epsilon = knobs.get("epsilon", 0.2)
    args = SimpleNamespace(
        use_bias_correction_kl=False, delta=knobs.get("delta"), steps_per_generation=accumulation,
        sapo_temperature_pos=knobs.get("sapo_temperature_pos", 1.0),
        sapo_temperature_neg=knobs.get("sapo_temperature_neg", 1.05),
        **{k: knobs.get(k, d) for k, d in (("vespo_k_pos", 2.0), ("vespo_lambda_pos", 3.0), ("vespo_k_neg", 3.0),
                                           ("vespo_lambda_neg", 2.0))})
    return SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda model, *a, **kw: (logps, torch.zeros_like(logps), None),
        get_gamma_weights=trl_grpo.GRPOTrainer.get_gamma_weights, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta, loss_type=loss_type,
        epsilon_low=epsilon, epsilon_high=knobs.get("epsilon_high") or epsilon, use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=accumulation, max_completion_length=max_completion_length,
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics={"train": defaultdict(list)}, args=args,
        accelerator=SimpleNamespace(num_processes=1, reduce=lambda x, reduction: x, gather=lambda x: x))


def _trl_loss(stand_in, old_logps, ref_logps, advantages, mask, num_items: float):
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    batch, tokens = mask.shape
    inputs = {"prompt_ids": torch.zeros(batch, 2, dtype=torch.long),
              "prompt_mask": torch.ones(batch, 2, dtype=torch.long),
              "completion_ids": torch.zeros(batch, tokens, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old_logps, "ref_per_token_logps": ref_logps,
              "num_items_in_batch": torch.tensor(num_items)}
    return trl_grpo.GRPOTrainer._compute_loss(stand_in, None, inputs)


SHAPES = [(0, 4, 3, False), (1, 8, 7, False), (2, 6, 12, True)]  # seed, B, T, row 0 all padding


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[1]}x{s[2]}")
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_family_parity_with_trl(loss_type, level, beta, shape):
    seed, batch, tokens, empty_row = shape
    logps, old_logps, ref_logps, advantages, mask = _random(seed, batch, tokens, empty_row)
    knobs, max_completion_length = KNOBS[loss_type], tokens + 2
    stand_in = _stand_in(loss_type, level, beta, knobs, logps, max_completion_length=max_completion_length)
    theirs = _trl_loss(stand_in, old_logps, ref_logps, advantages, mask, float(mask.sum()))
    (their_grad,) = torch.autograd.grad(theirs, logps)
    ours = grpo_loss(logps, old_logps, advantages, mask, beta=beta, ref_logps=ref_logps, loss_type=loss_type,
                     max_completion_length=max_completion_length, importance_sampling_level=level, **knobs)
    (our_grad,) = torch.autograd.grad(ours.loss, logps)
    torch.testing.assert_close(ours.loss, theirs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(our_grad, their_grad, atol=1e-7, rtol=1e-5)
    assert our_grad.abs().sum() > 0 and not our_grad[~mask].any()  # padding gets no gradient
    metrics = stand_in._metrics["train"]
    if loss_type in ("sapo", "vespo"):  # nothing to clip: TRL logs no clip ratio, alignlab reports 0
        assert ours.clip_fraction == 0.0 and not any(k.startswith("clip_ratio") for k in metrics)
    else:
        clip_key = "cispo_clip_ratio" if loss_type == "cispo" else "clip_ratio/region_mean"
        assert ours.clip_fraction == pytest.approx(metrics[clip_key][0], abs=1e-6)
    if loss_type == "vespo":
        assert ours.extra["vespo_phi_mean"] == pytest.approx(metrics["vespo/phi_seq_mean"][0], rel=1e-5)
    if beta:
        assert ours.kl_mean == pytest.approx(metrics["kl"][0], rel=1e-5)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_family_micro_batches_match_trl(monkeypatch, loss_type):
    """`make_loss` over two micro-batches of one generation batch, summed as the loop does (each / grad_accum),
    against TRL's two accumulated `_compute_loss` calls: loss and gradient, so each type's normaliser
    (whole-batch token count for dapo, cispo, vespo; local for the rest, bnpo included) is TRL's."""
    logps, old_logps, ref_logps, advantages, mask = _random(3, 8, 6)
    mask[:4, 3:] = False  # the two halves keep different token counts, so the normalisers differ
    accumulation, tokens = 2, logps.size(1)
    knobs = KNOBS[loss_type]
    overrides = [f"loss_type={loss_type}", "beta=0.04", f"max_new_tokens={tokens}", "num_generations=2",
                 "run.batch_size=8", f"grad_accum={accumulation}", "model.path=x", "temperature=1.0",
                 *(f"{k}={v}" for k, v in knobs.items())]
    cfg = load_config(GRPOConfig, None, overrides)
    rows = torch.arange(8).unsqueeze(1)  # input_ids carry the row index: the stand-in model reads it back

    def policy(model, input_ids, *args, **kwargs):  # (logps, entropy) of those rows, as `policy_logps` returns
        return logps[input_ids[:, 0]], torch.zeros(len(input_ids), tokens)

    monkeypatch.setattr(grpo_trainer, "policy_logps", policy)
    compute_loss, halves = grpo_trainer.make_loss(None, cfg), (slice(0, 4), slice(4, 8))
    normaliser = float(mask.sum()) / accumulation  # what grpo_rollouts.py hands each micro-batch
    ours = sum(compute_loss(GRPOBatch(rows[s], torch.ones(4, 1, dtype=torch.bool), torch.zeros(4, tokens), mask[s],
                                      advantages[s], old_logps[s], ref_logps[s], normaliser, metrics={}))[0]
               for s in halves) / accumulation  # the loop divides each micro-batch's loss by grad_accum
    theirs = 0.0
    for s in halves:
        part = logps[s]
        stand_in = _stand_in(loss_type, "token", 0.04, knobs, part, max_completion_length=tokens,
                             accumulation=accumulation)
        theirs = theirs + _trl_loss(stand_in, old_logps[s], ref_logps[s], advantages[s], mask[s], float(mask.sum()))
    (our_grad,) = torch.autograd.grad(ours, logps)
    (their_grad,) = torch.autograd.grad(theirs, logps)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(our_grad, their_grad, atol=1e-7, rtol=1e-5)
    if loss_type in BATCH_TOKEN_TYPES:  # rescaled micro-batches add up to the whole generation batch's loss
        whole = grpo_loss(logps, old_logps, advantages, mask, beta=0.04, ref_logps=ref_logps, loss_type=loss_type,
                          max_completion_length=tokens, **knobs).loss
        torch.testing.assert_close(ours, whole, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_family_padding_never_changes_the_loss(loss_type, level):
    logps, old_logps, ref_logps, advantages, mask = _random(4, 6, 5)
    kwargs = dict(beta=0.04, loss_type=loss_type, importance_sampling_level=level, max_completion_length=8,
                  **KNOBS[loss_type])
    clean = grpo_loss(logps, old_logps, advantages, mask, ref_logps=ref_logps, **kwargs)
    generator = torch.Generator().manual_seed(9)

    def garbage(x: torch.Tensor) -> torch.Tensor:  # junk in every masked position, plus three all-padding columns
        junk = 7.0 * torch.randn(x.shape, generator=generator)
        return torch.cat([torch.where(mask, x.detach(), junk), 5.0 * torch.randn(6, 3, generator=generator)], 1)

    wide_mask = torch.cat([mask, torch.zeros(6, 3, dtype=torch.bool)], 1)
    padded = grpo_loss(garbage(logps), garbage(old_logps), advantages, wide_mask, ref_logps=garbage(ref_logps),
                       **kwargs)
    torch.testing.assert_close(clean.loss, padded.loss, atol=1e-6, rtol=1e-6)
    assert clean.clip_fraction == pytest.approx(padded.clip_fraction)


def test_loss_family_config_names_and_defaults_are_trls():
    trl = pytest.importorskip("trl")
    theirs = {f.name: f.default for f in dataclasses.fields(trl.GRPOConfig)}
    ours = GRPOConfig()
    for name, value in ours.loss_knobs.items():
        assert theirs[name] == value, name
    assert (ours.loss_type, ours.epsilon, ours.beta) == (theirs["loss_type"], theirs["epsilon"], theirs["beta"])
    help_text = trl.GRPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    assert all(f"'{loss_type}'" in help_text for loss_type in LOSS_TYPES)  # TRL knows every type alignlab has


@pytest.mark.parametrize("overrides, field", [
    (["loss_type=ppo"], "loss_type"),
    (["importance_sampling_level=group"], "importance_sampling_level"),
    (["loss_type=cispo"], "epsilon_high"),  # epsilon_high unset: TRL would cap every weight at epsilon (0.2)
    (["loss_type=cispo", "epsilon_high=0.28"], "epsilon_high"),  # a clip-higher value, not a weight cap
    (["loss_type=sapo", "delta=2"], "delta"),  # TRL ignores delta outside the clipped types
    (["delta=0.9"], "delta"),
    (["loss_type=sapo", "sapo_temperature_neg=0"], "sapo_temperature_neg"),
    (["vespo_lambda_pos=0"], "vespo_lambda_pos"),  # TRL silently floors it at 1e-4
    (["vespo_k_neg=-1"], "vespo_k_neg"),
])
def test_loss_family_refuses_bad_settings_in_one_line(overrides, field):
    with pytest.raises(UserError) as caught:
        load_config(GRPOConfig, None, overrides)
    message = str(caught.value)
    assert "\n" not in message and field in message, message


def test_loss_family_accepts_what_trl_accepts():
    # TRL 1.16 only warns about luspo at token level and vespo at sequence level; both run, here as there
    assert load_config(GRPOConfig, None, ["loss_type=luspo"]).importance_sampling_level == "token"
    assert load_config(GRPOConfig, None, ["loss_type=vespo", "importance_sampling_level=sequence"])
    cfg = load_config(GRPOConfig, None, ["loss_type=cispo", "epsilon_high=5", "importance_sampling_level=sequence"])
    assert cfg.loss_knobs["importance_sampling_level"] == "sequence"
    assert load_config(GRPOConfig, None, ["loss_type=luspo", "delta=4"]).delta == 4.0


def test_loss_family_grpo_loss_refuses_unknown_names():
    logps, old_logps, advantages, mask = _tiny()
    for kwargs, word in (({"loss_type": "ppo"}, "loss_type"), ({"importance_sampling_level": "group"}, "level")):
        with pytest.raises(ValueError, match=word) as caught:
            grpo_loss(logps, old_logps, advantages, mask, **kwargs)
        assert "\n" not in str(caught.value)
