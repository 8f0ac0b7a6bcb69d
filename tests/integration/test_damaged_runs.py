"""Fault injection on run state, one test per class of damage: a disk that fills up mid-save (a real, small tmpfs),
a checkpoint damaged after it was written, a finished stage's damaged metrics, a damaged frozen config, and an
unexpected error inside a stage. Each ends in one paragraph on stderr (no traceback), the traceback in the run's
error.log where there is one, nothing finished lost, and a resume that completes once the cause is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from safetensors.torch import load_file

from alignlab.cli import main

pytestmark = pytest.mark.slow


def alignlab(cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALIGNLAB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "alignlab.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def weights(run: Path, stage: str) -> dict:
    return load_file(run / stage / "model" / "model.safetensors")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: room for the run's records and the first tiny SFT checkpoint (1.3 MiB), not the second."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_named_and_the_run_resumes_once_there_is_room(small_disk, tmp_path, cache_dir, tiny_model):
    args = ["run", "experiment=tiny", "logger=none", "run.id=full", "pipeline.stages=[sft]"]
    full = alignlab(cache_dir, *args, f"run.root={small_disk}")
    assert full.returncode == 2, full.stderr[-3000:]
    said = [line for line in full.stderr.splitlines() if line.startswith("alignlab: ")]
    assert len(said) == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert "Disk full" in said[0] and f"mounted at {small_disk}" in said[0] and "free of 2.0 MiB" in said[0]
    assert "A checkpoint of this run takes 1.3 MiB" in said[0], said[0]
    run = small_disk / "tiny" / "full"
    (kept,) = [p.parent.name for p in run.glob("sft/checkpoints/checkpoint-*/COMPLETE")]  # the save before it

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = alignlab(cache_dir, "resume", str(run))
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resuming from {kept}" in resumed.stdout
    clean = alignlab(cache_dir, *args, f"run.root={tmp_path / 'clean'}")
    assert clean.returncode == 0, clean.stderr[-2000:]
    ref = weights(tmp_path / "clean" / "tiny" / "full", "sft")
    got = weights(run, "sft")
    assert all((got[k] == ref[k]).all() for k in ref)  # the interrupted run ends where an uninterrupted one does


def test_a_checkpoint_damaged_after_saving_is_set_aside_and_the_previous_one_used(tmp_path, cache_dir, tiny_model):
    args = ["run", "experiment=tiny", "logger=none", "run.id=d", f"run.root={tmp_path}", "pipeline.stages=[sft]"]
    args += ["algo.sft.save_steps=5", "algo.sft.save_total_limit=null"]
    assert alignlab(cache_dir, *args).returncode == 0
    run = tmp_path / "tiny" / "d"
    ckpts = run / "sft" / "checkpoints"
    steps = sorted(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*"))
    assert len(steps) >= 3, steps
    newest = ckpts / f"checkpoint-{steps[-1]}"
    optimizer = newest / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])  # truncated on disk
    (run / "sft" / "DONE").unlink()  # as if killed before the stage finished
    resumed = alignlab(cache_dir, "resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{newest} cannot be resumed from: optimizer.pt has" in resumed.stdout, resumed.stdout[-2000:]
    assert f"resuming from checkpoint-{steps[-2]}" in resumed.stdout
    (aside,) = (run / "sft" / "checkpoints-aside").iterdir()
    assert aside.name.startswith(f"checkpoint-{steps[-1]}.damaged-")  # kept for the user, not deleted


def test_damaged_records_of_a_finished_run_are_named(tmp_path, cache_dir, tiny_model):
    args = ["run", "experiment=tiny", "logger=none", "run.id=r", f"run.root={tmp_path}", "pipeline.stages=[sft]"]
    assert alignlab(cache_dir, *args).returncode == 0
    run = tmp_path / "tiny" / "r"
    metrics = run / "sft" / "metrics.json"
    kept = metrics.read_text()
    metrics.write_text(kept[:15])
    out = alignlab(cache_dir, "resume", str(run))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"stage 'sft' is marked done but {metrics} is unreadable or damaged" in out.stderr
    assert f"delete {run / 'sft' / 'DONE'}" in out.stderr
    metrics.write_text(kept)

    config = run / "config.yaml"
    config.write_text(config.read_text()[:200])  # truncated
    out = alignlab(cache_dir, "resume", str(run))
    assert out.returncode == 2 and "was edited or damaged after the run started" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and (run / "sft" / "model" / "model.safetensors").is_file()


def test_an_unexpected_error_in_a_stage_is_one_paragraph_and_a_logged_traceback(
    tmp_path, cache_dir, tiny_model, capsys, monkeypatch
):
    from alignlab import pipeline

    def broken(ctx):
        raise ValueError("something inside went wrong")

    monkeypatch.setitem(pipeline.STAGES, "dpo", broken)
    args = ["run", "experiment=tiny", "logger=none", "run.id=u", f"run.root={tmp_path}"]
    assert main(args) == 1
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("alignlab: ")]
    run = tmp_path / "tiny" / "u"
    assert len(said) == 1 and "Traceback" not in err, err
    assert "Unexpected error in stage 'dpo': ValueError: something inside went wrong" in said[0]
    assert str(run / "error.log") in said[0]
    log = (run / "error.log").read_text()
    assert "Traceback" in log and "in broken" in log and "something inside went wrong" in log
    assert (run / "sft" / "DONE").is_file() and json.loads((run / "sft" / "metrics.json").read_text())
