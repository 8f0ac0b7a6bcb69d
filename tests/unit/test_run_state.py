"""A run folder's identity and lock (run_state.py), and training that stops on a non-finite loss."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from alignlab import run_state
from alignlab.errors import RunStateError, TrainingDiverged
from alignlab.training.trainer import FiniteLoss

CONFIG = {"name": "tiny", "seed": 1, "algo": {"dpo": {"beta": 0.1}}, "run": {"root": "runs"}, "slurm": {"qos": None}}


def frozen(tmp_path: Path, config: dict = CONFIG) -> Path:
    run_state.record_config(tmp_path, yaml.safe_dump(config))
    return tmp_path


def test_a_run_started_again_with_other_settings_is_refused(tmp_path):
    run_dir = frozen(tmp_path)
    run_state.check_same_config(run_dir, CONFIG)  # the same settings: resumes
    moved = {**CONFIG, "run": {"root": "elsewhere"}, "slurm": {"qos": "high"}}
    run_state.check_same_config(run_dir, moved)  # where and how it runs is not what it computes
    run_state.check_same_config(run_dir, {**CONFIG, "new_field": 1})  # a field another version added
    changed = {**CONFIG, "seed": 2, "algo": {"dpo": {"beta": 0.3}}}
    with pytest.raises(RunStateError) as err:
        run_state.check_same_config(run_dir, changed)
    message = str(err.value)
    assert "algo.dpo.beta: 0.1 -> 0.3" in message and "seed: 1 -> 2" in message
    assert f"alignlab resume {run_dir}" in message and "run.id=<new name>" in message


def test_an_edited_frozen_config_is_refused_on_resume(tmp_path):
    run_dir = frozen(tmp_path)
    run_state.check_frozen_unedited(run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**CONFIG, "seed": 7}))
    with pytest.raises(RunStateError, match=r"config\.yaml was edited or damaged after the run started"):
        run_state.check_frozen_unedited(run_dir)


def test_the_first_start_defines_the_run(tmp_path):
    run_dir = frozen(tmp_path)
    run_state.record_config(run_dir, yaml.safe_dump({**CONFIG, "seed": 9}))  # a later start rewrites nothing
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 1
    run_state.check_frozen_unedited(run_dir)


def test_a_second_process_cannot_take_a_held_lock(tmp_path):
    """Another process holding the lock as `locked` does (an exclusive flock, its identity in the file)."""
    code = (
        "import fcntl, json, os, socket, sys, time\n"
        "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "f.write(json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'since': 'now'})); f.flush()\n"
        "print('held', flush=True); time.sleep(30)\n"
    )
    lock = tmp_path / run_state.LOCK
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunStateError) as err, run_state.locked(tmp_path):
            pass
        assert f"pid {holder.pid} on" in str(err.value) and "cannot train twice at once" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with run_state.locked(tmp_path):  # the kernel dropped the dead holder's lock: taken over
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_note(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (tmp_path / run_state.LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    with run_state.locked(tmp_path):
        pass
    assert f"from pid {int(dead.stdout)}" in capsys.readouterr().out
    assert (tmp_path / run_state.LOCK).read_text() == ""  # released: the next start has nothing to take over


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_stops_training_before_the_step_is_saved(value):
    callback = FiniteLoss("dpo")
    state, control = SimpleNamespace(global_step=7), object()
    assert callback.on_log(None, state, control, logs={"loss": 0.5, "grad_norm": math.inf}) is control
    with pytest.raises(TrainingDiverged, match=r"stage 'dpo': the loss is no longer finite at step 7 \(loss="):
        callback.on_log(None, state, control, logs={"loss": value, "learning_rate": 1e-5})
