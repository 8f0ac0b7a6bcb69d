"""PNG figures: the harm (or reward) vs KL frontier, harm vs over-refusal, and training curves per group."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from alignlab.report.metrics import HARM, KL, LEGACY_HARM, OVER_REFUSAL, REFUSAL
from alignlab.report.runs import CURVE_KEYS, is_number
from alignlab.report.stats import Group, aggregate

if TYPE_CHECKING:
    from matplotlib.figure import Figure


PLOT_NEEDS = {  # what each plot needs, for the README when it could not be drawn
    "frontier.png": f"{KL} and a harmful-content, refusal or eval/reward metric (an evaluation stage with a KL suite)",
    "harm_vs_over_refusal.png": "harmful-content (or refusal) and over-refusal metrics (an evaluation stage with "
    "safety suites)",
    "training_curves.png": "a training stage's log history (<stage>/log_history.json)",
}


def axis_label(metric: str) -> str:
    """An axis title with its unit."""
    suite = metric.rsplit("/", 1)[-1]
    if metric.startswith(HARM):
        return f"harmful content rate on {suite} (fraction)"
    if metric.startswith(REFUSAL):
        return f"refusal rate on {suite} (fraction)"
    if metric.startswith(LEGACY_HARM):
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
        ax.errorbar(
            sx.mean,
            sy.mean,
            xerr=sx.spread,
            yerr=sy.spread,
            fmt="o",
            capsize=3,
            color=f"C{index % 10}",
            label=f"{index + 1}: {g.label}",
        )
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
    harm, what = _harm_axis(groups)
    y = harm or _present(groups, (), "eval/reward/") or _present(groups, ("eval/reward_win_rate",), "")
    if y is None or _present(groups, (KL,), "") is None:
        return None
    return points_figure(groups, KL, y, interval, f"{what if harm else 'Reward'} vs KL to reference")


def tradeoff_figure(groups: list[Group], interval: str) -> Figure | None:
    """Harm against over-refusal: a drop in harm is only worth reading next to the benign prompts it refuses."""
    harm, what = _harm_axis(groups)
    over = _present(groups, (f"{OVER_REFUSAL}xstest_safe", f"{OVER_REFUSAL}bundled_benign"), OVER_REFUSAL)
    if harm is None or over is None:
        return None
    return points_figure(groups, over, harm, interval, f"{what} vs over-refusal")


def _harm_axis(groups: list[Group]) -> tuple[str | None, str]:
    """The harm metric to plot and its title: the harmful-content rate where the judge read it (HarmBench first),
    else the refusal rate of harmful prompts (a judge that reads refusals only), else the non-refusal rate that runs
    recorded before either existed."""
    for prefix, title in (
        (HARM, "Harmful content"),
        (REFUSAL, "Refusal of harmful prompts"),
        (LEGACY_HARM, "Harmful compliance"),
    ):
        metric = _present(groups, (f"{prefix}harmbench", f"{prefix}bundled_harmful"), prefix)
        if metric is not None:
            return metric, title
    return None, ""


def mean_curve(histories: list[list[dict[str, Any]]], key: str, interval: str) -> tuple[list, list, list]:
    """Steps, the mean over runs at each step, and the spread there (0 where one run has the step). A step logged
    twice in one history (a resumed stage) counts once, with its last value."""
    by_step: dict[float, list[float]] = {}
    for history in histories:
        values = {row["step"]: row[key] for row in history if "step" in row and is_number(row.get(key))}
        for step, value in values.items():
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    stats = [aggregate(by_step[s], interval) for s in steps]
    return steps, [s.mean for s in stats], [s.spread or 0.0 for s in stats]


def curves_figure(groups: list[Group], interval: str) -> Figure | None:
    """A panel per training stage and curve (loss; DPO's reward accuracy; PPO's score): per group the mean over
    its seeds, with a shaded band of the same interval as the table."""
    stages = dict.fromkeys(stage for g in groups for run in g.runs for stage in run.curves)
    panels = [
        (stage, key)
        for stage in stages
        for key in CURVE_KEYS
        if any(key in row for g in groups for run in g.runs for row in run.curves.get(stage, []))
    ]
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
                ax.fill_between(
                    steps,
                    [m - s for m, s in zip(means, spreads)],
                    [m + s for m, s in zip(means, spreads)],
                    color=color,
                    alpha=0.2,
                )
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
