"""The table in Markdown and LaTeX (booktabs, escaped), best cell per column in bold, and the CSV of all runs."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from alignlab.report.metrics import DEFAULT_METRICS, direction_of, scale_settings
from alignlab.report.runs import ReportError, RunRecord, close_to
from alignlab.report.stats import Group, Stat, cells_text, flatten

DIGITS = 3  # decimals shown in the tables; "best" is judged on the shown value, so equal-looking cells tie


@dataclass(frozen=True)
class Table:
    labels: list[str]  # one per group
    counts: list[int]  # runs per group
    metrics: list[str]
    cells: list[dict[str, Stat]]  # per group: metric -> its statistics (absent: no run of the group has it)
    interval: str
    # metric -> the setting whose differing values make its groups incomparable (metrics.scale_settings)
    incomparable: dict[str, str] = field(default_factory=dict)

    def best(self, metric: str) -> set[int]:
        """Rows whose mean, as shown, is best by the metric's direction (ties: all of them), among the groups of two
        seeds or more (one run's value is not a group's result); none without a direction, with fewer than two
        such groups to compare, or where the groups' objectives give the metric different units."""
        direction = direction_of(metric)
        if metric in self.incomparable:
            return set()
        shown = {
            i: round(cells[metric].mean, DIGITS)
            for i, cells in enumerate(self.cells)
            if metric in cells and cells[metric].n >= 2
        }
        if direction is None or len(shown) < 2:
            return set()
        scores = {i: direction.badness(value) for i, value in shown.items()}
        return {i for i, score in scores.items() if score == min(scores.values())}


def select_metrics(runs: list[RunRecord], requested: Sequence[str] | None) -> list[str]:
    """--metrics as given (comma lists allowed), or the default safety/bias/KL/reward-accuracy set that is present,
    each safety rate followed by the second judge's where the runs recorded one."""
    present = {k for run in runs for k in run.metrics}
    if requested:
        wanted = list(dict.fromkeys(m.strip() for item in requested for m in item.split(",") if m.strip()))
        missing = [m for m in wanted if m not in present]
        if missing:
            hints = close_to(missing, present, cutoff=0.5)
            raise ReportError(
                f"Report error: no run has the metric(s) {', '.join(repr(m) for m in missing)} (--metrics). "
                + (f"Close ones: {', '.join(hints)}. " if hints else "")
                + "Metrics are `<stage>/<metric>` keys of summary.json (e.g. dpo/final/rewards/accuracies) or the "
                "last evaluation's stable names (e.g. safety/harmful_content_rate/harmbench)."
            )
        return wanted
    # each headline rate, then the same rate under the runs' second judge where they have one (eval.second_judge)
    pairs = [(m, "judge2/" + m.removeprefix("safety/")) if m.startswith("safety/") else (m,) for m in DEFAULT_METRICS]
    chosen = [k for keys in pairs for k in keys if k in present]
    if not chosen:
        raise ReportError(
            f"Report error: the runs have none of the default metrics ({', '.join(DEFAULT_METRICS)}); name the "
            f"columns with --metrics (the runs have e.g. {', '.join(sorted(present)[:8]) or 'no metric'})."
        )
    return chosen


def make_table(groups: list[Group], metrics: list[str], interval: str) -> Table:
    cells = [{m: g.stat(m, interval) for m in metrics if g.values(m)} for g in groups]
    labels, counts = [g.label for g in groups], [len(g.runs) for g in groups]
    return Table(labels, counts, metrics, cells, interval, _incomparable(groups, metrics))


def _incomparable(groups: list[Group], metrics: list[str]) -> dict[str, str]:
    """metric -> the first of its scale settings (metrics.scale_settings) whose value differs between the runs
    that have the metric."""
    found: dict[str, str] = {}
    settings = [(run, flatten(run.config)) for g in groups for run in g.runs]
    for metric in metrics:
        for key in scale_settings(metric):
            if len({flat.get(key, "") for run, flat in settings if metric in run.metrics}) > 1:
                found[metric] = key
                break
    return found


def _cell(stat: Stat, count: int, pm: str) -> str:
    """A cell: "0.429 ± 0.031" (3 seeds or more); a proportion "0.429 [0.380, 0.479]"; 2 seeds without an interval
    "0.429 (0.400; 0.458)", the runs' values; one run its value alone. A metric missing from some of the group's
    runs says how many it averages."""
    text = f"{stat.mean:.{DIGITS}f}"
    if stat.bounds is not None:
        text += f" [{stat.bounds[0]:.{DIGITS}f}, {stat.bounds[1]:.{DIGITS}f}]"
    elif stat.spread is not None:
        text += f" {pm} {stat.spread:.{DIGITS}f}"
    elif len(stat.values) == 2:
        text += " (" + "; ".join(f"{v:.{DIGITS}f}" for v in stat.values) + ")"
    return text if stat.n == count else f"{text} (n={stat.n})"


def _header(metric: str, latex: bool) -> str:
    direction = direction_of(metric)
    name = latex_escape(metric) if latex else metric
    return f"{name} {direction.mark(latex)}" if direction else name


def md_escape(text: str) -> str:
    """Text for a Markdown table cell: a `|` would end the cell."""
    return text.replace("|", r"\|")


def markdown_table(table: Table) -> str:
    best = {m: table.best(m) for m in table.metrics}
    lines = [
        "| " + " | ".join(["group", "n", *(_header(m, latex=False) for m in table.metrics)]) + " |",
        "| --- | ---: |" + " ---: |" * len(table.metrics),
    ]
    for i, (label, count, cells) in enumerate(zip(table.labels, table.counts, table.cells)):
        row = [md_escape(label), str(count)]
        for m in table.metrics:
            text = _cell(cells[m], count, "±") if m in cells else "-"
            row.append(f"**{text}**" if i in best[m] else text)
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"Cells: {cells_text(table.interval)}; n: runs (seeds) per group; bold: best per column among groups of "
        "2 seeds or more (↓ lower is better, ↑ higher, →50 closest to 50)"
        + "".join(f"; {m}: no best, `{key}` differs between the groups" for m, key in table.incomparable.items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}
_LATEX_SPECIAL = re.compile("|".join(re.escape(c) for c in LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    """Text as LaTeX prints it literally; one pass, so the backslashes it inserts are not escaped again."""
    return _LATEX_SPECIAL.sub(lambda match: LATEX_SPECIAL[match.group()], text)


def latex_table(table: Table) -> str:
    """A booktabs tabular to \\input into the paper's own table environment (caption and label are the paper's)."""
    best = {m: table.best(m) for m in table.metrics}
    lines = [
        r"% alignlab report; needs \usepackage{booktabs}",
        "% cells: " + cells_text(table.interval).replace("±", r"$\pm$") + "; bold: best per column (2+ seeds)",
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
            writer.writerow(
                [
                    run.source,
                    g.label,
                    run.seed,
                    " ".join(run.overrides or []),
                    *(run.metrics.get(m, "") for m in metrics),
                ]
            )
    return out.getvalue()
