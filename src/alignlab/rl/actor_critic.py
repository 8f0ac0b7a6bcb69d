"""PPO's models: the policy with its value estimates (`ActorCritic`: value heads on the policy's trunk, or separate
critics), the frozen reference where LoRA's adapter cannot stand in for it, and the final policy's save."""

from __future__ import annotations

import math

import torch
from accelerate import Accelerator
from transformers import AutoModelForSequenceClassification

from alignlab.distributed import stage_precision
from alignlab.models import load_model, lora_config
from alignlab.rl.scorers import ModelScorer, Scorer
from alignlab.training.context import StageContext, load_reference
from alignlab.training.saving import full_state_model, save_model
from alignlab.training.trainer import gradient_checkpointing


class ActorCritic(torch.nn.Module):
    """The policy plus its value estimates: one output per value stream (reward; reward and cost for ppo-lag).

    `head`: linear heads on the policy's last hidden state (one forward pass gives logits and values; the trunk is
    shared, as in TRL's old AutoModelForCausalLMWithValueHead). `critic`: separate sequence-classification models
    whose score head is applied to every position (TRL's PPO value model).
    """

    def __init__(self, policy: torch.nn.Module, heads: int, critics: list[torch.nn.Module] | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.critics = torch.nn.ModuleList(critics or [])
        self.heads = None
        if not critics:
            self.heads = torch.nn.Linear(policy.config.hidden_size, heads)
            torch.nn.init.normal_(self.heads.weight, std=1.0 / math.sqrt(policy.config.hidden_size + 1))
            torch.nn.init.zeros_(self.heads.bias)

    # TRL's unwrap_model_for_generation switches checkpointing off while generating: delegate to the policy.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.policy, "is_gradient_checkpointing", False))

    def gradient_checkpointing_disable(self) -> None:
        self.policy.gradient_checkpointing_disable()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def forward(
        self, ids: torch.Tensor, attn: torch.Tensor, logits_to_keep: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the last `logits_to_keep` positions (0: all, as transformers counts them) and the values at
        every position."""
        # Left-padded prompts: positions count real tokens only, as generation counted them.
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        out = self.policy(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            output_hidden_states=self.heads is not None,
            logits_to_keep=logits_to_keep,
        )
        if self.heads is not None:
            values = self.heads(out.hidden_states[-1].to(self.heads.weight.dtype))
        else:
            values = torch.cat([token_scores(c, ids, attn, pos) for c in self.critics], dim=-1)
        return out.logits, values


def token_scores(critic: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """A sequence-classification model's score head on every position (not only the last): per-token values."""
    base = critic.get_base_model() if hasattr(critic, "get_base_model") else critic
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state
    return base.score(hidden).float()


def disable_dropout(model: torch.nn.Module) -> None:
    """PPO's ratio compares the same forward pass at rollout and update time: dropout would make it noise."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def build_critic(path: str, ctx: StageContext) -> torch.nn.Module:
    critic = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    critic.config.pad_token_id = ctx.tokenizer.pad_token_id
    peft = lora_config(ctx.cfg.model, critic, task_type="SEQ_CLS")
    if peft is not None:
        from peft import get_peft_model

        critic = get_peft_model(critic, peft)
    disable_dropout(critic)
    return critic


def build_actor_critic(ctx: StageContext, scorers: list[Scorer]) -> tuple[ActorCritic, torch.nn.Module | None]:
    """Policy (+ LoRA), value heads or critics, and a separate reference only where the adapter cannot serve."""
    a = ctx.algo
    policy = load_model(ctx.input_model, ctx.cfg.model)
    peft = lora_config(ctx.cfg.model, policy, tokenizer=ctx.tokenizer)
    if peft is not None:
        from peft import get_peft_model

        policy = get_peft_model(policy, peft)
    if gradient_checkpointing(ctx, stage_precision(ctx.cfg, a)):
        policy.gradient_checkpointing_enable()
        if peft is not None:
            policy.enable_input_require_grads()
    disable_dropout(policy)
    critics = None
    if a.value_model == "critic":
        inits = [s.scorer.path if isinstance(s, ModelScorer) else ctx.input_model for s in scorers]
        critics = [build_critic(p if a.critic_init == "reward" else ctx.input_model, ctx) for p in inits]
    reference = None
    if a.reference is not None:
        reference = load_reference(ctx)
    elif peft is None:
        reference = load_model(ctx.input_model, ctx.cfg.model)
    if reference is not None:
        reference.eval().requires_grad_(False)
    return ActorCritic(policy, len(scorers), critics), reference


def save_policy(acc: Accelerator, ac: ActorCritic, ctx: StageContext) -> None:
    """The final policy (LoRA merged) to `model/`, once every rank has finished its last update. Under ZeRO-3 each
    rank holds a shard of every tensor: all ranks gather the state dict, rank 0 loads it into a whole model."""
    acc.wait_for_everyone()
    if ctx.cfg.distributed.zero_stage == 3:
        state = acc.get_state_dict(ac)
        if acc.is_main_process:
            policy = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
            save_model(full_state_model(acc.unwrap_model(ac).policy, policy), ctx)
    elif acc.is_main_process:
        save_model(acc.unwrap_model(ac).policy, ctx)
