"""Checks on values that leave the config: into file paths, shell scripts, W&B and every float the trainers read.

A run's `name` and `run.id` become folders under `run.root`: each must be one plain path component, or
`name=../../x` would put the run (and its checkpoints) outside the root. Values rendered into the sbatch script
must be single lines, or a newline in `slurm.partition` becomes a line of its own in `job.sbatch`. A non-finite
number (`learning_rate=inf`, `beta=nan`) would train a NaN model to the end and mark it DONE: refused anywhere in
the config. These run with the rest of `validate`, before any compute.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from alignlab.config.checks import check

PATH_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+=-]{0,127}$")
# What W&B refuses in a project name (its server answers with an error long after the run started).
WANDB_FORBIDDEN = re.compile(r"[/\\#?%:]")


def check_path_component(value: Any, key: str) -> None:
    """A folder name of its own: letters, digits and `._+=-`, not starting with a dot, at most 128 characters."""
    check(
        isinstance(value, str) and PATH_COMPONENT.match(value) is not None,
        key,
        f"{value!r} must be one folder name (letters, digits and . _ + = -, not starting with a dot or containing "
        "a slash): it becomes a folder under run.root, and a path here would put the run outside it.",
    )


def check_single_lines(node: Any, key: str) -> None:
    """Every string under `node` holds no line break or other control character (it is rendered into a script)."""
    for where, value in _leaves(node, key):
        if isinstance(value, str):
            bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
            check(
                bad is None,
                where,
                f"{value!r} contains the control character {bad!r}; a value rendered into the sbatch script "
                "must be a single line.",
            )


def check_finite(node: Any, key: str = "") -> None:
    """No NaN or infinity anywhere: a non-finite hyperparameter trains a NaN model without an error."""
    for where, value in _leaves(node, key):
        if isinstance(value, float):
            check(math.isfinite(value), where or "?", f"got {value}; every number in the config must be finite.")


def check_inputs(cfg: DictConfig) -> None:
    """The run's folder names, its sbatch values, its W&B project and every number."""
    check(0 <= cfg.seed < 2**32, "seed", f"must lie in [0, 2^32) (numpy and torch seeds), got {cfg.seed}.")
    check_path_component(cfg.name, "name")
    if cfg.run.id is not None:
        check_path_component(str(cfg.run.id), "run.id")
    check_single_lines(cfg.slurm, "slurm")
    _check_run_root(cfg.run.root)
    project = cfg.logger.get("project")
    if project is not None:
        check(
            WANDB_FORBIDDEN.search(str(project)) is None and str(project).strip() != "",
            "logger.project",
            f"{project!r}: a W&B project name cannot be empty or contain / \\ # ? % or :.",
        )
    check_finite(cfg)


def _check_run_root(root: str) -> None:
    """run.root and every folder above it must be folders (or not exist yet): a file there would fail only when
    the first stage writes."""
    path = Path(root).expanduser()
    for part in (path, *path.parents):
        if part.exists():
            check(
                part.is_dir(),
                "run.root",
                f"'{root}' cannot hold runs: '{part}' is a file, not a folder. Point run.root at a folder.",
            )
            return


def _leaves(node: Any, key: str) -> list[tuple[str, Any]]:
    """(full key, value) of every scalar under `node` (a config node or plain containers)."""
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, f"{key}.{k}" if key else str(k))]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in _leaves(v, f"{key}[{i}]")]
    return [(key, node)]
