"""Reward-model (`rm`) and cost-model (`cm`) stages: a one-output sequence-classification model initialised from the
policy this stage starts from (the SFT model), trained on the preference pairs, saved for PPO, GRPO and judges.

- rm: Bradley-Terry, -log sigmoid(r_chosen - r_rejected), with trl.RewardTrainer as is.
- cm: the cost model of Safe RLHF (Dai et al. 2023; safe-rlhf's sequence-wise cost loss) on the pairs' safety
  labels (`chosen_safe` / `rejected_safe`): where the two replies differ in safety the unsafer one must cost more,
  and every labelled reply's cost must have the sign of its label (> 0 unsafe, < 0 safe), so that 0 is the line
  PPO-Lagrangian's cost threshold and a `reward` judge with threshold 0 rely on.

Both hold out a seeded `eval_fraction` of the pairs and report, on it (`final/*`) and on the training pairs
(`final/train_*`), pairwise accuracy and margins; the cost model adds sign accuracy. `model/` is a plain
one-output sequence-classification model (LoRA merged) with its tokenizer and chat template: what
`evaluation.judges.SequenceScorer` (`eval.judges.<name>={kind: reward, path: ...}`) and `rl.scorers` load.

TRL's RewardTrainer drops (never truncates) a pair longer than `data.max_length`: a score read from a cut reply
would judge text the reply does not end with. The number dropped is reported as `pairs/overlength_dropped`.
The score is read at the last token that is not the pad token; with SmolLM2-style tokenizers the pad token is the
end-of-turn token, and ChatML renders a newline after it, so the score still sees the whole reply.

The cost loss, its trainer and the metrics are training/reward_models.py's; the safety labels are read by
data (`labelled_pairs`, `check_safety_labels`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from datasets import Dataset
from transformers import AutoModelForSequenceClassification, PreTrainedModel, set_seed
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import suppress_seqcls_warning

from alignlab import data as data_lib
from alignlab.errors import DataError, ModelError
from alignlab.models import lora_config, torch_dtype
from alignlab.training.context import StageContext
from alignlab.training.reward_models import CostTrainer, preference_metrics, safety_metrics, score_pairs
from alignlab.training.saving import save_final
from alignlab.training.trainer import train, trl_args


# ------------------------------------------------------------------------------------------------ stages
def run_rm(ctx: StageContext) -> dict[str, Any]:
    rows = data_lib.without_labels(ctx.pairs)
    train_rows, held_out = split_pairs(rows, ctx.algo.eval_fraction, ctx.cfg.seed)
    trainer = build_trainer(RewardTrainer, ctx, train_rows, held_out)
    metrics = train(trainer, ctx)
    metrics.update(pair_counts(trainer, train_rows, held_out))
    metrics.update(final_metrics(trainer, preference_metrics))
    save_final(trainer, ctx)
    return metrics


def run_cm(ctx: StageContext) -> dict[str, Any]:
    rows = data_lib.labelled_pairs(ctx.pairs)
    data_lib.check_safety_labels(rows, ctx.cfg.data.preference.path, ctx.name)
    train_rows, held_out = split_pairs(rows, ctx.algo.eval_fraction, ctx.cfg.seed)
    trainer = build_trainer(CostTrainer, ctx, train_rows, held_out, sign_loss_weight=ctx.algo.sign_loss_weight)
    metrics = train(trainer, ctx)
    metrics.update(pair_counts(trainer, train_rows, held_out))
    metrics["pairs/unlabelled_skipped"] = len(ctx.pairs) - len(rows)
    metrics.update(final_metrics(trainer, safety_metrics))
    save_final(trainer, ctx)
    return metrics


# -------------------------------------------------------------------------------------------------- data
def split_pairs(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded held-out share of the pairs (at least one pair when `fraction` > 0), both parts in file order."""
    if fraction == 0:
        return rows, []
    n_held = max(1, round(len(rows) * fraction))
    if n_held >= len(rows):
        raise DataError(
            f"Data error: {len(rows)} pairs are too few to hold out a share of {fraction} (eval_fraction) and train "
            "on the rest. Add pairs or set eval_fraction=0."
        )
    held = set(random.Random(seed).sample(range(len(rows)), n_held))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


# ----------------------------------------------------------------------------------------------- trainers
def load_scorer_model(ctx: StageContext) -> PreTrainedModel:
    """The starting policy's trunk with a fresh one-output head. Seeded first: the head's random init is then the
    same in every run (and in a resumed one, whose checkpoint overwrites it anyway)."""
    m = ctx.cfg.model
    set_seed(ctx.cfg.seed)
    try:
        with suppress_seqcls_warning():  # TRL's: the missing `score` and unused `lm_head` weights are expected
            model = AutoModelForSequenceClassification.from_pretrained(
                ctx.input_model,
                num_labels=1,
                revision=m.revision,
                dtype=torch_dtype(m.dtype),
                attn_implementation=m.attn_implementation,
                trust_remote_code=m.trust_remote_code,
            )
    except Exception as exc:
        raise ModelError(f"Model error: cannot load '{ctx.input_model}' as a sequence classifier: {exc}") from None
    model.config.pad_token_id = ctx.tokenizer.pad_token_id  # where the score is read: the last non-pad token
    return model


def training_args(ctx: StageContext) -> RewardConfig:
    return trl_args(RewardConfig, ctx, center_rewards_coefficient=ctx.algo.center_rewards_coefficient)


def build_trainer(
    trainer_cls: type[RewardTrainer], ctx: StageContext, train_rows: list[dict], held_out: list[dict], **extra: Any
) -> RewardTrainer:
    """`trainer_cls` on the pairs; the held-out pairs are tokenized and length-filtered with the training ones."""
    args = training_args(ctx)
    model = load_scorer_model(ctx)
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(held_out) if held_out else None,
        processing_class=ctx.tokenizer,
        peft_config=lora_config(ctx.cfg.model, model, task_type="SEQ_CLS"),
        **extra,
    )


def final_metrics(trainer: RewardTrainer, metric_fn: Callable[..., dict[str, float]]) -> dict[str, float]:
    """`metric_fn` on the final model's scores: held-out pairs as `final/<name>`, training pairs as
    `final/train_<name>`."""
    out = {}
    parts = [("final/", trainer.eval_dataset), ("final/train_", trainer.train_dataset)]
    for prefix, dataset in parts:
        if dataset is not None and len(dataset):
            scores = score_pairs(trainer, dataset)
            out.update({prefix + k: v for k, v in metric_fn(**scores).items()})
    return out


def pair_counts(trainer: RewardTrainer, train_rows: list[dict], held_out: list[dict]) -> dict[str, int]:
    """Pairs trained on and held out after TRL's length filter, and how many that filter dropped."""
    kept = len(trainer.train_dataset) + (len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0)
    dropped = len(train_rows) + len(held_out) - kept
    if dropped:
        print(f"[alignlab] {dropped} pairs are longer than data.max_length and were left out (never truncated)")
    return {
        "pairs/train": len(trainer.train_dataset),
        "pairs/held_out": len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0,
        "pairs/overlength_dropped": dropped,
    }
