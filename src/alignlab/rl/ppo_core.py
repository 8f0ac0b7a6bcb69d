"""The mathematics of PPO for language models, as plain tensor functions (one idea each, unit-tested by hand).

Shapes: every per-token tensor is `(batch, T)` over the response tokens, with `mask` 1 on real tokens (the reply up
to and including its end-of-turn token) and 0 on padding. We write these ourselves: TRL 1.16 removed its PPOTrainer,
and the pieces below are short enough that owning them is cheaper than pinning a dead release. Conventions follow
TRL's last PPO (v1.12) and Safe RLHF (Dai et al. 2023) so numbers are comparable.
"""

from __future__ import annotations

import math

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the masked entries (Bessel's correction, as TRL does)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    return var * n / (n - 1).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean (unless `shift_mean` is False, used for rewards) and unit variance over the masked entries."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probabilities.

    k1 = log p - log q (unbiased, can be negative per token); k3 = (q/p - 1) - log(q/p) (unbiased and >= 0,
    Schulman's "approximating KL divergence" note).
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    return torch.expm1(-log_ratio) + log_ratio


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (where the sequence-level score is paid)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask).amax(dim=1).long()


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * KL on every token, plus the sequence score on the last one.

    Returns (rewards, non_score_rewards), both masked.
    """
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards, non_score


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each reply; returns (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t with V = 0 after the last real token;
    A_t = delta_t + gamma * lam * A_{t+1};  returns = A + V (the value targets).
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        running = running * mask[:, t]  # padding carries nothing back into the reply
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1-eps, 1+eps)), r = p / p_old."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),  # TRL's approxkl: E[(log r)^2] / 2
        "ratio": masked_mean(ratio, mask),
    }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: 0.5 * mean max((V - R)^2, (V_clipped - R)^2); returns (loss, clip fraction)."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss_unclipped, loss_clipped), mask)
    return loss, masked_mean((loss_clipped > loss_unclipped).float(), mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the categorical distribution given by logits."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Ziegler et al. (2019): move the coefficient so the episode KL tracks a target.

    error = clip(KL / target - 1, -0.2, 0.2); coef *= 1 + error * n_steps / horizon.
    """

    def __init__(self, kl_coef: float, target: float, horizon: int) -> None:
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


class LagrangeMultiplier:
    """Safe RLHF's Lagrange multiplier for the constraint E[cost] <= threshold, learned on log(lambda).

    The multiplier's loss is -(E[cost] - threshold) * lambda: a gradient step raises lambda while the constraint is
    violated and lowers it once the episode cost is under the threshold. Log-parameterised so lambda stays
    positive; Adam on log(lambda) as in Safe RLHF's reference implementation, clamped at `lambda_max`.
    """

    def __init__(self, init: float, lr: float, threshold: float, lambda_max: float | None = None) -> None:
        self.log_lambda = torch.nn.Parameter(torch.tensor(math.log(init)))
        self.optimizer = torch.optim.Adam([self.log_lambda], lr=lr)
        self.threshold = threshold
        self.max_log = math.log(lambda_max) if lambda_max is not None else None

    @property
    def value(self) -> float:
        return float(self.log_lambda.detach().exp())

    def update(self, episode_cost: float) -> float:
        """One step from the mean episode cost of a rollout batch; returns the multiplier's loss."""
        loss = -(episode_cost - self.threshold) * self.log_lambda.exp()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.max_log is not None:
            with torch.no_grad():
                self.log_lambda.clamp_(max=self.max_log)
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {"log_lambda": float(self.log_lambda.detach()), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.log_lambda.fill_(state["log_lambda"])
        self.optimizer.load_state_dict(state["optimizer"])


def lagrangian_advantages(reward_adv: torch.Tensor, cost_adv: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Safe RLHF's combined advantage (A_r - lambda * A_c) / (1 + lambda): the scale stays bounded as lambda grows."""
    return (reward_adv - multiplier * cost_adv) / (1.0 + multiplier)
