"""PNG figures: the harm (or reward) vs KL frontier, harm vs over-refusal, and training curves per group."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from alignlab.report.metrics import HARM, KL, LEGACY_HARM, OVER_REFUSAL, REFUSAL, proportion_of
from alignlab.report.runs import CURVE_KEYS, is_number
from alignlab.report.stats import Group, Stat, aggregate

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
    numbered: list[tuple[str, float, float]] = []
    for index, g in enumerate(groups):
        if not (g.values(x) and g.values(y)):
            continue
        sx, sy = g.stat(x, interval), g.stat(y, interval)
        color, marker = style(index)
        ax.errorbar(
            sx.mean,
            sy.mean,
            xerr=_error(sx),
            yerr=_error(sy),
            fmt=marker,
            capsize=3,
            color=color,
            label=f"{index + 1}: {g.label}",
        )
        if sx.n < 3 and len(sx.values) == len(sy.values) > 1:  # under 3 seeds the runs themselves, no interval
            ax.scatter(sx.values, sy.values, marker=marker, color=color, alpha=0.35, s=14)
        numbered.append((str(index + 1), sx.mean, sy.mean))
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    spread = "± std" if interval == "std" else "95% CI, rates Wilson"
    pairs = any(len(g.values(x)) == 2 for g in groups)
    faint = "\nfaint points: the runs of a 2-seed group" if pairs else ""
    ax.set_title(f"{title}\nmean per group; bars: {spread}\nover 3+ seeds (one run: its own replies){faint}")
    _place_numbers(ax, numbered)
    ax.grid(alpha=0.3)
    _legend(figure, [f"{index + 1}: {g.label}" for index, g in enumerate(groups)])
    return figure


MARKERS = ("o", "s", "^", "D", "v", "P")


def style(index: int) -> tuple[str, str]:
    """A group's colour and marker: ten colours, then the next marker, so that 60 groups stay distinct."""
    return f"C{index % 10}", MARKERS[(index // 10) % len(MARKERS)]


def _error(stat: Stat) -> list[list[float]] | None:
    """Error bar lengths below and above the mean: the proportion's bounds or mean -/+ spread; none under 3 seeds
    (a Wilson interval, which needs no seeds, is drawn at any)."""
    if stat.bounds is None and stat.spread is None:
        return None
    low, high = stat.band()
    return [[max(0.0, stat.mean - low)], [max(0.0, high - stat.mean)]]


# Where a point's number may go, in points from the point: tried in this order until one overlaps nothing placed.
OFFSETS = [(5, 5), (5, -13), (-13, 5), (-13, -13), (8, -4), (-16, -4), (-4, 8), (-4, -16)]
OFFSETS += [(dx * 2, dy * 2) for dx, dy in OFFSETS]


def _place_numbers(ax: Any, numbered: list[tuple[str, float, float]]) -> None:
    """Each point's number beside it, at the first offset whose box clears the points and the numbers already
    placed (clusters of close groups otherwise print their numbers on top of each other)."""
    ax.figure.canvas.draw()  # the final limits and layout, so data -> pixel positions hold
    to_px = ax.transData.transform
    scale = ax.figure.dpi / 72  # points -> pixels
    points = [tuple(to_px((x, y))) for _, x, y in numbered]
    taken: list[tuple[float, float, float, float]] = [(px - 4, py - 4, px + 4, py + 4) for px, py in points]
    for (text, x, y), (px, py) in zip(numbered, points):
        width, height = (6 * len(text) + 2) * scale, 11 * scale
        for dx, dy in OFFSETS:
            left, bottom = px + dx * scale, py + dy * scale
            box = (left, bottom, left + width, bottom + height)
            if not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken):
                break
        taken.append(box)
        number = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=9)
        number.set_in_layout(False)  # near the plot's edge it must not shrink the axes


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
    """Steps, the mean over runs at each step, and the band there as (low, high): the interval over 3 runs or more,
    the runs' range under 3, the mean itself where one run has the step. A step logged twice in one history (a
    resumed stage) counts once, with its last value."""
    by_step: dict[float, list[float]] = {}
    for history in histories:
        values = {row["step"]: row[key] for row in history if "step" in row and is_number(row.get(key))}
        for step, value in values.items():
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    share = proportion_of(key)  # a proportion's band stays inside its range
    stats = [aggregate(by_step[s], interval, share.scale if share else None) for s in steps]
    bands = [s.band() or (s.mean, s.mean) for s in stats]  # under 3 runs: their range
    return steps, [s.mean for s in stats], bands


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
            steps, means, bands = mean_curve([run.curves.get(stage, []) for run in g.runs], key, interval)
            if steps:
                color, _ = style(number)
                dashes = (None, (0, (4, 2)), (0, (1, 1)), (0, (6, 2, 1, 2)))[(number // 10) % 4]
                ax.plot(steps, means, color=color, linestyle=dashes or "-", label=g.label)
                ax.fill_between(steps, [b[0] for b in bands], [b[1] for b in bands], color=color, alpha=0.2)
        ax.set_xlabel(f"{stage} training step (optimizer steps)")
        ax.set_ylabel(CURVE_KEYS[key])
        ax.set_title(f"{stage}: {key}")
        ax.grid(alpha=0.3)
    band = "± std" if interval == "std" else "95% CI"
    figure.suptitle(f"Training curves: mean over seeds per group, band {band} (2 seeds: their range)")
    _legend(figure, [g.label for g in groups])
    return figure


def make_plots(groups: list[Group], interval: str) -> dict[str, Figure | None]:
    """Every plot by file name; None where the runs lack what it needs (PLOT_NEEDS)."""
    return {
        "frontier.png": frontier_figure(groups, interval),
        "harm_vs_over_refusal.png": tradeoff_figure(groups, interval),
        "training_curves.png": curves_figure(groups, interval),
    }
