"""The KTO stage (stages/kto.py): pairs become unpaired desirable / undesirable rows, TRL's KTOTrainer gets the
stage's settings, and after training the policy prefers the desirable replies more than the reference does."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import REPO

from alignlab import cli
from alignlab.config import compose_config, validate
from alignlab.data.onpolicy import read_jsonl
from alignlab.errors import ConfigError
from alignlab.stages.kto import scored_pairs, unpaired

KTO = ["experiment=tiny", "algo@algo.dpo=kto", "logger=none"]


def test_each_pair_gives_one_desirable_and_one_undesirable_row():
    user = [{"role": "user", "content": "Hi?"}]
    chosen, rejected = [{"role": "assistant", "content": "Hello."}], [{"role": "assistant", "content": "Go."}]
    pairs = [{"prompt": user, "chosen": chosen, "rejected": rejected}]
    assert unpaired(pairs) == [
        {"prompt": user, "completion": pairs[0]["chosen"], "label": True},
        {"prompt": user, "completion": pairs[0]["rejected"], "label": False},
    ]


def test_the_final_scoring_takes_a_seeded_sample_of_the_pairs():
    pairs = [{"prompt": str(i)} for i in range(10)]

    def ctx(n, seed=1):
        return SimpleNamespace(algo=SimpleNamespace(final_eval_max_pairs=n), cfg=SimpleNamespace(seed=seed))

    assert scored_pairs(pairs, ctx(None)) == pairs and scored_pairs(pairs, ctx(10)) == pairs
    sample = scored_pairs(pairs, ctx(4))
    assert len(sample) == 4 and len({p["prompt"] for p in sample}) == 4 and all(p in pairs for p in sample)
    assert sample == scored_pairs(pairs, ctx(4)) and sample != scored_pairs(pairs, ctx(4, seed=2))


def test_kto_swaps_into_the_default_experiment_with_its_dpo_keys():
    """The default experiment sets DPO's keys (final_eval_max_pairs among them); KTO in its place takes them."""
    cfg = validate(compose_config(["experiment=safety-smollm", "algo@algo.dpo=kto"]))
    assert cfg.algo.dpo.kind == "kto" and cfg.algo.dpo.final_eval_max_pairs == 32


@pytest.mark.parametrize(
    "override",
    ["algo.dpo.desirable_weight=0", "algo.dpo.beta=-1", "algo.dpo.loss_type=dpo", "algo.dpo.final_eval_max_pairs=0"],
)
def test_kto_settings_are_checked(override):
    with pytest.raises(ConfigError, match=r"algo\.dpo\.(desirable_weight|beta|loss_type|final_eval_max_pairs)"):
        validate(compose_config([*KTO, override]))


def test_kto_trains_the_policy_towards_the_desirable_replies(tmp_path, cache_dir, tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.evaluation.likelihood import score

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["run", *KTO, f"run.root={tmp_path}", "algo.sft.max_steps=1", "algo.dpo.undesirable_weight=1.5"]
    assert cli.main([*args, "algo.dpo.final_eval_max_pairs=8"]) == 0
    (run,) = (tmp_path / "tiny").iterdir()
    metrics = json.loads((run / "dpo" / "metrics.json").read_text())
    assert metrics["kto/desirable_rows"] == metrics["kto/undesirable_rows"] > 0
    # the final policy, scored on 8 of its pairs, rewards their desirable replies above the undesirable ones
    assert metrics["final/rewards/chosen"] - metrics["final/rewards/rejected"] == pytest.approx(
        metrics["final/rewards/margins"]
    )
    assert metrics["final/rewards/margins"] > 0
    rows = read_jsonl(REPO / "src" / "alignlab" / "assets" / "tiny" / "prefs.jsonl")[:24]
    tokenizer = AutoTokenizer.from_pretrained(run / "dpo" / "model")
    margins = []
    for stage in ("dpo", "sft"):  # the policy, then its reference (the SFT model KTO started from)
        model = AutoModelForCausalLM.from_pretrained(run / stage / "model")
        chosen = score(model, tokenizer, [r["prompt"] for r in rows], [r["chosen"][-1]["content"] for r in rows])
        rejected = score(model, tokenizer, [r["prompt"] for r in rows], [r["rejected"][-1]["content"] for r in rows])
        margins.append(sum(c.logprob - r.logprob for c, r in zip(chosen, rejected)) / len(rows))
    assert margins[0] > margins[1]  # the policy separates desirable from undesirable more than its reference
