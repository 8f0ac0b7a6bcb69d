"""`validate`: from a composed (or frozen) config to a resolved, typed, checked, read-only one."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignlab.config.algo import type_algo
from alignlab.config.checks import short, typed
from alignlab.config.compose import suggest
from alignlab.config.data import check_data, type_data
from alignlab.config.distributed import check_distributed
from alignlab.config.eval import check_eval, type_eval
from alignlab.config.inputs import check_inputs
from alignlab.config.model import check_model
from alignlab.config.root import AlignlabConfig, check_logger, check_pipeline
from alignlab.errors import ConfigError


def validate(cfg: DictConfig) -> DictConfig:
    """Check values the schema cannot, type each `algo` entry by its `kind`; returns a resolved, read-only copy.

    Interpolations are resolved first (so `eval.dpo_beta` takes `algo.dpo.beta`'s value), then the nodes typed
    `Any` in their parent's schema are typed against theirs, the root against AlignlabConfig, and each group's
    checks run in the order of the config."""
    cfg = _resolved(cfg)
    type_eval(cfg.eval)
    stages = list(cfg.pipeline.stages)
    for name in [n for n in cfg.algo if n not in stages]:
        del cfg.algo[name]  # settings an experiment gives a stage this pipeline does not run
    type_algo(cfg.algo)
    type_data(cfg.data)
    root = typed(cfg, AlignlabConfig, "", hint=suggest)
    check_inputs(root)
    check_model(root.model)
    check_data(root, stages)
    check_pipeline(root, stages)
    check_eval(root.eval, "eval" in [root.algo[s].kind for s in stages])
    check_logger(root)
    check_distributed(root)
    OmegaConf.set_readonly(root, True)
    return root


def _resolved(cfg: DictConfig) -> DictConfig:
    """A copy with every interpolation resolved; a missing value names its key."""
    try:
        return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "?")
        raise ConfigError(
            f"Config error at '{key}': a required value is missing or cannot be resolved "
            f"({short(exc)}). Set it on the command line: {key}=..."
        ) from None
