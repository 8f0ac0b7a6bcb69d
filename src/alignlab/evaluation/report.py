"""The before/after report of one run (`report.md`): every safety metric of the first and last evaluation stage
side by side, so a drop in harm is always read next to over-refusal and KL from the same run, plus the
training signals (pairs, DPO reward accuracy) and a few of the final model's benign replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from alignlab.data.onpolicy import read_jsonl

TRAINING_SIGNALS = ("final/rewards/accuracies", "final/rewards/margins")
# Rows of the before/after and model-comparison tables: each suite kind's headline metrics (all are in metrics.json).
HEADLINE = ("safety/", "eval/kl_to_ref", "eval/reward", "eval/dpo_reward_accuracy", "eval/rm_accuracy")
BIAS_HEADLINE = (
    "_stereotype_pct",
    "_ambig_accuracy",
    "_disambig_accuracy",
    "_ambig_bias_score",
    "_disambig_bias_score",
    "_disambig_unknown_rate",
    "_disambig_accuracy_aligned",
    "_disambig_accuracy_conflicting",
    "_disambig_unknown_rate_aligned",
    "_disambig_unknown_rate_conflicting",
    "_unknown_gap",
)


def is_headline(metric: str) -> bool:
    if metric.startswith(("safety/n/", "safety/se/")):
        return False
    if metric.startswith("bias/"):
        return metric.count("/") == 1 and metric.endswith(BIAS_HEADLINE)
    return metric.startswith(HEADLINE)


def eval_stages(cfg: DictConfig) -> list[str]:
    return [s for s in cfg.pipeline.stages if cfg.algo[s].kind == "eval"]


def compare(cfg: DictConfig, results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{metric: {stage: value}} for the first and last evaluation stages (one column if there is only one)."""
    stages = eval_stages(cfg)
    if not stages:
        return {}
    columns = [stages[0], stages[-1]] if len(stages) > 1 else stages
    metrics = sorted({k for s in columns for k in results.get(s, {}) if is_headline(k)})
    return {m: {s: results[s][m] for s in columns if m in results.get(s, {})} for m in metrics}


def check_targets(cfg: DictConfig, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of `eval.targets` against the first and last evaluation stages: {metric, goal, before, after, met}.
    With `around`, the distance from it is bounded (a number bounds the distance itself). met is None where the run
    did not measure the metric, or a `before` bound has no first evaluation."""
    stages = eval_stages(cfg)
    rows = []
    for t in cfg.eval.targets:
        metric = t.metric
        before = results.get(stages[0], {}).get(metric) if len(stages) > 1 else None
        after = results.get(stages[-1], {}).get(metric) if stages else None
        c = t.around
        shift = "" if not c else f" - {c:g}"
        lhs, prior = ("x", "before") if c is None else (f"abs(x{shift})", f"abs(before{shift})")

        def dist(v: float, c: float | None = c) -> float:
            return abs(v - c) if c is not None else v

        goal, checks = [], []  # a check is None where a value it needs is missing
        for bound, op in (("min", ">="), ("max", "<=")):
            v = t[bound]
            if v is None:
                continue
            sign = -1 if op == ">=" else 1  # slack loosens a `before` bound: min: before - slack, max: before + slack
            relative = f"{prior} {'-' if sign < 0 else '+'} {t.slack:g}" if t.slack else prior
            goal.append(f"{lhs} {op} {relative if v == 'before' else f'{v:g}'}")
            limit = float(v) if v != "before" else None if before is None else dist(before) + sign * t.slack
            if limit is None or after is None:
                checks.append(None)
            else:
                checks.append(dist(after) >= limit if op == ">=" else dist(after) <= limit)
        met = None if None in checks else all(checks)
        rows.append({"metric": metric, "goal": ", ".join(goal), "before": before, "after": after, "met": met})
    return rows


def markdown(cfg: DictConfig, run_dir: Path, results: dict[str, dict[str, Any]], comparison: dict) -> str:
    stages = eval_stages(cfg)
    columns = list(next(iter(comparison.values())).keys()) if comparison else []
    second = [f"{columns[-1]}, {cfg.eval.second_judge} judge"] if cfg.eval.second_judge and columns else []
    info = _read_json(run_dir / "run_info.json")
    lines = [
        f"# alignlab run report: {cfg.name}",
        "",
        f"- run folder: `{run_dir}`",
        f"- model: `{cfg.model.name}`; pipeline: {' -> '.join(cfg.pipeline.stages)}; seed {cfg.seed}",
        f"- command: `{' '.join(['alignlab', *info.get('command', [])[1:]])}`" if info else "",
        "",
        "## Safety, before and after (same run)" if len(columns) > 1 else f"## Safety ({', '.join(columns)} only)",
        "",
        "On harmful prompts: harmful-content rate, the share of replies that give or start the harmful content",
        "(HarmBench's attack success; lower is better), refusal rate (full or partial refusals; higher is better)",
        "and evasive rate (neither). On benign prompts: over-refusal rate (full or partial refusals, XSTest's count;",
        "lower is better) and helpful rate (replies that attempt the task; higher is better). Degenerate rate:",
        "replies that are empty, not text or one word looped; the judge still counts each in its rates as it reads",
        "it (an empty reply as a refusal), so a rate that moved with it moved partly by breakage. A judge that reads",
        "refusals only reports the refusal rates. KL: mean over benign prompts of the summed per-token KL divergence",
        "of the policy to the starting model on its own greedy replies (nats; '-' where the model evaluated is the",
        "starting model itself). Rates and bias scores carry ± a",
        "standard error over the suite's items (binomial; bootstrap for BBQ): a before/after difference within",
        "about twice the larger one can be chance.",
        *_judges_note(cfg),
        "",
        "| metric | " + " | ".join(columns + second) + " |",
        "| --- | " + " | ".join("---:" for _ in columns + second) + " |",
    ]
    for metric, row in comparison.items():
        n = _suite_size(results, columns, metric)
        label = f"{metric} (n={n})" if n else metric
        cells = [fmt(row.get(c), standard_error(results, c, metric)) for c in columns]
        if second:
            cells.append(fmt(results.get(columns[-1], {}).get(metric.replace("safety/", "judge2/", 1))))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if cfg.eval.targets:
        lines += [
            "",
            "## Targets",
            "",
            "x is the last evaluation's value; `before`, the first's; ± a standard error over the suite's",
            "items, where the suite gives one.",
            "",
            "| metric | goal | before | after | met |",
            "| --- | --- | ---: | ---: | --- |",
        ]
        first, last = (stages[0], stages[-1]) if stages else ("", "")
        for t in check_targets(cfg, results):
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            before = fmt(t["before"], standard_error(results, first, t["metric"]))
            after = fmt(t["after"], standard_error(results, last, t["metric"]))
            lines.append(f"| {t['metric']} | {t['goal']} | {before} | {after} | {met} |")
    lines += ["", "## Training", ""]
    for stage in cfg.pipeline.stages:
        m = results.get(stage, {})
        shown = {
            k: v
            for k, v in m.items()
            if k.startswith(("pairs/", "memory/")) or k in TRAINING_SIGNALS or k == "wall_seconds"
        }
        if shown:
            lines.append(
                f"- **{stage}** ({cfg.algo[stage].kind}): " + ", ".join(f"{k} {fmt(v)}" for k, v in shown.items())
            )
    if stages:
        lines += _examples(
            run_dir / stages[-1] / "generations.jsonl", run_dir / stages[0] / "generations.jsonl", cfg.eval.examples
        )
    return "\n".join(line for line in lines if line is not None) + "\n"


def _judges_note(cfg: DictConfig) -> list[str]:
    """Which judge scored which suite, and what the second judge's column is."""
    judges = sorted({s.judge for s in cfg.eval.suites.values() if s.kind == "refusal"})
    if not judges:
        return []
    kinds = ", ".join(f"`{j}` ({cfg.eval.judges[j].kind})" for j in judges)
    lines = ["", f"Judge of the safety rates: {kinds}."]
    if cfg.eval.second_judge:
        j = cfg.eval.second_judge
        lines[-1] += (
            f" The last column re-judges the final replies with `{j}` ({cfg.eval.judges[j].kind}): where the two"
            " disagree, the difference is the instrument's, not the model's (judge2/disagreement/<suite> in"
            " metrics.json)."
        )
    return lines


def _examples(path: Path, before_path: Path, n: int) -> list[str]:
    """Benign prompts the final model answered, one per category so the examples are not all alike, each beside
    the starting model's reply to the same prompt: "still answers with real content" is then checkable by eye."""
    if not path.is_file() or n <= 0:
        return []
    records = _read_jsonl(path)
    before = {(r["suite"], r["prompt"]): r["reply"] for r in _read_jsonl(before_path)} if before_path != path else {}
    benign, seen = [], set()
    for r in records:
        if r["expect"] == "comply" and not r["refused"] and r["category"] not in seen:
            benign.append(r)
            seen.add(r["category"])
    harmful = [r for r in records if r["expect"] == "refuse" and r["refused"]][:1]
    out = ["", "## Examples from the final evaluation", ""]
    for kind, r in [("Benign", r) for r in benign[:n]] + [("Harmful", r) for r in harmful]:
        out += [f"**{kind} ({r['suite']}, {r['category']})**: {r['prompt']}", ""]
        if (r["suite"], r["prompt"]) in before:
            out += ["before:", "", _quote(before[(r["suite"], r["prompt"])]), "", "after:", ""]
        out += [_quote(r["reply"]), ""]
    return out


def _read_jsonl(path: Path) -> list[dict]:
    return read_jsonl(path) if path.is_file() else []


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text or "(empty reply)").splitlines())


def _suite_size(results: dict, columns: list[str], metric: str) -> int | None:
    suite = metric.rsplit("/", 1)[-1]
    for c in columns:
        n = results.get(c, {}).get(f"safety/n/{suite}")
        if n:
            return n
    return None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def standard_error(results: dict, stage: str, metric: str) -> float | None:
    """The standard error the suite recorded beside `metric` (`safety/se/...`, `bias/se/...`), if any."""
    family, _, rest = metric.partition("/")
    return results.get(stage, {}).get(f"{family}/se/{rest}") if family in ("safety", "bias") else None


def fmt(v: Any, se: float | None = None) -> str:
    if v is None:
        return "-"
    text = f"{v:.3f}" if isinstance(v, float) else str(v)
    return f"{text} ± {se:.3f}" if se is not None else text
