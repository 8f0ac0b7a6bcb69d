"""benchmarks/ppo_speed.py, our side: one row on the tiny model, with the phase times and the profile it reports
(the TRL side needs its own venv and is run by the benchmark's driver, not here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "ppo_speed.py"


@pytest.mark.slow
def test_our_ppo_row_reports_its_phases_and_profile(tmp_path, tiny_model):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from ppo_speed import make_reward
    finally:
        sys.path.remove(str(SCRIPT.parent))
    reward, out = tmp_path / "reward", tmp_path / "row.json"
    make_reward(tiny_model, reward)
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--side",
            "ours",
            "--label",
            "alignlab fp32 critic",
            "--policy",
            tiny_model,
            "--reward",
            str(reward),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--mini-batch-size",
            "1",
            "--response-length",
            "4",
            "--steps",
            "3",
            "--threads",
            "1",
            "--profile",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads(out.read_text())
    phases = row["phases"]
    assert list(phases) == ["generation", "scoring passes", "reward model", "advantages", "PPO epochs"]
    assert all(v >= 0 for v in phases.values()) and phases["generation"] > 0 and phases["PPO epochs"] > 0
    # the phases are parts of the timed iterations (the warm-up one left out), so they cannot add up to more
    assert sum(phases.values()) <= row["seconds_per_iteration"] * 1.05 + 0.05
    assert "aten::" in row["profile"]
    assert row["device"] == "cpu" and "peak_cuda_mib" not in row


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal where no GPU is visible")
@pytest.mark.parametrize("side", ["driver", "ours"])
def test_device_cuda_without_a_gpu_stops_before_any_work(tmp_path, side):
    """The driver must refuse before it builds the TRL venv or converts a model; our side before it loads one."""
    args = [sys.executable, str(SCRIPT), "--device", "cuda", "--trl-venv", str(tmp_path / "venv")]
    if side == "ours":
        args += ["--side", "ours", "--label", "alignlab fp32 critic", "--policy", str(tmp_path / "absent")]
    run = subprocess.run(args, capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert run.returncode != 0 and "--device cuda" in run.stderr and "torch.cuda.is_available()" in run.stderr
    assert not (tmp_path / "venv").exists()
