"""A stage's final model written whole: gathered from every rank under ZeRO-3, LoRA merged, and moved into
`<stage>/model/` in one rename, so `model/` is never half written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer

from alignlab import distributed
from alignlab.models import load_model, save_merged
from alignlab.training.context import StageContext


def save_final(trainer: Trainer, ctx: StageContext) -> None:
    """Write the Trainer's policy to `model/` (rank 0). Under ZeRO-3 every rank holds a shard of each tensor: all
    ranks gather the full state dict (a collective), and rank 0 loads it into a whole model to save."""
    if trainer.is_deepspeed_enabled and ctx.cfg.distributed.zero_stage == 3:
        state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        if trainer.is_world_process_zero():
            save_model(full_state_model(trainer.model, state), ctx)
    elif trainer.is_world_process_zero():
        save_model(trainer.accelerator.unwrap_model(trainer.model), ctx)


def full_state_model(like: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A whole copy of `like` (a ZeRO-3 sharded model, with its LoRA adapter if any) holding a gathered state dict:
    the same class and config, so causal LMs, reward and cost models all come back as what they were."""
    from peft import get_peft_model

    base = like.get_base_model() if hasattr(like, "get_base_model") else like
    with distributed.whole_models():  # rank 0 alone builds it
        model = type(base)(base.config)
    model.to(next(iter(state.values())).dtype)
    if hasattr(like, "peft_config"):
        model = get_peft_model(model, like.peft_config["default"])
    model.load_state_dict(state, strict=True)
    return model


def save_model(model: torch.nn.Module, ctx: StageContext) -> None:
    """Write a stage's final model (LoRA merged) to `model/` via a temporary folder, so `model/` is always whole."""
    tmp = ctx.out_dir / f".model.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_merged(model, ctx.tokenizer, tmp)
    install(tmp, ctx)


def pass_on(ctx: StageContext) -> None:
    """`model/` as the policy the stage was given (a DPO or KTO stage after a correction round that found no
    mistake): the stages after it and a resume read it as any finished stage's model. A local folder is copied
    whole; a Hub id (the run's base model, when no stage trained before) is loaded and saved as a stage saves its
    own."""
    if not Path(ctx.input_model).is_dir():
        save_model(load_model(ctx.input_model, ctx.cfg.model), ctx)
        return
    tmp = ctx.out_dir / f".model.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ctx.input_model, tmp)
    install(tmp, ctx)


def install(tmp: os.PathLike, ctx: StageContext) -> None:
    """Move a whole model folder into `model/` in one rename."""
    if ctx.model_dir.exists():  # a previous attempt died between rename and DONE: keep it aside, never delete
        ctx.model_dir.rename(ctx.out_dir / f"model.previous-{os.getpid()}")
    os.replace(tmp, ctx.model_dir)
