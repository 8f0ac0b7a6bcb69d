"""`alignlab report`: runs collected from a sweep, run folders or a W&B group; groups over seeds; means and Student's
t intervals checked against hand computations; best-per-column by each metric's direction; the Markdown, LaTeX
and CSV outputs exactly; plots with labelled axes; the errors a person can hit. One slow test reports on a real
2 x 2 sweep of the tiny experiment."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread
from omegaconf import OmegaConf

from alignlab import cli
from alignlab import report as rp
from alignlab.report import metrics, plots, runs, stats, tables

BETAS = (0.1, 0.3)
SEEDS = (1, 2, 3)
# metric -> per beta, the values of seeds 1, 2, 3 (chosen so each column's best is a different direction rule)
VALUES = {
    "safety/harmful_content_rate/bundled_harmful": {0.1: [0.30, 0.30, 0.36], 0.3: [0.10, 0.20, 0.15]},
    "safety/harmful_content_rate/harmbench": {0.1: [0.40, 0.45, 0.50], 0.3: [0.20, 0.30, 0.40]},
    "safety/over_refusal_rate/bundled_benign": {0.1: [0.05, 0.06, 0.07], 0.3: [0.08, 0.10, 0.12]},
    "safety/over_refusal_rate/xstest_safe": {0.1: [0.02, 0.04, 0.06], 0.3: [0.10, 0.12, 0.14]},
    # 54 is closer to 50 than 43, though 43 is lower: beta=0.1 is best
    "bias/crows_pairs_stereotype_pct": {0.1: [52.0, 54.0, 56.0], 0.3: [40.0, 43.0, 46.0]},
    "bias/bbq_ambig_accuracy": {0.1: [0.6, 0.7, 0.8], 0.3: [0.5, 0.5, 0.5]},
    "eval/kl_to_ref": {0.1: [5.0, 6.0, 7.0], 0.3: [2.0, 3.0, 4.0]},
    "dpo/final/rewards/accuracies": {0.1: [0.75, 0.875, 1.0], 0.3: [1.0, 1.0, 1.0]},
}
# t_{0.975, nu} by hand: nu = 2 has the closed form (2p - 1) / sqrt(2p(1 - p)), nu = 1 (Cauchy) tan(pi (p - 1/2))
T_975_2 = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)  # 4.30265272974946
T_975_1 = math.tan(math.pi * 0.475)  # 12.7062047361747

EXPECTED_MD = """\
| group | n | safety/harmful_content_rate/bundled_harmful ↓ | safety/harmful_content_rate/harmbench ↓ | \
safety/over_refusal_rate/bundled_benign ↓ | safety/over_refusal_rate/xstest_safe ↓ | \
bias/crows_pairs_stereotype_pct →50 | bias/bbq_ambig_accuracy ↑ | eval/kl_to_ref ↓ | dpo/final/rewards/accuracies ↑ |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| algo.dpo.beta=0.1 | 3 | 0.320 [0.234, 0.406] | 0.450 [0.332, 0.573] | **0.060 [0.035, 0.085]** \
| **0.040 [0.000, 0.090]** | **54.000 [49.032, 58.968]** | **0.700 [0.452, 0.948]** | 6.000 ± 2.484 \
| 0.875 [0.564, 1.000] |
| algo.dpo.beta=0.3 | 3 | **0.150 [0.026, 0.274]** | **0.300 [0.122, 0.568]** | 0.100 [0.050, 0.150] \
| 0.120 [0.070, 0.170] | 43.000 [35.548, 50.452] | 0.500 [0.500, 0.500] | **3.000 ± 2.484** | **1.000 [1.000, 1.000]** |

Cells: mean ± 95% confidence interval half-width (Student's t with n - 1 degrees of freedom: t * s / sqrt(n)) over \
3 or more seeds; with 2 seeds the runs' values in parentheses, no interval; proportions [low, high]: where the runs \
record how many replies they judged (safety rates, CrowS-Pairs %), a Wilson 95% interval on the pooled replies with \
the seeds' design effect and t quantile (one run: its own replies' interval), else the t interval clipped to the \
range; n: runs (seeds) per group; bold: best per column among groups of 2 seeds or more (↓ lower is better, ↑ \
higher, →50 closest to 50).
"""


# ------------------------------------------------------------------------------------------ a fake sweep
def config(root: Path, beta: float, seed: int) -> dict[str, Any]:
    """A frozen config's shape; run.*, logger.*, slurm.* and launcher.master_port differ per run but change no
    result, so they must not split groups."""
    return {
        "name": "tiny",
        "seed": seed,
        "pipeline": {"name": "safety", "stages": ["sft", "dpo", "eval_after"]},
        "algo": {"sft": {"kind": "sft"}, "dpo": {"kind": "dpo", "beta": beta}, "eval_after": {"kind": "eval"}},
        "run": {"root": str(root), "id": None},
        "logger": {"backend": "wandb", "group": f"tiny-sweep-{seed}"},
        "launcher": {"nproc_per_node": 1, "master_port": 29500 + seed},
        "slurm": {"time": f"0{seed}:00:00"},
    }


def summary(beta: float, seed: int) -> dict[str, dict[str, Any]]:
    """summary.json: per stage; the eval stage's metrics without the stage prefix, as the pipeline writes them."""
    out: dict[str, dict[str, Any]] = {
        "sft": {"final_step_loss": 1.5 + seed / 10, "status": "done"},
        "dpo": {"final_step_loss": 0.5, "status": "done"},
        "eval_after": {"safety/n/harmbench": 200, "status": "done"},
    }
    for metric, by_beta in VALUES.items():
        stage, name = ("dpo", metric.removeprefix("dpo/")) if metric.startswith("dpo/") else ("eval_after", metric)
        out[stage][name] = by_beta[beta][SEEDS.index(seed)]
    return out


def dpo_history(beta: float, seed: int) -> list[dict[str, Any]]:
    return [
        {"step": 1, "loss": 0.69, "rewards/accuracies": 0.5},
        {"step": 2, "loss": 0.6 - beta - seed / 100, "rewards/accuracies": 0.75},
        {"step": 2, "train_loss": 0.65, "train_runtime": 1.0},
    ]


def write_run(root: Path, beta: float, seed: int, finished: bool = True) -> Path:
    run = root / "tiny" / f"b{beta}-s{seed}"
    (run / "sft").mkdir(parents=True)
    (run / "dpo").mkdir()
    OmegaConf.save(OmegaConf.create(config(root, beta, seed)), run / "config.yaml")
    (run / "attempts.jsonl").write_text("{}\n")
    if finished:
        (run / "summary.json").write_text(json.dumps(summary(beta, seed)))
        (run / "sft" / "log_history.json").write_text(json.dumps([{"step": 1, "loss": 2.0 + seed / 10}]))
        (run / "dpo" / "log_history.json").write_text(json.dumps(dpo_history(beta, seed)))
    return run


def member(num: int, root: Path, beta: float, seed: int, run_dir: Path | None, status: str) -> dict[str, Any]:
    overrides = ["experiment=tiny", f"algo.dpo.beta={beta}", f"seed={seed}", "logger=none", f"run.root={root}"]
    return {"num": num, "overrides": overrides, "run_dir": str(run_dir) if run_dir else None, "status": status}


@pytest.fixture
def fake_sweep(tmp_path) -> Path:
    """2 betas x 3 seeds, done, plus a failed member; their manifest; an unfinished run beside them."""
    root = tmp_path / "runs"
    members = []
    for beta in BETAS:
        for seed in SEEDS:
            members.append(member(len(members), root, beta, seed, write_run(root, beta, seed), "done"))
    members.append(member(6, root, 0.5, 1, None, "failed"))
    write_run(root, 0.5, 9, finished=False)
    sweep_dir = root / "sweeps" / "tiny" / "20260101-120000"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "manifest.json").write_text(json.dumps({"cwd": str(tmp_path), "members": members}))
    return sweep_dir


def expected(metric: str, beta: float, interval: str = "ci95") -> tuple[float, float]:
    values = VALUES[metric][beta]
    std = statistics.stdev(values)
    return sum(values) / 3, std if interval == "std" else T_975_2 * std / math.sqrt(3)


# The fake runs record how many HarmBench prompts they asked (200), so that rate gets a Wilson interval on the pooled
# replies; the other proportions record no count: their t interval is clipped to [0, 1] (CrowS-Pairs: [0, 100]).
COUNTED = {"safety/harmful_content_rate/harmbench"}
PROPORTIONS = set(VALUES) - {"eval/kl_to_ref"}


def wilson_by_hand(hits: float, total: float, z: float = 1.959964) -> tuple[float, float]:
    p = hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def expected_cell(metric: str, beta: float) -> tuple[float, float | None, tuple[float, float] | None]:
    """(mean, spread, bounds) of a table cell of the fake sweep, computed by hand."""
    mean, half = expected(metric, beta)
    if metric in COUNTED:  # 200 replies per run, pooled, shrunk by the seeds' design effect; t's quantile for z
        values = VALUES[metric][beta]
        p = sum(round(v * 200) for v in values) / 600
        deff = max(1.0, statistics.variance(values) / (p * (1 - p) / 200))
        return p, None, wilson_by_hand(p * 600 / deff, 600 / deff, T_975_2)
    if metric in PROPORTIONS:
        top = 100.0 if "_pct" in metric else 1.0
        return mean, None, (max(0.0, mean - half), min(top, mean + half))
    return mean, half, None


# ------------------------------------------------------------------------------------------ aggregation
def test_t_quantiles_match_the_hand_computed_values():
    assert stats.t_quantile(2) == pytest.approx(T_975_2, rel=1e-12)
    assert stats.t_quantile(1) == pytest.approx(T_975_1, rel=1e-12)
    # the value 4.302652729911275 often quoted is off in the 10th digit; the closed form gives 4.30265272974946
    assert abs(T_975_2 - 4.30265272974946) < 1e-13


def test_a_sweep_reports_means_and_t_intervals_over_seeds(fake_sweep, capsys):
    made = rp.make_report([str(fake_sweep)])

    assert made.out == fake_sweep / "report"
    assert [g.label for g in made.groups] == ["algo.dpo.beta=0.1", "algo.dpo.beta=0.3"]
    assert [[r.seed for r in g.runs] for g in made.groups] == [[1, 2, 3], [1, 2, 3]]
    assert made.table.metrics == list(VALUES)  # the default selection, all present, in its order
    for row, beta in enumerate(BETAS):
        for metric in VALUES:
            mean, half, bounds = expected_cell(metric, beta)
            stat = made.table.cells[row][metric]
            assert (stat.mean, stat.n) == (pytest.approx(mean, rel=1e-12), 3)
            assert stat.spread == (None if half is None else pytest.approx(half, rel=1e-12, abs=1e-15)), metric
            assert stat.bounds == (None if bounds is None else pytest.approx(bounds, rel=1e-6, abs=1e-12)), metric
            if bounds is not None:  # a proportion's interval never leaves its range
                top = 100.0 if "_pct" in metric else 1.0
                assert 0.0 <= stat.bounds[0] <= stat.mean <= stat.bounds[1] <= top
    assert (made.out / "table.md").read_text() == EXPECTED_MD
    out, err = capsys.readouterr()
    assert out.endswith(EXPECTED_MD)
    assert "member 6 of the sweep" in err and "failed" in err


def test_std_mode_shows_the_sample_standard_deviation(fake_sweep, tmp_path):
    made = rp.make_report([str(fake_sweep)], out=tmp_path / "std", interval="std")

    for row, beta in enumerate(BETAS):
        for metric in VALUES:  # the seeds' spread, for proportions too
            assert made.table.cells[row][metric].spread == pytest.approx(expected(metric, beta, "std")[1], rel=1e-12)
    text = (tmp_path / "std" / "table.md").read_text()
    assert "| algo.dpo.beta=0.1 | 3 | 0.320 ± 0.035 | 0.450 ± 0.050 |" in text
    assert "Cells: mean ± sample standard deviation (n - 1 in the denominator) over 3 or more seeds" in text


def test_the_best_cell_follows_each_metrics_direction(fake_sweep, tmp_path):
    table = rp.make_report([str(fake_sweep)], out=tmp_path / "r").table

    best = {metric: table.best(metric) for metric in VALUES}
    assert best == {
        "safety/harmful_content_rate/bundled_harmful": {1},  # lower
        "safety/harmful_content_rate/harmbench": {1},
        "safety/over_refusal_rate/bundled_benign": {0},
        "safety/over_refusal_rate/xstest_safe": {0},
        "bias/crows_pairs_stereotype_pct": {0},  # |54 - 50| < |43 - 50|
        "bias/bbq_ambig_accuracy": {0},  # higher
        "eval/kl_to_ref": {1},  # lower
        "dpo/final/rewards/accuracies": {1},  # higher
    }
    crows = metrics.direction_of("bias/crows_pairs_stereotype_pct")
    assert crows is not None and crows.better == "closer to 50"
    assert (crows.badness(54.0), crows.badness(43.0), crows.badness(50.0)) == (4.0, 7.0, 0.0)
    others = {
        "dpo/final_step_loss": "lower",
        "dpo/final/rewards/margins": "higher",
        "bias/bbq_ambig_bias_score": "closer to 0",
        "eval_after/eval/kl_to_ref": "lower",
    }
    for metric, better in others.items():
        assert metrics.direction_of(metric).better == better, metric
    assert metrics.direction_of("safety/n/harmbench") is None


def test_equal_shown_means_are_all_bold_and_one_group_bolds_nothing():
    metric = "eval/kl_to_ref"
    cells = [{metric: stats.Stat(mean, 0.1, 2)} for mean in (1.0001, 0.9999, 2.0)]
    tie = tables.Table(["a", "b", "c"], [2, 2, 2], [metric], cells, "ci95")
    assert tie.best(metric) == {0, 1}  # both show 1.000
    alone = tables.Table(["a"], [2], [metric], [{metric: stats.Stat(1.0, 0.1, 2)}], "ci95")
    assert alone.best(metric) == set()


# ------------------------------------------------------------------------------------------ outputs
def test_latex_escapes_every_special_character():
    assert tables.latex_escape("& % $ # _ { } ~ ^ \\") == (
        r"\& \% \$ \# \_ \{ \} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )


def test_latex_table_text():
    harm, crows, other = "safety/harmful_content_rate/harmbench", "bias/crows_pairs_stereotype_pct", "my_metric"
    table = tables.Table(
        labels=["loss_type=ipo & beta=0.1 50%", "name=a_b {x} #2 ~y^z \\w $5"],
        counts=[3, 2],
        metrics=[harm, crows, other],
        cells=[
            {harm: stats.Stat(0.25, 0.031, 3), crows: stats.Stat(48.0, 1.5, 3), other: stats.Stat(1.0, None, 1)},
            {harm: stats.Stat(0.5, 0.1, 2), crows: stats.Stat(53.0, 2.0, 2)},
        ],
        interval="ci95",
    )
    assert tables.latex_table(table) == "\n".join(
        [
            r"% alignlab report; needs \usepackage{booktabs}",
            r"% cells: mean $\pm$ 95% confidence interval half-width (Student's t with n - 1 degrees of freedom: "
            r"t * s / sqrt(n)) over 3 or more seeds; with 2 seeds the runs' values in parentheses, no interval; "
            r"proportions [low, high]: where the runs record how many replies they judged (safety rates, CrowS-Pairs "
            r"%), a Wilson 95% interval on the pooled replies with the seeds' design effect and t quantile (one run: "
            r"its own replies' interval), else the t interval clipped to the range; bold: best per column (2+ seeds)",
            r"\begin{tabular}{lrrrr}",
            r"\toprule",
            r"group & $n$ & safety/harmful\_content\_rate/harmbench $\downarrow$ & "
            r"bias/crows\_pairs\_stereotype\_pct ($\to$ 50) & my\_metric \\",
            r"\midrule",
            r"loss\_type=ipo \& beta=0.1 50\% & 3 & \textbf{0.250 $\pm$ 0.031} & "
            r"\textbf{48.000 $\pm$ 1.500} & 1.000 (n=1) \\",
            r"name=a\_b \{x\} \#2 \textasciitilde{}y\textasciicircum{}z \textbackslash{}w \$5 & 2 & "
            r"0.500 $\pm$ 0.100 & 53.000 $\pm$ 2.000 & -- \\",
            r"\bottomrule",
            r"\end{tabular}",
            "",
        ]
    )


def test_the_sweeps_latex_and_csv_files(fake_sweep):
    out = rp.make_report([str(fake_sweep)]).out

    tex = (out / "table.tex").read_text().splitlines()
    assert tex[2:4] == [r"\begin{tabular}{lrrrrrrrrr}", r"\toprule"] and tex[-2:] == [r"\bottomrule", r"\end{tabular}"]
    assert tex[6] == (
        r"algo.dpo.beta=0.1 & 3 & 0.320 [0.234, 0.406] & 0.450 [0.332, 0.573] & \textbf{0.060 [0.035, 0.085]} & "
        r"\textbf{0.040 [0.000, 0.090]} & \textbf{54.000 [49.032, 58.968]} & \textbf{0.700 [0.452, 0.948]} & "
        r"6.000 $\pm$ 2.484 & 0.875 [0.564, 1.000] \\"
    )

    with open(out / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["group"], r["seed"]) for r in rows] == [(f"algo.dpo.beta={b}", str(s)) for b in BETAS for s in SEEDS]
    root = fake_sweep.parents[2]
    for row, (beta, seed) in zip(rows, [(b, s) for b in BETAS for s in SEEDS]):
        assert row["run"] == str(root / "tiny" / f"b{beta}-s{seed}")
        assert row["overrides"] == f"experiment=tiny algo.dpo.beta={beta} seed={seed} logger=none run.root={root}"
        for metric, by_beta in VALUES.items():
            assert float(row[metric]) == by_beta[beta][SEEDS.index(seed)]  # full precision
        assert float(row["eval_after/safety/harmful_content_rate/harmbench"]) == float(
            row["safety/harmful_content_rate/harmbench"]
        )
        assert float(row["sft/final_step_loss"]) == 1.5 + seed / 10
    assert "sft/status" not in rows[0]  # only numbers


def _groups(rows: dict[str, list[dict[str, float]]]) -> list[stats.Group]:
    """Groups of fake runs from {label: [metrics of each run]}."""
    return [
        stats.Group(label, [runs.RunRecord(f"{label}-{i}", {"seed": i}, m, {}) for i, m in enumerate(ms)])
        for label, ms in rows.items()
    ]


def test_two_seeds_show_their_values_and_proportions_stay_in_range():
    over, harm = "safety/over_refusal_rate/xstest_safe", "safety/harmful_content_rate/harmbench"
    groups = _groups(
        {
            "two": [{over: 0.70, harm: 0.0}, {over: 0.80, harm: 0.5}],
            "disagree": [{over: 0.0, harm: 1.0}, {over: 0.5, harm: 0.0}, {over: 1.0, harm: 0.5}],
            "counted": [{over: 0.1, harm: 0.05, "safety/n/xstest_safe": 250} for _ in range(3)],
        }
    )
    table = tables.make_table(groups, [over, harm], "ci95")
    md = tables.markdown_table(table)
    assert "| two | 2 | 0.750 (0.700; 0.800) | 0.250 (0.000; 0.500) |" in md  # no interval from 2 values
    for cells in table.cells:
        for metric, stat in cells.items():
            if stat.bounds is not None:
                assert 0.0 <= stat.bounds[0] <= stat.mean <= stat.bounds[1] <= 1.0, (metric, stat)
    counted = table.cells[2][over]  # seeds that agree: the pooled replies' binomial interval, never zero width
    assert counted.bounds[0] < 0.1 < counted.bounds[1] and counted.bounds[1] - counted.bounds[0] > 0.02
    figure = plots.points_figure(groups, over, harm, "ci95", "t")
    for container in figure.axes[0].containers:  # every error bar's ends inside [0, 1] on both axes
        for lines in container.lines[2]:
            for segment in lines.get_segments():
                assert all(0.0 <= v <= 1.0 for point in segment for v in point), segment


def test_many_groups_keep_distinct_styles_and_their_numbers_do_not_overlap():
    harm, kl = "safety/harmful_content_rate/harmbench", "eval/kl_to_ref"
    styles = {plots.style(i) for i in range(60)}
    assert len(styles) == 60  # ten colours, then another marker
    groups = _groups({f"g{i}": [{kl: 1.0 + i * 0.001, harm: 0.5 + i * 0.001}] for i in range(12)})  # one cluster
    figure = plots.points_figure(groups, kl, harm, "ci95", "t")
    figure.canvas.draw()
    boxes = [t.get_window_extent() for t in figure.axes[0].texts]
    assert len(boxes) == 12
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)


def test_plots_are_images_with_labelled_axes_and_legends(fake_sweep):
    made = rp.make_report([str(fake_sweep)])

    for name in ("frontier.png", "harm_vs_over_refusal.png", "training_curves.png"):
        path = made.out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        height, width, _ = imread(path).shape
        assert height > 300 and width > 300, name
    legend = ["1: algo.dpo.beta=0.1", "2: algo.dpo.beta=0.3"]
    frontier = made.figures["frontier.png"]
    (ax,) = frontier.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == (
        "KL to reference (nats)",
        "harmful content rate on harmbench (fraction)",
    )
    assert ax.get_title().startswith("Harmful content vs KL to reference")
    assert [t.get_text() for t in frontier.legends[0].get_texts()] == legend
    assert [t.get_text() for t in ax.texts] == ["1", "2"]
    tradeoff = made.figures["harm_vs_over_refusal.png"]
    assert tradeoff.axes[0].get_xlabel() == "over-refusal rate on xstest_safe (fraction)"
    assert [t.get_text() for t in tradeoff.legends[0].get_texts()] == legend

    curves = made.figures["training_curves.png"]
    assert [ax.get_title() for ax in curves.axes] == ["sft: loss", "dpo: loss", "dpo: rewards/accuracies"]
    assert [ax.get_ylabel() for ax in curves.axes] == [
        "training loss (as logged)",
        "training loss (as logged)",
        "reward accuracy (fraction)",
    ]
    assert curves.axes[1].get_xlabel() == "dpo training step (optimizer steps)"
    assert [t.get_text() for t in curves.legends[0].get_texts()] == ["algo.dpo.beta=0.1", "algo.dpo.beta=0.3"]
    line = curves.axes[1].lines[0]  # beta=0.1's DPO loss: the mean over its seeds per step
    seconds = [0.6 - 0.1 - s / 100 for s in SEEDS]
    assert list(line.get_xdata()) == [1, 2]
    assert list(line.get_ydata()) == pytest.approx([0.69, sum(seconds) / 3], rel=1e-12)


def test_readme_says_how_the_report_was_made(fake_sweep):
    out = rp.make_report([str(fake_sweep)], interval="std").out

    text = (out / "README.md").read_text()
    assert f"Made by `alignlab report {fake_sweep} --out {out} --interval std`" in text
    assert "6 finished runs in 2 groups" in text and "told apart by `algo.dpo.beta`" in text
    assert "from the sweep manifest's overrides" in text and "sample standard deviation" in text
    assert "| `bias/crows_pairs_stereotype_pct` | closer to 50 |" in text
    assert "| algo.dpo.beta=0.3 | 3 | 1, 2, 3 |" in text
    assert "member 6 of the sweep" in text  # skipped, and said so


# ------------------------------------------------------------------------------------------ without a manifest
def test_run_folders_without_a_manifest_get_derived_overrides(fake_sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    made = rp.make_report([str(tmp_path / "runs")])  # every run folder below, the unfinished one skipped

    assert made.out == Path("report") and (tmp_path / "report" / "table.md").read_text() == EXPECTED_MD
    assert [g.label for g in made.groups] == ["algo.dpo.beta=0.1", "algo.dpo.beta=0.3"]
    # logger.group, launcher.master_port, slurm.time and run.* differ too, but change no result
    assert [r.overrides for r in made.groups[1].runs] == [[f"seed={s}", "algo.dpo.beta=0.3"] for s in SEEDS]
    err = capsys.readouterr().err
    assert "b0.5-s9' has no summary.json" in err and "alignlab resume" in err

    two = [str(tmp_path / "runs" / "tiny" / name) for name in ("b0.1-s1", "b0.3-s1")]
    pair = rp.make_report(two, out=tmp_path / "two")
    assert [(g.label, len(g.runs)) for g in pair.groups] == [("algo.dpo.beta=0.1", 1), ("algo.dpo.beta=0.3", 1)]
    # one run per group: its value; a rate with its count recorded also its Wilson interval (HarmBench, 80 of 200)
    two_md = (tmp_path / "two" / "table.md").read_text()
    assert "| algo.dpo.beta=0.1 | 1 | 0.300 | 0.400 [0.335, 0.469] |" in two_md
    assert "**" not in two_md  # one run per group: no group's result to call best


def test_explicit_metrics_and_a_metric_missing_from_some_runs(fake_sweep, tmp_path):
    extra = fake_sweep.parents[2] / "tiny" / "b0.1-s1" / "summary.json"
    results = json.loads(extra.read_text())
    results["eval_after"]["eval/reward_win_rate"] = 0.6
    extra.write_text(json.dumps(results))

    made = rp.make_report([str(fake_sweep)], out=tmp_path / "r", metrics=["eval/reward_win_rate,eval/kl_to_ref"])
    assert made.table.metrics == ["eval/reward_win_rate", "eval/kl_to_ref"]
    assert "| algo.dpo.beta=0.1 | 3 | 0.600 (n=1) | 6.000 ± 2.484 |" in (tmp_path / "r" / "table.md").read_text()
    assert "| algo.dpo.beta=0.3 | 3 | - | **3.000 ± 2.484** |" in (tmp_path / "r" / "table.md").read_text()


# ------------------------------------------------------------------------------------------ W&B
@dataclass
class FakeRun:
    """What the report reads of a `wandb.apis.public.Run`."""

    id: str
    state: str
    config: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def scan_history(self) -> list[dict[str, Any]]:
        return self.rows


def fake_wandb_run(beta: float, seed: int) -> FakeRun:
    """A run as the tracker logs it: summary.json flattened (stable names too), curves on <stage>/global_step."""
    flat = {f"{stage}/{k}": v for stage, m in summary(beta, seed).items() for k, v in m.items() if k != "status"}
    flat.update({k: v for k, v in summary(beta, seed)["eval_after"].items() if k.startswith(runs.STABLE)})
    flat.update({"_runtime": 12.5, "_wandb": {"runtime": 12}, "dpo/status": "done"})
    rows = [
        {"_step": 0, "sft/global_step": 1, "sft/loss": 2.0 + seed / 10},
        *(
            {"_step": n + 1, **{f"dpo/{k}": v for k, v in row.items() if k != "step"}, "dpo/global_step": row["step"]}
            for n, row in enumerate(dpo_history(beta, seed))
        ),
        {"_step": 9, "eval_after/global_step": 0, "eval_after/eval/kl_to_ref": 1.0},
    ]
    return FakeRun(f"r{beta}-{seed}", "finished", config(Path("/nowhere"), beta, seed), flat, rows)


def test_a_wandb_group_through_a_fake_api(monkeypatch, tmp_path, capsys):
    import wandb

    calls = []

    class FakeApi:
        def __init__(self, timeout: int | None = None) -> None:
            calls.append(("init", timeout))

        def runs(self, path: str, filters: dict[str, Any]) -> list[FakeRun]:
            calls.append(("runs", path, filters))
            crashed = replace(fake_wandb_run(0.1, 1), id="c1", state="crashed")
            return [fake_wandb_run(b, s) for b in BETAS for s in SEEDS] + [crashed]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    made = rp.make_report(["wandb:me/alignlab/tiny-sweep-1"], out=tmp_path / "r")

    assert calls == [("init", runs.WANDB_TIMEOUT), ("runs", "me/alignlab", {"group": "tiny-sweep-1"})]
    assert (tmp_path / "r" / "table.md").read_text() == EXPECTED_MD
    first = made.groups[0].runs[0]
    assert first.source == "wandb:me/alignlab/r0.1-1" and first.overrides == ["seed=1", "algo.dpo.beta=0.1"]
    assert set(first.curves) == {"sft", "dpo"}  # eval_after logged no curve
    assert first.curves["dpo"][1] == {"step": 2, "global_step": 2, "loss": 0.6 - 0.1 - 0.01, "rewards/accuracies": 0.75}
    assert "_runtime" not in first.metrics and "dpo/status" not in first.metrics
    assert "wandb:me/alignlab/c1 is crashed" in capsys.readouterr().err


def test_wandb_offline_says_to_use_the_run_directories(monkeypatch, capsys):
    import wandb

    def no_key(timeout: int | None = None) -> None:
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "Api", no_key)
    assert cli.main(["report", "wandb:me/alignlab/tiny-sweep-1"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the W&B group 'wandb:me/alignlab/tiny-sweep-1' (No API key configured." in err
    assert "needs network access and WANDB_API_KEY" in err and "use the run directories instead" in err

    assert cli.main(["report", "wandb:me/alignlab"]) == 2
    assert "write a W&B group as wandb:<entity>/<project>/<group>" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ errors
def test_an_archive_of_the_records_reports_the_same_tables(fake_sweep, tmp_path, capsys):
    """--archive copies what the tables need (no models, no wandb/, no checkpoints); reporting on the copy gives
    the same table.md and table.tex: the layout a published study commits (experiments/<study>/runs)."""
    archive = tmp_path / "archive"
    made = rp.make_report([str(fake_sweep)], out=tmp_path / "from-sweep", archive_to=archive)
    assert f"the records of 6 runs -> {archive}/" in capsys.readouterr().out
    copied = sorted(str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file())
    assert copied == sorted(
        f"tiny/b{beta}-s{seed}/{name}"
        for beta in BETAS
        for seed in SEEDS
        for name in ("config.yaml", "summary.json", "sft/log_history.json", "dpo/log_history.json")
    )
    (archive / "tiny" / "b0.1-s1" / "dpo" / "model").mkdir()  # a stray folder in the archive is ignored
    again = rp.make_report([str(archive)], out=tmp_path / "from-archive")
    for name in ("table.md", "table.tex"):
        assert (again.out / name).read_text() == (made.out / name).read_text(), name
    assert [g.label for g in again.groups] == ["algo.dpo.beta=0.1", "algo.dpo.beta=0.3"]
    # archiving the archive onto itself copies nothing and changes nothing
    before = {p: p.read_bytes() for p in archive.rglob("*") if p.is_file()}
    rp.make_report([str(archive)], out=tmp_path / "again", archive_to=archive)
    assert {p: p.read_bytes() for p in archive.rglob("*") if p.is_file()} == before


def test_a_running_sweep_reports_the_members_that_have_finished(fake_sweep, tmp_path):
    """While a sweep runs its manifest lists every member as "not run"; each member's own entry file, written when
    it ends, says it is done. An entry of an older sweep in the same folder is not taken."""
    manifest = json.loads((fake_sweep / "manifest.json").read_text())
    entries = manifest["members"]
    manifest.update(
        sweep_id="tiny-sweep-2",
        status="running",
        members=[{**m, "status": "not run", "run_dir": None} for m in entries],
    )
    (fake_sweep / "manifest.json").write_text(json.dumps(manifest))
    (fake_sweep / "members").mkdir()
    for m in entries[:4]:  # beta=0.1 seeds 1-3 and beta=0.3 seed 1 have ended
        (fake_sweep / "members" / f"{m['num']}.json").write_text(json.dumps({**m, "sweep_id": "tiny-sweep-2"}))
    (fake_sweep / "members" / "4.json").write_text(json.dumps({**entries[4], "sweep_id": "tiny-sweep-1"}))
    made = rp.make_report([str(fake_sweep)], out=tmp_path / "r")
    assert [(g.label, len(g.runs)) for g in made.groups] == [("algo.dpo.beta=0.1", 3), ("algo.dpo.beta=0.3", 1)]
    assert sum("is not run" in note for note in made.skipped) == 3


def test_label_names_the_rows_with_the_settings_asked_for(fake_sweep, tmp_path):
    runs = str(fake_sweep.parents[2] / "tiny")  # run folders: every config key is a setting
    made = rp.make_report([runs], out=tmp_path / "r", label=["algo.dpo.beta"])
    assert [g.label for g in made.groups] == ["algo.dpo.beta=0.1", "algo.dpo.beta=0.3"]
    with pytest.raises(
        rp.ReportError,
        match=r"same label 'pipeline\.name=safety'; add a key that tells them "
        r"apart \(the settings that differ: algo\.dpo\.beta\)",
    ):
        rp.make_report([runs], out=tmp_path / "r", label=["pipeline.name"])
    with pytest.raises(rp.ReportError, match=r"--label algo\.dpo\.betta: no run sets it \(close: algo\.dpo\.beta, "):
        rp.make_report([runs], out=tmp_path / "r", label=["algo.dpo.betta"])


def test_archive_refuses_a_clash_before_copying_anything(fake_sweep, tmp_path):
    other = tmp_path / "elsewhere" / "tiny" / "b0.1-s1"  # the same <experiment>/<id> as a run of the sweep
    other.parent.mkdir(parents=True)
    shutil.copytree(fake_sweep.parents[2] / "tiny" / "b0.1-s1", other)
    with pytest.raises(rp.ReportError, match="would both go to"):
        rp.make_report([str(fake_sweep), str(other)], out=tmp_path / "r", archive_to=tmp_path / "archive")
    assert not (tmp_path / "archive").exists()


def test_errors_name_the_path_or_the_metric(fake_sweep, tmp_path, capsys):
    def error(*args: str) -> str:
        assert cli.main(["report", *args]) == 2
        return capsys.readouterr().err

    assert f"Report error: '{tmp_path / 'nope'}' does not exist." in error(str(tmp_path / "nope"))

    (tmp_path / "empty").mkdir()
    assert f"no runs found in '{tmp_path / 'empty'}'" in error(str(tmp_path / "empty"))

    unfinished = fake_sweep.parents[2] / "tiny" / "b0.5-s9"
    text = error(str(unfinished))
    assert f"none of the runs in '{unfinished}' has finished: '{unfinished}' has no summary.json" in text

    failed = tmp_path / "failed-sweep"
    failed.mkdir()
    (failed / "manifest.json").write_text(
        json.dumps({"members": [{"num": 0, "status": "failed"}, {"num": 1, "status": "failed"}]})
    )
    assert f"the sweep '{failed}' has no finished member (members: 2 failed)" in error(str(failed))

    text = error(str(fake_sweep), "--metrics", "eval/kl_to_rf", "nope/metric")
    error_line = text.splitlines()[-1]  # one paragraph after the notes on skipped members; no traceback
    assert error_line.startswith(
        "alignlab: Report error: no run has the metric(s) 'eval/kl_to_rf', 'nope/metric' "
        "(--metrics). Close ones: eval/kl_to_ref, eval_after/eval/kl_to_ref."
    )


# ------------------------------------------------------------------------------------------ a real sweep
@pytest.mark.slow
def test_report_on_a_real_two_by_two_sweep(tmp_path, cache_dir, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert (
        cli.main(
            [
                "run",
                "-m",
                "experiment=tiny",
                "logger=none",
                "algo.sft.max_steps=2",
                "algo.dpo.max_steps=2",
                "algo.dpo.beta=0.1,0.3",
                "seed=1,2",
                f"run.root={tmp_path}",
            ]
        )
        == 0
    )
    (sweep_dir,) = (tmp_path / "sweeps" / "tiny").iterdir()
    capsys.readouterr()

    assert cli.main(["report", str(sweep_dir)]) == 0
    out = sweep_dir / "report"
    table = (out / "table.md").read_text()
    assert capsys.readouterr().out.endswith(table)
    rows = [line for line in table.splitlines() if line.startswith("| algo.dpo.beta=")]
    assert [row.split(" | ")[:2] for row in rows] == [["| algo.dpo.beta=0.1", "2"], ["| algo.dpo.beta=0.3", "2"]]
    assert "dpo/final/rewards/accuracies ↑" in table.splitlines()[0]
    for name in ("table.tex", "runs.csv", "training_curves.png", "README.md"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "runs.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    readme = (out / "README.md").read_text()
    # the tiny pipeline (sft -> dpo) has no evaluation stage: the safety plots say why they are missing
    assert "`frontier.png`: not drawn, it needs eval/kl_to_ref" in readme

    assert cli.main(["report", str(sweep_dir)]) == 0
    assert (out / "table.md").read_text() == table  # byte for byte


def test_no_best_across_objectives_whose_units_differ():
    """A DPO loss at beta 0.1 and at 0.3 are different units: no group is bold there, and the footnote says why;
    across learning rates at one beta the loss compares and the lower is bold. Scale-free metrics stay bold."""
    loss, acc = "dpo/final_step_loss", "dpo/final/rewards/accuracies"

    def group(label: str, beta: float, lr: float, losses: list[float]) -> stats.Group:
        made = [
            runs.RunRecord(
                f"{label}/{seed}",
                {"seed": seed, "algo": {"dpo": {"kind": "dpo", "beta": beta, "learning_rate": lr}}},
                {loss: value, acc: 0.5 + value / 10},
                {},
            )
            for seed, value in enumerate(losses)
        ]
        return stats.Group(label, made)

    across_beta = tables.make_table(
        [group("a", 0.1, 1e-3, [0.6, 0.7]), group("b", 0.3, 1e-3, [0.2, 0.3])], [loss, acc], "ci95"
    )
    assert across_beta.incomparable == {loss: "algo.dpo.beta"}
    assert across_beta.best(loss) == set() and across_beta.best(acc) == {0}
    text = tables.markdown_table(across_beta)
    assert "**" not in text.split("\n")[2].split("|")[3] and "dpo/final_step_loss: no best, `algo.dpo.beta`" in text
    across_lr = tables.make_table(
        [group("a", 0.1, 1e-3, [0.6, 0.7]), group("b", 0.1, 5e-4, [0.2, 0.3])], [loss, acc], "ci95"
    )
    assert across_lr.incomparable == {} and across_lr.best(loss) == {1}
    assert metrics.scale_settings("dpo/train_loss")[:2] == ["algo.dpo.kind", "algo.dpo.loss_type"]
    assert metrics.scale_settings("dpo/final/rewards/margins") and not metrics.scale_settings("eval/kl_to_ref")
    assert not metrics.scale_settings(acc)
