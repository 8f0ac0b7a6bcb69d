"""`alignlab slurm submit` and the sbatch templates in slurm/.

Fast: the rendered scripts, word for word; dry runs; sbatch missing or refusing (a fake `sbatch` on PATH); sweeps
frozen member by member before one array job; the scripts' signal forwarding and requeue, run by bash with a fake
alignlab and a fake scontrol. Slow, on a real one-node Slurm cluster (tests/slurm_cluster.py): a 2-rank job to
completion; a job signalled during DPO that checkpoints, requeues and ends with the loss of an uninterrupted run;
a sweep array whose tasks each run their own member. On a real two-node cluster (two slurmd on this host): a ZeRO-3
job with one rank per node, signalled, requeued and resumed, that gives the one-process run's losses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from omegaconf import DictConfig, OmegaConf

from alignlab import cli, pipeline, slurm
from alignlab.config import compose_config, validate

if TYPE_CHECKING:
    from slurm_cluster import SlurmCluster

pytest_plugins = ["slurm_cluster"]  # the `slurm_cluster` and `slurm_two_nodes` fixtures (tests/slurm_cluster.py)

TINY = ["experiment=tiny", "logger=none", "algo.sft.max_steps=2", "algo.dpo.max_steps=2"]


@pytest.fixture(autouse=True)
def one_thread_per_process(monkeypatch):
    """Jobs, ranks and reference runs share 2 cores: with torch's default of one thread per core each, they would
    oversubscribe them (a DPO step 30x slower). Submitted jobs inherit this environment (sbatch --export=ALL)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def compose(overrides: list[str]) -> DictConfig:
    return validate(compose_config(overrides))


def expected(text: str, **values: str) -> str:
    """A literal script with @PY@ (this Python), @CWD@ and other @NAME@ placeholders filled in."""
    text = textwrap.dedent(text).lstrip("\n").replace("@PY@", sys.executable)
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    return text


def fake_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rc: int = 0, out: str = "4242", err: str = "") -> Path:
    """Put an `sbatch` on PATH that records its arguments and answers as told; returns the record file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "sbatch-calls.txt"
    script = bin_dir / "sbatch"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "{out}"\necho "{err}" >&2\nexit {rc}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


# --------------------------------------------------------------------------------------------- rendering
SINGLE_NODE = """
    #!/usr/bin/env bash
    # One alignlab run as a Slurm job on one node, 2 ranks. Rendered by:
    #   alignlab slurm submit experiment=tiny distributed=ddp launcher.nproc_per_node=2
    # Run directory (frozen config.yaml, this script as job.sbatch, the job log slurm-<job id>.out):
    #   /runs/tiny/abc
    # Submitting this script again resumes the run where it stopped.
    #SBATCH --nodes=1
    #SBATCH --ntasks-per-node=2
    #SBATCH --output=/runs/tiny/abc/slurm-%j.out
    #SBATCH --job-name=alignlab-tiny
    #SBATCH --partition=debug
    #SBATCH --time=00:30:00
    #SBATCH --cpus-per-task=1
    #SBATCH --mem=4G
    #SBATCH --chdir=@CWD@
    #SBATCH --open-mode=append
    #SBATCH --signal=B:USR1@60
    #SBATCH --requeue

    # No `set -e`: alignlab's exit code decides what happens next.
    RUN_DIR=/runs/tiny/abc
    echo "alignlab: job ${SLURM_JOB_ID} on $(hostname), restart ${SLURM_RESTART_COUNT:-0}, run $RUN_DIR"

    # The alignlab of the Python that submitted the job (not PATH's), unless $ALIGNLAB names another command.
    ALIGNLAB=${ALIGNLAB:-@PY@ -m alignlab.cli}
    echo "alignlab: $ALIGNLAB resume $RUN_DIR"

    # alignlab runs in the background so that this shell can pass signals on to it: SIGUSR1 (from Slurm, --signal
    # above, before the time limit) or SIGTERM (preemption) makes it save a checkpoint and exit 75. A trapped signal
    # ends `wait` early, hence the loop; the last `wait` gives alignlab's exit code.
    pid=
    trap 'kill -USR1 "$pid" 2>/dev/null' USR1
    trap 'kill -TERM "$pid" 2>/dev/null' TERM
    $ALIGNLAB resume "$RUN_DIR" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
    wait "$pid"
    rc=$?
    if [ "$rc" -eq 75 ]; then
      echo "alignlab: job ${SLURM_JOB_ID} stopped with a checkpoint (exit 75)"
      echo "alignlab: requeueing job ${SLURM_JOB_ID}; it will resume $RUN_DIR"
      scontrol requeue "$SLURM_JOB_ID" && exit 0
      echo "alignlab: resume it with: sbatch /runs/tiny/abc/job.sbatch"
    fi
    echo "alignlab: job ${SLURM_JOB_ID} ended with exit code $rc"
    exit "$rc"
"""


def test_single_node_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = ["experiment=tiny", "distributed=ddp", "launcher.nproc_per_node=2"]
    cfg = compose(
        [
            *overrides,
            "slurm.partition=debug",
            "slurm.cpus_per_task=1",
            "slurm.mem=4G",
            "slurm.time=00:30:00",
            "slurm.signal_seconds=60",
        ]
    )
    text = slurm.render(cfg, Path("/runs/tiny/abc"), slurm.submit_command(overrides))
    assert text == expected(SINGLE_NODE, CWD=str(tmp_path))


# The README's example: 2 nodes x 8 GPUs, ZeRO-3. Hydra needs the quotes around END,FAIL (else a list or a sweep)
# and around --constraint=a100 (an unquoted '=' inside a list does not parse).
README = [
    "experiment=tiny",
    "distributed=zero3",
    "launcher.nnodes=2",
    "launcher.nproc_per_node=8",
    "slurm.gpus_per_node=8",
    "slurm.partition=gpu",
    "slurm.account=lab",
    "slurm.time=2-00:00:00",
    "slurm.qos=high",
    "slurm.mail_user=a@b.c",
    "slurm.mail_type='END,FAIL'",
    'slurm.extra=["--constraint=a100"]',
    "run.root=runs",
    "run.id=readme",
]
MULTI_NODE = """
    #!/usr/bin/env bash
    # One alignlab run as a Slurm job on 2 nodes x 8 ranks. Rendered by:
    #   alignlab slurm submit experiment=tiny distributed=zero3 launcher.nnodes=2 launcher.nproc_per_node=8 slurm.gpus_per_node=8 slurm.partition=gpu slurm.account=lab slurm.time=2-00:00:00 slurm.qos=high slurm.mail_user=a@b.c "slurm.mail_type='END,FAIL'" 'slurm.extra=["--constraint=a100"]' run.root=runs run.id=readme
    # Run directory (frozen config.yaml, this script as job.sbatch, the job log slurm-<job id>.out), on a file system
    # that every node sees:
    #   @CWD@/runs/tiny/readme
    # Submitting this script again resumes the run where it stopped.
    # This script runs on the first node; `alignlab resume` starts one srun task per rank on all nodes.
    #SBATCH --nodes=2
    #SBATCH --ntasks-per-node=8
    #SBATCH --output=@CWD@/runs/tiny/readme/slurm-%j.out
    #SBATCH --job-name=alignlab-tiny
    #SBATCH --partition=gpu
    #SBATCH --account=lab
    #SBATCH --qos=high
    #SBATCH --time=2-00:00:00
    #SBATCH --gpus-per-node=8
    #SBATCH --mail-user=a@b.c
    #SBATCH --mail-type=END,FAIL
    #SBATCH --chdir=@CWD@
    #SBATCH --open-mode=append
    #SBATCH --signal=B:USR1@300
    #SBATCH --requeue
    #SBATCH --constraint=a100

    # No `set -e`: alignlab's exit code decides what happens next.
    RUN_DIR=@CWD@/runs/tiny/readme
    # The ranks rendezvous on the first node of the allocation, at its Slurm NodeAddr: alignlab looks it up and
    # passes it to srun as MASTER_ADDR (its "starting N ranks: srun ..." line shows it).
    echo "alignlab: nodes ${SLURM_JOB_NODELIST}"
    echo "alignlab: job ${SLURM_JOB_ID} on $(hostname), restart ${SLURM_RESTART_COUNT:-0}, run $RUN_DIR"

    # The alignlab of the Python that submitted the job (not PATH's), unless $ALIGNLAB names another command.
    ALIGNLAB=${ALIGNLAB:-@PY@ -m alignlab.cli}
    echo "alignlab: $ALIGNLAB resume $RUN_DIR"

    # alignlab runs in the background so that this shell can pass signals on to it: SIGUSR1 (from Slurm, --signal
    # above, before the time limit) or SIGTERM (preemption) makes it save a checkpoint and exit 75. A trapped signal
    # ends `wait` early, hence the loop; the last `wait` gives alignlab's exit code.
    pid=
    trap 'kill -USR1 "$pid" 2>/dev/null' USR1
    trap 'kill -TERM "$pid" 2>/dev/null' TERM
    $ALIGNLAB resume "$RUN_DIR" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
    wait "$pid"
    rc=$?
    if [ "$rc" -eq 75 ]; then
      echo "alignlab: job ${SLURM_JOB_ID} stopped with a checkpoint (exit 75)"
      echo "alignlab: requeueing job ${SLURM_JOB_ID}; it will resume $RUN_DIR"
      scontrol requeue "$SLURM_JOB_ID" && exit 0
      echo "alignlab: resume it with: sbatch @CWD@/runs/tiny/readme/job.sbatch"
    fi
    echo "alignlab: job ${SLURM_JOB_ID} ended with exit code $rc"
    exit "$rc"
"""  # noqa: E501 (the command line in the header)


def test_dry_run_prints_the_multi_node_script_and_creates_nothing(tmp_path, monkeypatch, capsys, cache_dir):
    monkeypatch.chdir(tmp_path)
    calls = fake_sbatch(tmp_path, monkeypatch)
    assert cli.main(["slurm", "submit", "--dry-run", *README]) == 0
    assert capsys.readouterr().out == expected(MULTI_NODE, CWD=str(tmp_path))
    assert not calls.exists() and not (tmp_path / "runs").exists()


SWEEP_ARRAY = """
    #!/usr/bin/env bash
    # A sweep of 4 alignlab runs as one Slurm array job: task i runs the i-th run directory of
    # MEMBERS below (also listed in /sweeps/tiny/t/members.txt).
    # Rendered by:
    #   alignlab slurm submit -m experiment=tiny algo.dpo.beta=0.1,0.2 seed=1,2
    # Each task's log is slurm-<array job id>_<task>.out in that folder, linked from the task's run directory.
    # Submitting this script again resumes every member (finished ones skip their stages).
    #SBATCH --array=0-3%2
    #SBATCH --nodes=1
    #SBATCH --ntasks-per-node=1
    #SBATCH --output=/sweeps/tiny/t/slurm-%A_%a.out
    #SBATCH --job-name=ablation
    #SBATCH --time=04:00:00
    #SBATCH --chdir=@CWD@
    #SBATCH --open-mode=append
    #SBATCH --signal=B:USR1@300
    #SBATCH --no-requeue

    # No `set -e`: alignlab's exit code decides what happens next.
    SWEEP_DIR=/sweeps/tiny/t
    MEMBERS=(
      /runs/tiny/a
      /runs/tiny/b
      '/runs/tiny/with space'
      /runs/tiny/d
    )
    RUN_DIR=${MEMBERS[$SLURM_ARRAY_TASK_ID]}
    if [ -z "$RUN_DIR" ]; then
      echo "alignlab: array task ${SLURM_ARRAY_TASK_ID} has no member (the sweep has ${#MEMBERS[@]})" >&2
      exit 2
    fi
    ln -sf "$SWEEP_DIR/slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.out" "$RUN_DIR/"
    echo "alignlab: job ${SLURM_JOB_ID} on $(hostname), restart ${SLURM_RESTART_COUNT:-0}, run $RUN_DIR"

    # slurm.setup
    module load cuda
    export HF_HOME=/scratch/hf

    # The alignlab of the Python that submitted the job (not PATH's), unless $ALIGNLAB names another command.
    ALIGNLAB=${ALIGNLAB:-@PY@ -m alignlab.cli}
    echo "alignlab: $ALIGNLAB resume $RUN_DIR"

    # alignlab runs in the background so that this shell can pass signals on to it: SIGUSR1 (from Slurm, --signal
    # above, before the time limit) or SIGTERM (preemption) makes it save a checkpoint and exit 75. A trapped signal
    # ends `wait` early, hence the loop; the last `wait` gives alignlab's exit code.
    pid=
    trap 'kill -USR1 "$pid" 2>/dev/null' USR1
    trap 'kill -TERM "$pid" 2>/dev/null' TERM
    $ALIGNLAB resume "$RUN_DIR" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
    wait "$pid"
    rc=$?
    if [ "$rc" -eq 75 ]; then
      echo "alignlab: job ${SLURM_JOB_ID} stopped with a checkpoint (exit 75)"
      echo "alignlab: resume it with: sbatch /sweeps/tiny/t/job.sbatch"
    fi
    echo "alignlab: job ${SLURM_JOB_ID} ended with exit code $rc"
    exit "$rc"
"""


def test_sweep_array_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose(
        [
            "experiment=tiny",
            "slurm.requeue=false",
            "slurm.array_parallel=2",
            "slurm.job_name=ablation",
            'slurm.setup=["module load cuda","export HF_HOME=/scratch/hf"]',
        ]
    )
    command = slurm.submit_command(["experiment=tiny", "algo.dpo.beta=0.1,0.2", "seed=1,2"], multirun=True)
    members = [Path(f"/runs/tiny/{m}") for m in ("a", "b", "with space", "d")]
    text = slurm.render_array(cfg, Path("/sweeps/tiny/t/members.txt"), members, command)
    assert text == expected(SWEEP_ARRAY, CWD=str(tmp_path))


def test_sweep_dry_run_prints_the_array_script_and_creates_nothing(tmp_path, monkeypatch, capsys, cache_dir):
    monkeypatch.chdir(tmp_path)
    calls = fake_sbatch(tmp_path, monkeypatch)
    assert cli.main(["slurm", "submit", "--dry-run", "-m", *TINY, "algo.dpo.beta=0.1,0.2"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("#!/usr/bin/env bash\n# A sweep of 2 alignlab runs") and "#SBATCH --array=0-1\n" in out
    assert err.count(f"#   {tmp_path / 'runs' / 'tiny'}/") == 2
    assert not calls.exists() and not (tmp_path / "runs").exists()
    # complete as printed: the members' run directories are in the script, not in a members.txt it never wrote
    listed = out.split("MEMBERS=(\n", 1)[1].split("\n)\n", 1)[0].split()
    assert len(listed) == 2 and all(m.startswith(str(tmp_path / "runs" / "tiny")) for m in listed)


def test_expand_sweep_is_hydras_basic_sweeper():
    assert slurm.expand_sweep(["experiment=tiny", "algo.dpo.beta=0.1,0.2", "seed=range(2)"]) == [
        ["experiment=tiny", "algo.dpo.beta=0.1", "seed=0"],
        ["experiment=tiny", "algo.dpo.beta=0.1", "seed=1"],
        ["experiment=tiny", "algo.dpo.beta=0.2", "seed=0"],
        ["experiment=tiny", "algo.dpo.beta=0.2", "seed=1"],
    ]


def test_an_extra_option_must_look_like_one(capsys):
    assert cli.main(["slurm", "submit", "--dry-run", "experiment=tiny", "slurm.extra=[constraint]"]) == 2
    assert "slurm.extra[0]" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- the script's signals
FAKE_ALIGNLAB = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def stop(signum, frame):
    out.write_text(f"{signal.Signals(signum).name} {' '.join(sys.argv[2:])}")
    sys.exit(75)
signal.signal(signal.SIGUSR1, stop)
signal.signal(signal.SIGTERM, stop)
out.write_text("ready")
time.sleep(30)
"""


@pytest.mark.parametrize(("requeue", "sig", "rc"), [(True, signal.SIGUSR1, 0), (False, signal.SIGTERM, 75)])
def test_script_forwards_the_signal_and_requeues_on_exit_75(tmp_path, monkeypatch, requeue, sig, rc):
    """Run the rendered script with bash, as slurmd would, with a fake alignlab (exits 75 on a signal) and a fake
    scontrol; signal the shell only (what `--signal=B:USR1` and `scancel --batch` do)."""
    fake, said = tmp_path / "fake_alignlab.py", tmp_path / "fake_alignlab.out"
    fake.write_text(FAKE_ALIGNLAB)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/scontrol.txt\n')
    (bin_dir / "scontrol").chmod(0o755)
    cfg = compose(["experiment=tiny", f"slurm.requeue={str(requeue).lower()}"])
    script = tmp_path / "job.sbatch"
    script.write_text(slurm.render(cfg, tmp_path / "run", "alignlab slurm submit experiment=tiny"))
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "77",
        "ALIGNLAB": f"{sys.executable} {fake} {said}",
    }
    proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (said.is_file() and said.read_text() == "ready") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert said.read_text() == f"{sig.name} resume {tmp_path / 'run'}"
    assert proc.returncode == rc, out
    assert "job 77 stopped with a checkpoint (exit 75)" in out
    if requeue:
        assert (tmp_path / "scontrol.txt").read_text() == "requeue 77\n"
        assert "requeueing job 77" in out
    else:
        assert not (tmp_path / "scontrol.txt").exists()
        assert f"resume it with: sbatch {tmp_path / 'run' / 'job.sbatch'}" in out


# ------------------------------------------------------------------------------------------ submission
def test_submit_freezes_the_run_writes_the_script_and_calls_sbatch(tmp_path, monkeypatch, capsys, cache_dir):
    monkeypatch.chdir(tmp_path)
    calls = fake_sbatch(tmp_path, monkeypatch, out="4242;cluster")
    assert cli.main(["slurm", "submit", *TINY, "run.id=a"]) == 0
    run = tmp_path / "runs" / "tiny" / "a"
    assert (run / "config.yaml").is_file()
    assert calls.read_text() == f"--parsable {run / 'job.sbatch'}\n"
    cfg = compose([*TINY, "run.id=a"])
    assert (run / "job.sbatch").read_text() == slurm.render(cfg, run, slurm.submit_command([*TINY, "run.id=a"]))
    out = capsys.readouterr().out
    assert f"Submitted Slurm job 4242: run {run}" in out and f"log: {run}/slurm-4242.out" in out


def test_sbatch_missing_is_a_clear_error(tmp_path, monkeypatch, capsys, cache_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cli.main(["slurm", "submit", *TINY, "run.id=a"]) == 2
    err = capsys.readouterr().err
    assert "`sbatch` is not on PATH" in err and str(tmp_path / "runs/tiny/a/job.sbatch") in err
    assert "--dry-run" in err and "nothing was written" in err
    assert not (tmp_path / "runs").exists()  # a failed submission leaves no frozen run folder behind


def test_sbatch_refusal_shows_its_message(tmp_path, monkeypatch, capsys, cache_dir):
    monkeypatch.chdir(tmp_path)
    fake_sbatch(tmp_path, monkeypatch, rc=1, out="", err="sbatch: error: invalid partition specified: nope")
    assert cli.main(["slurm", "submit", *TINY, "run.id=a", "slurm.partition=nope"]) == 2
    err = capsys.readouterr().err
    assert "sbatch refused" in err and "(exit code 1)" in err and "invalid partition specified: nope" in err
    assert not (tmp_path / "runs" / "tiny" / "a").exists()  # the run folder it created is gone again
    assert cli.main(["slurm", "submit", "-m", *TINY, "algo.dpo.beta=0.1,0.2", "slurm.partition=nope"]) == 2
    assert not any((tmp_path / "runs").rglob("config.yaml"))  # nor do a sweep's members or its folder stay
    assert not any((tmp_path / "runs").rglob("manifest.json"))


def test_a_finished_run_is_not_submitted_again(tmp_path, monkeypatch, capsys, cache_dir):
    """slurm.* is not part of the run's id: the same settings on a GPU partition name the finished CPU run."""
    monkeypatch.chdir(tmp_path)
    calls = fake_sbatch(tmp_path, monkeypatch)
    run = pipeline.run_dir_of(compose([*TINY, "run.id=done"])).resolve()
    (run / "sft").mkdir(parents=True)
    (run / "dpo").mkdir()
    for stage in ("sft", "dpo"):
        (run / stage / "DONE").write_text("x")
    assert cli.main(["slurm", "submit", *TINY, "run.id=done", "slurm.partition=gpu"]) == 2
    err = capsys.readouterr().err
    assert f"run {run} has finished every stage" in err and "run.id=<new name>" in err and not calls.exists()


def test_an_unfinished_run_moves_to_new_resources_only_when_asked(tmp_path, monkeypatch, capsys, cache_dir):
    """slurm.* and launcher.* name the same run: changing them on an unfinished one is refused with the three ways
    on (resume as it was, --force, a new run.id); --force writes them into the frozen config its job resumes from,
    the rest of that file unchanged; a dry run with --force writes nothing."""
    monkeypatch.chdir(tmp_path)
    calls = fake_sbatch(tmp_path, monkeypatch)
    assert cli.main(["slurm", "submit", *TINY, "run.id=r"]) == 0
    run = tmp_path / "runs" / "tiny" / "r"
    (run / "sft").mkdir()
    (run / "sft" / "DONE").write_text("x")
    frozen = (run / "config.yaml").read_text()
    moved = [*TINY, "run.id=r", "slurm.partition=gpu", "slurm.mem=64G"]
    capsys.readouterr()
    assert cli.main(["slurm", "submit", *moved]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "runs/tiny/r' exists, unfinished (done: sft)" in err and "slurm.partition: None -> 'gpu'" in err
    assert "`alignlab resume " in err and "--force" in err and "run.id=<new name>" in err
    assert (run / "config.yaml").read_text() == frozen and calls.read_text().count("\n") == 1
    assert cli.main(["slurm", "submit", "--dry-run", "--force", *moved]) == 0
    assert (run / "config.yaml").read_text() == frozen  # a dry run adopts nothing
    assert cli.main(["run", *moved]) == 2  # `alignlab run` refuses the same way
    assert "exists, unfinished" in capsys.readouterr().err
    assert cli.main(["slurm", "submit", "--force", *moved]) == 0
    after = pipeline.load_frozen(run)  # its digest was rewritten with it: the job's resume accepts it
    assert after.slurm.partition == "gpu" and after.slurm.mem == "64G"
    assert OmegaConf.to_container(after.algo) == OmegaConf.to_container(OmegaConf.create(frozen).algo)
    assert calls.read_text().count("\n") == 2 and "continues on new resources" in capsys.readouterr().out
    assert cli.main(["slurm", "submit", "--dry-run", *moved]) == 0  # now the same resources: nothing to refuse
    for command in (["slurm", "submit"], ["run"]):  # a sweep's members are many runs: --force is for one
        assert cli.main([*command, "-m", "--force", *TINY, "algo.dpo.beta=0.1,0.2"]) == 2
        assert "--force" in capsys.readouterr().err


def test_sweep_freezes_every_member_then_submits_one_array(tmp_path, monkeypatch, capsys, cache_dir):
    monkeypatch.chdir(tmp_path)
    calls = fake_sbatch(tmp_path, monkeypatch)
    assert cli.main(["slurm", "submit", "-m", *TINY, "algo.dpo.beta=0.1,0.2"]) == 0
    (sweep_dir,) = (tmp_path / "runs" / "sweeps" / "tiny").iterdir()
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    members = (sweep_dir / "members.txt").read_text().splitlines()
    assert manifest["job_id"] == "4242" and len(members) == 2
    assert [m["run_dir"] for m in manifest["members"]] == members
    assert [m["overrides"][-1] for m in manifest["members"]] == ["algo.dpo.beta=0.1", "algo.dpo.beta=0.2"]
    for run in members:
        assert f"group: {manifest['sweep']}\n" in (Path(run) / "config.yaml").read_text()
    assert "#SBATCH --array=0-1\n" in (sweep_dir / "job.sbatch").read_text()
    assert calls.read_text() == f"--parsable {sweep_dir / 'job.sbatch'}\n"
    assert f"Submitted Slurm array job 4242 (2 members, W&B group {manifest['sweep']})" in capsys.readouterr().out


def test_a_bad_sweep_member_fails_before_anything_is_written_or_submitted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    calls = fake_sbatch(tmp_path, monkeypatch)
    assert cli.main(["slurm", "submit", "-m", *TINY, "algo.dpo.beta=0.1,-1"]) == 2
    assert "algo.dpo.beta" in capsys.readouterr().err
    assert not calls.exists() and not (tmp_path / "runs").exists()


def test_sweep_members_share_one_set_of_sbatch_options(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["slurm", "submit", "-m", *TINY, "slurm.time=01:00:00,02:00:00"]) == 2
    assert "Config error at 'slurm'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------ on a real cluster
def submit(*overrides: str) -> tuple[str, Path]:
    """Submit in this process (the job inherits this environment: cache, offline W&B); returns job id and run dir."""
    job_id = slurm.submit(list(overrides))
    assert job_id is not None
    return job_id, pipeline.run_dir_of(compose(list(overrides))).resolve()


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.slow
def test_two_rank_job_runs_to_completion(slurm_cluster: SlurmCluster, tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALIGNLAB", raising=False)  # the script's own default: this Python's alignlab
    job_id, run = submit(
        *TINY,
        f"run.root={tmp_path / 'runs'}",
        "distributed=ddp",
        "launcher.nproc_per_node=2",
        f"slurm.partition={slurm_cluster.partition}",
        "slurm.time=00:10:00",
    )
    (job,) = slurm_cluster.wait(job_id, timeout=170)
    log = _read(run / f"slurm-{job_id}.out")
    assert job["JobState"] == "COMPLETED" and job["NumTasks"] == "2", log[-3000:]
    assert (run / "sft" / "DONE").is_file() and (run / "dpo" / "DONE").is_file()
    assert f"alignlab: job {job_id} on {slurm_cluster.host}, restart 0, run {run}" in log
    assert "starting 2 ranks: srun" in log
    assert "memory/rank1/peak_rss_mib" in json.loads((run / "dpo" / "metrics.json").read_text())


def requeued_once(job: dict[str, str]) -> bool:
    return job.get("Restarts") == "1" and job.get("JobState") == "PENDING"


DPO_STEPS = 240  # long enough (~20 s on one core) to signal the job in the middle of DPO


@pytest.mark.slow
def test_preempted_job_requeues_and_ends_like_an_uninterrupted_run(
    slurm_cluster: SlurmCluster, tmp_path, monkeypatch, cache_dir
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALIGNLAB", raising=False)
    common = [
        "experiment=tiny",
        "logger=wandb",
        "logger.mode=offline",
        "algo.sft.max_steps=2",
        f"algo.dpo.max_steps={DPO_STEPS}",
        "algo.dpo.save_steps=100000",
    ]
    reference_cmd = [sys.executable, "-m", "alignlab.cli", "run", *common, f"run.root={tmp_path / 'ref'}"]
    with open(tmp_path / "reference.log", "w") as ref_log:  # the same run, never interrupted, on the other core
        reference = subprocess.Popen(reference_cmd, stdout=ref_log, stderr=subprocess.STDOUT)
    job_id, run = submit(
        *common, f"run.root={tmp_path / 'job'}", f"slurm.partition={slurm_cluster.partition}", "slurm.time=00:10:00"
    )
    progress = re.compile(rf"(\d+)/{DPO_STEPS} \[")
    deadline = time.monotonic() + 120
    while max(map(int, progress.findall(_read(run / f"slurm-{job_id}.out"))), default=0) < 10:
        running = time.monotonic() < deadline and not slurm_cluster.ended(job_id)
        assert running, _read(run / f"slurm-{job_id}.out")[-3000:]
        time.sleep(0.5)
    wandb_id = (run / "wandb_id").read_text()
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    slurm_cluster.wait(job_id, requeued_once, timeout=60, what="requeued")
    # Slurm holds a requeued job back for about 2 minutes (its BeginTime); release it sooner, as an admin could,
    # but not within the same few seconds: slurmd revokes the first launch's credential with one-second resolution
    # and kills a relaunch in that second as "Job credential revoked" (seen in CI with StartTime=now).
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now+5"], check=True)
    (job,) = slurm_cluster.wait(job_id, timeout=150)
    log = _read(run / f"slurm-{job_id}.out")
    assert job["JobState"] == "COMPLETED", f"{job}\n{log[-4000:]}"
    assert f"alignlab: requeueing job {job_id}; it will resume {run}" in log
    assert f"alignlab: job {job_id} on {slurm_cluster.host}, restart 1, run {run}" in log
    assert re.search(r"dpo: resuming from checkpoint-\d+", log), log[-4000:]
    assert (run / "wandb_id").read_text() == wandb_id
    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    assert sum("resume" in a["command"] for a in attempts) == 2
    assert reference.wait(timeout=120) == 0, _read(tmp_path / "reference.log")[-3000:]
    (ref_run,) = (tmp_path / "ref" / "tiny").iterdir()
    loss = json.loads((run / "dpo" / "metrics.json").read_text())["final_step_loss"]
    assert loss == pytest.approx(
        json.loads((ref_run / "dpo" / "metrics.json").read_text())["final_step_loss"], rel=1e-6
    )


@pytest.mark.slow
def test_sweep_array_runs_each_member_in_its_own_task(slurm_cluster: SlurmCluster, tmp_path, monkeypatch, cache_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALIGNLAB", raising=False)
    job_id = slurm.submit(
        [
            *TINY,
            f"run.root={tmp_path / 'runs'}",
            f"slurm.partition={slurm_cluster.partition}",
            "slurm.time=00:10:00",
            "algo.dpo.beta=0.1,0.2",
        ],
        multirun=True,
    )
    assert job_id is not None
    records = slurm_cluster.wait(job_id, timeout=170)
    (sweep_dir,) = (tmp_path / "runs" / "sweeps" / "tiny").iterdir()
    members = (sweep_dir / "members.txt").read_text().splitlines()
    assert [r["JobState"] for r in records] == ["COMPLETED", "COMPLETED"], records
    for task, run in enumerate(members):
        log = _read(Path(run) / f"slurm-{job_id}_{task}.out")  # the link to the sweep folder's log
        assert f"restart 0, run {run}\n" in log
        assert (Path(run) / "dpo" / "DONE").is_file()


PER_RANK = ["algo.sft.batch_size=4", "algo.dpo.batch_size=4"]  # 2 ranks x 4 = the one process's 8


def losses(run: Path, stage: str) -> list[float]:
    """Every logged step's training loss (a resumed stage keeps the steps before its checkpoint in its history)."""
    return [h["loss"] for h in json.loads((run / stage / "log_history.json").read_text()) if "loss" in h]


@pytest.mark.slow
def test_two_node_zero3_job_requeues_and_gives_the_one_process_losses(
    slurm_two_nodes: SlurmCluster, tmp_path, monkeypatch, cache_dir
):
    """`alignlab slurm submit launcher.nnodes=2` on two Slurm nodes (two slurmd on this host): one ZeRO-3 rank per
    node, rendezvousing at the first node's NodeAddr as on two machines. SIGUSR1 mid-DPO requeues the job, which
    resumes on both nodes and ends with every step's loss of one process run with the same global batch (2 x 4 = 8),
    to the 2-rank tests' tolerance (test_distributed.py)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALIGNLAB", raising=False)
    monkeypatch.setenv("SLURM_CONF", str(slurm_two_nodes.conf))  # sbatch, scancel, scontrol; the job inherits it
    common = [
        "experiment=tiny",
        "logger=none",
        "algo.sft.max_steps=4",
        f"algo.dpo.max_steps={DPO_STEPS}",
        "algo.dpo.save_steps=100000",
    ]
    reference_cmd = [sys.executable, "-m", "alignlab.cli", "run", *common, f"run.root={tmp_path / 'ref'}"]
    with open(tmp_path / "reference.log", "w") as ref_log:  # the same run in one process, never interrupted
        reference = subprocess.Popen(reference_cmd, stdout=ref_log, stderr=subprocess.STDOUT)
    job_id, run = submit(
        *common,
        *PER_RANK,
        "distributed=zero3",
        "launcher.nnodes=2",
        "launcher.nproc_per_node=1",
        f"run.root={tmp_path / 'job'}",
        f"slurm.partition={slurm_two_nodes.partition}",
        "slurm.time=00:15:00",
    )
    out = run / f"slurm-{job_id}.out"
    progress = re.compile(rf"(\d+)/{DPO_STEPS} \[")
    deadline = time.monotonic() + 300  # a fresh machine first compiles DeepSpeed's CPU op (~40 s)
    while max(map(int, progress.findall(_read(out))), default=0) < 10:
        assert time.monotonic() < deadline and not slurm_two_nodes.ended(job_id), _read(out)[-3000:]
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    slurm_two_nodes.wait(job_id, requeued_once, timeout=120, what="requeued")
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now+5"], check=True)  # as in the test above
    (job,) = slurm_two_nodes.wait(job_id, timeout=300)
    log = _read(out)
    assert job["JobState"] == "COMPLETED", f"{job}\n{log[-4000:]}"
    assert job["NumNodes"] == "2" and job["NodeList"] == "n[1-2]" and job["NumTasks"] == "2", job
    srun = "starting 2 ranks: srun --nodes=2 --relative=0 --ntasks=2 --ntasks-per-node=1"
    assert log.count(srun) == 2 and log.count("--export=ALL,MASTER_ADDR=127.0.0.1 ") == 2, log[-4000:]  # NodeAddr
    assert f"alignlab: requeueing job {job_id}; it will resume {run}" in log
    assert f"alignlab: job {job_id} on {slurm_two_nodes.host}, restart 1, run {run}" in log
    assert re.search(r"dpo: resuming from checkpoint-\d+", log), log[-4000:]
    assert reference.wait(timeout=300) == 0, _read(tmp_path / "reference.log")[-3000:]
    (ref_run,) = (tmp_path / "ref" / "tiny").iterdir()
    for stage, steps in (("sft", 4), ("dpo", DPO_STEPS)):
        expected = losses(ref_run, stage)
        print(f"\n{stage} losses, one process: {expected[:3]} ... {expected[-3:]}")
        print(f"{stage} losses, 2 nodes:     {losses(run, stage)[:3]} ... {losses(run, stage)[-3:]}")
        assert len(expected) == steps
        assert losses(run, stage) == pytest.approx(expected, rel=1e-4), stage
