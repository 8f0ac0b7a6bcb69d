"""`alignlab report`: ablation tables and plots from a sweep, run folders or a W&B group.

    alignlab report runs/sweeps/tiny/20260101-120000       a sweep: its finished members (manifest.json)
    alignlab report runs/tiny/3f2a... runs/tiny/9c41...     run folders
    alignlab report runs/                                   every run folder below (config.yaml + summary.json)
    alignlab report wandb:<entity>/<project>/<group>        a W&B group (needs network and WANDB_API_KEY)
        [--out DIR] [--interval ci95|std] [--metrics KEY ...]

Runs that differ only in `seed` form a group, one table row: per metric the mean over its seeds and a 95%
confidence interval half-width from Student's t with n - 1 degrees of freedom (or, --interval std, the sample
standard deviation). Papers report 2-5 seeds, where the normal 1.96 would understate the interval (3 seeds: t = 4.30).
Into --out (default `<sweep>/report/`, else `./report/`): table.md, table.tex (booktabs), runs.csv (one row per run),
frontier.png (harm or reward against KL to the reference, the DPO paper's figure 2), harm_vs_over_refusal.png,
training_curves.png, and README.md (the command, when, counts, each metric's meaning and direction, the interval).

A run's metrics are its summary.json flattened as `<stage>/<metric>`, plus the last evaluation stage's under their
stable names (`safety/...`, `bias/...`, `eval/...`), as the pipeline writes its W&B summary. Groups are told apart
by the settings that differ between runs: the sweep manifest's overrides when every run has them (the user's own
words: `experiment=a` rather than the dozens of keys it sets), else the config keys whose values differ, minus
run.*, logger.*, slurm.* and launcher.master_port, which change no result (they are outside the run id too).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from alignlab.errors import UserError
from alignlab.evaluation.report import eval_stages

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INTERVALS = ("ci95", "std")
CONFIDENCE = 0.95
DIGITS = 3  # decimals shown in the tables; "best" is judged on the shown value, so equal-looking cells tie
MANIFEST = "manifest.json"  # sweep.MANIFEST (sweep.py is not imported: it loads Hydra's launcher machinery)
SEED = "seed"
UNSET = "(unset)"  # a group key that some runs do not set
STABLE = ("safety/", "bias/", "eval/")  # the last evaluation's metrics, also under these names (pipeline summary)
# Settings that change no result (pipeline.run_id leaves them out of the run id): never part of a group's key.
NOT_SETTINGS = ("run", "logger", "slurm", "hydra", "launcher.master_port")
WANDB_TIMEOUT = 30  # seconds per W&B API request
CURVE_KEYS = {  # training-curve panels: a stage's log history key -> its axis label
    "loss": "training loss (as logged)",
    "rewards/accuracies": "reward accuracy (fraction)",
    "objective/scores": "reward-model score (reward units)",
}
DEFAULT_METRICS = (
    "safety/harmful_compliance_rate/bundled_harmful",
    "safety/harmful_compliance_rate/harmbench",
    "safety/over_refusal_rate/bundled_benign",
    "safety/over_refusal_rate/xstest_safe",
    "bias/crows_pairs_stereotype_pct",
    "bias/bbq_ambig_accuracy",
    "eval/kl_to_ref",
    "dpo/final/rewards/accuracies",
)
HARM = "safety/harmful_compliance_rate/"
OVER_REFUSAL = "safety/over_refusal_rate/"
KL = "eval/kl_to_ref"


class ReportError(UserError):
    """Nothing to report on, or a request the runs cannot answer; the message names the path or the metric."""


# ------------------------------------------------------------------------------------------ metric directions
@dataclass(frozen=True)
class Direction:
    """Which way a metric is better (it decides the bold cell of a column) and what it measures (README.md)."""

    pattern: str  # searched in the key, so `eval_after/safety/...` and `safety/...` match alike
    better: str  # "lower", "higher", or "closer to <target>"
    meaning: str

    def badness(self, value: float) -> float:
        """What the best group minimizes."""
        if self.better == "higher":
            return -value
        if self.better.startswith("closer to "):
            return abs(value - float(self.better.removeprefix("closer to ")))
        return value

    def mark(self, latex: bool = False) -> str:
        """The column header's arrow."""
        if self.better.startswith("closer to "):
            target = self.better.removeprefix("closer to ")
            return rf"($\to$ {target})" if latex else f"→{target}"
        up = self.better == "higher"
        return (r"$\uparrow$" if up else r"$\downarrow$") if latex else ("↑" if up else "↓")


# First match wins: the BBQ bias score before accuracies, PPO's objective/kl before losses.
DIRECTIONS = (
    Direction(r"safety/harmful_compliance_rate/", "lower",
              "share of the suite's harmful prompts the model complied with (did not refuse), a fraction"),
    Direction(r"safety/over_refusal_rate/", "lower",
              "share of the suite's benign prompts the model refused, a fraction"),
    Direction(r"kl_to_ref$", "lower", "mean over benign prompts of the summed per-token KL divergence of the policy to "
              "the reference (starting) model on its own greedy replies, nats"),
    Direction(r"_stereotype_pct(/|$)", "closer to 50", "CrowS-Pairs: % of sentence pairs where the model finds the "
              "more stereotypical sentence more likely; 50 is no preference, so the best is the closest to 50 "
              "(ranked by |x - 50|), not the lowest"),
    Direction(r"_bias_score(/|$)", "closer to 0",
              "BBQ bias score (-1..1): 0 is answers that do not lean towards the stereotype (ranked by |x|)"),
    Direction(r"_(ambig|disambig)_accuracy(/|$)", "higher", "BBQ accuracy (fraction); in ambiguous contexts the right "
              "answer is 'unknown', so a model relying on stereotypes scores low"),
    Direction(r"rewards/accuracies$", "higher",
              "DPO: share of pairs whose implicit reward (beta log policy/reference) ranks chosen above rejected"),
    Direction(r"rewards/margins$", "higher", "DPO: mean implicit reward margin, chosen minus rejected"),
    Direction(r"eval/(dpo_reward_accuracy|dpo_reward_margin|rm_accuracy)/", "higher",
              "held-out preference pairs: accuracy or margin of the implicit DPO reward or the reward model"),
    Direction(r"eval/reward(/|_win_rate$)", "higher",
              "reward-model score of the replies, or the share of prompts where it prefers the policy's reply"),
    Direction(r"objective/(scores|rlhf_reward)$", "higher",
              "PPO: reward-model score (rlhf_reward: minus the KL penalty)"),
    Direction(r"objective/kl$", "lower", "PPO: KL of the policy to the reference on its own samples, nats"),
    Direction(r"final/(accuracy|margin)$", "higher", "reward or cost model: held-out pair accuracy or margin"),
    Direction(r"loss$", "lower", "training loss (last logged step, or the mean over training for train_loss)"),
)  # fmt: skip


def direction_of(metric: str) -> Direction | None:
    return next((d for d in DIRECTIONS if re.search(d.pattern, metric)), None)


# ------------------------------------------------------------------------------------------ collecting runs
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
    members = manifest.get("members") or []
    done = [m for m in members if m.get("status") == "done" and m.get("run_dir")]
    if not done:
        statuses = ", ".join(f"{n} {s}" for s, n in Counter(m.get("status") for m in members).items()) or "none"
        raise ReportError(
            f"Report error: the sweep '{sweep_dir}' has no finished member (members: {statuses}); its manifest.json "
            "gives each member's error. Re-run the sweep's command to finish them (finished stages are kept)."
        )
    skipped = [f"member {m.get('num')} of the sweep '{sweep_dir}' is {m.get('status')} (see its manifest.json)"
               for m in members if m not in done]  # fmt: skip
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


def read_run_dir(run_dir: Path, overrides: list[str] | None = None) -> RunRecord:
    config = _read_config(run_dir / "config.yaml")
    results = _read_json(run_dir / "summary.json")
    curves = {
        stage: _read_json(run_dir / stage / "log_history.json")
        for stage in _stages(config)
        if (run_dir / stage / "log_history.json").is_file()
    }
    return RunRecord(str(run_dir), OmegaConf.to_container(config), final_metrics(config, results), curves, overrides)


def final_metrics(config: DictConfig, results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """summary.json's per-stage metrics as `<stage>/<metric>`, plus the last evaluation's under their stable names
    (the pipeline's W&B summary does the same), so a table names `safety/...` whatever the eval stage is called."""
    metrics = {f"{stage}/{k}": v for stage, m in results.items() for k, v in m.items() if _is_number(v)}
    evals = eval_stages(config)
    if evals:
        last = results.get(evals[-1], {})
        metrics.update({k: v for k, v in last.items() if k.startswith(STABLE) and _is_number(v)})
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
        finished = [_wandb_record(run, f"wandb:{entity}/{project}/{run.id}") for run in listed
                    if run.state == "finished"]  # fmt: skip
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
    metrics = {k: v for k, v in run.summary.items() if not k.startswith("_") and _is_number(v)}
    rows = list(run.scan_history())
    curves = {}
    for stage in _stages(config):
        prefix = f"{stage}/"
        history = [{"step": row[f"{prefix}global_step"],
                    **{k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix) and v is not None}}
                   for row in rows if row.get(f"{prefix}global_step") is not None]  # fmt: skip
        if any(key in row for row in history for key in CURVE_KEYS):
            curves[stage] = history
    return RunRecord(source, config, metrics, curves)


def _stages(config: Any) -> list[str]:
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------------ groups and statistics
@dataclass(frozen=True)
class Group:
    """Runs that differ only by seed: one row of the table, one point of a plot."""

    label: str
    runs: list[RunRecord]

    def values(self, metric: str) -> list[float]:
        return [run.metrics[metric] for run in self.runs if metric in run.metrics]


@dataclass(frozen=True)
class Stat:
    mean: float
    spread: float | None  # the CI half-width or the standard deviation; None for a single value
    n: int


def group_runs(runs: list[RunRecord]) -> tuple[list[Group], list[str]]:
    """Groups in a natural order of their labels (beta=0.05 before beta=0.3), each with its runs by seed; and the
    keys its labels show. Runs without manifest overrides get the derived ones (all their differing keys)."""
    settings = _settings(runs)
    varying = _varying(settings)
    keys = [k for k in varying if k != SEED]
    shown = _label_keys(settings, keys)
    members: dict[tuple[str, ...], list[tuple[RunRecord, dict[str, str]]]] = {}
    for run, setting in zip(runs, settings):
        if run.overrides is None:
            run = replace(run, overrides=[f"{k}={setting[k]}" for k in varying if k in setting])
        members.setdefault(tuple(setting.get(k, UNSET) for k in keys), []).append((run, setting))
    labelled = []
    for group in members.values():
        values = tuple(group[0][1].get(k, UNSET) for k in shown)
        by_seed = sorted((run for run, _ in group), key=lambda run: _natural((_text(run.seed),)))
        labelled.append((values, Group(_label(shown, values), by_seed)))
    return [group for _, group in sorted(labelled, key=lambda item: _natural(item[0]))], shown


def _label_keys(settings: list[dict[str, str]], keys: list[str]) -> list[str]:
    """A few of `keys` that still tell the groups apart, picked greedily: each time the key that splits the most,
    keys that every run sets first. Runs of two experiments differ in dozens of keys; `name` alone says which."""

    def distinct(chosen: list[str]) -> int:
        return len({tuple(s.get(k, UNSET) for k in chosen) for s in settings})

    everywhere = {k for k in keys if all(k in s for s in settings)}
    chosen: list[str] = []
    while distinct(chosen) < distinct(keys):  # some key always splits two runs that agree on `chosen`
        splitting = [k for k in keys if k not in chosen and distinct([*chosen, k]) > distinct(chosen)]
        chosen.append(max(splitting, key=lambda k: (k in everywhere, distinct([*chosen, k]), -keys.index(k))))
    return [k for k in keys if k in chosen]


def _label(keys: list[str], values: tuple[str, ...]) -> str:
    """`k=v ...`, leaving out keys this group does not set (another group's setting tells them apart)."""
    parts = [f"{k}={v}" for k, v in zip(keys, values) if v != UNSET] or [f"{k}={v}" for k, v in zip(keys, values)]
    return " ".join(parts) or "all runs"


def _settings(runs: list[RunRecord]) -> list[dict[str, str]]:
    """Each run's settings, key -> value text: its sweep overrides when every run has them, else its config."""
    if all(run.overrides is not None for run in runs):
        return [dict(_split_override(o) for o in run.overrides or []) for run in runs]
    return [_flatten(run.config) for run in runs]


def _varying(settings: list[dict[str, str]]) -> list[str]:
    keys = dict.fromkeys(k for setting in settings for k in setting if _is_setting(k))
    return [k for k in keys if len({setting.get(k) for setting in settings}) > 1]


def _is_setting(key: str) -> bool:
    return not any(key == p or key.startswith((f"{p}.", f"{p}/")) for p in NOT_SETTINGS)


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _text(value)
    return flat


def _text(value: Any) -> str:
    """A config value as an override would spell it (true, null, [1, 2])."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _natural(values: Sequence[str]) -> tuple[tuple[int, float, str], ...]:
    """Numbers in numeric order before text, so beta=0.05 < 0.1 < 0.3 and seed=2 < seed=10."""
    key = []
    for value in values:
        try:
            key.append((0, float(value), ""))
        except ValueError:
            key.append((1, 0.0, value))
    return tuple(key)


def t_quantile(dof: int, confidence: float = CONFIDENCE) -> float:
    """Student's t quantile of a two-sided interval. scipy is installed with hydra-optuna-sweeper (optuna needs it)."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def aggregate(values: Sequence[float], interval: str) -> Stat:
    """Mean and spread of one metric over a group's seeds: the 95% CI half-width t * s / sqrt(n), or s itself."""
    n, mean = len(values), statistics.fmean(values)
    if n < 2:
        return Stat(mean, None, n)
    std = statistics.stdev(values)
    return Stat(mean, std if interval == "std" else t_quantile(n - 1) * std / math.sqrt(n), n)


def interval_text(interval: str) -> str:
    if interval == "std":
        return "sample standard deviation (n - 1 in the denominator)"
    return "95% confidence interval half-width (Student's t with n - 1 degrees of freedom: t * s / sqrt(n))"


# ------------------------------------------------------------------------------------------ tables
@dataclass(frozen=True)
class Table:
    labels: list[str]  # one per group
    counts: list[int]  # runs per group
    metrics: list[str]
    cells: list[dict[str, Stat]]  # per group: metric -> its statistics (absent: no run of the group has it)
    interval: str

    def best(self, metric: str) -> set[int]:
        """Rows whose mean, as shown, is best by the metric's direction (ties: all of them); none without a
        direction or with fewer than two groups to compare."""
        direction = direction_of(metric)
        shown = {i: round(cells[metric].mean, DIGITS) for i, cells in enumerate(self.cells) if metric in cells}
        if direction is None or len(shown) < 2:
            return set()
        scores = {i: direction.badness(value) for i, value in shown.items()}
        return {i for i, score in scores.items() if score == min(scores.values())}


def select_metrics(runs: list[RunRecord], requested: Sequence[str] | None) -> list[str]:
    """--metrics as given (comma lists allowed), or the default safety/bias/KL/reward-accuracy set that is present."""
    present = {k for run in runs for k in run.metrics}
    if requested:
        wanted = list(dict.fromkeys(m.strip() for item in requested for m in item.split(",") if m.strip()))
        missing = [m for m in wanted if m not in present]
        if missing:
            hints = sorted({c for m in missing for c in difflib.get_close_matches(m, present, n=3, cutoff=0.5)})
            raise ReportError(
                f"Report error: no run has the metric(s) {', '.join(repr(m) for m in missing)} (--metrics). "
                + (f"Close ones: {', '.join(hints)}. " if hints else "")
                + "Metrics are `<stage>/<metric>` keys of summary.json (e.g. dpo/final/rewards/accuracies) or the "
                "last evaluation's stable names (e.g. safety/harmful_compliance_rate/harmbench)."
            )
        return wanted
    chosen = [m for m in DEFAULT_METRICS if m in present]
    if not chosen:
        raise ReportError(
            f"Report error: the runs have none of the default metrics ({', '.join(DEFAULT_METRICS)}); name the "
            f"columns with --metrics (the runs have e.g. {', '.join(sorted(present)[:8]) or 'no metric'})."
        )
    return chosen


def make_table(groups: list[Group], metrics: list[str], interval: str) -> Table:
    cells = [{m: aggregate(g.values(m), interval) for m in metrics if g.values(m)} for g in groups]
    return Table([g.label for g in groups], [len(g.runs) for g in groups], metrics, cells, interval)


def _cell(stat: Stat, count: int, pm: str) -> str:
    """A cell, "0.429 ± 0.031"; a single run shows its value alone; a metric missing from some of the group's runs says
    how many it averages."""
    text = f"{stat.mean:.{DIGITS}f}" if stat.spread is None else f"{stat.mean:.{DIGITS}f} {pm} {stat.spread:.{DIGITS}f}"
    return text if stat.n == count else f"{text} (n={stat.n})"


def _header(metric: str, latex: bool) -> str:
    direction = direction_of(metric)
    name = latex_escape(metric) if latex else metric
    return f"{name} {direction.mark(latex)}" if direction else name


def _md(text: str) -> str:
    """Text for a Markdown table cell: a `|` would end the cell."""
    return text.replace("|", r"\|")


def markdown_table(table: Table) -> str:
    best = {m: table.best(m) for m in table.metrics}
    lines = [
        "| " + " | ".join(["group", "n", *(_header(m, latex=False) for m in table.metrics)]) + " |",
        "| --- | ---: |" + " ---: |" * len(table.metrics),
    ]
    for i, (label, count, cells) in enumerate(zip(table.labels, table.counts, table.cells)):
        row = [_md(label), str(count)]
        for m in table.metrics:
            text = _cell(cells[m], count, "±") if m in cells else "-"
            row.append(f"**{text}**" if i in best[m] else text)
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Cells: mean ± {interval_text(table.interval)} over seeds; n: runs (seeds) per group; bold: best "
                  "per column (↓ lower is better, ↑ higher, →50 closest to 50)."]  # fmt: skip
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                 "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}  # fmt: skip
_LATEX_SPECIAL = re.compile("|".join(re.escape(c) for c in LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    """Text as LaTeX prints it literally; one pass, so the backslashes it inserts are not escaped again."""
    return _LATEX_SPECIAL.sub(lambda match: LATEX_SPECIAL[match.group()], text)


def latex_table(table: Table) -> str:
    """A booktabs tabular to \\input into the paper's own table environment (caption and label are the paper's)."""
    best = {m: table.best(m) for m in table.metrics}
    lines = [
        r"% alignlab report; needs \usepackage{booktabs}",
        f"% cells: mean $\\pm$ {interval_text(table.interval)} over seeds; bold: best per column",
        r"\begin{tabular}{l" + "r" * (1 + len(table.metrics)) + "}",
        r"\toprule",
        " & ".join(["group", "$n$", *(_header(m, latex=True) for m in table.metrics)]) + r" \\",
        r"\midrule",
    ]
    for i, (label, count, cells) in enumerate(zip(table.labels, table.counts, table.cells)):
        row = [latex_escape(label), str(count)]
        for m in table.metrics:
            text = _cell(cells[m], count, r"$\pm$") if m in cells else "--"
            row.append(rf"\textbf{{{text}}}" if i in best[m] else text)
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def runs_csv(groups: list[Group]) -> str:
    """One row per run: where it is, its group, seed and overrides, and every metric it has (full precision)."""
    metrics = sorted({k for g in groups for run in g.runs for k in run.metrics})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", "group", "seed", "overrides", *metrics])
    for g in groups:
        for run in g.runs:
            writer.writerow([run.source, g.label, run.seed, " ".join(run.overrides or []),
                             *(run.metrics.get(m, "") for m in metrics)])  # fmt: skip
    return out.getvalue()


# ------------------------------------------------------------------------------------------ plots
PLOT_NEEDS = {  # what each plot needs, for the README when it could not be drawn
    "frontier.png": f"{KL} and a harmful-compliance or eval/reward metric (an evaluation stage with a KL suite)",
    "harm_vs_over_refusal.png": "harmful-compliance and over-refusal metrics (an evaluation stage with safety suites)",
    "training_curves.png": "a training stage's log history (<stage>/log_history.json)",
}


def axis_label(metric: str) -> str:
    """An axis title with its unit."""
    suite = metric.rsplit("/", 1)[-1]
    if metric.startswith(HARM):
        return f"harmful compliance rate on {suite} (fraction)"
    if metric.startswith(OVER_REFUSAL):
        return f"over-refusal rate on {suite} (fraction)"
    if metric == KL:
        return "KL to reference (nats)"
    if metric.startswith("eval/reward/"):
        return f"reward-model score on {suite} (reward units)"
    return metric


def _present(groups: list[Group], preferred: Sequence[str], prefix: str) -> str | None:
    """The first of `preferred` that some run has, else the first key (sorted) under `prefix`."""
    keys = {k for g in groups for run in g.runs for k in run.metrics}
    others = sorted(k for k in keys if k.startswith(prefix)) if prefix else []
    return next((k for k in preferred if k in keys), others[0] if others else None)


def _new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, outside pyplot: no display, no global state, safe in any process."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _legend(figure: Figure, labels: list[str]) -> None:
    """One legend below the plots, a line per group in the groups' order: labels can be long, and inside an axes
    they would squeeze it."""
    handles: dict[str, Any] = {}
    for ax in figure.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    shown = [label for label in labels if label in handles]
    figure.legend([handles[label] for label in shown], shown, loc="outside lower center", fontsize=8)


def _height(base: float, groups: list[Group]) -> float:
    return base + 0.2 * len(groups)  # room for the legend's lines


def points_figure(groups: list[Group], x: str, y: str, interval: str, title: str) -> Figure:
    """One point per group at its mean (x, y), error bars both ways, numbered (the legend says which group is which:
    labels can be long); groups lacking x or y are left out."""
    figure = _new_figure(7, _height(5, groups))
    ax = figure.add_subplot()
    for index, g in enumerate(groups):
        xs, ys = g.values(x), g.values(y)
        if not (xs and ys):
            continue
        sx, sy = aggregate(xs, interval), aggregate(ys, interval)
        ax.errorbar(sx.mean, sy.mean, xerr=sx.spread, yerr=sy.spread, fmt="o", capsize=3, color=f"C{index % 10}",
                    label=f"{index + 1}: {g.label}")  # fmt: skip
        number = ax.annotate(str(index + 1), (sx.mean, sy.mean), textcoords="offset points", xytext=(5, 5))
        number.set_in_layout(False)  # near the plot's edge it must not shrink the axes
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.set_title(f"{title}\none point per group: mean ± {'std' if interval == 'std' else '95% CI'} over seeds")
    ax.grid(alpha=0.3)
    _legend(figure, [f"{index + 1}: {g.label}" for index, g in enumerate(groups)])
    return figure


def frontier_figure(groups: list[Group], interval: str) -> Figure | None:
    """Harm (or, without safety suites, reward) against KL to the reference: what a setting buys for how far it
    moves the model (the DPO paper's figure 2)."""
    harm = _present(groups, (f"{HARM}harmbench", f"{HARM}bundled_harmful"), HARM)
    y = harm or _present(groups, (), "eval/reward/") or _present(groups, ("eval/reward_win_rate",), "")
    if y is None or _present(groups, (KL,), "") is None:
        return None
    what = "Harmful compliance" if harm else "Reward"
    return points_figure(groups, KL, y, interval, f"{what} vs KL to reference")


def tradeoff_figure(groups: list[Group], interval: str) -> Figure | None:
    """Harm against over-refusal: a drop in harm is only worth reading next to the benign prompts it refuses."""
    harm = _present(groups, (f"{HARM}harmbench", f"{HARM}bundled_harmful"), HARM)
    over = _present(groups, (f"{OVER_REFUSAL}xstest_safe", f"{OVER_REFUSAL}bundled_benign"), OVER_REFUSAL)
    if harm is None or over is None:
        return None
    return points_figure(groups, over, harm, interval, "Harmful compliance vs over-refusal")


def mean_curve(histories: list[list[dict[str, Any]]], key: str, interval: str) -> tuple[list, list, list]:
    """Steps, the mean over runs at each step, and the spread there (0 where one run has the step). A step logged
    twice in one history (a resumed stage) counts once, with its last value."""
    by_step: dict[float, list[float]] = {}
    for history in histories:
        values = {row["step"]: row[key] for row in history if "step" in row and _is_number(row.get(key))}
        for step, value in values.items():
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    stats = [aggregate(by_step[s], interval) for s in steps]
    return steps, [s.mean for s in stats], [s.spread or 0.0 for s in stats]


def curves_figure(groups: list[Group], interval: str) -> Figure | None:
    """A panel per training stage and curve (loss; DPO's reward accuracy; PPO's score): per group the mean over
    its seeds, with a shaded band of the same interval as the table."""
    stages = dict.fromkeys(stage for g in groups for run in g.runs for stage in run.curves)
    panels = [(stage, key) for stage in stages for key in CURVE_KEYS
              if any(key in row for g in groups for run in g.runs for row in run.curves.get(stage, []))]  # fmt: skip
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    figure = _new_figure(5 * cols, _height(3.8 * rows, groups))
    for index, (stage, key) in enumerate(panels, start=1):
        ax = figure.add_subplot(rows, cols, index)
        for number, g in enumerate(groups):
            steps, means, spreads = mean_curve([run.curves.get(stage, []) for run in g.runs], key, interval)
            if steps:
                color = f"C{number % 10}"
                ax.plot(steps, means, color=color, label=g.label)
                ax.fill_between(steps, [m - s for m, s in zip(means, spreads)],
                                [m + s for m, s in zip(means, spreads)], color=color, alpha=0.2)  # fmt: skip
        ax.set_xlabel(f"{stage} training step (optimizer steps)")
        ax.set_ylabel(CURVE_KEYS[key])
        ax.set_title(f"{stage}: {key}")
        ax.grid(alpha=0.3)
    band = "± std" if interval == "std" else "95% CI"
    figure.suptitle(f"Training curves: mean over seeds per group, band {band}")
    _legend(figure, [g.label for g in groups])
    return figure


def make_plots(groups: list[Group], interval: str) -> dict[str, Figure | None]:
    """Every plot by file name; None where the runs lack what it needs (PLOT_NEEDS)."""
    return {
        "frontier.png": frontier_figure(groups, interval),
        "harm_vs_over_refusal.png": tradeoff_figure(groups, interval),
        "training_curves.png": curves_figure(groups, interval),
    }


# ------------------------------------------------------------------------------------------ the report
@dataclass(frozen=True)
class Report:
    out: Path
    groups: list[Group]
    table: Table
    figures: dict[str, Figure | None]
    skipped: list[str]


def make_report(
    sources: Sequence[str],
    out: Path | None = None,
    interval: str = "ci95",
    metrics: Sequence[str] | None = None,
) -> Report:
    """Collect, group, aggregate, write every output into `out`, print the Markdown table; returns what it made."""
    if interval not in INTERVALS:
        raise ReportError(f"Report error: --interval is one of {', '.join(INTERVALS)} (got '{interval}').")
    runs, skipped = collect(sources)
    for note in skipped:
        print(f"alignlab report: skipped: {note}", file=sys.stderr)
    groups, keys = group_runs(runs)
    table = make_table(groups, select_metrics(runs, metrics), interval)
    out = out or _default_out(sources)
    out.mkdir(parents=True, exist_ok=True)
    markdown = markdown_table(table)
    (out / "table.md").write_text(markdown, encoding="utf-8")
    (out / "table.tex").write_text(latex_table(table), encoding="utf-8")
    (out / "runs.csv").write_text(runs_csv(groups), encoding="utf-8")
    figures = make_plots(groups, interval)
    for name, figure in figures.items():
        if figure is not None:
            figure.savefig(out / name, dpi=150)
    report = Report(out, groups, table, figures, skipped)
    command = _command(sources, out, interval, metrics)
    (out / "README.md").write_text(readme(report, command, keys, from_manifest=_from_manifest(runs)), encoding="utf-8")
    written = ["table.md", "table.tex", "runs.csv", *(name for name, f in figures.items() if f), "README.md"]
    print(f"alignlab report: {len(runs)} runs in {len(groups)} groups -> {out}/ ({', '.join(written)})")
    print(markdown, end="")
    return report


def _default_out(sources: Sequence[str]) -> Path:
    if len(sources) == 1 and not sources[0].startswith("wandb:") and (Path(sources[0]) / MANIFEST).is_file():
        return Path(sources[0]) / "report"
    return Path("report")


def _from_manifest(runs: list[RunRecord]) -> bool:
    return all(run.overrides is not None for run in runs)


def _command(sources: Sequence[str], out: Path, interval: str, metrics: Sequence[str] | None) -> str:
    """The command line as typed when this process is `alignlab` (as sweep.py records it), else its equivalent."""
    if Path(sys.argv[0]).name == "alignlab":
        return shlex.join(["alignlab", *sys.argv[1:]])
    return shlex.join(["alignlab", "report", *sources, "--out", str(out), "--interval", interval,
                       *(["--metrics", *metrics] if metrics else [])])  # fmt: skip


def readme(report: Report, command: str, keys: list[str], from_manifest: bool) -> str:
    """README.md beside the outputs: how they were made, from what, and how to read them."""
    table, groups = report.table, report.groups
    runs = sum(len(g.runs) for g in groups)
    origin = "the sweep manifest's overrides" if from_manifest else "the config keys whose values differ"
    lines = [
        "# alignlab report",
        "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d %H:%M:%S %z')} in `{Path.cwd()}`.",
        "",
        f"- {runs} finished runs in {len(groups)} groups; runs that differ only in `seed` form a group, told apart "
        f"by {', '.join(f'`{k}`' for k in keys) or 'nothing (one group)'} (from {origin}; run.*, logger.*, slurm.* "
        "and launcher.master_port are ignored: they change no result).",
        f"- Cells: mean ± {interval_text(table.interval)} over a group's seeds; n: runs per group. A cell from fewer "
        "runs than its group says (n=k); a group of one run shows its value alone.",
        "- Bold: the best group per column, judged on the value as shown (equal ones are all bold).",
        "",
        "## Files",
        "",
        "- `table.md`, `table.tex` (a booktabs tabular: `\\usepackage{booktabs}`, then `\\input{table.tex}`), "
        "`runs.csv` (one row per run with every metric, full precision)",
    ]
    for name, figure in report.figures.items():
        lines.append(f"- `{name}`" if figure is not None else f"- `{name}`: not drawn, it needs {PLOT_NEEDS[name]}")
    lines += ["", "## Metrics", "", "| metric | better | meaning |", "| --- | --- | --- |"]
    for metric in table.metrics:
        direction = direction_of(metric)
        better, meaning = (direction.better, direction.meaning) if direction else ("-", "not in the direction table")
        lines.append(f"| `{metric}` | {better} | {meaning} |")
    lines += ["", "## Groups", "", "| group | n | seeds | runs |", "| --- | ---: | --- | --- |"]
    for g in groups:
        seeds = ", ".join(_text(run.seed) for run in g.runs)
        sources = "<br>".join(f"`{run.source}`" for run in g.runs)
        lines.append(f"| {_md(g.label)} | {len(g.runs)} | {seeds} | {sources} |")
    if report.skipped:
        lines += ["", "## Skipped", "", *(f"- {note}" for note in report.skipped)]
    return "\n".join(lines) + "\n"
