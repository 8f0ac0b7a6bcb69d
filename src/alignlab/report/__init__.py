"""`alignlab report`: ablation tables and plots from a sweep, run folders or a W&B group.

    alignlab report runs/sweeps/tiny/20260101-120000       a sweep: its finished members (manifest.json)
    alignlab report runs/tiny/3f2a... runs/tiny/9c41...     run folders
    alignlab report runs/                                   every run folder below (config.yaml + summary.json)
    alignlab report wandb:<entity>/<project>/<group>        a W&B group (needs network and WANDB_API_KEY)
        [--out DIR] [--interval ci95|std] [--metrics KEY ...] [--label KEY ...] [--archive DIR]

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
--archive DIR also copies the runs' records (config.yaml, summary.json, log histories) to DIR, which reports the
same way later without the models: what a published study commits (experiments/).

Modules: runs.py collects, stats.py groups and aggregates, metrics.py knows each metric's direction, tables.py
and plots.py write the outputs, archive.py copies the records; this file puts them in order.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from alignlab.report.archive import archive
from alignlab.report.metrics import direction_of
from alignlab.report.plots import PLOT_NEEDS, make_plots
from alignlab.report.runs import MANIFEST, ReportError, RunRecord, collect
from alignlab.report.stats import INTERVALS, Group, as_text, cells_text, group_runs
from alignlab.report.tables import Table, latex_table, make_table, markdown_table, md_escape, runs_csv, select_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    archive_to: Path | None = None,
    label: Sequence[str] | None = None,
) -> Report:
    """Collect, group, aggregate, write every output into `out`, print the Markdown table; returns what it made.
    `archive_to`: also copy the runs' records there (archive.py), for `alignlab report <that folder>` later.
    `label`: the settings that name the rows (default: a few picked to tell the groups apart)."""
    if interval not in INTERVALS:
        raise ReportError(f"Report error: --interval is one of {', '.join(INTERVALS)} (got '{interval}').")
    runs, skipped = collect(sources)
    for note in skipped:
        print(f"alignlab report: skipped: {note}", file=sys.stderr)
    if archive_to is not None:
        archived = archive(runs, archive_to)
        print(f"alignlab report: the records of {len(archived)} runs -> {archive_to}/ (alignlab report {archive_to})")
    groups, keys = group_runs(runs, label)
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
    command = _command(sources, out, interval, metrics, archive_to, label)
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


def _command(
    sources: Sequence[str],
    out: Path,
    interval: str,
    metrics: Sequence[str] | None,
    archive_to: Path | None,
    label: Sequence[str] | None,
) -> str:
    """The command line as typed when this process is `alignlab` (as sweep.py records it), else its equivalent."""
    if Path(sys.argv[0]).name == "alignlab":
        return shlex.join(["alignlab", *sys.argv[1:]])
    return shlex.join(
        [
            "alignlab",
            "report",
            *sources,
            "--out",
            str(out),
            "--interval",
            interval,
            *(["--metrics", *metrics] if metrics else []),
            *(["--archive", str(archive_to)] if archive_to else []),
            *(["--label", *label] if label else []),
        ]
    )


def readme(report: Report, command: str, keys: list[str], from_manifest: bool) -> str:
    """README.md beside the outputs: how they were made, from what, and how to read them."""
    table, groups = report.table, report.groups
    runs = sum(len(g.runs) for g in groups)
    origin = "the sweep manifest's overrides" if from_manifest else "the config keys whose values differ"
    lines = [
        "# alignlab report",
        "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d %H:%M:%S %z')}; relative paths are from the folder it "
        "ran in (for a study in experiments/, the repository root).",
        "",
        f"- {runs} finished runs in {len(groups)} groups; runs that differ only in `seed` form a group, told apart "
        f"by {', '.join(f'`{k}`' for k in keys) or 'nothing (one group)'} (from {origin}; run.*, logger.*, slurm.* "
        "and launcher.master_port are ignored: they change no result).",
        f"- Cells: {cells_text(table.interval)}; n: runs per group. A cell from fewer runs than its group says (n=k).",
        "- Bold: the best group per column among groups of two seeds or more, judged on the value as shown (equal "
        "ones are all bold); none in a column whose units the groups' objectives set differently (a DPO loss or "
        "implicit reward at two betas or loss types)"
        + "".join(f"; here `{m}` (`{key}` differs)" for m, key in table.incomparable.items())
        + ".",
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
        seeds = ", ".join(as_text(run.seed) for run in g.runs)
        sources = "<br>".join(f"`{run.source}`" for run in g.runs)
        lines.append(f"| {md_escape(g.label)} | {len(g.runs)} | {seeds} | {sources} |")
    if report.skipped:
        lines += ["", "## Skipped", "", *(f"- {note}" for note in report.skipped)]
    return "\n".join(lines) + "\n"
