"""Kahneman-Tversky optimisation stage: trl.KTOTrainer on the run's preference pairs, unpaired.

KTO learns from single replies marked desirable or undesirable rather than from pairs, so its two classes can be
weighted apart (`desirable_weight`, `undesirable_weight`); the pairs give both, each chosen reply desirable and
each rejected one undesirable for its prompt. The reference is the policy this stage starts from: with LoRA, TRL
disables the adapter to get it, so no second copy is loaded. After training, the final policy is scored on its
training pairs (`final_eval`, a seeded sample of `final_eval_max_pairs`), as the DPO stage scores its own, so the
two objectives swap in one experiment (`algo@algo.dpo=kto`) with the same keys.
"""

from __future__ import annotations

import random
from typing import Any

from datasets import Dataset
from trl import KTOConfig, KTOTrainer

from alignlab import data as data_lib
from alignlab.models import lora_config
from alignlab.training.context import StageContext, training_model
from alignlab.training.saving import save_final
from alignlab.training.trainer import final_metrics, train, trl_args


def unpaired(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO's rows from normalized pairs: (prompt, chosen, label true) and (prompt, rejected, label false)."""
    rows = []
    for pair in pairs:
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return rows


def scored_pairs(pairs: list[dict[str, Any]], ctx: StageContext) -> list[dict[str, Any]]:
    """The pairs the final policy is scored on: all, or a seeded sample of `final_eval_max_pairs` (the DPO stage's
    sample of the same size is drawn from its own dataset, so the two need not be the same pairs)."""
    n = ctx.algo.final_eval_max_pairs
    if n is None or n >= len(pairs):
        return pairs
    return random.Random(ctx.cfg.seed).sample(pairs, n)


def training_args(ctx: StageContext) -> KTOConfig:
    a = ctx.algo
    return trl_args(
        KTOConfig,
        ctx,
        beta=a.beta,
        loss_type=a.loss_type,
        desirable_weight=a.desirable_weight,
        undesirable_weight=a.undesirable_weight,
    )


def run(ctx: StageContext) -> dict[str, Any]:
    args = training_args(ctx)
    policy = training_model(ctx)
    pairs = data_lib.without_labels(ctx.pairs)
    rows = Dataset.from_list(unpaired(pairs))
    trainer = KTOTrainer(
        model=policy,
        ref_model=None if ctx.cfg.model.lora.enabled else training_model(ctx),
        args=args,
        train_dataset=rows,
        eval_dataset=Dataset.from_list(unpaired(scored_pairs(pairs, ctx))) if ctx.algo.final_eval else None,
        processing_class=ctx.tokenizer,
        peft_config=lora_config(ctx.cfg.model, policy, tokenizer=ctx.tokenizer),
    )
    metrics = train(trainer, ctx)
    metrics["kto/desirable_rows"] = sum(rows["label"])
    metrics["kto/undesirable_rows"] = len(rows) - sum(rows["label"])
    if ctx.algo.final_eval:
        metrics.update(final_metrics(trainer))
    save_final(trainer, ctx)
    return metrics
