"""The pairs stage's data options (algo.pairs.specific_refusals, specific_rejected, ches_drop, helpful_chosen,
stratify), run as a stage on the tiny model, and their config checks."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from probe_fixtures import label_file, tiny_probe

from alignlab import cli
from alignlab.config import compose_config, validate
from alignlab.data import onpolicy
from alignlab.errors import ConfigError
from alignlab.stages.pairs import stratified_order

BASE = ["experiment=safety-smollm-quick", "model=tiny", "pipeline.stages=[pairs]", "logger=none", "eval.judge=rules"]


def _pairs_run(tmp_path: Path, *extra: str, harmful: int = 8, benign: int = 8) -> Path:
    counts = [f"algo.pairs.max_harmful={harmful}", f"algo.pairs.max_benign={benign}"]
    args = ["run", *BASE, "model.generation_dtype=null", *counts]
    assert cli.main([*args, f"run.root={tmp_path}", *extra]) == 0
    (run,) = (tmp_path / "safety-smollm-quick").iterdir()
    return run / "pairs"


def test_ches_drop_removes_the_most_alike_pairs_and_says_which(tmp_path, cache_dir, tiny_model, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    kept_all = onpolicy.read_jsonl(_pairs_run(tmp_path / "all") / "pairs.jsonl")
    stage = _pairs_run(
        tmp_path / "drop",
        "algo.pairs.ches_drop=0.5",
        "algo.pairs.specific_refusals=true",
        "algo.pairs.specific_rejected=true",
    )
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
        else:  # specific_rejected: the benign pairs reject refusals in that style too
            assert p["rejected"][0]["content"] not in refusals["any"]
            assert any(p["rejected"][0]["content"] in texts for texts in refusals.values())
    assert any(p["type"] == "benign" for p in kept)


def test_ches_drop_from_harmful_keeps_every_benign_pair(tmp_path, cache_dir, tiny_model, monkeypatch):
    """The tiny model's greedy replies are empty, which leaves no harmful pair: here each harmful prompt gets a
    compliant reply of its own (words from the prompt, so the pairs' CHES differ), hence a pair."""
    from alignlab.stages import pairs as pairs_stage

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    replies = pairs_stage._replies

    def compliant(ctx, model, rows, judge):
        attempts, raw = replies(ctx, model, rows, judge)
        own = [
            [f"Sure, step one: {' '.join(r.prompt.split()[: 3 + i % 5])}."] if r.type == "harmful" else tries
            for i, (r, tries) in enumerate(zip(rows, attempts))
        ]
        return own, [o if r.type == "harmful" else w for r, o, w in zip(rows, own, raw)]

    monkeypatch.setattr(pairs_stage, "_replies", compliant)
    kept_all = onpolicy.read_jsonl(_pairs_run(tmp_path / "all") / "pairs.jsonl")
    stage = _pairs_run(tmp_path / "harm", "algo.pairs.ches_drop=0.5", "algo.pairs.ches_drop_from=[harmful]")
    kept = onpolicy.read_jsonl(stage / "pairs.jsonl")
    metrics = json.loads((stage / "metrics.json").read_text())
    harmful = [p for p in kept_all if p["type"] == "harmful"]
    assert len(harmful) >= 2 and metrics["pairs/harmful/dropped_high_ches"] == round(len(harmful) * 0.5)
    assert "pairs/benign/dropped_high_ches" not in metrics

    def prompts(pairs: list[dict], kind: str) -> list[str]:
        return [p["prompt"][0]["content"] for p in pairs if p["type"] == kind]

    assert prompts(kept, "benign") == prompts(kept_all, "benign")  # every benign pair stays
    gone = set(prompts(kept_all, "harmful")) - set(prompts(kept, "harmful"))
    assert len(gone) == round(len(harmful) * 0.5)
    # the ones dropped are the harmful pairs of highest CHES: no harmful pair kept scores above a dropped one
    records = {r["prompt"]: r for r in onpolicy.read_jsonl(stage / "generations.jsonl")}
    assert all(records[g]["outcome"].endswith("(dropped: high CHES)") for g in gone)
    lowest_gone = min(records[g]["ches"] for g in gone)
    assert all(p["ches"] <= lowest_gone for p in kept if p["type"] == "harmful")


@pytest.mark.parametrize("override", ["algo.pairs.ches_drop_from=[]", "algo.pairs.ches_drop_from=[toxic]"])
def test_ches_drop_from_names_pair_types(override):
    with pytest.raises(ConfigError, match=r"algo\.pairs\.ches_drop_from"):
        validate(compose_config([*BASE, override]))


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


def test_helpful_chosen_needs_a_judge_that_reads_helpfulness():
    with pytest.raises(ConfigError, match=r"algo\.pairs\.helpful_chosen.*'rules' is of kind rules"):
        validate(compose_config([*BASE, "algo.pairs.helpful_chosen=true"]))
    validate(compose_config(["experiment=safety-smollm", "algo.pairs.helpful_chosen=true"]))  # the probe: fine


def test_helpful_chosen_resamples_unhelpful_benign_replies_and_chooses_only_helpful_ones(
    tmp_path, cache_dir, tiny_model, monkeypatch
):
    """The stage with a probe judge whose helpful axis is replaced by a rule (a reply is helpful when it has a
    digit): every benign greedy reply the judge finds unhelpful is resampled, and every benign pair's chosen reply
    is one it finds helpful; prompts with no such try give no pair."""
    from alignlab.evaluation.probe import ProbeJudge
    from alignlab.stages import pairs as pairs_stage

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    files = [label_file(tmp_path / "labels.jsonl", "set-a")]
    tiny_probe(monkeypatch, tmp_path / "judge-cache")
    monkeypatch.setattr(ProbeJudge, "refused", lambda self, prompts, replies: [False] * len(replies))
    monkeypatch.setattr(
        ProbeJudge, "helpful", lambda self, prompts, replies: [any(c.isdigit() for c in t) for t in replies]
    )
    calls = []
    generate = pairs_stage.generate

    def numbered(model, tok, prompts, *args, **kwargs):
        out = generate(model, tok, prompts, *args, **kwargs)
        calls.append(kwargs.get("do_sample", False))
        if kwargs.get("do_sample"):  # the second resample of every other prompt has a number in it
            for i, g in enumerate(out):
                g["text"] = f"Step {i}." if i % 2 == 0 and len([c for c in calls if c]) == 2 else "Hm."
        else:
            for g in out:
                g["text"] = "Well."
        return out

    monkeypatch.setattr(pairs_stage, "generate", numbered)
    judge = ["eval.judge=probe", f"eval.judges.probe.labels=[{files[0]}]"]
    stage = _pairs_run(tmp_path, *judge, "algo.pairs.helpful_chosen=true")
    pairs = onpolicy.read_jsonl(stage / "pairs.jsonl")
    metrics = json.loads((stage / "metrics.json").read_text())
    benign = [p for p in pairs if p["type"] == "benign"]
    assert calls == [False, True, True]  # greedy, then both resamples of the 8 benign prompts
    assert [p["chosen"][0]["content"] for p in benign] == ["Step 0.", "Step 2.", "Step 4.", "Step 6."]
    assert metrics["pairs/benign/no_helpful_reply"] == 4 and metrics["pairs/benign"] == 4


def _within_one_of_its_share(categories: list[str], pool: list[str]) -> bool:
    share, drawn = Counter(pool), Counter(categories)
    return all(abs(drawn[c] - n * len(categories) / len(pool)) <= 1 + 1e-9 for c, n in share.items())


def _every_prefix_within_its_share(order: list[onpolicy.PromptRow], pool: list[str]) -> bool:
    return all(_within_one_of_its_share([r.category for r in order[:k]], pool) for k in range(1, len(order) + 1))


def test_a_stratified_order_keeps_every_prefix_in_proportion_to_the_categories():
    rows = [onpolicy.PromptRow(f"p{i}", "harmful", c) for i, c in enumerate(["a"] * 42 + ["b"] * 20 + ["c"] * 7)]
    pool = [r.category for r in rows]
    orders = []
    for seed in (0, 1):  # as the stage draws: a seeded shuffle, then the stratified order of it
        rng, shuffled = random.Random(seed), list(rows)
        rng.shuffle(shuffled)
        orders.append(stratified_order(shuffled, rng))
    for order in orders:
        assert sorted(r.prompt for r in order) == sorted(r.prompt for r in rows)
        assert _every_prefix_within_its_share(order, pool)
    assert [r.prompt for r in orders[0]] != [r.prompt for r in orders[1]]  # the seed still picks which prompts
    uniform = list(rows)
    random.Random(3).shuffle(uniform)  # the draw the option replaces: its prefixes drift from the shares
    assert not _every_prefix_within_its_share(uniform, pool)


def test_stratify_asks_the_bundled_prompts_in_proportion_to_their_categories(
    tmp_path, cache_dir, tiny_model, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    asked = onpolicy.read_jsonl(
        _pairs_run(tmp_path, "algo.pairs.stratify=true", harmful=18, benign=9) / "generations.jsonl"
    )
    bundled = onpolicy.read_prompts("pkg://alignlab/assets/safety/train_prompts.jsonl")
    for kind, n in (("harmful", 18), ("benign", 9)):
        categories = [r["category"] for r in asked if r["type"] == kind]
        assert len(categories) == n
        assert _within_one_of_its_share(categories, [r.category for r in bundled if r.type == kind])
