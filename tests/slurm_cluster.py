"""Real Slurm clusters for the tests: Debian's Slurm 22.05 (munged, slurmctld, slurmd) on this host.

Follows ../shared/recipes/local-slurm.md. Two session fixtures, each a cluster of its own:

- `slurm_cluster`: one node named after this host, in Slurm's default places (/etc/slurm/slurm.conf, ports 6817-6818),
  so that plain `sinfo` and submitit's `sbatch` see it.
- `slurm_two_nodes`: two nodes, n1 and n2, on this one host: Slurm's "multiple slurmd" set-up (one slurmd per node,
  `slurmd -N n1` / `-N n2`, each with its own port, spool folder and pid file, all reached at NodeAddr=127.0.0.1),
  which Debian's build runs although it is not configured with --enable-multiple-slurmd. Its own config file
  (commands reach it with SLURM_CONF=<SlurmCluster.conf>), ports (6827-6829) and state, so it runs beside the first.
  Its job ids start at 10000, so that its jobs' rendezvous ports (20000 + job id % 20000, launch.py) differ from the
  one-node cluster's on this shared host.

Each fixture starts whatever daemon of its cluster is not already running (a cluster someone started by hand is
reused, not doubled), waits until the nodes take jobs, and at the end stops, by their pid files, the daemons these
tests started, once no other test session on this machine still uses either cluster (every session holds a shared
lock on USERS while it runs). It skips only when not root or when the Slurm binaries are missing; CI installs them
(.ci/run), so there it runs.

Use them from a test module with `pytest_plugins = ["slurm_cluster"]` (pytest puts tests/ on sys.path).
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

MARK = "# Written by alignlab tests/slurm_cluster.py:"  # a config file that starts otherwise is someone else's
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_PID = Path("/run/munge/munged.pid")
STARTING = Path("/run/alignlab-slurm-tests.starting.lock")  # held (briefly) while a session starts or stops daemons
USERS = Path("/run/alignlab-slurm-tests.users.lock")  # held shared by every session using a cluster
OWNER = Path("/run/alignlab-slurm-tests.owner")  # the pid files of the daemons these tests started, one a line
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@dataclass(frozen=True)
class Layout:
    """Where one test cluster keeps its config, state, logs and pid files, and which nodes it has. `%n` in a path is
    the node's name (Slurm expands it), so that the slurmds of several nodes on one host keep apart."""

    description: str
    cluster: str
    conf: Path
    ctld_port: int
    slurmd_port: int  # the first node's; the next node listens on the next port
    nodes: tuple[str, ...] | None  # None: one node named after this host
    partition: str
    first_job_id: int
    ctld_pid: Path
    slurmd_pid: str
    state_dir: Path
    spool_dir: str
    ctld_log: Path
    slurmd_log: str

    def node_names(self, host: str) -> tuple[str, ...]:
        return self.nodes or (host,)

    def slurmd_pids(self, host: str) -> list[Path]:
        return [Path(self.slurmd_pid.replace("%n", node)) for node in self.node_names(host)]

    def node_line(self, host: str) -> str:
        if self.nodes is None:
            return f"NodeName={host} Port={self.slurmd_port}"
        ports = f"[{self.slurmd_port}-{self.slurmd_port + len(self.nodes) - 1}]"
        return f"NodeName={','.join(self.nodes)} NodeHostname={host} NodeAddr=127.0.0.1 Port={ports}"


ONE_NODE = Layout(
    description="a one-node test cluster.",
    cluster="alignlab-test",
    conf=Path("/etc/slurm/slurm.conf"),
    ctld_port=6817,
    slurmd_port=6818,
    nodes=None,
    partition="debug",
    first_job_id=1,
    ctld_pid=Path("/run/slurmctld.pid"),
    slurmd_pid="/run/slurmd.pid",
    state_dir=Path("/var/spool/slurmctld"),
    spool_dir="/var/spool/slurmd",
    ctld_log=Path("/var/log/slurm/slurmctld.log"),
    slurmd_log="/var/log/slurm/slurmd.log",
)
TWO_NODES = Layout(
    description="a two-node test cluster on one host (slurmd -N n1, slurmd -N n2).",
    cluster="alignlab-test-2n",
    conf=Path("/etc/slurm/alignlab-two-nodes.conf"),
    ctld_port=6827,
    slurmd_port=6828,
    nodes=("n1", "n2"),
    partition="two",
    first_job_id=10000,
    ctld_pid=Path("/run/slurmctld-two-nodes.pid"),
    slurmd_pid="/run/slurmd-two-nodes-%n.pid",
    state_dir=Path("/var/spool/slurmctld-two-nodes"),
    spool_dir="/var/spool/slurmd-two-nodes/%n",
    ctld_log=Path("/var/log/slurm/slurmctld-two-nodes.log"),
    slurmd_log="/var/log/slurm/slurmd-two-nodes-%n.log",
)

# SlurmdParameters=config_overrides: a node offers at least 2 CPUs even on a 1-core runner, so that a 2-rank job
# fits (slower, not blocked). OverSubscribe=FORCE:4 lets jobs of concurrent test sessions share the cores rather
# than queue behind each other past the tests' timeouts.
CONF_TEXT = """{mark} {layout.description}
ClusterName={layout.cluster}
SlurmctldHost={host}
SlurmctldPort={layout.ctld_port}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
FirstJobId={layout.first_job_id}
SlurmctldPidFile={layout.ctld_pid}
SlurmdPidFile={layout.slurmd_pid}
StateSaveLocation={layout.state_dir}
SlurmdSpoolDir={layout.spool_dir}
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
SlurmctldLogFile={layout.ctld_log}
SlurmdLogFile={layout.slurmd_log}
{node_line} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={layout.partition} Nodes={nodes} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def _ended(job: dict[str, str]) -> bool:
    return job.get("JobState") in FINAL_STATES


@dataclass(frozen=True)
class SlurmCluster:
    """What tests need to know about a running cluster, and how to watch their jobs."""

    host: str  # this machine's name: what `hostname` prints in every job, on every node
    nodes: tuple[str, ...]
    partition: str
    conf: Path  # SLURM_CONF for the commands that talk to this cluster (sbatch, scontrol, scancel)

    def records(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job` as dicts (JobState, Restarts, NumTasks, ...): one per array task, else one.
        slurmctld keeps an ended job's record for MinJobAge (300 s)."""
        out = _run(["scontrol", "show", "job", "-o", job_id], self.conf).stdout
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


def _run(cmd: list[str], conf: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; a Slurm one talks to the cluster whose config file `conf` is."""
    env = {**os.environ, "SLURM_CONF": str(conf)} if conf else None
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
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


def _write_conf(layout: Layout, host: str) -> None:
    """Write the cluster's config, unless one that these tests did not write is there: that is someone's cluster."""
    conf = layout.conf
    if conf.is_file() and not conf.read_text().startswith(MARK):
        pytest.fail(
            f"{conf} exists and was not written by these tests; start that cluster (slurmctld; slurmd) or "
            "move the file aside to let the tests start their own."
        )
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 8 // 10
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        CONF_TEXT.format(
            mark=MARK,
            layout=layout,
            host=host,
            node_line=layout.node_line(host),
            nodes=",".join(layout.node_names(host)),
            cpus=max(os.cpu_count() or 1, 2),
            mem_mb=mem_mb,
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


def _start_missing_daemons(layout: Layout, host: str) -> list[Path]:
    """Start each daemon whose pid file is not alive; returns the pid files of those started."""
    for folder in (layout.state_dir, Path(layout.spool_dir.split("%n")[0]), Path("/var/log/slurm")):
        folder.mkdir(parents=True, exist_ok=True)
    nodes = dict(zip(layout.slurmd_pids(host), layout.node_names(host)))
    started = [f for f in (MUNGE_PID, layout.ctld_pid, *nodes) if not _alive(f)]
    if MUNGE_PID in started:
        _start_munged()
    if layout.ctld_pid in started:
        _write_conf(layout, host)
        _run(["slurmctld", "-c", "-f", str(layout.conf)], layout.conf)  # -c: no jobs left over from an earlier run
    for pid_file, node in nodes.items():
        if pid_file in started:
            _run(["slurmd", "-f", str(layout.conf), "-N", node], layout.conf)
    return started


def _wait_ready(layout: Layout, host: str, timeout: float = 60) -> None:
    """Until sinfo lists every node as able to take jobs; a down or drained node (e.g. after slurmd restarted) is
    resumed."""
    deadline = time.monotonic() + timeout
    for node in layout.node_names(host):
        state = "?"
        while True:
            sinfo = ["sinfo", "-h", "-p", layout.partition, "-n", node, "-o", "%T"]
            proc = _run(sinfo, layout.conf, check=False)
            state = proc.stdout.strip() or proc.stderr.strip()
            if state.rstrip("*") in ("idle", "mixed", "allocated", "completing"):
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Slurm node {node} not ready after {timeout:.0f} s (sinfo: {state!r}); see /var/log/slurm/*.log"
                )
            if any(s in state for s in ("down", "drain", "fail")):
                _run(["scontrol", "update", f"nodename={node}", "state=resume"], layout.conf, check=False)
            time.sleep(1)


def _stop(pid_file: Path, timeout: float = 30) -> None:
    if not _alive(pid_file):
        return
    pid = int(pid_file.read_text().split()[0])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid_file) and time.monotonic() < deadline:
        time.sleep(0.2)


def _cluster(layout: Layout) -> Iterator[SlurmCluster]:
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
                f.writelines(f"{pid_file}\n" for pid_file in _start_missing_daemons(layout, host))
            _wait_ready(layout, host)
        yield SlurmCluster(host=host, nodes=layout.node_names(host), partition=layout.partition, conf=layout.conf)
    with _locked(STARTING, fcntl.LOCK_EX):
        _stop_if_unused(host)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The one-node cluster (Slurm's default config file)."""
    yield from _cluster(ONE_NODE)


@pytest.fixture(scope="session")
def slurm_two_nodes() -> Iterator[SlurmCluster]:
    """The two-node cluster on this host; its commands need SLURM_CONF=<.conf> (sbatch passes it on to the job)."""
    yield from _cluster(TWO_NODES)


@contextlib.contextmanager
def _locked(path: Path, how: int) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, how)
        yield


def _stop_if_unused(host: str) -> None:
    """Stop the daemons these tests started, unless another test session still uses them (the last one out does):
    every slurmd, then the controllers, then munged, clients before the services they talk to."""
    order = [
        *(p for layout in (TWO_NODES, ONE_NODE) for p in layout.slurmd_pids(host)),
        TWO_NODES.ctld_pid,
        ONE_NODE.ctld_pid,
        MUNGE_PID,
    ]
    try:
        with _locked(USERS, fcntl.LOCK_EX | fcntl.LOCK_NB):
            started = OWNER.read_text().split() if OWNER.is_file() else []
            for pid_file in order:
                if str(pid_file) in started:
                    _stop(pid_file)
            OWNER.unlink(missing_ok=True)
    except BlockingIOError:
        pass
