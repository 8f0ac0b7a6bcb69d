"""PPO and Safe RLHF's PPO-Lagrangian for chat models, on accelerate (our own: TRL 1.16 has no PPOTrainer).

One iteration, read top to bottom in `run`:
1. rollout: `batch_size` prompts from the preference data, one sampled reply each (`generate`, stopping on the
   end-of-turn token, which stays part of the reply so the policy keeps learning to stop);
2. score: the reward model (and, for `ppo-lag`, the cost model) on each whole reply;
3. per-token log-probabilities of policy and reference (LoRA: the same model with its adapter off, no second copy)
   and values; rewards = score on the last token - kl_coef * KL on every token; GAE;
4. `ppo_epochs` passes over shuffled minibatches: clipped policy loss + vf_coef * clipped value loss;
5. the KL coefficient adapts (if `kl_target`), the Lagrange multiplier steps on the episode cost (`ppo-lag`).
The maths lives in `rl/ppo_core.py`; this file moves tensors between models. The same code runs in one CPU
process and as accelerate / DeepSpeed ranks (generation unwraps, and under ZeRO-3 gathers, the policy via TRL's
`unwrap_model_for_generation`). Metric names are TRL's last PPO's (`objective/kl`, `policy/clipfrac_avg`, ...).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator, DeepSpeedPlugin, PartialState
from accelerate.state import AcceleratorState
from omegaconf import DictConfig
from transformers import AutoModelForSequenceClassification, get_scheduler

from alignlab import distributed, preemption
from alignlab.artifacts import COMPLETE, atomic_write_json, atomic_write_text, last_complete_checkpoint
from alignlab.data import unique_prompts
from alignlab.distributed import stage_precision
from alignlab.generation import generation_tokenizer, stop_ids
from alignlab.models import load_model, lora_config
from alignlab.rl import ppo_core as core
from alignlab.rl.scorers import ModelScorer, Scorer, build_scorer
from alignlab.safe_load import load_state, verify_checkpoint
from alignlab.stages.common import StageContext, full_state_model, gradient_checkpointing, load_reference, save_model

STATE_FILE = "ppo_state.pt"


# --------------------------------------------------------------------------------------------------- models
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

    def forward(self, ids: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Left-padded prompts: positions count real tokens only, as generation counted them.
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        out = self.policy(
            input_ids=ids, attention_mask=attn, position_ids=pos, output_hidden_states=self.heads is not None
        )
        if self.heads is not None:
            values = self.heads(out.hidden_states[-1].to(self.heads.weight.dtype))
        else:
            values = torch.cat([_token_scores(c, ids, attn, pos) for c in self.critics], dim=-1)
        return out.logits, values


def _token_scores(critic: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """A sequence-classification model's score head on every position (not only the last): per-token values."""
    base = critic.get_base_model() if hasattr(critic, "get_base_model") else critic
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state
    return base.score(hidden).float()


def _disable_dropout(model: torch.nn.Module) -> None:
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
    _disable_dropout(critic)
    return critic


def build_actor_critic(ctx: StageContext, scorers: list[Scorer]) -> tuple[ActorCritic, torch.nn.Module | None]:
    """Policy (+ LoRA), value heads or critics, and a separate reference only where the adapter cannot serve."""
    a = ctx.algo
    policy = load_model(ctx.input_model, ctx.cfg.model)
    peft = lora_config(ctx.cfg.model, policy)
    if peft is not None:
        from peft import get_peft_model

        policy = get_peft_model(policy, peft)
    if gradient_checkpointing(ctx, stage_precision(ctx.cfg, a)):
        policy.gradient_checkpointing_enable()
        if peft is not None:
            policy.enable_input_require_grads()
    _disable_dropout(policy)
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


# --------------------------------------------------------------------------------------------------- rollouts
@dataclass
class Rollout:
    """One batch of prompts and sampled replies with everything PPO needs, detached."""

    ids: torch.Tensor  # (B, P + T) left-padded prompt, then the reply padded on the right
    attn: torch.Tensor  # (B, P + T)
    prompt_len: int  # P
    mask: torch.Tensor  # (B, T) 1 on reply tokens (end-of-turn included)
    logp: torch.Tensor  # (B, T) policy log-probabilities at sampling time
    ref_logp: torch.Tensor  # (B, T)
    values: torch.Tensor  # (B, T, streams)
    scores: torch.Tensor  # (B, streams): reward (and cost) of each whole reply
    truncated: torch.Tensor  # (B,) reply cut off by max_new_tokens
    replies: list[str]


def prompt_batch(prompts: list[Any], iteration: int, batch_size: int, seed: int) -> list[Any]:
    """The prompts of an iteration: a fresh seeded shuffle per pass over the set, so resuming at iteration k
    draws exactly what an uninterrupted run would have."""
    n, out = len(prompts), []
    start = iteration * batch_size
    for k in range(start, start + batch_size):
        epoch, i = divmod(k, n)
        order = list(range(n))
        random.Random(seed + epoch).shuffle(order)
        out.append(prompts[order[i]])
    return out


def response_mask(reply_ids: torch.Tensor, stops: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """1 up to and including the first stop token; a reply without one (cut off) is all real tokens."""
    is_stop = torch.isin(reply_ids, torch.tensor(stops, device=reply_ids.device))
    seen_before = (is_stop.cumsum(1) - is_stop.long()) > 0
    return (~seen_before).long(), ~is_stop.any(1)


def sequence_logps(logits: torch.Tensor, ids: torch.Tensor, prompt_len: int, temperature: float) -> torch.Tensor:
    """Log-probabilities of the reply tokens at the sampling temperature (logits at t predict token t + 1)."""
    reply_logits = logits[:, prompt_len - 1 : -1].float() / temperature
    return torch.log_softmax(reply_logits, -1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)


@torch.no_grad()
def rollout(
    ac: ActorCritic, reference: torch.nn.Module | None, acc: Accelerator, ctx: StageContext,
    conversations: list[list[dict[str, str]]], scorers: list[Scorer],
) -> Rollout:  # fmt: skip
    from trl.models.utils import unwrap_model_for_generation

    a = ctx.algo
    tok = generation_tokenizer(ctx.tokenizer)
    tok.truncation_side = "left"  # a long prompt keeps its end, where the question is
    stops = stop_ids(ctx.tokenizer)
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    max_prompt = max(ctx.cfg.data.max_length - a.max_new_tokens, 8)
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt,
              add_special_tokens=False).to(acc.device)  # fmt: skip
    P = enc["input_ids"].shape[1]
    ac.eval()
    chunks = []
    gen_batch = a.generation_batch_size or a.batch_size
    with unwrap_model_for_generation(ac, acc) as unwrapped, acc.autocast():
        for i in range(0, len(texts), gen_batch):
            out = unwrapped.policy.generate(
                input_ids=enc["input_ids"][i : i + gen_batch], attention_mask=enc["attention_mask"][i : i + gen_batch],
                max_new_tokens=a.max_new_tokens, do_sample=True, temperature=a.temperature, top_k=a.top_k or 0,
                top_p=1.0, eos_token_id=stops, pad_token_id=tok.pad_token_id,
            )  # fmt: skip
            chunks.append(out[:, P:])
    T = max(c.shape[1] for c in chunks)
    reply = torch.cat([torch.nn.functional.pad(c, (0, T - c.shape[1]), value=tok.pad_token_id) for c in chunks])
    mask, truncated = response_mask(reply, stops)
    reply = torch.where(mask.bool(), reply, tok.pad_token_id)
    ids = torch.cat([enc["input_ids"], reply], 1)
    attn = torch.cat([enc["attention_mask"], mask], 1)

    logps, ref_logps, values = [], [], []
    for i in range(0, len(texts), a.mini_batch_size):
        sl = slice(i, i + a.mini_batch_size)
        with acc.autocast():
            logits, v = ac(ids[sl], attn[sl])
            logps.append(sequence_logps(logits, ids[sl], P, a.temperature))
            values.append(v[:, P - 1 : -1].float())
            if reference is None:  # LoRA: the reference is the same model with its adapter switched off
                with acc.unwrap_model(ac).policy.disable_adapter():
                    ref_logits, _ = ac(ids[sl], attn[sl])
            else:
                pos = (attn[sl].cumsum(1) - 1).clamp(min=0)
                ref_logits = reference(input_ids=ids[sl], attention_mask=attn[sl], position_ids=pos).logits
            ref_logps.append(sequence_logps(ref_logits, ids[sl], P, a.temperature))
    replies = [ctx.tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip() for r, m in zip(reply, mask)]
    scores = torch.stack([s(conversations, replies).float() for s in scorers], dim=1).to(acc.device)
    return Rollout(ids, attn, P, mask.float(), torch.cat(logps), torch.cat(ref_logps), torch.cat(values), scores,
                   truncated, replies)  # fmt: skip


# --------------------------------------------------------------------------------------------------- PPO step
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
    ac: ActorCritic, optimizer: Any, scheduler: Any, acc: Accelerator, r: Rollout, t: Targets, a: DictConfig,
    generator: torch.Generator,
) -> dict[str, float]:  # fmt: skip
    """`ppo_epochs` passes of clipped policy + value updates over shuffled minibatches; averaged statistics."""
    ac.train()
    stats: dict[str, list[float]] = {}
    B = r.ids.shape[0]
    for _ in range(a.ppo_epochs):
        perm = torch.randperm(B, generator=generator)
        for start in range(0, B, a.mini_batch_size):
            idx = perm[start : start + a.mini_batch_size]
            with acc.accumulate(ac), acc.autocast():
                logits, values = ac(r.ids[idx], r.attn[idx])
                P, m = r.prompt_len, r.mask[idx]
                logp = sequence_logps(logits, r.ids[idx], P, a.temperature)
                pg_loss, pg = core.policy_loss(logp, r.logp[idx], t.advantages[idx], m, a.cliprange)
                v = values[:, P - 1 : -1].float()
                vf_losses = [core.value_loss(v[..., k], r.values[idx][..., k], t.returns[idx][..., k], m,
                                             a.cliprange_value) for k in range(v.shape[-1])]  # fmt: skip
                loss = pg_loss + a.vf_coef * sum(vl for vl, _ in vf_losses)
                acc.backward(loss)
                if acc.sync_gradients and a.max_grad_norm:
                    acc.clip_grad_norm_(ac.parameters(), a.max_grad_norm)
                optimizer.step()  # a no-op between accumulation steps (accelerate's wrapped optimizer)
                if acc.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            entropy = core.masked_mean(core.entropy_from_logits(logits[:, P - 1 : -1].detach() / a.temperature), m)
            _add(stats, {"policy/approxkl_avg": pg["approxkl"], "policy/clipfrac_avg": pg["clipfrac"],
                         "loss/policy_avg": pg_loss, "loss/value_avg": vf_losses[0][0],
                         "val/clipfrac_avg": vf_losses[0][1], "val/ratio": pg["ratio"],
                         "policy/entropy_avg": entropy})  # fmt: skip
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


# --------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(acc: Accelerator, ctx: StageContext, iteration: int, state: dict[str, Any]) -> None:
    """accelerate saves models, optimizer, scheduler and RNG; we add the controllers and the history. The
    COMPLETE marker is written last, after every rank, so a half-written checkpoint is never resumed from."""
    ckpt = ctx.checkpoint_dir / f"checkpoint-{iteration}"
    acc.save_state(str(ckpt))
    acc.wait_for_everyone()
    if acc.is_main_process:
        torch.save(state, ckpt / STATE_FILE)
        atomic_write_text(ckpt / COMPLETE, f"{iteration}\n")
        _prune(ctx)


def _prune(ctx: StageContext) -> None:
    limit = ctx.algo.save_total_limit
    if limit is None:
        return
    done = sorted((int(p.name.split("-")[1]), p) for p in ctx.checkpoint_dir.glob("checkpoint-*")
                  if p.name.split("-")[1].isdigit() and (p / COMPLETE).is_file())  # fmt: skip
    for _, path in done[:-limit]:
        shutil.rmtree(path, ignore_errors=True)


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


# ---------------------------------------------------------------------------------------------------- stage
def iterations(a: DictConfig, n_prompts: int) -> int:
    if a.max_steps > 0:
        return int(a.max_steps)
    return max(1, math.ceil(a.epochs * n_prompts / a.batch_size))


def run(ctx: StageContext) -> dict[str, Any]:
    a = ctx.algo
    lagrangian = a.kind == "ppo-lag"
    prompts = unique_prompts(ctx.pairs)
    total = iterations(a, len(prompts))
    precision = stage_precision(ctx.cfg, a)
    ds = distributed.deepspeed_config(ctx.cfg)
    plugin = None
    # A Trainer stage (or run) before this one left its plugin and mixed precision in accelerate's process-wide
    # state, which an Accelerator with other settings refuses: start afresh, as transformers does for each Trainer.
    AcceleratorState._reset_state()
    if ds is not None:  # a Trainer fills DeepSpeed's "auto" values itself; this loop resolves them here
        plugin = DeepSpeedPlugin(hf_ds_config=distributed.fill_auto(ds, a.mini_batch_size, a.grad_accum,
                                                                    a.max_grad_norm, precision))  # fmt: skip
        # What transformers' TrainingArguments does for a DeepSpeed Trainer (on GPUs and on the CPU alike): the
        # process state becomes DeepSpeed's, on the run's backend.
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend=distributed.backend(ctx.cfg))
    acc = Accelerator(mixed_precision={"bf16": "bf16", "fp16": "fp16"}.get(precision, "no"),
                      cpu=not torch.cuda.is_available() and plugin is None,
                      gradient_accumulation_steps=a.grad_accum, deepspeed_plugin=plugin)  # fmt: skip
    torch.manual_seed(ctx.cfg.seed)
    run_dir = ctx.stage_dir.parent
    specs = [a.reward] + ([a.cost] if lagrangian else [])
    scorers = [build_scorer(spec, run_dir, a.mini_batch_size, ctx.cfg.data.max_length) for spec in specs]
    for s in scorers:
        if isinstance(s, ModelScorer):
            s.to(acc.device)
    ac, reference = build_actor_critic(ctx, scorers)
    value_params = [p for n, p in ac.named_parameters() if not n.startswith("policy.") and p.requires_grad]
    policy_params = [p for p in ac.policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": policy_params, "lr": a.learning_rate},
         {"params": value_params, "lr": a.value_learning_rate or a.learning_rate}],
        weight_decay=a.weight_decay,
        fused=a.optim == "adamw_torch_fused",  # one kernel over all tensors (config.TrainConfig.optim)
    )  # fmt: skip
    updates = total * a.ppo_epochs * (a.batch_size // (a.mini_batch_size * a.grad_accum))
    scheduler = get_scheduler(a.lr_scheduler, optimizer, int(a.warmup_ratio * updates), updates)
    # The scheduler is not prepared: accelerate would step it once per rank per call, and our count of updates is
    # already per optimizer step. It is registered so checkpoints still carry it.
    ac, optimizer = acc.prepare(ac, optimizer)
    acc.register_for_checkpointing(scheduler)
    if plugin is not None:
        # Frozen models become DeepSpeed inference engines: under ZeRO-3 they were loaded sharded like the policy
        # (and every rank runs each of their forward passes together, so none waits on another); below stage 3
        # each rank holds a whole copy.
        from trl.models.utils import prepare_deepspeed

        reference = prepare_deepspeed(reference, acc) if reference is not None else None
        for s in scorers:
            if isinstance(s, ModelScorer):
                s.scorer.model = prepare_deepspeed(s.scorer.model, acc)
    elif reference is not None:
        reference.to(acc.device)
    kl_ctl: Any = (core.AdaptiveKLController(a.kl_coef, a.kl_target, a.kl_horizon) if a.kl_target is not None
                   else core.FixedKLController(a.kl_coef))  # fmt: skip
    lagrange = (
        core.LagrangeMultiplier(a.lambda_init, a.lambda_lr, a.cost_threshold, a.lambda_max) if lagrangian else None
    )
    generator = torch.Generator().manual_seed(ctx.cfg.seed)
    history: list[dict[str, Any]] = []
    start = 0
    resume = last_complete_checkpoint(ctx.checkpoint_dir)
    if resume is not None:
        verify_checkpoint(resume)  # accelerate unpickles its custom-object files (the scheduler) unrestricted
        print(f"[alignlab] {ctx.name}: resuming from {resume.name}")
        acc.load_state(str(resume))
        state = load_state(resume / STATE_FILE)
        start, history, kl_ctl.value = state["iteration"], state["history"], state["kl_coef"]
        generator.set_state(state["generator"])
        if lagrange is not None:
            lagrange.load_state_dict(state["lagrange"])
    evaluator = None
    if a.eval_every:
        from alignlab.evaluation.callback import training_evaluator

        evaluator = training_evaluator(ctx)
    ctx.tracker.define_stage(ctx.name)
    print(f"[alignlab] {ctx.name}: {total} PPO iterations of {a.batch_size} rollouts over {len(prompts)} prompts")
    with preemption.training_loop():  # a signal stops the loop at the next iteration, with a checkpoint
        for it in range(start, total):
            if preemption.stop_requested():
                save_checkpoint(acc, ctx, it, _checkpoint_state(it, history, kl_ctl, generator, lagrange))
                raise preemption.stopped(ctx.name, ctx.checkpoint_dir / f"checkpoint-{it}")
            started = time.time()
            # `batch_size` rollouts per rank: each rank takes its own slice of the iteration's prompts.
            batch = prompt_batch(prompts, it, a.batch_size * acc.num_processes, ctx.cfg.seed)
            r = rollout(ac, reference, acc, ctx, batch[acc.process_index :: acc.num_processes], scorers)
            multiplier = lagrange.value if lagrange is not None else None
            t = targets(r, a, kl_ctl.value, multiplier)
            metrics = rollout_metrics(r, t, kl_ctl.value)
            metrics.update(ppo_epochs(ac, optimizer, scheduler, acc, r, t, a, generator))
            kl_ctl.update(_all_ranks_mean(acc, metrics["objective/kl"]), a.batch_size * acc.num_processes)
            if lagrange is not None:
                metrics.update(cost_metrics(r, a.cost_threshold))
                metrics["lagrange/multiplier"] = multiplier
                if it >= a.lambda_update_delay:
                    metrics["lagrange/loss"] = lagrange.update(_all_ranks_mean(acc, metrics["cost/mean"]))
            metrics.update({"lr": scheduler.get_last_lr()[0], "episode": (it + 1) * a.batch_size,
                            "iteration_seconds": round(time.time() - started, 2)})  # fmt: skip
            if evaluator is not None and (it + 1) % a.eval_every == 0:
                metrics.update(evaluator(acc.unwrap_model(ac).policy, ctx.tokenizer).metrics)
            history.append({"step": it + 1, **metrics})
            if acc.is_main_process:
                ctx.tracker.log(ctx.name, metrics, it + 1)
                if (it + 1) % a.logging_steps == 0:
                    print(_line(ctx.name, it + 1, total, metrics))
            if (it + 1) % a.save_steps == 0 or it + 1 == total:
                save_checkpoint(acc, ctx, it + 1, _checkpoint_state(it + 1, history, kl_ctl, generator, lagrange))
    save_policy(acc, ac, ctx)
    if acc.is_main_process:
        atomic_write_json(ctx.stage_dir / "log_history.json", history)
    return summarize(history, resume.name if resume else None)


def _checkpoint_state(iteration: int, history: list, kl_ctl: Any, generator: torch.Generator, lagrange: Any) -> dict:
    return {"iteration": iteration, "history": history, "kl_coef": kl_ctl.value, "generator": generator.get_state(),
            "lagrange": lagrange.state_dict() if lagrange is not None else None}  # fmt: skip


def _all_ranks_mean(acc: Accelerator, value: float) -> float:
    """The controllers step on the whole iteration's statistics, identically on every rank."""
    return float(acc.reduce(torch.tensor(value, device=acc.device), reduction="mean"))


def _line(stage: str, step: int, total: int, m: dict[str, float]) -> str:
    shown = ["objective/scores", "objective/kl", "policy/clipfrac_avg", "loss/value_avg", "cost/mean",
             "lagrange/multiplier", "iteration_seconds"]  # fmt: skip
    return f"[alignlab] {stage} {step}/{total}: " + ", ".join(f"{k.split('/')[-1]} {m[k]:.3g}" for k in shown if k in m)


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
