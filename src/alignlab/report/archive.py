"""A study's run records without its models: each reported run's config.yaml, summary.json and training-stage log
histories, copied into one folder that `alignlab report <folder>` tabulates again. They weigh kilobytes where the
run folders weigh gigabytes (models, checkpoints), so a published ablation commits them beside its tables and a
reader can re-make the tables from them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from alignlab.report.runs import ReportError, RunRecord, stages_of

RECORDS = ("config.yaml", "summary.json")  # what runs.read_run_dir reads, with <stage>/log_history.json


def archive(runs: Sequence[RunRecord], dest: Path) -> list[Path]:
    """Copies the records of `runs` to dest/<experiment>/<run id>/ (the layout of run.root) and returns those
    folders. Every target is checked before the first copy, so a clash or a W&B run writes nothing."""
    remote = [run.source for run in runs if run.source.startswith("wandb:")]
    if remote:
        raise ReportError(
            f"Report error: --archive copies run folders; {remote[0]} is a W&B run. Report on the run folders "
            "(or the sweep folder) instead."
        )
    targets: dict[Path, Path] = {}
    for run in runs:
        source = Path(run.source).resolve()
        target = dest / source.parent.name / source.name
        clash = next((s for s, t in targets.items() if t == target), None)
        if clash is not None:
            raise ReportError(f"Report error: --archive: '{clash}' and '{source}' would both go to '{target}'.")
        targets[source] = target
    for run, (source, target) in zip(runs, targets.items()):
        files = [*RECORDS, *(f"{stage}/log_history.json" for stage in stages_of(run.config))]
        for name in files:
            if (source / name).is_file() and source != target.resolve():
                _copy(source / name, target / name)
    return list(targets.values())


def _copy(source: Path, target: Path) -> None:
    """Through a temporary file and a rename: an interrupted copy leaves the earlier archive as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
