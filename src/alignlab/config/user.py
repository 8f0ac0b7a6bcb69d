"""The user's own config files beside the package's conf/: `--config-dir DIR` (folders laid out like conf/, e.g.
DIR/experiment/mine.yaml for `experiment=mine`) and `--config FILE` (one experiment file anywhere, as TRL and
Axolotl users pass theirs). Both become Hydra overrides, `hydra.searchpath=[...]` and `experiment=<name>`, so
composition, sweeps and their members (which compose again, maybe on another host) see the same files.

A `--config` file is copied, content-addressed, into the cache (`<cache>/configs/<sha>/experiment/<name>.yaml`, on
clusters usually a shared home) under the `# @package _global_` header that experiment files carry, so a file
written without it (`algo: {dpo: {beta: 0.2}}`) means what its author meant.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from alignlab.config.compose import CONF_DIR
from alignlab.errors import ConfigError

GLOBAL = "# @package _global_"


def primary_folder(config_dirs: list[str], config_name: str) -> Path | None:
    """The `--config-dir` holding the primary config `<config_name>.yaml`, for a name other than ours (`config`)."""
    if config_name == "config":
        return None
    for folder in (_folder(d) for d in config_dirs):
        if (folder / f"{config_name}.yaml").is_file():
            return folder
    raise ConfigError(
        f"Config error at '--config-name {config_name}': no {config_name}.yaml in the --config-dir folders "
        f"({', '.join(config_dirs) or 'none given'}). A primary config of your own lives in one of them; start it "
        "with `defaults: [config, _self_]` to extend alignlab's."
    )


def user_overrides(
    config_dirs: list[str], config_file: str | None, cache: Path, primary: Path | None = None
) -> list[str]:
    """Hydra overrides for the user's config folders and file (staged under `cache`, models.cache_root); [] when
    there are none. With a user `primary` folder, alignlab's conf/ joins the search path (the primary folder is the
    one Hydra starts from)."""
    paths = [_folder(d) for d in config_dirs]
    if primary is not None:
        paths = [CONF_DIR, *(p for p in paths if p != primary)]
    extra: list[str] = []
    if config_file:
        folder, name = _staged(config_file, cache)
        paths.append(folder)
        extra.append(f"experiment={name}")
    if not paths:
        return []
    return ["hydra.searchpath=[" + ",".join(f"file://{p}" for p in paths) + "]", *extra]


def _folder(path: str) -> Path:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(
            f"Config error at '--config-dir {path}': not a folder. Give a folder laid out like alignlab's conf/ "
            "(e.g. DIR/experiment/mine.yaml, then experiment=mine)."
        )
    return folder


def _staged(path: str, cache: Path) -> tuple[Path, str]:
    """The file under `experiment/` of a cache folder named by its content; returns (folder, option name)."""
    source = Path(path).expanduser()
    if not source.is_file() or source.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"Config error at '--config {path}': not a YAML file (.yaml or .yml).")
    text = source.read_text(encoding="utf-8")
    if not text.lstrip().startswith(GLOBAL):
        text = f"{GLOBAL}\n{text}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    folder = cache / "configs" / digest
    target = folder / "experiment" / f"{source.stem}.yaml"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    return folder, source.stem
