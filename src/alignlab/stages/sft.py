"""Supervised fine-tuning stage: trl.SFTTrainer on conversational prompt/completion rows.

Loss on the completion only (the assistant reply, ending with the chat template's end-of-turn token), so the
model learns to answer and to stop, with the same prompt tokens the DPO stage will see. Reply openings (a pairs
stage's `opening_tokens`) are trained on without that end-of-turn token.
"""

from __future__ import annotations

from typing import Any

import trl.trainer.sft_trainer
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from alignlab import devices
from alignlab.models import lora_config
from alignlab.training import lm_head, tokenized
from alignlab.training.context import StageContext, training_model
from alignlab.training.sampling import length_grouped
from alignlab.training.saving import save_final
from alignlab.training.trainer import train, trl_args


class AlignlabSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with batches of rows of like length (`algo.<stage>.group_by_length`) from the seeded sampler
    DPO uses: transformers' own `train_sampling_strategy="group_by_length"` draws its order from the global RNG,
    which a resumed run does not share (training/sampling.py)."""

    def __init__(self, *args: Any, group_by_length: bool = False, **kwargs: Any) -> None:
        self.group_by_length = group_by_length
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> Any:
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        ds = train_dataset if train_dataset is not None else self.train_dataset
        return length_grouped(self, [len(ids) for ids in ds["input_ids"]])


def training_args(ctx: StageContext) -> SFTConfig:
    a = ctx.algo
    return trl_args(
        SFTConfig,
        ctx,
        packing=a.packing,
        completion_only_loss=a.completion_only_loss,
        eos_token=ctx.tokenizer.eos_token,
    )


def build_trainer(ctx: StageContext) -> AlignlabSFTTrainer:
    a = ctx.algo
    args = training_args(ctx)
    model = training_model(ctx)
    compact = lm_head.use_compact(a.lm_head, model, devices.training_device())
    with lm_head.replacing_trl_head(trl.trainer.sft_trainer, compact):
        return AlignlabSFTTrainer(
            model=model,
            args=args,
            train_dataset=train_dataset(ctx.sft_rows or [], ctx.tokenizer),
            processing_class=ctx.tokenizer,
            peft_config=lora_config(ctx.cfg.model, model, tokenizer=ctx.tokenizer),
            group_by_length=a.group_by_length,
        )


def train_dataset(rows: list[dict[str, Any]], tokenizer: Any) -> Dataset:
    """The rows as SFTTrainer takes them; with reply openings among them (`algo.pairs.opening_tokens`), every row
    tokenized here (training/tokenized.py), since SFTTrainer closes each completion with the end-of-turn token and
    an opening must not end there."""
    if not any(row.get("opening") is not None for row in rows):
        return Dataset.from_list(rows)
    return Dataset.from_list([tokenized.completion(row, tokenizer) for row in rows])


def run(ctx: StageContext) -> dict[str, Any]:
    trainer = build_trainer(ctx)
    metrics = train(trainer, ctx)
    save_final(trainer, ctx)
    return metrics
