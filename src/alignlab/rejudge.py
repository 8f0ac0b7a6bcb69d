"""`alignlab rejudge RUN_DIR [key=value ...]`: a finished run's safety rates recomputed from the replies its
evaluation stages saved (`<stage>/generations.jsonl`), under the judge `eval.judge` of the current config (the
default experiment's plus the overrides, e.g. `eval.judge=rules`), without generating anything.

Why: a judge improves after the runs were made; a study compares judges on the same replies; a run recorded
under a judge that read refusals only gets the rates a learned judge reads (harmful content, helpfulness) in
today's metric names. Each evaluation stage gets `<stage>/rejudged/<judge>.json` (the rates, their standard errors
and the suites' sizes, as metrics.json names them) and `<stage>/rejudged/<judge>.generations.jsonl` (every reply
with the new verdicts); the run's own metrics.json is left as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignlab.artifacts import atomic_write_text
from alignlab.config import compose_config, validate
from alignlab.data.onpolicy import read_jsonl, write_jsonl
from alignlab.errors import UserError
from alignlab.evaluation.judges import build_judge
from alignlab.evaluation.runner import judge_replies


def rejudge(run_dir: Path, overrides: list[str], log: Any = print) -> dict[str, dict[str, float]]:
    """{stage: metrics} for each evaluation stage of `run_dir`, judged by the config's `eval.judge`."""
    stages = _eval_stages(Path(run_dir))
    cfg = validate(compose_config(overrides))
    name = cfg.eval.judge
    judge = build_judge(cfg.eval.judges[name], Path(cfg.eval.benchmarks_dir))
    results: dict[str, dict[str, float]] = {}
    for stage_dir, records in stages.items():
        metrics: dict[str, float] = {}
        judged: list[dict[str, Any]] = []
        for suite in dict.fromkeys(r["suite"] for r in records):
            rows = [r for r in records if r["suite"] == suite]
            expect = rows[0]["expect"]
            verdicts = judge_replies(judge, expect, [r["prompt"] for r in rows], [r["reply"] for r in rows])
            n = len(rows)
            for rate, value in verdicts.rates(expect).items():
                metrics[f"safety/{rate}/{suite}"] = value
                metrics[f"safety/se/{rate}/{suite}"] = (value * (1 - value) / n) ** 0.5
            metrics[f"safety/n/{suite}"] = n
            for i, row in enumerate(rows):
                judged.append(
                    {
                        **row,
                        "judge": name,
                        "refused": verdicts.refused[i],
                        "harmful": None if verdicts.harmful is None else verdicts.harmful[i],
                        "helpful": None if verdicts.helpful is None else verdicts.helpful[i],
                    }
                )
        folder = stage_dir / "rejudged"
        folder.mkdir(exist_ok=True)
        atomic_write_text(folder / f"{name}.json", json.dumps(metrics, indent=1, sort_keys=True) + "\n")
        write_jsonl(folder / f"{name}.generations.jsonl", judged)
        results[stage_dir.name] = metrics
        log(f"[alignlab] rejudge: {stage_dir.name}: {len(judged)} replies judged by '{name}' -> {folder}")
    _print_table(results)
    return results


def _eval_stages(run_dir: Path) -> dict[Path, list[dict[str, Any]]]:
    """The replies of each evaluation stage (generations whose rows name a suite and what it expects), in the
    order the stages ran."""
    if not run_dir.is_dir():
        raise UserError(f"Path error: the run folder '{run_dir}' does not exist.")
    stages: dict[Path, list[dict[str, Any]]] = {}
    for path in sorted(run_dir.glob("*/generations.jsonl"), key=lambda p: p.stat().st_mtime):
        try:
            records = read_jsonl(path)
        except (OSError, ValueError) as exc:
            raise UserError(f"Data error: cannot read '{path}': {exc}.") from None
        refusal = [r for r in records if isinstance(r, dict) and {"suite", "expect", "prompt", "reply"} <= r.keys()]
        if refusal:
            stages[path.parent] = refusal
    if not stages:
        raise UserError(
            f"Path error: '{run_dir}' has no evaluation replies (<stage>/generations.jsonl rows with a suite): "
            "rejudge reads the replies an eval stage saved."
        )
    return stages


def _print_table(results: dict[str, dict[str, float]]) -> None:
    stages = list(results)
    metrics = sorted({k for m in results.values() for k in m if not k.startswith(("safety/se/", "safety/n/"))})
    print("| metric | " + " | ".join(stages) + " |")
    print("| --- | " + " | ".join("---:" for _ in stages) + " |")
    for metric in metrics:
        cells = [f"{results[s][metric]:.3f}" if metric in results[s] else "-" for s in stages]
        print(f"| {metric} | " + " | ".join(cells) + " |")
