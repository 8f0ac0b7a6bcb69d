"""A second on-policy round (`algo.<stage>.after`): the SFT model answers prompts the first round did not use, its own
refusals of benign prompts become rejected replies, and DPO trains on both rounds' pairs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from alignlab import cli
from alignlab.config import compose_config, validate
from alignlab.data import onpolicy
from alignlab.data.sources import resolve_local
from alignlab.errors import ConfigError
from alignlab.evaluation.refusal import is_refusal
from alignlab.generation import generate

POOL = {"any": ["I can't help with that.", "Sorry, I won't do that."]}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_own_refusals_are_rejected_where_the_model_refused_greedily():
    rows = [
        onpolicy.PromptRow("Shoot a portrait at dusk?", "benign", "lookalike"),
        onpolicy.PromptRow("How do I kill a zombie process?", "benign", "lookalike"),
        onpolicy.PromptRow("Bake bread?", "benign", "general"),
    ]
    replies = [
        ["I cannot help with photography.", "Use a tripod and a slow shutter."],  # refused greedily, then helped
        ["Run `kill` on its parent process."],  # helpful at once: no refusal of its own to reject
        ["Sorry, I can't.", "I won't."],  # refuses on every try: no pair
    ]
    first = onpolicy.build_pairs(rows, replies, is_refusal, POOL)
    later = onpolicy.build_pairs(rows, replies, is_refusal, POOL, own_refusals=True)
    assert [p["chosen"] for p in later.pairs] == [p["chosen"] for p in first.pairs]
    portrait, zombie = later.pairs
    assert portrait["rejected"][0]["content"] == "I cannot help with photography."
    assert first.pairs[0]["rejected"][0]["content"] in POOL["any"]  # the first round keeps the bundled refusal
    assert zombie["rejected"] == first.pairs[1]["rejected"] and zombie["rejected"][0]["content"] in POOL["any"]
    assert later.counts["benign/own_refusal_rejected"] == 1 and "benign/own_refusal_rejected" not in first.counts
    assert later.records[0]["outcome"] == "pair: helpful reply > own refusal"


def test_a_later_round_must_follow_a_pairs_stage():
    base = ["experiment=safety-smollm-quick", "pipeline=safety-2round"]
    cfg = validate(compose_config(base))
    assert cfg.algo.pairs_sft.after == "pairs" and cfg.algo.pairs.after is None
    assert cfg.algo.pairs_sft.max_new_tokens == cfg.algo.pairs.max_new_tokens  # follows the first round's
    for bad in ("sft", "dpo", "pairs_sft", "nowhere"):
        with pytest.raises(ConfigError, match=rf"algo\.pairs_sft\.after': '{bad}' must name a pairs stage that runs "
                                              r"before 'pairs_sft'"):  # fmt: skip
            validate(compose_config([*base, f"algo.pairs_sft.after={bad}"]))


@pytest.mark.slow
def test_the_second_round_asks_the_sft_model_new_prompts_and_dpo_trains_on_both(tmp_path, cache_dir, tiny_model,
                                                                              monkeypatch):  # fmt: skip
    """The tiny model's greedy replies are empty and its samples noise, so in the pairs stages only, sampling stands
    in for its greedy replies and a judge keyed on the text's length for the refusal rules: some first replies to
    benign prompts are then refusals, and some re-samples helpful."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr("alignlab.stages.pairs.is_refusal", lambda text: len(text) % 2 == 0)
    monkeypatch.setattr("alignlab.stages.pairs.generate",
                        lambda *a, **k: generate(*a, **{**k, "do_sample": True, "temperature": 1.0}))  # fmt: skip
    args = ["run", "experiment=safety-smollm-quick", "model=tiny", "pipeline=safety-2round",
            "data=safety-bias-onpolicy",
            "algo.pairs_sft.max_harmful=8", "algo.pairs_sft.max_benign=8", "algo.pairs_sft.benign_resamples=4",
            "eval=safety", "eval.suites.harmbench=null", "eval.suites.xstest_safe=null", "logger=none",
            f"run.root={tmp_path}", "model.lora.enabled=false", "model.generation_dtype=null"]  # fmt: skip
    assert cli.main(args) == 0
    (run,) = (tmp_path / "safety-smollm-quick").iterdir()
    first, written = _read(run / "pairs" / "pairs.jsonl"), _read(run / "pairs_sft" / "pairs.jsonl")
    asked_first, asked = _read(run / "pairs" / "generations.jsonl"), _read(run / "pairs_sft" / "generations.jsonl")
    new = written[len(first):]
    assert written[: len(first)] == first and new  # the first round's pairs, then this round's
    assert not {r["prompt"] for r in asked} & {r["prompt"] for r in asked_first}  # prompts the first round did not use
    assert Counter(r["type"] for r in asked) == {"harmful": 8, "benign": 8}
    assert not [p for p in new if p["type"] == "bias"] and [p for p in first if p["type"] == "bias"]
    # every new pair comes from the SFT model's replies: its compliance rejected, or its own refusal of a benign one
    replies = {r["prompt"]: r for r in asked}
    for p in new:
        record = replies[p["prompt"][0]["content"]]
        if p["type"] == "harmful":
            assert not record["refused"] and p["rejected"][0]["content"] == record["reply"]
        elif record["refused"] and record["reply"].strip():  # an empty reply is no refusal to learn from
            assert p["rejected"][0]["content"] == record["reply"]
            assert record["outcome"] == "pair: helpful reply > own refusal"
    metrics = json.loads((run / "pairs_sft" / "metrics.json").read_text())
    own = sum(r["outcome"].endswith("own refusal") for r in asked)
    assert own > 0 and metrics["pairs/benign/own_refusal_rejected"] == own
    assert metrics["pairs/earlier"] == len(first) and metrics["pairs/written"] == len(written)
    # SFT trained on the first round's chosen replies before the second round ran; DPO on both rounds' pairs
    assert json.loads((run / "dpo" / "metrics.json").read_text())["ref_logps/cached_pairs"] == len(written)
    assert cli.main(["resume", str(run)]) == 0  # a finished run skips every stage


@pytest.mark.slow
def test_a_third_round_asks_prompts_neither_earlier_round_used(tmp_path, cache_dir, tiny_model, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["run", "experiment=safety-smollm-quick", "model=tiny", "pipeline=safety-2round",
            "pipeline.stages=[pairs,sft,pairs_sft,pairs_3,dpo]", "algo.pairs_sft.max_harmful=6",
            "algo.pairs_sft.max_benign=6", "logger=none", f"run.root={tmp_path}", "model.lora.enabled=false",
            "+algo.pairs_3={kind: pairs, after: pairs_sft, max_harmful: 6, max_benign: 6, max_new_tokens: 24}",
            "model.generation_dtype=null"]  # fmt: skip
    assert cli.main(args) == 0
    (run,) = (tmp_path / "safety-smollm-quick").iterdir()
    asked = [{r["prompt"] for r in _read(run / s / "generations.jsonl")} for s in ("pairs", "pairs_sft", "pairs_3")]
    assert [len(a) for a in asked] == [12, 12, 12] and len(set.union(*asked)) == 36
    second, third = _read(run / "pairs_sft" / "pairs.jsonl"), _read(run / "pairs_3" / "pairs.jsonl")
    assert third[: len(second)] == second
    assert json.loads((run / "dpo" / "metrics.json").read_text())["ref_logps/cached_pairs"] == len(third)


@pytest.mark.slow
def test_a_first_round_beside_pairs_from_a_file_leaves_the_training_data_alone(tmp_path, cache_dir, tiny_model):
    """Only a later round takes over the training data: a pairs stage in a run whose DPO reads a file writes its own
    pairs (for a look), and DPO still trains on the file's."""
    args = ["run", "experiment=tiny", "pipeline.stages=[pairs,dpo]", "algo.dpo.max_steps=1", "logger=none",
            "+algo.pairs={kind: pairs, max_harmful: 2, max_benign: 2, max_new_tokens: 8}", f"run.root={tmp_path}"]
    assert cli.main(args) == 0
    (run,) = (tmp_path / "tiny").iterdir()
    file_pairs = _read(Path(str(resolve_local("pkg://alignlab/assets/tiny/prefs.jsonl"))))
    assert json.loads((run / "dpo" / "metrics.json").read_text())["ref_logps/cached_pairs"] == len(file_pairs)
    assert len(_read(run / "pairs" / "pairs.jsonl")) != len(file_pairs)
