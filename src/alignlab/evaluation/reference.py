"""The reference an evaluation compares the policy with (KL, implicit rewards, win rate): `eval.reference`, or the
run's starting model, loaded only when a suite first needs it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig

from alignlab.models import load_model


def reference_loader(cfg: DictConfig, base_model: str, policy_path: str | None) -> Callable[[], torch.nn.Module] | None:
    """Loads the reference on first use; None when the policy is the reference itself (KL 0, no margins).
    `policy_path=None`: a policy in training, never the reference."""
    ref = cfg.eval.reference or base_model
    if ref == policy_path:
        return None
    return lambda: load_model(ref, cfg.model, for_generation=True)
