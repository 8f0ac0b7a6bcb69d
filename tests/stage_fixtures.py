"""A stage's context built from the tiny experiment's config, as the pipeline builds it: shared by the tests of the
stages, the reference cache and the device settings (on pytest's pythonpath, like conftest)."""

from __future__ import annotations

from pathlib import Path

from alignlab.config import compose_config, validate
from alignlab.pipeline import prepare
from alignlab.tracking import Tracker
from alignlab.training.context import StageContext


def context(tmp_path: Path, stage: str, *overrides: str) -> StageContext:
    cfg = validate(compose_config(["experiment=tiny", "logger=none", f"run.root={tmp_path}", *overrides]))
    prep = prepare(cfg)
    return StageContext(
        cfg,
        stage,
        tmp_path / stage,
        prep.base_model,
        prep.base_model,
        prep.tokenizer,
        prep.pairs,
        prep.sft_rows,
        Tracker(cfg, tmp_path),
        pairs_from=prep.pairs_from,
    )
