"""PPO and Safe RLHF's PPO-Lagrangian for chat models, on accelerate (our own: TRL 1.16 has no PPOTrainer).

A recipe in torchtune's shape: `setup` builds the accelerator, scorers, models, optimizer and controllers and
resumes from the last complete checkpoint; `train` runs the iterations; `save_checkpoint` / `load_checkpoint`;
`cleanup` saves the final policy and returns the stage's metrics. One iteration (`train_step`):
1. rollout: `batch_size` prompts from the preference data, one sampled reply each (rl/rollout.py);
2. score: the reward model (and, for `ppo-lag`, the cost model) on each whole reply;
3. per-token log-probabilities of policy and reference (LoRA: the same model with its adapter off, no second copy)
   and values; rewards = score on the last token - kl_coef * KL on every token; GAE (rl/experience.py);
4. `ppo_epochs` passes over shuffled minibatches: clipped policy loss + vf_coef * clipped value loss;
5. the KL coefficient adapts (if `kl_target`), the Lagrange multiplier steps on the episode cost (`ppo-lag`).
The maths lives in `rl/ppo_core.py`, the models in `rl/actor_critic.py`. The same code runs in one CPU process and
as accelerate / DeepSpeed ranks. Metric names are TRL's last PPO's (`objective/kl`, `policy/clipfrac_avg`, ...).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DeepSpeedPlugin, PartialState
from accelerate.state import AcceleratorState
from omegaconf import DictConfig
from transformers import get_scheduler

from alignlab import distributed, preemption
from alignlab.artifacts import COMPLETE, atomic_write_json, last_complete_checkpoint, write_complete
from alignlab.data import unique_prompts
from alignlab.errors import diverged
from alignlab.rl import ppo_core as core
from alignlab.rl.actor_critic import build_actor_critic, save_policy
from alignlab.rl.experience import cost_metrics, ppo_epochs, rollout_metrics, summarize, targets
from alignlab.rl.rollout import prompt_batch, rollout
from alignlab.rl.scorers import ModelScorer, build_scorer
from alignlab.safe_load import load_state, verify_checkpoint
from alignlab.training.context import StageContext, training_evaluator

STATE_FILE = "ppo_state.pt"
SHOWN = (
    "objective/scores",
    "objective/kl",
    "policy/clipfrac_avg",
    "loss/value_avg",
    "cost/mean",
    "lagrange/multiplier",
    "iteration_seconds",
)


def run(ctx: StageContext) -> dict[str, Any]:
    recipe = PPORecipe(ctx)
    recipe.setup()
    recipe.train()
    return recipe.cleanup()


class PPORecipe:
    """One PPO stage: what every rank holds between iterations (models, optimizer, controllers, history)."""

    def __init__(self, ctx: StageContext) -> None:
        self.ctx, self.a = ctx, ctx.algo
        self.prompts = unique_prompts(ctx.pairs)
        self.total = iterations(self.a, len(self.prompts))
        self.history: list[dict[str, Any]] = []
        self.start = 0  # the first iteration this process runs (a resumed run's checkpoint)
        self.resumed_from: str | None = None

    def setup(self) -> None:
        """Everything the loop needs, in an order that draws the seeded random numbers as every run does."""
        ctx, a = self.ctx, self.a
        self.acc, deepspeed = _accelerator(ctx)
        torch.manual_seed(ctx.cfg.seed)
        specs = [a.reward] + ([a.cost] if a.kind == "ppo-lag" else [])
        self.scorers = [
            build_scorer(s, ctx.stage_dir.parent, a.mini_batch_size, ctx.cfg.data.max_length) for s in specs
        ]
        for s in self.scorers:
            if isinstance(s, ModelScorer):
                s.to(self.acc.device)
        ac, self.reference = build_actor_critic(ctx, self.scorers)
        optimizer, self.scheduler = _optimizer(ac, a, self.total)
        # The scheduler is not prepared: accelerate would step it once per rank per call, and our count of updates
        # is already per optimizer step. It is registered so checkpoints still carry it.
        self.ac, self.optimizer = self.acc.prepare(ac, optimizer)
        self.acc.register_for_checkpointing(self.scheduler)
        self._place_frozen_models(deepspeed)
        self.kl_ctl: Any = (
            core.AdaptiveKLController(a.kl_coef, a.kl_target, a.kl_horizon)
            if a.kl_target is not None
            else core.FixedKLController(a.kl_coef)
        )
        self.lagrange = (
            core.LagrangeMultiplier(a.lambda_init, a.lambda_lr, a.cost_threshold, a.lambda_max)
            if a.kind == "ppo-lag"
            else None
        )
        self.generator = torch.Generator().manual_seed(ctx.cfg.seed)
        resume = last_complete_checkpoint(ctx.checkpoint_dir)
        if resume is not None:
            self.load_checkpoint(resume)
        self.evaluator = training_evaluator(ctx) if a.eval_every else None

    def _place_frozen_models(self, deepspeed: bool) -> None:
        """Under DeepSpeed, frozen models become inference engines: under ZeRO-3 they were loaded sharded like the
        policy (and every rank runs each of their forward passes together, so none waits on another); below
        stage 3 each rank holds a whole copy, in DeepSpeed's bf16 / fp16 when the config sets it. Otherwise the
        reference moves to the device and, at bf16, the reference and the scorers' models are held in bf16, as
        DeepSpeed holds them: frozen, they need no fp32 master weights, and kept in fp32 under autocast they had
        each weight cast again on every forward pass (13% of a bf16 iteration, `benchmarks/ppo_speed.py
        --profile`), while the reward model ran in fp32 outside autocast altogether. The price: with full
        fine-tuning the policy (fp32 weights under autocast: its norms in fp32) and a bf16 reference differ by
        rounding even where their weights are equal, a KL floor of about 1e-3 per token on a random tiny model;
        under LoRA the reference is the policy with its adapter off, and there is none."""
        if deepspeed:
            from trl.models.utils import prepare_deepspeed

            self.reference = prepare_deepspeed(self.reference, self.acc) if self.reference is not None else None
            for s in self.scorers:
                if isinstance(s, ModelScorer):
                    s.scorer.model = prepare_deepspeed(s.scorer.model, self.acc)
        else:
            dtype = frozen_dtype(self.acc.mixed_precision)
            if self.reference is not None:
                self.reference.to(self.acc.device, dtype=dtype)
            for s in self.scorers:
                if isinstance(s, ModelScorer):
                    s.scorer.model.to(dtype=dtype)

    def train(self) -> None:
        """The iterations from the resumed one on; a signal stops the loop at the next one, with a checkpoint."""
        ctx, a = self.ctx, self.a
        ctx.tracker.define_stage(ctx.label)
        print(
            f"[alignlab] {ctx.name}: {self.total} PPO iterations of {a.batch_size} rollouts over "
            f"{len(self.prompts)} prompts"
        )
        with preemption.training_loop():
            for it in range(self.start, self.total):
                if preemption.stop_requested():
                    self.save_checkpoint(it)
                    raise preemption.stopped(ctx.name, ctx.checkpoint_dir / f"checkpoint-{it}")
                self.log(it + 1, self.train_step(it))
                if (it + 1) % a.save_steps == 0 or it + 1 == self.total:
                    self.save_checkpoint(it + 1)

    def train_step(self, it: int) -> dict[str, Any]:
        """One iteration: rollouts, targets, the PPO update, the controllers' step; its metrics."""
        ctx, a, acc = self.ctx, self.a, self.acc
        started = time.time()
        # `batch_size` rollouts per rank: each rank takes its own slice of the iteration's prompts.
        batch = prompt_batch(self.prompts, it, a.batch_size * acc.num_processes, ctx.cfg.seed)
        r = rollout(self.ac, self.reference, acc, ctx, batch[acc.process_index :: acc.num_processes], self.scorers)
        multiplier = self.lagrange.value if self.lagrange is not None else None
        t = targets(r, a, self.kl_ctl.value, multiplier)
        metrics = rollout_metrics(r, t, self.kl_ctl.value)
        metrics.update(ppo_epochs(self.ac, self.optimizer, self.scheduler, acc, r, t, a, self.generator))
        bad = {k: v for k, v in metrics.items() if k.startswith("loss/") and not math.isfinite(v)}
        if bad:  # before the checkpoint of this iteration is written
            raise diverged(ctx.name, it + 1, bad)
        self.kl_ctl.update(self._all_ranks_mean(metrics["objective/kl"]), a.batch_size * acc.num_processes)
        if self.lagrange is not None:
            metrics.update(cost_metrics(r, a.cost_threshold))
            metrics["lagrange/multiplier"] = multiplier
            if it >= a.lambda_update_delay:
                metrics["lagrange/loss"] = self.lagrange.update(self._all_ranks_mean(metrics["cost/mean"]))
        metrics.update(
            {
                "lr": self.scheduler.get_last_lr()[0],
                "episode": (it + 1) * a.batch_size,
                "iteration_seconds": round(time.time() - started, 2),
            }
        )
        if self.evaluator is not None and (it + 1) % a.eval_every == 0:
            metrics.update(self.evaluator(acc.unwrap_model(self.ac).policy, ctx.tokenizer).metrics)
        return metrics

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """The history every rank keeps (it goes into checkpoints); W&B and the terminal on rank 0."""
        self.history.append({"step": step, **metrics})
        if self.acc.is_main_process:
            self.ctx.tracker.log(self.ctx.label, metrics, step)
            if step % self.a.logging_steps == 0:
                shown = ", ".join(f"{k.split('/')[-1]} {metrics[k]:.3g}" for k in SHOWN if k in metrics)
                print(f"[alignlab] {self.ctx.label} {step}/{self.total}: {shown}")

    def _all_ranks_mean(self, value: float) -> float:
        """The controllers step on the whole iteration's statistics, identically on every rank."""
        return float(self.acc.reduce(torch.tensor(value, device=self.acc.device), reduction="mean"))

    def save_checkpoint(self, iteration: int) -> None:
        """accelerate saves models, optimizer, scheduler and RNG; we add the controllers and the history. The
        COMPLETE marker is written last, after every rank, so a half-written checkpoint is never resumed from."""
        ckpt = self.ctx.checkpoint_dir / f"checkpoint-{iteration}"
        self.acc.save_state(str(ckpt))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            state = {
                "iteration": iteration,
                "history": self.history,
                "kl_coef": self.kl_ctl.value,
                "generator": self.generator.get_state(),
                "lagrange": self.lagrange.state_dict() if self.lagrange is not None else None,
            }
            torch.save(state, ckpt / STATE_FILE)
            write_complete(ckpt, iteration)
            _prune(self.ctx.checkpoint_dir, self.a.save_total_limit)

    def load_checkpoint(self, path: Path) -> None:
        """Continue from a complete checkpoint. Every pickle in it is checked first (accelerate unpickles its
        custom-object files, the scheduler, unrestricted), and our state is read with torch's weights-only
        unpickler."""
        verify_checkpoint(path)
        print(f"[alignlab] {self.ctx.name}: resuming from {path.name}")
        self.acc.load_state(str(path))
        state = load_state(path / STATE_FILE)
        self.start, self.history, self.kl_ctl.value = state["iteration"], state["history"], state["kl_coef"]
        self.generator.set_state(state["generator"])
        if self.lagrange is not None:
            self.lagrange.load_state_dict(state["lagrange"])
        self.resumed_from = path.name

    def cleanup(self) -> dict[str, Any]:
        """The final policy to `model/`, the history to `log_history.json`; the stage's metrics."""
        save_policy(self.acc, self.ac, self.ctx)
        if self.acc.is_main_process:
            atomic_write_json(self.ctx.out_dir / "log_history.json", self.history)
        return summarize(self.history, self.resumed_from)


def iterations(a: DictConfig, n_prompts: int) -> int:
    if a.max_steps > 0:
        return int(a.max_steps)
    return max(1, math.ceil(a.epochs * n_prompts / a.batch_size))


def frozen_dtype(mixed_precision: str) -> torch.dtype | None:
    """The dtype frozen models are held in under accelerate's mixed precision: bf16 at bf16; None (as loaded)
    otherwise. Not fp16: a model trained in bf16 can overflow fp16 in its residual stream, and the reward model runs
    outside autocast, so fp16 weights would make its whole forward pass fp16."""
    return torch.bfloat16 if mixed_precision == "bf16" else None


def _accelerator(ctx: StageContext) -> tuple[Accelerator, bool]:
    """The stage's Accelerator, and whether it runs DeepSpeed."""
    a = ctx.algo
    precision = distributed.stage_precision(ctx.cfg, a)
    ds = distributed.deepspeed_config(ctx.cfg)
    plugin = None
    # A Trainer stage (or run) before this one left its plugin and mixed precision in accelerate's process-wide
    # state, which an Accelerator with other settings refuses: start afresh, as transformers does for each Trainer.
    AcceleratorState._reset_state()
    if ds is not None:  # a Trainer fills DeepSpeed's "auto" values itself; this loop resolves them here
        filled = distributed.fill_auto(ds, a.mini_batch_size, a.grad_accum, a.max_grad_norm, precision)
        plugin = DeepSpeedPlugin(hf_ds_config=filled)
        # What transformers' TrainingArguments does for a DeepSpeed Trainer (on GPUs and on the CPU alike): the
        # process state becomes DeepSpeed's, on the run's backend.
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend=distributed.backend(ctx.cfg))
    acc = Accelerator(
        mixed_precision={"bf16": "bf16", "fp16": "fp16"}.get(precision, "no"),
        cpu=not torch.cuda.is_available() and plugin is None,
        gradient_accumulation_steps=a.grad_accum,
        deepspeed_plugin=plugin,
    )
    return acc, plugin is not None


def _optimizer(ac: torch.nn.Module, a: DictConfig, total: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the policy and the value parameters (their own learning rate if set), and the LR schedule over
    every optimizer step of the run."""
    value_params = [p for n, p in ac.named_parameters() if not n.startswith("policy.") and p.requires_grad]
    policy_params = [p for p in ac.policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": policy_params, "lr": a.learning_rate},
            {"params": value_params, "lr": a.value_learning_rate or a.learning_rate},
        ],
        weight_decay=a.weight_decay,
        fused=a.optim == "adamw_torch_fused",  # one kernel over all tensors (config.TrainConfig.optim)
    )
    updates = total * a.ppo_epochs * (a.batch_size // (a.mini_batch_size * a.grad_accum))
    return optimizer, get_scheduler(a.lr_scheduler, optimizer, int(a.warmup_ratio * updates), updates)


def _prune(folder: Path, limit: int | None) -> None:
    """Keep the `limit` newest complete checkpoints."""
    if limit is None:
        return
    done = sorted(
        (int(p.name.split("-")[1]), p)
        for p in folder.glob("checkpoint-*")
        if p.name.split("-")[1].isdigit() and (p / COMPLETE).is_file()
    )
    for _, path in done[:-limit]:
        shutil.rmtree(path, ignore_errors=True)
