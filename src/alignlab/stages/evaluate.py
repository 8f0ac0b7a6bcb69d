"""Evaluation stage: the current policy on every suite of the `eval` config (evaluation/runner.py, the same code
as `alignlab eval`). Replies with their judge verdicts go to `<stage>/generations.jsonl` and a W&B table; the
reference for KL and implicit rewards is `eval.reference`, or the pipeline's starting model."""

from __future__ import annotations

from typing import Any

from alignlab.data.onpolicy import write_jsonl
from alignlab.evaluation.reference import reference_loader
from alignlab.evaluation.runner import Evaluator
from alignlab.models import load_model
from alignlab.training.context import StageContext

TABLE_COLUMNS = ("suite", "category", "prompt", "reply", "refused", "judge", "reward")


def run(ctx: StageContext) -> dict[str, Any]:
    model = load_model(ctx.input_model, ctx.cfg.model, for_generation=True)
    reference = reference_loader(ctx.cfg, ctx.base_model, ctx.input_model)
    evaluator = Evaluator(ctx.cfg.eval, reference, ctx.cfg.seed, stage_pairs=ctx.stage_pairs)
    result = evaluator(model, ctx.tokenizer)
    write_jsonl(ctx.stage_dir / "generations.jsonl", result.records)
    rows = [[r[k] for k in TABLE_COLUMNS] for r in result.records]
    ctx.tracker.table(f"{ctx.name}/generations", list(TABLE_COLUMNS), rows)
    return result.metrics
