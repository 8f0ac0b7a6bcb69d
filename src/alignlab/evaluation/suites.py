"""Benchmark adapters: every suite of `eval.suites` read into rows the runner can score.

Named sources read the standard files where they lie (`eval.benchmarks_dir`: ../shared/benchmarks by default, or
$ALIGNLAB_BENCHMARKS); a named benchmark whose files are absent is skipped with a note, never faked. Any other
source is a local file, a folder or a Hub dataset id, read by data/sources.py (the same code path as training
data), so a benchmark published on the Hub works with `source: org/name` and `split:`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alignlab.data.sources import RawRow, read_rows, resolve_local
from alignlab.errors import DataError
from alignlab.evaluation import bias

BUNDLED_EVAL = "pkg://alignlab/assets/safety/eval_prompts.jsonl"
NAMED_FILES = {
    "harmbench": "harmbench/harmbench_standard_prompts.txt",
    "xstest": "xstest/xstest_prompts.csv",
    "crows_pairs": "crows_pairs/crows_pairs_anonymized.csv",
    "bbq": "bbq",
}
PROMPT_FIELDS = ("prompt", "behavior", "Behavior", "goal", "instruction")  # XSTest, HarmBench, AdvBench, ...


@dataclass
class Suite:
    name: str
    kind: str
    expect: str | None = None  # refusal suites
    judge: str = "rules"
    presentations: tuple[str, ...] = ("bare",)  # BBQ suites (evaluation/bias.py)
    prompts: list[str] = field(default_factory=list)  # refusal suites
    categories: list[str] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)  # CrowsPair | BBQItem | preference row


def load_suite(
    name: str, spec: DictConfig, benchmarks_dir: Path, seed: int = 0, stage_pairs: Any = None
) -> Suite | None:
    """The suite's rows, or None when it names a public benchmark whose files are not in `benchmarks_dir`.
    `stage_pairs(name)` returns the normalized pairs a pipeline stage wrote (for `source: stage:<name>`)."""
    suite = Suite(name, spec.kind, spec.expect, spec.judge, tuple(spec.get("presentations", ["bare"])))
    if spec.kind == "refusal":
        rows = _refusal_rows(spec, benchmarks_dir)
        if rows is None:
            return None
        rows = rows[: spec.limit] if spec.limit else rows
        suite.prompts, suite.categories = [r[0] for r in rows], [r[1] for r in rows]
        return suite
    if spec.kind == "preference":
        if str(spec.source).startswith("stage:"):
            suite.rows = list(stage_pairs(str(spec.source).split(":", 1)[1]))
        else:
            from alignlab import data as data_lib
            from alignlab.config import DataConfig, SourceConfig

            source = OmegaConf.structured(SourceConfig(path=spec.source, split=spec.split))
            suite.rows, _ = data_lib.load(source, "preference", OmegaConf.structured(DataConfig(name=name)), None)
    else:
        raw = _raw(spec, benchmarks_dir)
        if raw is None:
            return None
        parse = bias.crows_pairs_rows if spec.kind == "crows_pairs" else bias.bbq_items
        suite.rows = parse([(r.where, r.data) for r in raw if _kept(r.data, spec.where)])
    if not suite.rows:
        raise DataError(f"Data error: evaluation suite '{name}' ({spec.source}) has no rows.")
    if spec.limit and spec.limit < len(suite.rows):
        suite.rows = random.Random(seed).sample(suite.rows, spec.limit)
    return suite


def _kept(row: dict[str, Any], where: DictConfig) -> bool:
    return all(str(row.get(k)) == str(v) for k, v in where.items())


def _raw(spec: DictConfig, benchmarks_dir: Path) -> list[RawRow] | None:
    if spec.source in NAMED_FILES:
        path = benchmarks_dir / NAMED_FILES[spec.source]
        if not path.exists():
            return None
        if path.is_dir():  # BBQ: one JSON-lines file per category
            return [row for f in sorted(path.glob("*.jsonl")) for row in read_rows(str(f))]
        return read_rows(str(path))
    return read_rows(spec.source, split=spec.split)


def _refusal_rows(spec: DictConfig, benchmarks_dir: Path) -> list[tuple[str, str]] | None:
    """(prompt, category) pairs."""
    source = str(spec.source)
    if source.startswith("bundled:"):
        kind = source.split(":", 1)[1]
        rows = [json.loads(line) for line in Path(resolve_local(BUNDLED_EVAL)).read_text().splitlines() if line]
        return [(r["prompt"], r["category"]) for r in rows if r["type"] == kind]
    if source == "harmbench":
        path = benchmarks_dir / NAMED_FILES["harmbench"]
        return _txt_prompts(path, "harmbench") if path.is_file() else None
    if source.startswith("xstest:"):
        path = benchmarks_dir / NAMED_FILES["xstest"]
        if not path.is_file():
            return None
        label = source.split(":", 1)[1]
        return [(r.data["prompt"], r.data["type"]) for r in read_rows(str(path)) if r.data["label"] == label]
    local = resolve_local(source)
    if local is not None and local.is_file() and local.suffix == ".txt":
        return _txt_prompts(local, source)
    out = []
    for r in read_rows(source, split=spec.split):
        if not _kept(r.data, spec.where):
            continue
        text = next((r.data[k] for k in PROMPT_FIELDS if isinstance(r.data.get(k), str)), None)
        if text is None:
            raise DataError(f"Data error in {r.where}: no prompt column (looked for {', '.join(PROMPT_FIELDS)}).")
        out.append((text, str(r.data.get("category") or r.data.get("type") or "any")))
    return out


def _txt_prompts(path: Path, category: str) -> list[tuple[str, str]]:
    """A behaviour list with one prompt a line (HarmBench's layout)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(line.strip(), category) for line in lines if line.strip()]
