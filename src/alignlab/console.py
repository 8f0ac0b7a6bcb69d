"""What a person sees in the terminal: the run folder and its stages, then one summary table at the end.
Progress bars for training come from the Trainers (tqdm); generation and scoring loops report through `Progress`."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console as RichConsole
from rich.table import Table

# The metrics worth a column in the summary: the first of each row's names that a stage reports (TRL's names for
# DPO, PPO and GRPO; ours for reward and cost models); the rest stay in metrics.json and W&B.
SHOWN = {
    "steps": ("global_step",),
    "last loss": ("final_step_loss",),
    "reward acc": ("final/rewards/accuracies", "final/accuracy"),
    "reward margin": ("final/rewards/margins", "final/margin"),
    "reward": ("final/objective/scores", "final/reward"),
    "seconds": ("wall_seconds",),
    "peak MiB": ("memory/peak_cuda_mib", "memory/peak_rss_mib"),
}


def quiet_libraries() -> None:
    """transformers' own bars ("Loading weights", "Writing model shards": a dozen per stage) off; the Trainers'
    bars (labelled by stage), datasets' and our `Progress` lines stay."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


class Progress:
    """A long loop's progress, labelled, on stderr: "[alignlab] eval xstest_safe: 128/250 replies, 12.3/s, ~10 s
    left". On a terminal one line rewritten in place; elsewhere (a pipe, a Slurm .out file) a line every `every`
    seconds and one at the end, so a log shows the loop alive without a line per batch. Call it with the number of
    items just done (generation.generate's `progress` hook, likelihood.score's)."""

    def __init__(
        self, label: str, total: int, unit: str = "replies", every: float = 20.0, stream: TextIO | None = None
    ):
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.done, self.started = 0, time.perf_counter()
        self.shown = self.started

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        finished = self.done >= self.total
        if not (finished or self.live or now - self.shown >= self.every):
            return
        self.shown = now
        rate = self.done / max(now - self.started, 1e-9)
        left = f", ~{(self.total - self.done) / rate:.0f} s left" if not finished and rate > 0 else ""
        took = f" in {now - self.started:.0f} s" if finished else ""
        line = f"[alignlab] {self.label}: {self.done}/{self.total} {self.unit}, {rate:.1f}/s{left}{took}"
        if self.live:
            self.stream.write("\r" + line + ("\n" if finished else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


class Console:
    def __init__(self, quiet: bool = False) -> None:
        # quiet: ranks other than 0 print nothing of the pipeline's own; rank 0 speaks for the run
        # Not a terminal (a pipe, a Slurm .out file): wide enough that tables are never cut ("secon…", "0.023…")
        width = None if sys.stdout.isatty() else 200
        self.out = RichConsole(stderr=False, highlight=False, quiet=quiet, width=width)

    def header(self, prep: Any) -> None:
        self.out.print(f"[bold]alignlab[/bold] run [cyan]{prep.run_dir}[/cyan]")
        self.out.print(f"  model {prep.base_model}")
        for r in prep.reports:
            self.data_report(r)
        self.out.print(f"  stages {' -> '.join(prep.cfg.pipeline.stages)}")

    def warning(self, text: str) -> None:
        self.out.print(f"[bold yellow]warning:[/bold yellow] {text}")

    def data_report(self, report: Any) -> None:
        s = report.summary()
        self.out.print(
            f"  data  {s['source']}: {s['rows_kept']}/{s['rows_read']} rows ({s['format']}), tokens "
            f"{s['tokens_min']}-{s['tokens_max']}, {s['duplicates']} duplicates, {s['overlength']} over max_length "
            f"({s['overlength_action']})"
        )

    def comparison(self, rows: dict[str, dict[str, float]], report: Path) -> None:
        table = Table(title="before -> after (same run)" if len(next(iter(rows.values()))) > 1 else "evaluation")
        table.add_column("metric")
        whens = list(next(iter(rows.values())))
        for when in whens:
            table.add_column(when, justify="right")
        for metric, row in rows.items():
            table.add_row(metric, *(_fmt(row.get(w)) for w in whens))
        self.out.print(table)
        self.out.print(f"report: {report}")

    def targets(self, rows: list[dict]) -> None:
        """One line: how many of eval.targets the run met, and the missed ones by name."""
        if rows:
            missed = [r["metric"] for r in rows if r["met"] is False]
            unmeasured = [r["metric"] for r in rows if r["met"] is None]
            self.out.print(
                f"targets met: {sum(r['met'] is True for r in rows)} of {len(rows)}"
                + (f"; missed: {', '.join(missed)}" if missed else "")
                + (f"; not measured: {', '.join(unmeasured)}" if unmeasured else "")
            )

    def model_comparison(self, rows: dict[str, dict[str, float]], report: Path) -> None:
        table = Table(title="alignlab eval: models compared (same suites)")
        table.add_column("metric", no_wrap=True)
        models = list(dict.fromkeys(m for row in rows.values() for m in row))
        for n, _ in enumerate(models, start=1):
            table.add_column(f"model {n}", justify="right")
        for metric, row in rows.items():
            table.add_row(metric, *(_fmt(row.get(m)) for m in models))
        self.out.print(table)
        for n, model in enumerate(models, start=1):
            self.out.print(f"  model {n}: {model}")
        self.out.print(f"comparison: {report}")

    def stage_start(self, stage: str, kind: str) -> None:
        self.out.rule(f"{stage} ({kind})")

    def stage_skipped(self, stage: str) -> None:
        self.out.print(f"[dim]{stage}: already done, skipped[/dim]")

    def summary(self, run_dir: Path, results: dict[str, dict[str, Any]]) -> None:
        table = Table(title=f"alignlab summary: {run_dir}")
        table.add_column("stage")
        table.add_column("status")
        for label in SHOWN:
            table.add_column(label, justify="right")
        for stage, m in results.items():
            shown = [next((m[k] for k in keys if k in m), None) for keys in SHOWN.values()]
            table.add_row(stage, m.get("status", ""), *(_fmt(v) for v in shown))
        self.out.print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
