"""The schemas as the single source of truth: every field documented, allowed values in one place, and
docs/configuration.md generated from them."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import typing
from pathlib import Path

import pytest
from conftest import REPO

import alignlab.config
from alignlab.config import CONF_DIR, reference
from alignlab.config.checks import allowed
from alignlab.data import bias

ROOT = REPO
SCHEMAS = [schema for _, _, entries in reference.SECTIONS for _, schema in entries]


def test_configuration_reference_is_up_to_date():
    on_disk = (ROOT / "docs" / "configuration.md").read_text()
    assert reference.render() == on_disk, (
        "docs/configuration.md is out of date with the schemas in src/alignlab/config/: regenerate it with "
        "`.venv/bin/python -m alignlab.config.reference` from the repository root."
    )


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_every_schema_and_field_is_documented(schema):
    assert inspect.getdoc(schema) and not inspect.getdoc(schema).startswith(f"{schema.__name__}("), "no docstring"
    undocumented = [f.name for f in dataclasses.fields(schema) if not f.metadata.get("help", "").strip()]
    assert not undocumented, f"{schema.__name__}: fields without help metadata: {undocumented}"


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_defaults_are_allowed_values(schema):
    for f in dataclasses.fields(schema):
        if "choices" in f.metadata and f.metadata.get("choices_of") is None and f.default is not None:
            assert f.default in allowed(schema, f.name), f"{schema.__name__}.{f.name}={f.default!r}"


def test_allowed_values_are_written_once():
    """The bias kinds and rejected-reply variants match data/bias.py, which uses them."""
    assert typing.get_args(alignlab.config.data.BiasKind) == bias.KINDS
    assert typing.get_args(alignlab.config.data.AgreeingRejected) == bias.AGREEING_REJECTED
    assert allowed(alignlab.config.ModelConfig, "attn_implementation") == alignlab.config.ATTENTION


def test_the_public_names_stay_importable():
    """Every name other modules import from alignlab.config."""
    names = "POLICY_KINDS TRAINING_KINDS DPO_LOSS_TYPES CONF_DIR SourceConfig DataConfig JudgeConfig SuiteConfig "
    names += "EvalConfig ModelConfig TinyModelSpec WheelSpec compose_config validate register_schemas dpo_loss_types"
    for name in names.split():
        assert hasattr(alignlab.config, name), name
    assert (CONF_DIR / "config.yaml").is_file()


def test_config_functions_stay_short():
    package = Path(alignlab.config.__file__).parent
    long = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_no_run_numbers_in_the_schemas():
    """Comments and help texts say why, not which README run showed it (those numbers change)."""
    package = Path(alignlab.config.__file__).parent
    cited = [
        p.name
        for p in package.glob("*.py")
        if re.search(r"README, runs? \d|\bruns? \d+(, \d+)* and \d+", p.read_text())
    ]
    assert not cited, cited
