"""Runs that differ only by seed become a group; each metric of a group is a mean with a Student-t interval (or
std) over three seeds or more, the values themselves under three, and a proportion a Wilson interval on its pooled
items where the runs record them."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from alignlab.evaluation.binomial import Z_95, wilson
from alignlab.report.metrics import proportion_of
from alignlab.report.runs import SEED, ReportError, RunRecord, close_to

INTERVALS = ("ci95", "std")
CONFIDENCE = 0.95
UNSET = "(unset)"  # a group key that some runs do not set
# Settings that change no result (pipeline.run_id leaves them out of the run id): never part of a group's key.
NOT_SETTINGS = ("run", "logger", "slurm", "hydra", "launcher.master_port")


@dataclass(frozen=True)
class Group:
    """Runs that differ only by seed: one row of the table, one point of a plot."""

    label: str
    runs: list[RunRecord]

    def values(self, metric: str) -> list[float]:
        return [run.metrics[metric] for run in self.runs if metric in run.metrics]

    def stat(self, metric: str, interval: str) -> Stat:
        """`metric` over the group's runs: with a confidence interval asked for, a proportion with recorded item
        counts gets a Wilson interval on the runs' pooled items (metrics.proportion_of); the rest `aggregate`'s."""
        share = proportion_of(metric)
        runs = [run for run in self.runs if metric in run.metrics]
        counts = [run.metrics.get(share.count_key) for run in runs] if share and share.count_key else []
        counted = counts and all(isinstance(c, (int, float)) and c > 0 for c in counts)
        if share is not None and counted and interval == "ci95":  # std asks for the seeds' spread instead
            return pooled_proportion([run.metrics[metric] for run in runs], counts, share.scale)
        return aggregate(self.values(metric), interval, share.scale if share else None)


@dataclass(frozen=True)
class Stat:
    mean: float
    spread: float | None  # the CI half-width or the standard deviation; None under 3 values or with bounds
    n: int
    values: tuple[float, ...] = ()  # the runs' own values, shown instead of an interval under 3 seeds
    bounds: tuple[float, float] | None = None  # a proportion's interval: Wilson, or the t interval clipped to range

    def band(self) -> tuple[float, float] | None:
        """The interval as (low, high), for plots: the bounds, mean -/+ spread, or the values' range (2 runs)."""
        if self.bounds is not None:
            return self.bounds
        if self.spread is not None:
            return self.mean - self.spread, self.mean + self.spread
        return (min(self.values), max(self.values)) if len(self.values) > 1 else None


def group_runs(runs: list[RunRecord], label: Sequence[str] | None = None) -> tuple[list[Group], list[str]]:
    """Groups in a natural order of their labels (beta=0.05 before beta=0.3), each with its runs by seed; and the
    keys its labels show: `label` (--label) if given, else a few picked to tell the groups apart. Runs without
    manifest overrides get the derived ones (all their differing keys)."""
    settings = _settings(runs)
    varying = _varying(settings)
    keys = [k for k in varying if k != SEED]
    shown = _label_keys(settings, keys) if label is None else _checked_label(settings, keys, list(label))
    members: dict[tuple[str, ...], list[tuple[RunRecord, dict[str, str]]]] = {}
    for run, setting in zip(runs, settings):
        if run.overrides is None:
            run = replace(run, overrides=[f"{k}={setting[k]}" for k in varying if k in setting])
        members.setdefault(tuple(setting.get(k, UNSET) for k in keys), []).append((run, setting))
    labelled = []
    for group in members.values():
        values = tuple(group[0][1].get(k, UNSET) for k in shown)
        by_seed = sorted((run for run, _ in group), key=lambda run: _natural((as_text(run.seed),)))
        labelled.append((values, Group(_label(shown, values), by_seed)))
    return [group for _, group in sorted(labelled, key=lambda item: _natural(item[0]))], shown


def _checked_label(settings: list[dict[str, str]], keys: list[str], label: list[str]) -> list[str]:
    """--label as given, once every key is a setting of some run and the labels still tell every group apart."""
    known = {k for setting in settings for k in setting}
    unknown = [k for k in label if k not in known]
    if unknown:
        close, differ = ", ".join(close_to(unknown, known, cutoff=0.6)) or "none", ", ".join(keys) or "none"
        raise ReportError(
            f"Report error: --label {', '.join(unknown)}: no run sets it (close: {close}). The "
            f"settings that differ between the runs: {differ}."
        )
    groups: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for setting in settings:
        groups.setdefault(tuple(setting.get(k, UNSET) for k in label), set()).add(
            tuple(setting.get(k, UNSET) for k in keys)
        )
    merged = next((shown for shown, inside in groups.items() if len(inside) > 1), None)
    if merged is not None:
        raise ReportError(
            f"Report error: --label {' '.join(label)} gives several groups the same label "
            f"'{_label(label, merged)}'; add a key that tells them apart "
            f"(the settings that differ: {', '.join(k for k in keys if k not in label)})."
        )
    return label


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
    return [flatten(run.config) for run in runs]


def _varying(settings: list[dict[str, str]]) -> list[str]:
    keys = dict.fromkeys(k for setting in settings for k in setting if _is_setting(k))
    return [k for k in keys if len({setting.get(k) for setting in settings}) > 1]


def _is_setting(key: str) -> bool:
    return not any(key == p or key.startswith((f"{p}.", f"{p}/")) for p in NOT_SETTINGS)


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as `a.b.c` -> value text (as_text), as runs' settings are compared."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = as_text(value)
    return flat


def as_text(value: Any) -> str:
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


def aggregate(values: Sequence[float], interval: str, scale: float | None = None) -> Stat:
    """Mean and spread of one metric over a group's seeds: the 95% CI half-width t * s / sqrt(n), or s itself;
    under three seeds no interval (a t interval from two values is mostly the t quantile, 12.7), the values instead.
    A proportion (`scale`: its range's top) also gets its 95% CI as bounds clipped to [0, scale]."""
    n, mean = len(values), statistics.fmean(values)
    if n < 3:
        return Stat(mean, None, n, tuple(values))
    std = statistics.stdev(values)
    half = std if interval == "std" else t_quantile(n - 1) * std / math.sqrt(n)
    bounds = (max(0.0, mean - half), min(scale, mean + half)) if scale is not None and interval != "std" else None
    return Stat(mean, None if bounds else half, n, tuple(values), bounds)


def pooled_proportion(values: Sequence[float], counts: Sequence[float], scale: float) -> Stat:
    """A proportion over the runs' pooled items (each run's value times its item count) with a Wilson 95% score
    interval, which stays inside [0, scale] (a mean +- t * s / sqrt(n) over two seeds ran from -0.65 to 1.75).

    Seeds are clusters, not independent items: when the runs' rates differ more than binomial noise explains, the
    pooled count is shrunk by that design effect (Kish: the seeds' variance over the binomial variance of one run,
    never below 1), and with so few clusters the normal quantile gives way to Student's t with n - 1 degrees of
    freedom, as in the t interval of a mean: far from 0 and 1 the interval is then about that t interval, near
    them it stays inside the range, and it never shrinks to nothing when every seed scores 0. One run: its own
    replies' Wilson interval. Two: their values, no interval (one degree of freedom says little about the seeds'
    spread)."""
    n = len(values)
    hits = sum(round(v / scale * c) for v, c in zip(values, counts, strict=True))
    total = sum(counts)
    p = hits / total
    if n == 2:
        return Stat(scale * p, None, n, tuple(values))
    effective, z = total, Z_95
    if n >= 3:
        binomial = p * (1 - p) / (total / n)
        spread = statistics.variance([v / scale for v in values])
        effective = total / max(1.0, spread / binomial) if binomial > 0 else total
        z = t_quantile(n - 1)
    low, high = wilson(p * effective, effective, z)
    return Stat(scale * p, None, n, tuple(values), (scale * low, scale * high))


def interval_text(interval: str) -> str:
    if interval == "std":
        return "sample standard deviation (n - 1 in the denominator)"
    return "95% confidence interval half-width (Student's t with n - 1 degrees of freedom: t * s / sqrt(n))"


def cells_text(interval: str) -> str:
    """What a table's cells show, for its caption."""
    if interval == "std":
        return f"mean ± {interval_text(interval)} over 3 or more seeds; with 2 seeds the runs' values in parentheses"
    return (
        f"mean ± {interval_text(interval)} over 3 or more seeds; with 2 seeds the runs' values in parentheses, no "
        "interval; proportions [low, high]: where the runs record how many replies they judged (safety rates, "
        "CrowS-Pairs %), a Wilson 95% interval on the pooled replies with the seeds' design effect and t quantile "
        "(one run: its own replies' interval), else the t interval clipped to the range"
    )
