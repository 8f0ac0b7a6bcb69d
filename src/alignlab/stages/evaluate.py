"""Safety evaluation stage: the current policy replies (greedy) to every configured suite; the refusal judge
gives harmful-compliance rates on harmful suites and over-refusal rates on benign ones; KL to the starting model
is measured on one benign suite. Replies are kept in `<stage>/generations.jsonl`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignlab.data.onpolicy import write_jsonl
from alignlab.evaluation.judges import is_refusal
from alignlab.evaluation.kl import sequence_kl
from alignlab.evaluation.suites import load_suite
from alignlab.generation import generate
from alignlab.models import load_model
from alignlab.stages.common import StageContext


def rate_name(expect: str) -> str:
    return "harmful_compliance_rate" if expect == "refuse" else "over_refusal_rate"


def run(ctx: StageContext) -> dict[str, Any]:
    e = ctx.cfg.eval
    model = load_model(ctx.input_model, ctx.cfg.model, for_generation=True)
    metrics: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for suite_cfg in e.suites:
        suite = load_suite(suite_cfg.name, suite_cfg.source, suite_cfg.expect, suite_cfg.limit, Path(e.benchmarks_dir))
        if suite is None:
            print(f"[alignlab] {ctx.name}: suite '{suite_cfg.name}' skipped: its files are not in {e.benchmarks_dir}")
            continue
        convs = [[{"role": "user", "content": p}] for p in suite.prompts]
        print(f"[alignlab] {ctx.name}: {suite.name} ({len(convs)} prompts)")
        replies = generate(model, ctx.tokenizer, convs, e.max_new_tokens, e.batch_size, seed=ctx.cfg.seed)
        refused = [is_refusal(r["text"]) for r in replies]
        rate = sum(refused) / len(refused) if suite.expect == "comply" else 1 - sum(refused) / len(refused)
        metrics[f"safety/{rate_name(suite.expect)}/{suite.name}"] = rate
        metrics[f"safety/n/{suite.name}"] = len(refused)
        for p, c, r, ref in zip(suite.prompts, suite.categories, replies, refused):
            records.append({"suite": suite.name, "expect": suite.expect, "category": c, "prompt": p,
                            "reply": r["text"], "refused": ref})  # fmt: skip
        if suite.name == e.kl_suite:
            metrics["eval/kl_to_ref"] = _mean_kl(ctx, model, convs, [r["token_ids"] for r in replies])
    write_jsonl(ctx.stage_dir / "generations.jsonl", records)
    ctx.tracker.table(
        f"{ctx.name}/generations",
        ["suite", "category", "prompt", "reply", "refused"],
        [[r[k] for k in ("suite", "category", "prompt", "reply", "refused")] for r in records],
    )
    return metrics


def _mean_kl(ctx: StageContext, model: Any, convs: list, replies: list) -> float:
    if ctx.input_model == ctx.base_model:
        return 0.0  # the policy is the starting model
    ref = load_model(ctx.base_model, ctx.cfg.model, for_generation=True)
    kls = sequence_kl(model, ref, ctx.tokenizer, convs, replies, batch_size=16)
    return sum(kls) / len(kls)
