"""Finished runs from a sweep manifest, run folders or a W&B group: each run's frozen config, final metrics and
training curves."""

from __future__ import annotations

import difflib
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alignlab.errors import UserError
from alignlab.evaluation.report import eval_stages

SEED = "seed"
# sweep.MANIFEST and sweep.MEMBERS (each member's entry files); sweep.py is not imported: it loads Hydra's launchers
MANIFEST = "manifest.json"
MEMBERS = "members"
STABLE = ("safety/", "bias/", "eval/")  # the last evaluation's metrics, also under these names (pipeline summary)
WANDB_TIMEOUT = 30  # seconds per W&B API request
CURVE_KEYS = {  # training-curve panels: a stage's log history key -> its axis label
    "loss": "training loss (as logged)",
    "rewards/accuracies": "reward accuracy (fraction)",
    "objective/scores": "reward-model score (reward units)",
}


class ReportError(UserError):
    """Nothing to report on, or a request the runs cannot answer; the message names the path or the metric."""


def close_to(names: Sequence[str], known: Iterable[str], cutoff: float) -> list[str]:
    """The known names that look like the unknown `names`: the hint of an error about a typo."""
    known = list(known)
    return sorted({c for name in names for c in difflib.get_close_matches(name, known, n=3, cutoff=cutoff)})


@dataclass(frozen=True)
class RunRecord:
    """One finished run: where it came from, its frozen config, its final metrics and its training curves."""

    source: str  # the run folder, or wandb:<entity>/<project>/<run id>
    config: dict[str, Any]
    metrics: dict[str, float]
    curves: dict[str, list[dict[str, Any]]]  # training stage -> its log history rows (each with "step")
    overrides: list[str] | None = None  # the sweep manifest's; derived from the configs when there is none

    @property
    def seed(self) -> Any:
        return self.config.get(SEED)


def collect(sources: Sequence[str]) -> tuple[list[RunRecord], list[str]]:
    """Every finished run the sources name, once each, and a note per run skipped as unfinished. An error if a
    source holds no run at all, or if none of the runs found has finished."""
    runs: dict[str, RunRecord] = {}
    skipped: list[str] = []
    for source in sources:
        found, unfinished = _collect_source(source)
        skipped += unfinished
        for run in found:
            key = run.source if run.source.startswith("wandb:") else str(Path(run.source).resolve())
            runs.setdefault(key, run)
    if not runs:
        raise ReportError(
            f"Report error: none of the runs in {', '.join(repr(s) for s in sources)} has finished: "
            f"{'; '.join(skipped)}. Finish a run with `alignlab resume <run dir>`, then report again."
        )
    return list(runs.values()), skipped


def _collect_source(source: str) -> tuple[list[RunRecord], list[str]]:
    if source.startswith("wandb:"):
        return read_wandb_group(source)
    path = Path(source)
    if not path.exists():
        raise ReportError(f"Report error: '{path}' does not exist.")
    if (path / MANIFEST).is_file():
        return read_sweep(path)
    dirs = [path] if _is_run_dir(path) else find_run_dirs(path)
    if not dirs:
        raise ReportError(
            f"Report error: no runs found in '{path}'. `alignlab report` takes a sweep folder "
            "(<run.root>/sweeps/<name>/<time>, holding manifest.json), run folders (runs/<name>/<id>, holding "
            "config.yaml and summary.json), a folder with run folders below it, or wandb:<entity>/<project>/<group>."
        )
    finished = [d for d in dirs if (d / "summary.json").is_file()]
    unfinished = [_unfinished(d) for d in dirs if d not in finished]
    return [read_run_dir(d) for d in finished], unfinished


def _unfinished(run_dir: Path) -> str:
    return f"'{run_dir}' has no summary.json (unfinished: `alignlab resume {run_dir}` finishes it)"


def _is_run_dir(path: Path) -> bool:
    """config.yaml beside summary.json (finished) or attempts.jsonl (started); W&B's files/config.yaml has neither."""
    return (path / "config.yaml").is_file() and any((path / f).is_file() for f in ("summary.json", "attempts.jsonl"))


def find_run_dirs(root: Path) -> list[Path]:
    """Run folders below `root`. Their insides (models, checkpoints, wandb/) are not searched: nothing is there."""
    found = []
    for folder, subdirs, _ in os.walk(root):
        if _is_run_dir(Path(folder)):
            found.append(Path(folder))
            subdirs.clear()
        else:
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    return sorted(found)


def read_sweep(sweep_dir: Path) -> tuple[list[RunRecord], list[str]]:
    """A sweep's done members, each with the overrides the manifest lists; the other members become notes."""
    manifest = _read_json(sweep_dir / MANIFEST)
    members = _members(sweep_dir, manifest)
    done = [m for m in members if m.get("status") == "done" and m.get("run_dir")]
    if not done:
        statuses = ", ".join(f"{n} {s}" for s, n in Counter(m.get("status") for m in members).items()) or "none"
        raise ReportError(
            f"Report error: the sweep '{sweep_dir}' has no finished member (members: {statuses}); its manifest.json "
            "gives each member's error. Re-run the sweep's command to finish them (finished stages are kept)."
        )
    skipped = [
        f"member {m.get('num')} of the sweep '{sweep_dir}' is {m.get('status')} (see its manifest.json)"
        for m in members
        if m not in done
    ]
    runs = []
    for member in done:
        run_dir = Path(member["run_dir"])
        if not run_dir.is_absolute() and not run_dir.exists():  # a relative run.root: relative to the sweep's cwd
            run_dir = Path(manifest.get("cwd") or ".") / run_dir
        if (run_dir / "summary.json").is_file():
            runs.append(read_run_dir(run_dir, overrides=list(member.get("overrides") or [])))
        else:
            skipped.append(_unfinished(run_dir))
    return runs, skipped


def _members(sweep_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's members. A running sweep assembles its manifest only at the end, so meanwhile each member's
    own entry (members/<num>.json, written when that member ends) says which have finished: a sweep can be
    reported while it runs."""
    members = manifest.get("members") or []
    if manifest.get("status") != "running":
        return members
    entries = {}
    for path in sorted((sweep_dir / MEMBERS).glob("*.json")):
        entry = _read_json(path)
        if entry.get("sweep_id") == manifest.get("sweep_id"):  # not an older sweep's entry in a reused folder
            entries[entry.get("num")] = entry
    return [entries.get(m.get("num"), m) for m in members]


def read_run_dir(run_dir: Path, overrides: list[str] | None = None) -> RunRecord:
    config = _read_config(run_dir / "config.yaml")
    results = _read_json(run_dir / "summary.json")
    curves = {
        stage: _read_json(run_dir / stage / "log_history.json")
        for stage in stages_of(config)
        if (run_dir / stage / "log_history.json").is_file()
    }
    return RunRecord(str(run_dir), OmegaConf.to_container(config), final_metrics(config, results), curves, overrides)


def final_metrics(config: DictConfig, results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """summary.json's per-stage metrics as `<stage>/<metric>`, plus the last evaluation's under their stable names
    (the pipeline's W&B summary does the same), so a table names `safety/...` whatever the eval stage is called."""
    metrics = {f"{stage}/{k}": v for stage, m in results.items() for k, v in m.items() if is_number(v)}
    evals = eval_stages(config)
    if evals:
        last = results.get(evals[-1], {})
        metrics.update({k: v for k, v in last.items() if k.startswith(STABLE) and is_number(v)})
    return metrics


def read_wandb_group(source: str) -> tuple[list[RunRecord], list[str]]:
    """The finished runs of a W&B group through the public API (`wandb.Api`): summary, config and history."""
    entity, _, rest = source.removeprefix("wandb:").partition("/")
    project, _, group = rest.partition("/")
    if not (entity and project and group):
        raise ReportError(f"Report error: '{source}': write a W&B group as wandb:<entity>/<project>/<group>.")
    import wandb

    try:
        api = wandb.Api(timeout=WANDB_TIMEOUT)
        listed = list(api.runs(f"{entity}/{project}", filters={"group": group}))
        finished = [
            _wandb_record(run, f"wandb:{entity}/{project}/{run.id}") for run in listed if run.state == "finished"
        ]
    except (wandb.errors.Error, OSError) as exc:  # no key (UsageError), no network (CommError, OSError)
        raise ReportError(
            f"Report error: cannot read the W&B group '{source}' ({' '.join(str(exc).split())}). Reading a group "
            "needs network access and WANDB_API_KEY (or `wandb login`); offline, use the run directories instead: "
            "`alignlab report <sweep dir>` or `alignlab report runs/<name>/<id> ...` (each run keeps summary.json, "
            "its log histories and its offline W&B data)."
        ) from None
    if not listed:
        raise ReportError(f"Report error: the W&B project '{entity}/{project}' has no runs in the group '{group}'.")
    skipped = [f"wandb:{entity}/{project}/{run.id} is {run.state}" for run in listed if run.state != "finished"]
    return finished, skipped


def _wandb_record(run: Any, source: str) -> RunRecord:
    """A W&B run as a run folder would give it: the tracker logged each stage's curves as `<stage>/<key>` on the
    `<stage>/global_step` axis, and wrote summary.json's flattened metrics (stable names included) as its summary."""
    config = dict(run.config)
    metrics = {k: v for k, v in run.summary.items() if not k.startswith("_") and is_number(v)}
    rows = list(run.scan_history())
    curves = {}
    for stage in stages_of(config):
        prefix = f"{stage}/"
        history = [
            {
                "step": row[f"{prefix}global_step"],
                **{k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix) and v is not None},
            }
            for row in rows
            if row.get(f"{prefix}global_step") is not None
        ]
        if any(key in row for row in history for key in CURVE_KEYS):
            curves[stage] = history
    return RunRecord(source, config, metrics, curves)


def stages_of(config: Any) -> list[str]:
    return list((config.get("pipeline") or {}).get("stages") or [])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"Report error: cannot read '{path}': {' '.join(str(exc).split())}") from None


def _read_config(path: Path) -> DictConfig:
    try:
        return OmegaConf.load(path)
    except Exception as exc:  # yaml and OmegaConf raise several types for a damaged file
        raise ReportError(f"Report error: cannot read '{path}': {' '.join(str(exc).split())}") from None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
