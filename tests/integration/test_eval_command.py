"""`alignlab eval` end to end on tiny models (merged and LoRA checkpoints), and evaluation every N training steps
logged to the run's W&B file. Benchmarks come from a folder written by the tests (tests/bench_fixtures.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_reader import history_keys

pytestmark = pytest.mark.slow

SMALL = [
    "eval=safety-bias",
    "eval.max_new_tokens=6",
    "eval.suites.bundled_harmful.limit=3",
    "eval.suites.bundled_benign.limit=3",
]


def alignlab(tmp: Path, cache: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALIGNLAB_CACHE": str(cache), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "alignlab.cli", *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=600
    )
    if ok:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_eval_compares_base_merged_and_lora_checkpoint(tmp_path, cache_dir, bench_dir):
    runs = tmp_path / "runs"
    alignlab(
        tmp_path,
        cache_dir,
        "run",
        "experiment=tiny",
        "model.lora.enabled=true",
        "run.id=lora",
        "logger=none",
        f"run.root={runs}",
    )
    trained = runs / "tiny" / "lora" / "dpo"
    last = max(trained.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert (last / "adapter_config.json").is_file()
    models = f"model=tiny,{trained / 'model'},{last}"
    args = [
        "eval",
        models,
        "reference=tiny",
        *SMALL,
        f"eval.benchmarks_dir={bench_dir}",
        "logger=none",
        f"run.root={runs}",
    ]
    out = alignlab(tmp_path, cache_dir, *args).stdout
    assert "models compared" in out and "model 3:" in out  # rich wraps long paths: they are checked below

    (comparison,) = (runs / "eval").glob("comparison-*.json")
    results = json.loads(comparison.read_text())["models"]
    base, merged, adapter = (results[k] for k in ("tiny", str(trained / "model"), str(last)))
    assert "eval/kl_to_ref" not in base and merged["eval/kl_to_ref"] > 0  # the reference has no KL to itself
    # the LoRA checkpoint of the last step, merged at load, is the stage's final model
    for key in ("eval/kl_to_ref", "bias/crows_pairs_stereotype_pct", "bias/bbq_ambig_accuracy"):
        assert adapter[key] == pytest.approx(merged[key], abs=1e-3), key
    for key in (
        "safety/refusal_rate/bundled_harmful",
        "safety/over_refusal_rate/xstest_safe",
        "bias/crows_pairs_stereotype_pct",
        "bias/bbq_ambig_bias_score",
    ):
        assert key in base, key
    table = comparison.with_suffix(".md").read_text()
    assert "| bias/crows_pairs_stereotype_pct |" in table and table.count("`") >= 8
    bbq_row = next(line for line in table.splitlines() if line.startswith("| bias/bbq_ambig_accuracy |"))
    assert bbq_row.count(" ± ") == 3, bbq_row  # each model's value with its standard error

    # each model has its own run folder with metrics.json and generations with judge verdicts
    (merged_run,) = [
        p
        for p in (runs / "eval").iterdir()
        if p.is_dir()
        and "model" in (p / "config.yaml").read_text()
        and str(trained / "model") in (p / "config.yaml").read_text()
    ]
    gens = [json.loads(line) for line in (merged_run / "eval" / "generations.jsonl").read_text().splitlines()]
    # the default experiment's judges: the learned probe, and the rules re-judging the same replies beside it
    assert {"suite", "prompt", "reply", "refused", "judge", "judge2_refused"} <= set(gens[0])
    assert gens[0]["judge"] == "probe"

    again = alignlab(tmp_path, cache_dir, *args).stdout
    assert again.count("eval: already done, skipped") == 3


def test_eval_bad_input_fails_before_compute(tmp_path, cache_dir):
    proc = alignlab(tmp_path, cache_dir, "eval", "eval=safety", ok=False)
    assert proc.returncode == 2 and "needs model=" in proc.stderr
    proc = alignlab(tmp_path, cache_dir, "eval", f"model=tiny,{tmp_path / 'missing'}", f"run.root={tmp_path}", ok=False)
    assert proc.returncode == 2 and "missing" in proc.stderr and not (tmp_path / "eval").exists()


def test_eval_every_n_steps_logs_to_the_run(tmp_path, cache_dir, bench_dir):
    runs = tmp_path / "runs"
    alignlab(
        tmp_path,
        cache_dir,
        "run",
        "experiment=tiny",
        "run.id=cb",
        f"run.root={runs}",
        *SMALL,
        f"eval.benchmarks_dir={bench_dir}",
        "algo.dpo.eval_every=10",
        "algo.dpo.eval_suites=[bundled_benign,crows_pairs,bbq]",
    )
    run = runs / "tiny" / "cb"
    history = [json.loads(line) for line in (run / "dpo" / "eval_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [10, 20]
    assert all("bias/crows_pairs_stereotype_pct" in h and "eval/kl_to_ref" in h for h in history)
    assert history[-1]["eval/kl_to_ref"] > 0  # the policy in training, against the starting model
    assert not (run / "sft" / "eval_history.jsonl").exists()
    (wandb_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    keys = history_keys(wandb_file)
    assert {"dpo/safety/over_refusal_rate/bundled_benign", "dpo/bias/bbq_ambig_accuracy", "dpo/loss"} <= keys
