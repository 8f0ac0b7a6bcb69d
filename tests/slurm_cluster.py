"""A real single-node Slurm cluster for the tests: Debian's Slurm 22.05 (munged, slurmctld, slurmd) on this host.

Follows ../shared/recipes/local-slurm.md. The session fixture `slurm_cluster` starts whatever daemon is not already
running (a cluster someone started by hand is reused, not doubled), waits until the node takes jobs, and at the end
stops, by their pid files, the daemons these tests started, once no other test session on this machine still uses
them (every session holds a shared lock on USERS while it runs). It skips only when not root or when the Slurm
binaries are missing; CI installs them (.ci/run), so there it runs.

Use it from a test module with `from slurm_cluster import slurm_cluster` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PARTITION = "debug"
CONF = Path("/etc/slurm/slurm.conf")
MARK = "# Written by alignlab tests/slurm_cluster.py: a one-node test cluster."
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_PID = Path("/run/munge/munged.pid")
CTLD_PID = Path("/run/slurmctld.pid")
SLURMD_PID = Path("/run/slurmd.pid")
STARTING = Path("/run/alignlab-slurm-tests.starting.lock")  # held (briefly) while a session starts or stops daemons
USERS = Path("/run/alignlab-slurm-tests.users.lock")  # held shared by every session using the cluster
OWNER = Path("/run/alignlab-slurm-tests.owner")  # the pid files of the daemons these tests started, one a line
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}

# SlurmdParameters=config_overrides: the node offers at least 2 CPUs even on a 1-core runner, so that a 2-rank job
# fits (slower, not blocked). OverSubscribe=FORCE:4 lets jobs of concurrent test sessions share the cores rather
# than queue behind each other past the tests' timeouts.
CONF_TEXT = """{mark}
ClusterName=alignlab-test
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile={ctld_pid}
SlurmdPidFile={slurmd_pid}
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName={host} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def _ended(job: dict[str, str]) -> bool:
    return job.get("JobState") in FINAL_STATES


@dataclass(frozen=True)
class SlurmCluster:
    """What tests need to know about the running cluster, and how to watch their jobs."""

    node: str
    partition: str = PARTITION

    def records(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job` as dicts (JobState, Restarts, NumTasks, ...): one per array task, else one.
        slurmctld keeps an ended job's record for MinJobAge (300 s)."""
        out = _run(["scontrol", "show", "job", "-o", job_id]).stdout
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]

    def ended(self, job_id: str) -> bool:
        return all(_ended(r) for r in self.records(job_id))

    def wait(
        self, job_id: str, done: Callable[[dict[str, str]], bool] = _ended, timeout: float = 240, what: str = "ended"
    ) -> list[dict[str, str]]:
        """Poll until `done` holds for every record of the job; on timeout, fail with the last records."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records(job_id)
            if records and all(done(r) for r in records):
                return records
            if time.monotonic() > deadline:
                pytest.fail(f"Slurm job {job_id} not {what} after {timeout:.0f} s: {records}")
            time.sleep(1)


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _alive(pid_file: Path) -> bool:
    """Whether the pid file names a running process (a zombie, exited but not reaped, is not running)."""
    try:
        stat = Path(f"/proc/{int(pid_file.read_text().split()[0])}/stat").read_text()
    except (OSError, ValueError, IndexError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _write_conf(host: str) -> None:
    """Write slurm.conf, unless one that these tests did not write is there: that is someone's cluster."""
    if CONF.is_file() and not CONF.read_text().startswith(MARK):
        pytest.fail(
            f"{CONF} exists and was not written by these tests; start that cluster (slurmctld; slurmd) or "
            "move the file aside to let the tests start their own."
        )
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 8 // 10
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(
        CONF_TEXT.format(
            mark=MARK,
            host=host,
            cpus=max(os.cpu_count() or 1, 2),
            mem_mb=mem_mb,
            partition=PARTITION,
            ctld_pid=CTLD_PID,
            slurmd_pid=SLURMD_PID,
        )
    )


def _start_munged() -> None:
    if not MUNGE_KEY.is_file():  # the package normally creates it
        MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
    MUNGE_PID.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_PID.parent, "munge", "munge")
    _run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"])


def _start_missing_daemons(host: str) -> list[Path]:
    """Start each daemon whose pid file is not alive; returns the pid files of those started."""
    for folder in ("/var/spool/slurmctld", "/var/spool/slurmd", "/var/log/slurm"):
        Path(folder).mkdir(parents=True, exist_ok=True)
    started = [f for f in (MUNGE_PID, CTLD_PID, SLURMD_PID) if not _alive(f)]
    if MUNGE_PID in started:
        _start_munged()
    if CTLD_PID in started:
        _write_conf(host)
        _run(["slurmctld", "-c"])  # -c: no jobs left over from an earlier cluster on this machine
    if SLURMD_PID in started:
        _run(["slurmd"])
    return started


def _wait_ready(host: str, timeout: float = 60) -> None:
    """Until sinfo lists the node as able to take jobs; a down or drained node (e.g. after slurmd restarted) is
    resumed."""
    deadline = time.monotonic() + timeout
    state = "?"
    while time.monotonic() < deadline:
        proc = _run(["sinfo", "-h", "-p", PARTITION, "-n", host, "-o", "%T"], check=False)
        state = proc.stdout.strip() or proc.stderr.strip()
        if state.rstrip("*") in ("idle", "mixed", "allocated", "completing"):
            return
        if any(s in state for s in ("down", "drain", "fail")):
            _run(["scontrol", "update", f"nodename={host}", "state=resume"], check=False)
        time.sleep(1)
    pytest.fail(f"Slurm node {host} not ready after {timeout:.0f} s (sinfo: {state!r}); see /var/log/slurm/*.log")


def _stop(pid_file: Path, timeout: float = 30) -> None:
    if not _alive(pid_file):
        return
    pid = int(pid_file.read_text().split()[0])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid_file) and time.monotonic() < deadline:
        time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    if os.geteuid() != 0:
        pytest.skip("the Slurm tests start slurmctld/slurmd/munged and need root")
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(
            f"Slurm is not installed (missing {', '.join(missing)}); apt-get install slurmctld slurmd "
            "slurm-client munge"
        )
    host = socket.gethostname().split(".")[0]
    with _locked(USERS, fcntl.LOCK_SH):  # for as long as this session uses the cluster
        with _locked(STARTING, fcntl.LOCK_EX):
            with open(OWNER, "a", encoding="utf-8") as f:
                f.writelines(f"{pid_file}\n" for pid_file in _start_missing_daemons(host))
            _wait_ready(host)
        yield SlurmCluster(node=host)
    with _locked(STARTING, fcntl.LOCK_EX):
        _stop_if_unused()


@contextlib.contextmanager
def _locked(path: Path, how: int) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, how)
        yield


def _stop_if_unused() -> None:
    """Stop the daemons these tests started, unless another test session still uses them (the last one out does)."""
    try:
        with _locked(USERS, fcntl.LOCK_EX | fcntl.LOCK_NB):
            started = OWNER.read_text().split() if OWNER.is_file() else []
            for pid_file in (SLURMD_PID, CTLD_PID, MUNGE_PID):  # clients before the services they talk to
                if str(pid_file) in started:
                    _stop(pid_file)
            OWNER.unlink(missing_ok=True)
    except BlockingIOError:
        pass
