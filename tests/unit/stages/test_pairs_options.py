"""The pairs stage's data options (algo.pairs.specific_refusals, algo.pairs.ches_drop), run as a stage on the tiny
model, and their config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from probe_fixtures import label_file, tiny_probe

from alignlab import cli
from alignlab.config import compose_config, validate
from alignlab.data import onpolicy
from alignlab.errors import ConfigError

BASE = ["experiment=safety-smollm-quick", "model=tiny", "pipeline.stages=[pairs]", "logger=none", "eval.judge=rules"]


def _pairs_run(tmp_path: Path, *extra: str) -> Path:
    args = ["run", *BASE, "model.generation_dtype=null", "algo.pairs.max_harmful=8", "algo.pairs.max_benign=8"]
    assert cli.main([*args, f"run.root={tmp_path}", *extra]) == 0
    (run,) = (tmp_path / "safety-smollm-quick").iterdir()
    return run / "pairs"


def test_ches_drop_removes_the_most_alike_pairs_and_says_which(tmp_path, cache_dir, tiny_model, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    kept_all = onpolicy.read_jsonl(_pairs_run(tmp_path / "all") / "pairs.jsonl")
    stage = _pairs_run(tmp_path / "drop", "algo.pairs.ches_drop=0.5", "algo.pairs.specific_refusals=true")
    kept, records = onpolicy.read_jsonl(stage / "pairs.jsonl"), onpolicy.read_jsonl(stage / "generations.jsonl")
    metrics = json.loads((stage / "metrics.json").read_text())
    dropped = [r for r in records if r["outcome"].endswith("(dropped: high CHES)")]
    assert len(kept_all) >= 4 and len(dropped) == round(len(kept_all) * 0.5)
    assert len(kept) == len(kept_all) - len(dropped)
    assert sum(v for k, v in metrics.items() if k.endswith("/dropped_high_ches")) == len(dropped)
    assert {r["prompt"] for r in dropped}.isdisjoint(p["prompt"][0]["content"] for p in kept)
    refusals = onpolicy.read_refusals("pkg://alignlab/assets/safety/refusals.jsonl")
    for p in kept:
        assert isinstance(p["ches"], float)
        if p["type"] == "harmful":  # specific_refusals: the category's own refusals, never the generic ones
            assert p["chosen"][0]["content"] in refusals[p["category"]]


@pytest.mark.parametrize("override", ["algo.pairs.ches_drop=1.0", "algo.pairs.ches_drop=-0.1"])
def test_ches_drop_must_be_a_fraction_below_one(override):
    with pytest.raises(ConfigError, match=r"algo\.pairs\.ches_drop.*\[0, 1\)"):
        validate(compose_config([*BASE, override]))


def test_negative_prompt_counts_are_refused():
    with pytest.raises(ConfigError, match=r"algo\.pairs\.max_benign"):
        validate(compose_config([*BASE, "algo.pairs.max_benign=-1"]))


def test_the_pairs_stage_judges_with_the_evaluations_judge_unless_told():
    from alignlab.config.root import pairs_judge

    assert pairs_judge(validate(compose_config(["experiment=safety-smollm"])), "pairs") == "probe"
    assert pairs_judge(validate(compose_config(["experiment=safety-smollm", "algo.pairs.judge=rules"])), "pairs") == (
        "rules"
    )
    with pytest.raises(ConfigError, match=r"algo\.pairs\.judge.*no judge 'guard'"):
        validate(compose_config(["experiment=safety-smollm", "algo.pairs.judge=guard"]))


def test_a_learned_pairs_judge_counts_the_outcomes_the_rules_would_change(tmp_path, cache_dir, tiny_model, monkeypatch):
    """The probe judge routes the replies (here fitted on the tiny model's states, as the probe tests do); the stage
    also records how many prompts' outcomes the rule judge would have decided differently."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    files = [label_file(tmp_path / "labels.jsonl", "set-a")]
    tiny_probe(monkeypatch, tmp_path / "judge-cache")
    stage = _pairs_run(tmp_path, "eval.judge=probe", f"eval.judges.probe.labels=[{files[0]}]")
    metrics = json.loads((stage / "metrics.json").read_text())
    records = onpolicy.read_jsonl(stage / "generations.jsonl")
    assert 0 <= metrics["pairs/changed_vs_rules"] <= len(records) == 16
