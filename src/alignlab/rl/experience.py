"""What PPO learns from a rollout (rl/rollout.py): the targets (rewards with the KL penalty, GAE per value stream,
Safe RLHF's combined advantage for ppo-lag), `ppo_epochs` passes of clipped policy and value updates over them, and
the metrics under TRL's last PPO's names (`objective/kl`, `policy/clipfrac_avg`, ...). The maths is rl/ppo_core.py's;
this module applies it to a rollout's tensors and the models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from omegaconf import DictConfig

from alignlab.rl import ppo_core as core
from alignlab.rl.actor_critic import ActorCritic
from alignlab.rl.rollout import Rollout, reply_logps


@dataclass
class Targets:
    advantages: torch.Tensor  # (B, T) whitened
    returns: torch.Tensor  # (B, T, streams)
    kl: torch.Tensor  # (B, T) masked per-token KL
    non_score: torch.Tensor  # (B, T)
    scores: torch.Tensor  # (B,) reward after clipping and the missing-EOS penalty


def targets(r: Rollout, a: DictConfig, kl_coef: float, multiplier: float | None) -> Targets:
    """Rewards with the KL penalty, GAE per value stream and, for ppo-lag, Safe RLHF's combined advantage.
    The KL penalty joins the reward stream only: the cost stream is the cost model's score alone."""
    scores = r.scores[:, 0].clone()
    if a.missing_eos_penalty is not None:
        scores[r.truncated] -= a.missing_eos_penalty
    if a.reward_clip is not None:
        scores = scores.clamp(-a.reward_clip, a.reward_clip)
    kl = core.kl_per_token(r.logp, r.ref_logp, a.kl_estimator) * r.mask
    rewards, non_score = core.token_rewards(scores, kl, kl_coef, r.mask)
    if a.whiten_rewards:
        rewards = core.masked_whiten(rewards, r.mask, shift_mean=False)
    advantages, returns = core.gae(rewards, r.values[..., 0], r.mask, a.gamma, a.lam)
    all_returns = [returns]
    if multiplier is not None:
        costs, _ = core.token_rewards(r.scores[:, 1], torch.zeros_like(kl), 0.0, r.mask)
        cost_adv, cost_returns = core.gae(costs, r.values[..., 1], r.mask, a.gamma, a.lam)
        advantages = core.lagrangian_advantages(advantages, cost_adv, multiplier)
        all_returns.append(cost_returns)
    advantages = core.masked_whiten(advantages, r.mask)
    return Targets(advantages, torch.stack(all_returns, -1), kl, non_score, scores)


def ppo_epochs(
    ac: ActorCritic,
    optimizer: Any,
    scheduler: Any,
    acc: Accelerator,
    r: Rollout,
    t: Targets,
    a: DictConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """`ppo_epochs` passes of clipped policy + value updates over shuffled minibatches; averaged statistics."""
    ac.train()
    stats: dict[str, list[float]] = {}
    B = r.ids.shape[0]
    for _ in range(a.ppo_epochs):
        perm = torch.randperm(B, generator=generator)
        for start in range(0, B, a.mini_batch_size):
            idx = perm[start : start + a.mini_batch_size]
            with acc.accumulate(ac), acc.autocast():
                P, m = r.prompt_len, r.mask[idx]
                logits, values = ac(r.ids[idx], r.attn[idx], logits_to_keep=r.ids.shape[1] - P + 1)
                logp = reply_logps(logits, r.ids[idx, P:], a.temperature)
                pg_loss, pg = core.policy_loss(logp, r.logp[idx], t.advantages[idx], m, a.cliprange)
                v = values[:, P - 1 : -1].float()
                vf_losses = [
                    core.value_loss(v[..., k], r.values[idx][..., k], t.returns[idx][..., k], m, a.cliprange_value)
                    for k in range(v.shape[-1])
                ]
                loss = pg_loss + a.vf_coef * sum(vl for vl, _ in vf_losses)
                acc.backward(loss)
                if acc.sync_gradients and a.max_grad_norm:
                    acc.clip_grad_norm_(ac.parameters(), a.max_grad_norm)
                optimizer.step()  # a no-op between accumulation steps (accelerate's wrapped optimizer)
                if acc.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            entropy = core.masked_mean(core.entropy_from_logits(logits[:, :-1].detach() / a.temperature), m)
            _add(
                stats,
                {
                    "policy/approxkl_avg": pg["approxkl"],
                    "policy/clipfrac_avg": pg["clipfrac"],
                    "loss/policy_avg": pg_loss,
                    "loss/value_avg": vf_losses[0][0],
                    "val/clipfrac_avg": vf_losses[0][1],
                    "val/ratio": pg["ratio"],
                    "policy/entropy_avg": entropy,
                },
            )
            if len(vf_losses) > 1:
                _add(stats, {"loss/cost_value_avg": vf_losses[1][0]})
    return {k: sum(v) / len(v) for k, v in stats.items()}


def _add(stats: dict[str, list[float]], values: dict[str, torch.Tensor]) -> None:
    for k, v in values.items():
        stats.setdefault(k, []).append(float(v.detach()))


def rollout_metrics(r: Rollout, t: Targets, kl_coef: float) -> dict[str, float]:
    """TRL's `objective/*` names: sums over each reply's tokens, averaged over the batch."""
    kl = t.kl.sum(1)
    non_score = t.non_score.sum(1)
    return {
        "objective/kl": float(kl.mean()),
        "objective/entropy": float((-r.logp * r.mask).sum(1).mean()),
        "objective/non_score_reward": float(non_score.mean()),
        "objective/rlhf_reward": float((t.scores + non_score).mean()),
        "objective/scores": float(t.scores.mean()),
        "objective/kl_coef": kl_coef,
        "val/num_eos_tokens": float((~r.truncated).sum()),
        "eval/response_tokens": float(r.mask.sum(1).mean()),
    }


def cost_metrics(r: Rollout, threshold: float) -> dict[str, float]:
    costs = r.scores[:, 1]
    return {
        "cost/mean": float(costs.mean()),
        "cost/positive_rate": float((costs > 0).float().mean()),  # a sign-trained cost model: > 0 means unsafe
        "cost/violation": float(costs.mean() - threshold),
    }


def summarize(history: list[dict[str, Any]], resumed_from: str | None) -> dict[str, Any]:
    """The stage's metrics: the last iteration under TRL's names, and the first and last quarter of the run's
    mean score (and cost), so a reader sees what PPO changed without opening the curves."""
    last = history[-1]
    k = max(1, len(history) // 4)
    out: dict[str, Any] = {key: v for key, v in last.items() if key != "step"}
    for name in ("objective/scores", "objective/kl", "cost/mean"):
        if name in last:
            out[f"first/{name}"] = sum(h[name] for h in history[:k]) / k
            out[f"final/{name}"] = sum(h[name] for h in history[-k:]) / k
    out["global_step"] = last["step"]
    out["resumed_from"] = resumed_from
    return out
