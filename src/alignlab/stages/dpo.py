"""Direct preference optimisation stage: trl.DPOTrainer with every loss variant TRL offers.

The reference model is the policy this stage starts from (the SFT output in `sft -> dpo`) unless
`algo.<stage>.reference` names another. With LoRA no second copy is loaded: TRL disables the adapter to get the
reference. After training, the final policy is evaluated on its training pairs (reward accuracy and margins:
did it learn the preferences it was shown?).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk
from trl import DPOConfig, DPOTrainer

from alignlab import data as data_lib
from alignlab import distributed
from alignlab.config import dpo_loss_types
from alignlab.models import load_model, lora_config
from alignlab.stages.common import StageContext, load_reference, save_final, train, trl_args


def build_trainer(ctx: StageContext) -> DPOTrainer:
    a = ctx.algo
    args = trl_args(
        DPOConfig,
        ctx,
        beta=a.beta,
        loss_type=dpo_loss_types(a),
        loss_weights=list(a.loss_weights) if a.loss_weights is not None else None,
        label_smoothing=a.label_smoothing,
        ld_alpha=a.ld_alpha,
        f_divergence_type=a.f_divergence_type,
        f_alpha_divergence_coef=a.f_alpha_divergence_coef,
        use_weighting=a.use_weighting,
        discopop_tau=a.discopop_tau,
        precompute_ref_log_probs=a.precompute_ref_log_probs,
        sync_ref_model=a.sync_ref_model,
        ref_model_mixup_alpha=a.ref_model_mixup_alpha,
        ref_model_sync_steps=a.ref_model_sync_steps,
    )
    policy = load_model(ctx.input_model, ctx.cfg.model)
    peft = lora_config(ctx.cfg.model, policy)
    # A model object (not a path) needs an explicit reference unless LoRA (adapter off) or precomputed log-probs
    # stand in for it; loading it ourselves also keeps dtype and attention the same as the policy's.
    ref = None
    if a.reference is not None:
        ref = load_reference(ctx)
    elif peft is None and not a.precompute_ref_log_probs:
        ref = load_model(ctx.input_model, ctx.cfg.model)
    pairs = Dataset.from_list(data_lib.without_labels(ctx.pairs))  # safety labels are the cost model's
    if a.precompute_ref_log_probs:
        pairs = on_disk(pairs, ctx.stage_dir / "pairs")
    scored = pairs
    if a.final_eval_max_pairs is not None and a.final_eval_max_pairs < len(pairs):
        scored = pairs.shuffle(seed=ctx.cfg.seed).select(range(a.final_eval_max_pairs))
    return DPOTrainer(
        model=policy,
        ref_model=ref,
        args=args,
        train_dataset=pairs,
        eval_dataset=scored if a.final_eval else None,  # prepared (and ref log-probs precomputed) with the train set
        processing_class=ctx.tokenizer,
        peft_config=peft,
    )


def on_disk(dataset: Dataset, folder: Path) -> Dataset:
    """The dataset backed by files in the stage folder. TRL caches precomputed reference log-probabilities beside a
    dataset's files; an in-memory dataset's cache is a private temporary folder per process, so under several
    ranks the others never find the file rank 0 wrote (TRL issues 1497, 2985). A resumed run reuses the cache."""
    if distributed.is_main() and not (folder / "dataset_info.json").is_file():
        tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        dataset.save_to_disk(str(tmp))
        shutil.rmtree(folder, ignore_errors=True)  # a folder without dataset_info.json is an interrupted write
        os.replace(tmp, folder)
    distributed.barrier()
    return load_from_disk(str(folder))


def run(ctx: StageContext) -> dict[str, Any]:
    trainer = build_trainer(ctx)
    metrics = train(trainer, ctx)
    if ctx.algo.final_eval:
        final = trainer.evaluate()  # TRL names its metrics eval_rewards/accuracies, ...
        metrics.update({"final/" + k.removeprefix("eval_"): v for k, v in final.items()})
    save_final(trainer, ctx)
    return metrics
