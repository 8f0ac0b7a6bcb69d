"""Progress of generation and scoring loops (console.Progress): labelled lines, rate and time left, one line per
interval in a log file, one line rewritten in place on a terminal."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from alignlab.console import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_interval_and_one_at_the_end():
    log = io.StringIO()
    progress = Progress("eval xstest_safe", 250, every=3600.0, stream=log)
    for _ in range(3):
        progress(64)  # within the interval: silent
    assert log.getvalue() == ""
    progress(58)
    (line,) = log.getvalue().splitlines()
    assert line.startswith("[alignlab] eval xstest_safe: 250/250 replies, ") and " in " in line and "left" not in line


def test_every_update_is_shown_when_the_interval_is_zero():
    log = io.StringIO()
    progress = Progress("pairs: greedy replies", 10, every=0.0, stream=log)
    progress(4)
    progress(6)
    first, last = log.getvalue().splitlines()
    assert first.startswith("[alignlab] pairs: greedy replies: 4/10 replies, ") and "s left" in first
    assert last.startswith("[alignlab] pairs: greedy replies: 10/10 replies, ")


def test_a_terminal_gets_one_line_rewritten_in_place():
    tty = Terminal()
    progress = Progress("eval bbq (lettered)", 2, unit="items", stream=tty)
    progress(1)
    progress(1)
    text = tty.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "2/2 items" in text


def test_the_evaluation_reports_progress_per_suite(capsys, bench_dir, tiny_model, tiny_tokenizer):
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from alignlab.config.eval import EvalConfig, SuiteConfig
    from alignlab.evaluation.runner import Evaluator

    e = OmegaConf.structured(
        EvalConfig(
            suites={"crows": SuiteConfig(kind="crows_pairs", source="crows_pairs", presentations=["bare", "chat"])},
            benchmarks_dir=str(bench_dir),
        )
    )
    Evaluator(e, None)(AutoModelForCausalLM.from_pretrained(tiny_model), tiny_tokenizer)
    err = capsys.readouterr().err
    assert "[alignlab] eval crows (bare): 20/20 sentences" in err and "[alignlab] eval crows (chat): 20/20" in err


@pytest.mark.slow
def test_a_piped_run_prints_full_tables_and_no_library_bars(tmp_path, cache_dir, tiny_model):
    """stdout to a pipe (a Slurm .out file): the summary table is not cut at 80 columns; stderr has the Trainers'
    bars labelled by stage and none of transformers' own (weights loaded, shards written), no offline W&B warning
    per checkpoint, and no DeepSpeed accelerator notice on stdout."""
    env = {**os.environ, "ALIGNLAB_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1", "COLUMNS": "80"}
    env.pop("DS_ACCELERATOR", None)
    args = ["run", "experiment=tiny", "logger.mode=offline", f"run.root={tmp_path}"]
    proc = subprocess.run([sys.executable, "-m", "alignlab.cli", *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "…" not in proc.stdout and "seconds" in proc.stdout, proc.stdout[-2000:]
    assert "sft steps" in proc.stderr and "dpo steps" in proc.stderr
    assert "Writing model shards" not in proc.stderr and "Loading weights" not in proc.stderr
    assert "URL not available" not in proc.stderr and "accelerator" not in proc.stdout.lower()
