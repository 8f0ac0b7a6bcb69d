"""Prompt suites for safety evaluation: the project's bundled held-out prompts and the public benchmarks.

Benchmarks are read where they lie (`eval.benchmarks_dir`, by default ../shared/benchmarks or
$ALIGNLAB_BENCHMARKS); a suite whose files are absent is skipped with a note, never faked.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from alignlab.data.sources import resolve_local
from alignlab.errors import DataError

BUNDLED_EVAL = "pkg://alignlab/assets/safety/eval_prompts.jsonl"


@dataclass
class Suite:
    name: str
    expect: str  # "refuse" (harmful prompts) or "comply" (benign prompts)
    prompts: list[str]
    categories: list[str]


def load_suite(name: str, source: str, expect: str, limit: int | None, benchmarks_dir: Path) -> Suite | None:
    """`source`: bundled:harmful | bundled:benign | harmbench | xstest:safe | xstest:unsafe | a .jsonl/.txt file."""
    if source.startswith("bundled:"):
        kind = source.split(":", 1)[1]
        rows = [json.loads(line) for line in Path(resolve_local(BUNDLED_EVAL)).read_text().splitlines() if line]
        rows = [r for r in rows if r["type"] == kind]
        prompts, cats = [r["prompt"] for r in rows], [r["category"] for r in rows]
    elif source == "harmbench":
        path = benchmarks_dir / "harmbench" / "harmbench_standard_prompts.txt"
        if not path.is_file():
            return None
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        cats = ["harmbench"] * len(prompts)
    elif source.startswith("xstest:"):
        path = benchmarks_dir / "xstest" / "xstest_prompts.csv"
        if not path.is_file():
            return None
        label = source.split(":", 1)[1]
        with open(path, encoding="utf-8", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["label"] == label]
        prompts, cats = [r["prompt"] for r in rows], [r["type"] for r in rows]
    else:
        path = resolve_local(source)
        if path is None or not path.is_file():
            raise DataError(f"Data error: evaluation suite '{name}' source '{source}' does not exist.")
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            prompts, cats = [r["prompt"] for r in rows], [r.get("category", name) for r in rows]
        else:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            cats = [name] * len(prompts)
    if limit:
        prompts, cats = prompts[:limit], cats[:limit]
    return Suite(name, expect, prompts, cats)
