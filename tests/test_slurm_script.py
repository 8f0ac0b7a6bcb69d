"""The single-node sbatch script is a plain bash script: run it as Slurm would (outside a cluster here) and check it
runs the pipeline with the overrides it was given, and resumes rather than redoes on a second submission."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "slurm" / "single-node.sbatch"


def submit(tmp: Path, cache: Path, *overrides: str) -> str:
    env = {**os.environ, "ALIGNLAB_CACHE": str(cache), "ALIGNLAB": f"{sys.executable} -m alignlab.cli"}
    proc = subprocess.run(["bash", str(SCRIPT), *overrides], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_sbatch_script_runs_and_resumes_the_pipeline(tmp_path, cache_dir):
    args = ("experiment=tiny", f"run.root={tmp_path / 'runs'}", "run.id=job", "logger=none", "algo.dpo.max_steps=2",
            "algo.sft.max_steps=2")  # fmt: skip
    out = submit(tmp_path, cache_dir, *args)
    assert "alignlab job local" in out and "experiment=tiny" in out
    run = tmp_path / "runs" / "tiny" / "job"
    assert (run / "sft" / "DONE").is_file() and (run / "dpo" / "DONE").is_file()
    again = submit(tmp_path, cache_dir, *args)
    assert "sft: already done, skipped" in again and "dpo: already done, skipped" in again
