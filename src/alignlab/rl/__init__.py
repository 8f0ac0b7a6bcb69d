"""Online RL pieces below the PPO, PPO-Lagrangian and GRPO/RLOO stages (stages/ holds only their entry points).

- `ppo_core.py`: the maths on tensors alone (GAE, clipped losses, KL penalty and controllers, Lagrange multiplier).
- `actor_critic.py`: PPO's models (policy with value heads or critics, the reference) and the final policy's save.
- `rollout.py`: an iteration's prompts and sampled replies with log-probabilities, values and scores.
- `experience.py`: what PPO learns from a rollout (targets, the update passes) and its metrics under TRL's names.
- `scorers.py`: reward and cost functions (a rm/cm stage, a model folder, or a rule), for PPO and GRPO/RLOO.
"""
