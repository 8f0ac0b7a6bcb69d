"""Running a TRL Trainer the way every Trainer stage does: TRL config from `algo.<stage>`, gradient checkpointing
decided from a memory estimate, resume from the last complete checkpoint, our callbacks (progress, COMPLETE markers,
preemption, W&B, evaluation every N steps), and each rank's memory afterwards."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import Trainer
from transformers.trainer_callback import ProgressCallback, TrainerCallback

from alignlab import devices, distributed, preemption
from alignlab.artifacts import CompleteMarker, atomic_write_json, last_complete_checkpoint
from alignlab.errors import ConfigError, diverged
from alignlab.evaluation.callback import EvalCallback
from alignlab.safe_load import verify_checkpoint
from alignlab.tracking import StageLogger
from alignlab.training.context import StageContext, training_evaluator


def trl_args(config_cls: type, ctx: StageContext, **specific: Any) -> Any:
    """Map the shared `algo.<stage>` knobs onto a TRL config class; `algo.<stage>.extra` passes any other field."""
    a = ctx.algo
    on_gpu = torch.cuda.is_available()
    cfg = ctx.cfg
    precision = distributed.stage_precision(cfg, a)
    kwargs: dict[str, Any] = dict(
        output_dir=str(ctx.checkpoint_dir),
        num_train_epochs=a.epochs,
        max_steps=a.max_steps,
        per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.batch_size,
        gradient_accumulation_steps=a.grad_accum,
        learning_rate=a.learning_rate,
        lr_scheduler_type=a.lr_scheduler,
        warmup_steps=a.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=a.weight_decay,
        max_grad_norm=a.max_grad_norm,
        optim=a.optim,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=False if ctx.dry_run else gradient_checkpointing(ctx, precision),
        logging_steps=a.logging_steps,
        save_strategy="steps",
        save_steps=a.save_steps,
        save_total_limit=a.save_total_limit,
        seed=ctx.cfg.seed,
        data_seed=ctx.cfg.seed,
        report_to=[],
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
        # None unless distributed.strategy=deepspeed (and in a dry run, whose arguments register nothing globally)
        deepspeed=None if ctx.dry_run else distributed.deepspeed_config(cfg),
        ddp_backend=distributed.backend(cfg) if distributed.world_size() > 1 and not ctx.dry_run else None,
        ddp_timeout=int(cfg.distributed.timeout_minutes) * 60,
        ddp_find_unused_parameters=False,  # a causal LM uses every parameter; the search costs a graph traversal
        **specific,
    )
    if "max_length" in {f.name for f in dataclasses.fields(config_cls)}:  # GRPO/RLOO bound prompt and reply instead
        kwargs["max_length"] = ctx.cfg.data.max_length
    kwargs.update(OmegaConf.to_container(a.extra, resolve=True))  # names checked in config.validate
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"Config error at 'algo.{ctx.name}': TRL rejected the settings: {exc}") from None


ROW_PAIRS = ("dpo", "rm", "cm")  # stages whose micro-batch holds two rows (chosen, rejected) per example


def gradient_checkpointing(ctx: StageContext, precision: str) -> bool:
    """The stage's setting, or with `auto` whether its estimated peak memory without checkpointing would not fit in
    what the device has free (devices.estimate_training_memory; the decision and its numbers are printed)."""
    flag = distributed.stage_checkpointing(ctx.cfg, ctx.algo)
    if flag != "auto":
        return bool(flag)
    from transformers import AutoConfig

    a, cfg = ctx.algo, ctx.cfg
    lora = bool(cfg.model.lora.enabled)
    estimate = devices.estimate_training_memory(
        AutoConfig.from_pretrained(ctx.input_model),
        rows=a.batch_size * (2 if a.kind in ROW_PAIRS else 1),
        tokens_per_row=longest_row(ctx),
        precision=precision,
        full_finetune=not lora,
        reference_copy=a.kind == "dpo" and not lora and not dpo_precomputes(a),
        zero_stage=int(cfg.distributed.zero_stage) if cfg.distributed.strategy == "deepspeed" else 0,
        world=distributed.world_size(),
    )
    on = estimate.needs_checkpointing()
    if distributed.is_main():
        print(f"[alignlab] {ctx.name}: {estimate.describe(on)}")
    return on


def longest_row(ctx: StageContext, sample: int = 16) -> int:
    """Tokens in the stage's longest row (prompt and reply in the chat template), capped at `data.max_length`: the
    `sample` rows longest in characters are tokenised (enough to find it, and cheap on any data set)."""
    rows = ctx.sft_rows if ctx.algo.kind == "sft" and ctx.sft_rows else ctx.pairs or []
    texts = []
    for row in rows:
        for reply in ("chosen", "rejected", "completion"):
            if isinstance(row.get(reply), list):
                texts.append(list(row["prompt"]) + list(row[reply]))
        if not any(isinstance(row.get(k), list) for k in ("chosen", "rejected", "completion")):
            texts.append(list(row["prompt"]))
    texts.sort(key=lambda messages: -len(str(messages)))
    longest = max(
        (len(ctx.tokenizer.apply_chat_template(m, tokenize=True, return_dict=False)) for m in texts[:sample]),
        default=ctx.cfg.data.max_length,
    )
    new_tokens = ctx.algo.get("max_new_tokens") or 0  # online RL: the prompt plus what it samples
    return min(longest + new_tokens, ctx.cfg.data.max_length)


def dpo_precomputes(a: DictConfig) -> bool:
    """`precompute_ref_log_probs`, with `auto` meaning yes unless TR-DPO syncs the reference during training."""
    flag = a.precompute_ref_log_probs
    return (not a.sync_ref_model) if flag == "auto" else bool(flag)


class FiniteLoss(TrainerCallback):
    """Stops training when a logged loss is NaN or infinite. The Trainer logs a step before it saves it, so the
    diverged weights never reach a checkpoint or `model/` (a NaN model marked DONE would look finished)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = {k: v for k, v in (logs or {}).items() if "loss" in k and isinstance(v, float) and not math.isfinite(v)}
        if bad:
            raise diverged(self.stage, state.global_step, bad)
        return control


class QuietProgress(ProgressCallback):
    """Progress bars labelled with the stage, without a printed dict per logging step: curves go to W&B and
    log_history.json."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(f"{self.stage} steps")

    def on_log(self, args, state, control, logs=None, **kwargs):
        return control


def train(trainer: Trainer, ctx: StageContext) -> dict[str, Any]:
    """Run the Trainer, resuming from the last complete checkpoint (optimizer, scheduler, RNG, data position).
    A signal (preemption.py) ends it after the current step with a checkpoint and raises `Preempted`."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress(ctx.label))
    trainer.add_callback(CompleteMarker())
    stop = preemption.PreemptionCallback()
    trainer.add_callback(stop)
    trainer.add_callback(StageLogger(ctx.tracker, ctx.label))
    trainer.add_callback(FiniteLoss(ctx.name))
    if ctx.algo.eval_every:
        trainer.add_callback(eval_callback(ctx))
    resume = last_complete_checkpoint(ctx.checkpoint_dir)
    if resume is not None:
        verify_checkpoint(resume)  # before transformers / DeepSpeed unpickle anything in it
        print(f"[alignlab] {ctx.name}: resuming from {resume.name}")
    with preemption.training_loop():
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if stop.stopped:
        raise preemption.stopped(ctx.name, last_complete_checkpoint(ctx.checkpoint_dir))
    history = trainer.state.log_history
    if distributed.is_main():
        atomic_write_json(ctx.out_dir / "log_history.json", history)
    metrics = dict(result.metrics)
    metrics.update(memory_per_rank(trainer.model, trainer.optimizer))
    steps = [h for h in history if "loss" in h]
    if steps:
        metrics["final_step_loss"] = steps[-1]["loss"]
    metrics["global_step"] = trainer.state.global_step
    metrics["resumed_from"] = resume.name if resume else None
    return metrics


def eval_callback(ctx: StageContext) -> EvalCallback:
    """The stage's evaluation every `eval_every` steps, logged on its step axis and to `eval_history.jsonl`."""
    history = ctx.out_dir / "eval_history.jsonl"
    return EvalCallback(training_evaluator(ctx), ctx.tokenizer, ctx.algo.eval_every, ctx.tracker, ctx.label, history)


def memory_per_rank(model: torch.nn.Module, optimizer: Any) -> dict[str, float]:
    """MiB of parameters, master weights and optimizer moments each rank holds (what ZeRO shards), and each rank's
    peak RSS in this stage (the pipeline resets it at every stage's start): one collective, so every rank calls it."""
    import torch.distributed as dist

    mine = {**distributed.held_bytes(model, optimizer), "peak_rss_bytes": devices.peak_rss_bytes()}
    ranks = [mine]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
    mib = 1024 * 1024
    out = {}
    for r, held in enumerate(ranks):
        for part in ("params", "master", "moments"):
            out[f"memory/rank{r}/{part}_mib"] = round(held[f"{part}_bytes"] / mib, 4)
        out[f"memory/rank{r}/peak_rss_mib"] = round(held["peak_rss_bytes"] / mib, 1)
    return out


def final_metrics(trainer: Trainer) -> dict[str, Any]:
    """The trained policy evaluated on the stage's eval set (its own training pairs, for DPO and KTO), TRL's
    `eval_` names (eval_rewards/margins, ...) renamed `final/` so they do not read as a held-out evaluation."""
    return {"final/" + k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}
