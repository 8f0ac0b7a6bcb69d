"""The helpers every schema's checks use: one error format, allowed values read from the schema, typed nodes.

Every failed check raises `ConfigError("Config error at '<key>': <what is wrong>")`, one line naming the full key.
Allowed values live in one place, the `choices` metadata of a schema field (a `Literal[...]` alias); `choice` reads
them from there, so the check and the reference (docs/configuration.md) cannot disagree with the schema.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignlab.errors import ConfigError


def check(cond: bool, key: str, message: str) -> None:
    """Raise `Config error at '<key>': <message>` unless `cond` holds."""
    if not cond:
        raise ConfigError(f"Config error at '{key}': {message}")


def one_of(value: Any, allowed: tuple[Any, ...], key: str) -> None:
    check(value in allowed, key, f"got {value!r}, expected one of {', '.join(map(str, allowed))}.")


def allowed(schema: type, name: str) -> tuple[Any, ...]:
    """The values field `name` of `schema` accepts: the arguments of its `choices` Literal."""
    return typing.get_args(schema.__dataclass_fields__[name].metadata["choices"])


def choice(node: DictConfig, name: str, key: str, schema: type | None = None) -> None:
    """`node.<name>` is one of the values its schema field allows (`schema`: by default the type of `node`)."""
    one_of(node[name], allowed(schema or OmegaConf.get_type(node), name), f"{key}.{name}")


def flag_or_auto(node: DictConfig, name: str, key: str) -> None:
    """Fields that take true, false or auto."""
    value = node[name]
    check(value in (True, False, "auto"), f"{key}.{name}", f"expected true, false or auto, got {value!r}.")


def positive(node: DictConfig, name: str, key: str) -> None:
    check(node[name] > 0, f"{key}.{name}", f"must be positive, got {node[name]}.")


def short(exc: BaseException | str) -> str:
    """OmegaConf's message on one line, without the full_key/object_type lines it appends."""
    return re.split(r"\s+full_key:", " ".join(str(exc).split()))[0]


def typed(
    node: Any, schema: type, key: str, shape: str | None = None, hint: Callable[[str], str] | None = None
) -> DictConfig:
    """`node` merged into the structured `schema`: a wrong key or type becomes one ConfigError naming its full key.

    Used for the nodes typed `Any` in their parent's schema (so that a whole mapping can be given on the command
    line) and for the root. `shape`, when given, is what a non-mapping is told to look like ("a source like {path:
    pairs.jsonl}"); `hint` adds a sentence for the key, such as a "did you mean"."""
    if shape is not None:
        check(isinstance(node, DictConfig), key, f"expected {shape}, got {node!r}.")
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as exc:
        bad = ".".join(p for p in (key, getattr(exc, "full_key", "") or "") if p) or "?"
        raise ConfigError(f"Config error at '{bad}': {short(exc)}.{hint(bad) if hint else ''}") from None
