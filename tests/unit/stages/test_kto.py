"""The KTO stage (stages/kto.py): pairs become unpaired desirable / undesirable rows, TRL's KTOTrainer gets the
stage's settings, and after training the policy prefers the desirable replies more than the reference does."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from alignlab import cli
from alignlab.config import compose_config, validate
from alignlab.data.onpolicy import read_jsonl
from alignlab.errors import ConfigError
from alignlab.stages.kto import unpaired

KTO = ["experiment=tiny", "algo@algo.dpo=kto", "logger=none"]


def test_each_pair_gives_one_desirable_and_one_undesirable_row():
    user = [{"role": "user", "content": "Hi?"}]
    chosen, rejected = [{"role": "assistant", "content": "Hello."}], [{"role": "assistant", "content": "Go."}]
    pairs = [{"prompt": user, "chosen": chosen, "rejected": rejected}]
    assert unpaired(pairs) == [
        {"prompt": user, "completion": pairs[0]["chosen"], "label": True},
        {"prompt": user, "completion": pairs[0]["rejected"], "label": False},
    ]


@pytest.mark.parametrize("override", ["algo.dpo.desirable_weight=0", "algo.dpo.beta=-1", "algo.dpo.loss_type=dpo"])
def test_kto_settings_are_checked(override):
    with pytest.raises(ConfigError, match=r"algo\.dpo\.(desirable_weight|beta|loss_type)"):
        validate(compose_config([*KTO, override]))


def test_kto_trains_the_policy_towards_the_desirable_replies(tmp_path, cache_dir, tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.evaluation.likelihood import score

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["run", *KTO, f"run.root={tmp_path}", "algo.sft.max_steps=1", "algo.dpo.undesirable_weight=1.5"]
    assert cli.main(args) == 0
    (run,) = (tmp_path / "tiny").iterdir()
    metrics = json.loads((run / "dpo" / "metrics.json").read_text())
    assert metrics["kto/desirable_rows"] == metrics["kto/undesirable_rows"] > 0
    rows = read_jsonl(REPO / "src" / "alignlab" / "assets" / "tiny" / "prefs.jsonl")[:24]
    tokenizer = AutoTokenizer.from_pretrained(run / "dpo" / "model")
    margins = []
    for stage in ("dpo", "sft"):  # the policy, then its reference (the SFT model KTO started from)
        model = AutoModelForCausalLM.from_pretrained(run / stage / "model")
        chosen = score(model, tokenizer, [r["prompt"] for r in rows], [r["chosen"][-1]["content"] for r in rows])
        rejected = score(model, tokenizer, [r["prompt"] for r in rows], [r["rejected"][-1]["content"] for r in rows])
        margins.append(sum(c.logprob - r.logprob for c, r in zip(chosen, rejected)) / len(rows))
    assert margins[0] > margins[1]  # the policy separates desirable from undesirable more than its reference
