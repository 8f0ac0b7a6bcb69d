"""Hydra composition of conf/ and the translation of Hydra's and OmegaConf's errors into one-paragraph
ConfigErrors, with a "did you mean" from the schemas."""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from alignlab.config.algo import ALGO_SCHEMAS
from alignlab.config.checks import short
from alignlab.config.data import SourceConfig
from alignlab.config.root import AlignlabConfig
from alignlab.errors import ConfigError

# The group files: src/alignlab/conf, a link to the repository's conf/ in a checkout, packaged with alignlab.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(
    overrides: list[str], config_name: str = "config", with_hydra: bool = False, primary_dir: Path | None = None
) -> DictConfig:
    """Compose `<primary_dir or conf>/<config_name>.yaml` with command-line overrides; Hydra errors become
    one-paragraph ConfigErrors. A user's primary config (`--config-name` in a `--config-dir`) is composed from its
    own folder, with conf/ on the search path (config/user.py), so its `defaults: [config, ...]` extends ours.
    `with_hydra`: keep Hydra's own node (`--cfg hydra|all`, `--info`), which `validate` does not take."""
    try:
        with initialize_config_dir(config_dir=str(primary_dir or CONF_DIR), version_base="1.3", job_name="alignlab"):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException, AttributeError, AssertionError) as exc:
        # OmegaConf raises the last two for some impossible overrides (e.g. a field inside a None node)
        raise ConfigError(explain_hydra_error(exc)) from None
    return cfg


def explain_hydra_error(exc: BaseException) -> str:
    """One paragraph for a composition error: an unknown group option (with the options), an unknown key (with a
    suggestion), or a value that does not fit its key's type."""
    chain, cur = [], exc
    while cur is not None and len(chain) < 4:
        chain.append(" ".join(str(cur).split()))
        cur = cur.__cause__ or cur.__context__
    msg = chain[0]
    detail = next((c for c in chain[1:] if c and c != msg), "")
    if match := re.search(r"Could not find '([^']+)'", msg):
        return _unknown_option(match.group(1))
    if match := re.search(r"Could not override '([^']+)'", msg):
        return _unknown_override(match.group(1), detail)
    if match := re.search(r"Error merging override ([^=\s]+)=(\S*)", msg):
        return f"Config error at '{match.group(1)}': cannot set it to '{match.group(2)}': {short(detail)}"
    if match := re.search(r"Key '([^']+)' not in '(\w+)'", " ".join(chain)):
        full_key = re.search(r"full_key: ([\w.\[\]-]+)", " ".join(chain))
        where = full_key.group(1) if full_key else match.group(1)
        return f"Config error: unknown key '{where}' in a config file ({match.group(2)}).{suggest(where)}"
    return f"Config error: {msg}" + (f" ({short(detail)})" if detail else "")


def _unknown_option(option: str) -> str:
    group = option.rsplit("/", 1)[0]
    options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) if (CONF_DIR / group).is_dir() else []
    hint = f" Available options for '{group}': {', '.join(options)}." if options else ""
    return f"Config error: unknown option '{option}'.{hint}"


def _unknown_override(target: str, detail: str) -> str:
    inner = re.search(r"full_key: ([\w.\[\]-]+)", detail)
    key = inner.group(1) if inner and inner.group(1).startswith(target) else target
    if target.endswith(".extra"):  # a new key inside the free-form dict passed to TRL
        return f"Config error: unknown key '{key}'. To add a key to '{target}' write +{key}=VALUE on the command line."
    source = re.match(r"data\.(sft|preference)\.(\w+)$", key)
    if source and source.group(2) in {f.name for f in dataclasses.fields(SourceConfig)}:
        return (
            f"Config error: cannot set '{key}': data.{source.group(1)} is empty in this config. "
            f"Set the whole source, e.g. data.{source.group(1)}={{path: FILE}}."
        )
    return f"Config error: unknown key '{key}' on the command line.{suggest(key)} Check the spelling."


def suggest(full_key: str) -> str:
    """'Did you mean' for the first misspelled part of a key, from the schema of its parent node."""
    parts = full_key.split(".")
    schema: Any = AlignlabConfig
    if len(parts) >= 3 and parts[0] == "algo":
        stage = parts[1].replace("_", "-")  # a stage is usually named after its kind (eval_before: eval)
        kind = next((k for k in sorted(ALGO_SCHEMAS, key=len, reverse=True) if k in stage), "sft")
        schema, parts = ALGO_SCHEMAS[kind], parts[2:]
    elif len(parts) >= 3 and parts[:2] in (["data", "preference"], ["data", "sft"]):
        schema, parts = SourceConfig, parts[2:]
    for part in parts:
        if not dataclasses.is_dataclass(schema):
            return ""
        hints = typing.get_type_hints(schema)
        if part not in hints:
            close = difflib.get_close_matches(part, list(hints), n=1)
            return f" Did you mean '{close[0]}'?" if close else f" Valid keys there: {', '.join(hints)}."
        schema = next((t for t in (typing.get_args(hints[part]) or [hints[part]]) if dataclasses.is_dataclass(t)), None)
    return ""
