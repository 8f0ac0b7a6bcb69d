"""What a stage is given (`StageContext`) and what it loads from it: the policy it trains, its reference, and the
evaluator it runs every `eval_every` steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from alignlab import data as data_lib
from alignlab import devices
from alignlab.evaluation.reference import reference_loader
from alignlab.evaluation.runner import Evaluator
from alignlab.models import cache_root, load_model, resolve_model_path
from alignlab.tracking import Tracker


@dataclass
class StageContext:
    cfg: DictConfig  # the frozen, validated run config
    name: str  # the stage's key in `algo` and `pipeline.stages`
    stage_dir: Path
    input_model: str  # path or Hub id of the policy this stage starts from
    base_model: str  # the pipeline's starting model (reference for KL)
    tokenizer: Any
    pairs: list[dict] | None  # normalized preference rows
    sft_rows: list[dict] | None  # normalized prompt/completion rows
    tracker: Tracker | None
    # Arguments are built to be checked before any stage runs (pipeline.check_training_args), never used: no
    # DeepSpeed or process-group state is created for them.
    dry_run: bool = False
    # the pairs stage of this run whose pairs `pairs` are (`stage:<name>`, the latest later round), else None
    pairs_from: str | None = None
    # one training run of a soup stage (`algo.<stage>.soup`, training/soup.py): its files go to members/<k>/
    member: int | None = None

    @property
    def algo(self) -> DictConfig:
        return self.cfg.algo[self.name]

    @property
    def out_dir(self) -> Path:
        """Where this training run writes its model, checkpoints and logs: the stage folder, or a soup member's."""
        return self.stage_dir if self.member is None else self.stage_dir / "members" / str(self.member)

    @property
    def label(self) -> str:
        """The name its progress, logs and W&B curves go under: the stage's, or `<stage>-member<k>`."""
        return self.name if self.member is None else f"{self.name}-member{self.member}"

    @property
    def model_dir(self) -> Path:
        return self.out_dir / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def stage_pairs(self, stage: str) -> list[dict]:
        """The validated pairs another stage of this run wrote (an eval suite with `source: stage:<name>`)."""
        return data_lib.load_stage_pairs(self.stage_dir.parent, stage, self.cfg.data, self.tokenizer)[0]


def training_model(ctx: StageContext, path: str | None = None) -> torch.nn.Module:
    """The model a TRL-trained stage optimises, with the attention kernel it trains with (devices.py)."""
    attn = devices.resolve_attention(ctx.algo.attn_implementation, ctx.cfg.model.attn_implementation)
    devices.keep_freed_memory()
    return load_model(path or ctx.input_model, ctx.cfg.model, attn_implementation=attn)


def reference_path(ctx: StageContext) -> str:
    """`algo.<stage>.reference` (a model/ option's path, a folder or a Hub id) as `from_pretrained` takes it."""
    ref_cfg = OmegaConf.merge(ctx.cfg.model, {"source": "auto", "path": ctx.algo.reference})
    return resolve_model_path(ref_cfg, cache_root(ctx.cfg))


def load_reference(ctx: StageContext, attn_implementation: str | None = None) -> torch.nn.Module:
    """The stage's reference loaded like the policy: same dtype and attention implementation."""
    return load_model(reference_path(ctx), ctx.cfg.model, attn_implementation=attn_implementation)


def training_evaluator(ctx: StageContext) -> Evaluator:
    """The evaluator a training stage runs every `eval_every` steps (Trainer stages through evaluation/callback.py,
    PPO in its own loop): `algo.<stage>.eval_suites` of the `eval` config, against the eval reference."""
    suites = list(ctx.algo.eval_suites) if ctx.algo.eval_suites is not None else None
    reference = reference_loader(ctx.cfg, ctx.base_model, None)
    return Evaluator(ctx.cfg.eval, reference, ctx.cfg.seed, stage_pairs=ctx.stage_pairs, only=suites)
