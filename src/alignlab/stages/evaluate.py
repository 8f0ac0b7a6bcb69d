"""Evaluation stage: the current policy on every suite of the `eval` config (evaluation/runner.py, the same code
as `alignlab eval`). Replies with their judge verdicts go to `<stage>/generations.jsonl` and a W&B table; the
reference for KL and implicit rewards is `eval.reference`, or the pipeline's starting model."""

from __future__ import annotations

from typing import Any

from alignlab.data.onpolicy import write_jsonl
from alignlab.evaluation.runner import Evaluator
from alignlab.models import load_model
from alignlab.stages.common import StageContext

TABLE_COLUMNS = ("suite", "category", "prompt", "reply", "refused", "judge", "reward")


def reference_loader(ctx: StageContext, policy_path: str | None) -> Any:
    """Loads the reference on first use; None when the policy is the reference itself (KL 0, no margins).
    `policy_path=None`: a policy in training, never the reference."""
    ref = ctx.cfg.eval.reference or ctx.base_model
    if ref == policy_path:
        return None
    return lambda: load_model(ref, ctx.cfg.model, for_generation=True)


def run(ctx: StageContext) -> dict[str, Any]:
    model = load_model(ctx.input_model, ctx.cfg.model, for_generation=True)
    evaluator = Evaluator(ctx.cfg.eval, reference_loader(ctx, ctx.input_model), ctx.cfg.seed,
                          stage_pairs=ctx.stage_pairs)  # fmt: skip
    result = evaluator(model, ctx.tokenizer)
    write_jsonl(ctx.stage_dir / "generations.jsonl", result.records)
    ctx.tracker.table(f"{ctx.name}/generations", list(TABLE_COLUMNS),
                      [[r[k] for k in TABLE_COLUMNS] for r in result.records])  # fmt: skip
    return result.metrics
