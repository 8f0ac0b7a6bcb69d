"""Direct preference optimisation stage: trl.DPOTrainer with every loss variant TRL offers.

The reference model is the policy this stage starts from (the SFT output in `sft -> dpo`) unless
`algo.<stage>.reference` names another. With LoRA no second copy is loaded: TRL disables the adapter to get the
reference. After training, the final policy is evaluated on its training pairs (reward accuracy and margins:
did it learn the preferences it was shown?).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import transformers
import trl.trainer.dpo_trainer
from datasets import Dataset, load_from_disk
from trl import DPOConfig, DPOTrainer

from alignlab import data as data_lib
from alignlab import devices, distributed
from alignlab.config import dpo_loss_types
from alignlab.data import onpolicy
from alignlab.data.sources import fingerprint
from alignlab.models import lora_config
from alignlab.training import lm_head, tokenized
from alignlab.training.context import StageContext, load_reference, reference_path, training_model
from alignlab.training.ref_cache import RefLogpCache
from alignlab.training.sampling import length_grouped
from alignlab.training.saving import save_final
from alignlab.training.trainer import dpo_precomputes, final_metrics, train, trl_args


class AlignlabDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with two additions TRL does not have: reference log-probabilities from a cache shared across
    runs (training/ref_cache.py), and batches of pairs grouped by length."""

    def __init__(
        self,
        *args: Any,
        ref_cache: RefLogpCache | None = None,
        group_by_length: bool = False,
        share_prompt: bool = False,
        **kwargs: Any,
    ) -> None:
        self.ref_cache = ref_cache
        self.group_by_length = group_by_length
        self.share_prompt = share_prompt
        # what the reference pass cost this run: seconds (the cache key's hashing included) and pairs
        self.ref_stats = {"ref_logps/seconds": 0.0, "ref_logps/computed_pairs": 0, "ref_logps/cached_pairs": 0}
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        started = time.perf_counter()
        parent = super()._precompute_ref_logps

        def compute(rows: Dataset) -> Dataset:
            self.ref_stats["ref_logps/computed_pairs"] += len(rows)
            return parent(rows, name, batch_size)

        before = self.ref_stats["ref_logps/computed_pairs"]
        out = compute(dataset) if self.ref_cache is None else self.ref_cache.attach(dataset, compute)
        self.ref_stats["ref_logps/cached_pairs"] += len(dataset) - (self.ref_stats["ref_logps/computed_pairs"] - before)
        self.ref_stats["ref_logps/seconds"] += time.perf_counter() - started
        return out

    def _prepare_dataset(self, dataset: Dataset, processing_class: Any, args: DPOConfig, dataset_name: str) -> Dataset:
        """Pairs already tokenized (`preference_dataset`) go in as they are, less those whose prompt alone fills
        `max_length`, which TRL drops too; TRL's own preparation has no such path."""
        if "prompt_ids" not in dataset.column_names:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if args.max_length is None or args.truncation_mode != "keep_start":
            return dataset
        return dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length)

    def _get_train_sampler(self, train_dataset: Dataset | None = None) -> Any:
        """transformers' LengthGroupedSampler (random megabatches, sorted within) on the length a pair occupies in a
        batch: the longer of its two rows, or all three parts when the prompt is shared."""
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        ds = train_dataset if train_dataset is not None else self.train_dataset
        parts = zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])
        if self.share_prompt:
            lengths = [len(p) + len(c) + len(r) for p, c, r in parts]
        else:
            lengths = [len(p) + max(len(c), len(r)) for p, c, r in parts]
        return length_grouped(self, lengths)


def training_args(ctx: StageContext) -> DPOConfig:
    a = ctx.algo
    return trl_args(
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
        precompute_ref_log_probs=dpo_precomputes(a),
        # a forward without gradients holds no activations for a backward pass: four training batches at a time
        precompute_ref_batch_size=4 * a.batch_size,
        sync_ref_model=a.sync_ref_model,
        ref_model_mixup_alpha=a.ref_model_mixup_alpha,
        ref_model_sync_steps=a.ref_model_sync_steps,
    )


def build_trainer(ctx: StageContext) -> AlignlabDPOTrainer:
    a = ctx.algo
    precompute = dpo_precomputes(a)
    args = training_args(ctx)
    policy = training_model(ctx)
    peft = lora_config(ctx.cfg.model, policy, tokenizer=ctx.tokenizer)
    compact = lm_head.use_compact(a.lm_head, policy, devices.training_device())
    share = compact and a.share_prompt in (True, "auto")
    ref = reference_model(ctx, policy, lora=peft is not None, precompute=precompute)
    pairs = preference_dataset(ctx)
    if precompute:
        pairs = on_disk(pairs, ctx.stage_dir / "pairs")
    scored = pairs
    if a.final_eval_max_pairs is not None and a.final_eval_max_pairs < len(pairs):
        scored = pairs.shuffle(seed=ctx.cfg.seed).select(range(a.final_eval_max_pairs))
    cache, started = None, time.perf_counter()
    if precompute and a.ref_cache:
        cache = RefLogpCache(
            Path(ctx.cfg.run.root) / ".cache" / "ref_logps", reference_key(ctx, args, policy, compact, share)
        )
    key_seconds = time.perf_counter() - started  # hashing the reference's files is part of what the cache costs
    with lm_head.replacing_trl_head(trl.trainer.dpo_trainer, compact, share_prompt=share):
        trainer = AlignlabDPOTrainer(
            model=policy,
            ref_model=ref,
            args=args,
            train_dataset=pairs,
            eval_dataset=scored if a.final_eval else None,  # prepared (ref log-probs too) with the train set
            processing_class=ctx.tokenizer,
            peft_config=peft,
            ref_cache=cache,
            group_by_length=a.group_by_length,
            share_prompt=share,
        )
    trainer.ref_stats["ref_logps/seconds"] += key_seconds
    return trainer


def preference_dataset(ctx: StageContext) -> Dataset:
    """The stage's pairs (their safety labels are the cost model's, left out), and the opening pairs of the pairs
    stage that wrote them (`algo.pairs.opening_pairs`): with those, every pair is tokenized here
    (training/tokenized.py), since TRL closes each reply with the end-of-turn token and an opening must not end
    there."""
    pairs = data_lib.without_labels(ctx.pairs or [])
    openings = []
    if ctx.pairs_from is not None:  # the round that wrote them, and the earlier ones it follows
        written = onpolicy.read_openings(ctx.stage_dir.parent, ctx.pairs_from, ctx.cfg.algo)
        openings = [o for o in written if o.get("rejected") is not None]
    if not openings:
        return Dataset.from_list(pairs)
    return Dataset.from_list([tokenized.pair(p, ctx.tokenizer) for p in pairs + openings])


def reference_model(ctx: StageContext, policy: Any, lora: bool, precompute: bool) -> Any:
    """The reference to hand TRL. A model object (not a path) needs an explicit reference unless LoRA (adapter off)
    or precomputed log-probs stand in for it; loading it ourselves also keeps dtype and attention the same as the
    policy's."""
    if ctx.algo.reference is not None:
        return load_reference(ctx, policy.config._attn_implementation)
    if not lora and not precompute:
        return training_model(ctx)
    return None


def reference_key(ctx: StageContext, args: DPOConfig, policy: Any, compact: bool, share: bool) -> dict[str, Any]:
    """Everything the reference log-probabilities depend on besides the pairs' tokens: the reference's files (a
    content hash), how it is loaded, and how the replies are scored."""
    a = ctx.algo
    reference = ctx.input_model if a.reference is None else reference_path(ctx)
    return {
        "reference": fingerprint(reference),
        "revision": ctx.cfg.model.revision if a.reference is None else None,
        "dtype": ctx.cfg.model.dtype,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "attention": policy.config._attn_implementation,
        "lm_head": "compact" if compact else "trl",
        "share_prompt": share,
        "max_length": args.max_length,
        "truncation_mode": args.truncation_mode,
        "ld_alpha": a.ld_alpha,
        "versions": [trl.__version__, transformers.__version__, torch.__version__],
    }


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
    if trainer.precompute_ref_logps:
        metrics.update({k: round(v, 3) for k, v in trainer.ref_stats.items()})
    if ctx.algo.final_eval:
        metrics.update(final_metrics(trainer))
    save_final(trainer, ctx)
    return metrics
