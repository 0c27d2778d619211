"""PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022), as pure functions of tensors.

A completion of T tokens is an episode; token t is an action, its value V_t comes from a value head.
The reward is per token: -kl_coef * (logp_t - ref_logp_t) (the k1 KL estimate, folded into the
reward as InstructGPT does), plus the sequence score (a reward model's, or rules') on the LAST REAL
token of the completion: its end-of-turn token when it stopped, never a pad.

Generalised advantage estimation (Schulman et al. 2016), written out: with
    delta_t = r_t + gamma * V_{t+1} - V_t          (V_T = 0: nothing after the last real token)
    A_t     = delta_t + gamma * lam * A_{t+1}       (A_T = 0)
so A_t = sum_k (gamma * lam)^k * delta_{t+k}, and the value target is R_t = A_t + V_t. Padding
(mask False) is neither a state nor an action: it contributes nothing and gets advantage 0.

The policy loss is the clipped surrogate max(-A r, -A clip(r, 1 - eps, 1 + eps)) with
r = exp(logp - old_logp); the value loss is 0.5 * max((V - R)^2, (V_clip - R)^2) with V_clip the
new value kept within `clip_value` of the old one. Both are means over real tokens (TRL's PPOTrainer
conventions). `adaptive_kl_coef` is the controller of Ziegler et al.: the coefficient moves by a
clipped proportional error towards a target KL over a horizon.

Shapes: B completions, T tokens; every per-token tensor (B, T) float, `mask` (B, T) bool with the
real tokens first (right padding), `scores` (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.algorithms.common import masked_mean


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the real entries (Bessel-corrected by default, as TRL's masked_var)."""
    mean = masked_mean(values, mask)
    n = mask.sum()
    var = masked_mean((values - mean) ** 2, mask)
    return var * n / (n - 1) if unbiased and n > 1 else var


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / sqrt(var + eps) over the real entries; with `shift_mean` False the mean is
    added back (used for rewards: their scale changes, not their sign). Padding is returned as 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last real token; a row without any is an error (nothing to score)."""
    lengths = mask.sum(-1)
    if (lengths == 0).any():
        raise ValueError("a completion has no real token: it cannot carry a score")
    return lengths - 1


def kl_penalized_rewards(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                         kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards (B, T), per-token k1 KL (B, T)): -kl_coef * KL on every real token, plus the score on
    the last real one; 0 on padding."""
    kl = (logps - ref_logps) * mask  # (B, T)
    rewards = -kl_coef * kl
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both (B, T) and 0 on padding; see the module docstring."""
    rewards, values, m = rewards * mask, values * mask, mask.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m[:, t]  # a pad position resets: nothing flows through it
        advantages[:, t] = running
        next_value = values[:, t] * m[:, t]
    return advantages, (advantages + values) * mask


@dataclass(frozen=True)
class PolicyLoss:
    loss: torch.Tensor
    clip_fraction: float  # share of real tokens where the clipped term was the larger
    approx_kl: float  # 0.5 * mean (logp - old_logp)^2: the early-stop signal


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float = 0.2) -> PolicyLoss:
    """The clipped surrogate, a mean over real tokens."""
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask).item()
        approx_kl = 0.5 * masked_mean(log_ratio ** 2, mask).item()
    return PolicyLoss(loss, clip_fraction, approx_kl)


@dataclass(frozen=True)
class ValueLoss:
    loss: torch.Tensor
    clip_fraction: float  # share of real tokens where the clipped value's error was the larger


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_value: float = 0.2) -> ValueLoss:
    """0.5 * max((V - R)^2, (V_clip - R)^2), a mean over real tokens."""
    clipped = old_values + torch.clamp(values - old_values, -clip_value, clip_value)
    unclipped_error, clipped_error = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        fraction = masked_mean((clipped_error > unclipped_error).float(), mask).item()
    return ValueLoss(loss, fraction)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over real tokens: 1 is a perfect critic, 0 no better than a constant."""
    var_returns = masked_var(returns, mask)
    if var_returns.item() == 0:
        return float("nan")
    return (1 - masked_var(returns - values, mask) / var_returns).item()


def adaptive_kl_coef(coef: float, current_kl: float, target: float, horizon: int, n_steps: int) -> float:
    """The next KL coefficient (Ziegler et al. 2019): error = clip(KL / target - 1, -0.2, 0.2);
    coef * (1 + error * n_steps / horizon)."""
    error = min(max(current_kl / target - 1, -0.2), 0.2)
    return coef * (1 + error * n_steps / horizon)
