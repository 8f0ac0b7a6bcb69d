"""Spawning the ranks of a run, and what a rank needs from its launcher (Slurm's environment, the process group).

    alignlab run ... distributed=zero3 launcher.nproc_per_node=N
      -> the launching process composes, validates and freezes the config (runs/<name>/<id>/config.yaml), then
         starts N x nnodes ranks running `python -m alignlab.rank <run dir>` (rank.py), which read only that file:
           locally:        torch.distributed.run (what `accelerate launch` runs underneath), rendezvous on
                           127.0.0.1 at launcher.master_port (a free port when unset);
           in a Slurm job: srun, one task per rank (the job asks for --nodes and --ntasks-per-node); each task
                           takes RANK / LOCAL_RANK / WORLD_SIZE from SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS
                           and rendezvouses on the first node of the allocation, at the address Slurm itself
                           reaches that node by (its NodeAddr, looked up once, here, and passed to srun).
This module knows nothing of the pipeline: pipeline.run calls `spawn`, and rank.py, the rank's entry point, runs
the pipeline. Every rank runs it; training stages use all of them (TRL / accelerate / DeepSpeed inside the stage,
configured from `distributed`), other stages run on rank 0 while the rest wait (pipeline.execute). Only rank 0
writes run files and logs.

Signals: the launching process forwards SIGUSR1/SIGTERM to every rank as SIGUSR1 (checkpoint and stop, see
preemption.py). torch.distributed.run itself would die of SIGUSR1, so it is started with SIGUSR1 ignored (an
ignored signal stays ignored across exec) and each rank installs its own handler; the ranks run in sessions of
their own, so each process is signalled by pid.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
from omegaconf import DictConfig

from alignlab import distributed
from alignlab.errors import ConfigError, Preempted, RunStateError

PREEMPTED_FILE = "preempted.json"  # rank 0 writes it when a signal stopped the ranks with a checkpoint


def in_slurm_allocation() -> bool:
    """Inside an sbatch job whose tasks are the ranks. A `hydra/launcher=slurm` sweep member is one submitit task:
    its ranks start on its node through torch.distributed.run (sweep.py refuses several nodes there)."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        return False
    return "SLURM_JOB_ID" in os.environ and shutil.which("srun") is not None


def command(cfg: DictConfig, run_dir: Path) -> list[str]:
    """The command line that starts every rank of the run."""
    n, world = cfg.launcher, distributed.planned_world_size(cfg)
    entry = ["-m", "alignlab.rank", str(run_dir)]
    if in_slurm_allocation():
        master = node_address(first_host(os.environ.get("SLURM_JOB_NODELIST") or socket.gethostname()))
        return [
            "srun",
            f"--nodes={n.nnodes}",
            "--relative=0",  # the step starts on the allocation's first node, whose address MASTER_ADDR is
            f"--ntasks={world}",
            f"--ntasks-per-node={n.nproc_per_node}",
            "--kill-on-bad-exit=1",
            f"--export=ALL,MASTER_ADDR={master}",
            sys.executable,
            *entry,
        ]
    if n.nnodes > 1:
        raise ConfigError(
            f"Config error at 'launcher.nnodes': {n.nnodes} nodes need a Slurm allocation (srun starts the ranks on "
            "each node): submit with `alignlab slurm submit ...`, or run inside `salloc`/`sbatch`."
        )
    port = n.master_port or _free_port()
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={n.nproc_per_node}",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        *entry,
    ]


def spawn(cfg: DictConfig, run_dir: Path) -> None:
    """Start the ranks and wait; a signal to this process is passed on to every rank. Raises `Preempted` when the
    ranks stopped on a signal with a checkpoint, RunStateError when a rank failed."""
    cmd = command(cfg, run_dir)
    (run_dir / PREEMPTED_FILE).unlink(missing_ok=True)
    print(f"[alignlab] starting {distributed.planned_world_size(cfg)} ranks: {' '.join(cmd)}", flush=True)
    slurm = cmd[0] == "srun"
    proc = subprocess.Popen(cmd, preexec_fn=None if slurm else _ignore_usr1)

    def forward(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        print(f"[alignlab] received {name}: asking every rank to checkpoint and stop", flush=True)
        if slurm:
            proc.send_signal(signal.SIGUSR1)  # srun passes it on to every task
            return
        # torch.distributed.run starts each rank in a session of its own: signal the processes, not a group
        for child in [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGUSR1)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    preempted = run_dir / PREEMPTED_FILE
    if preempted.is_file():
        raise Preempted(json.loads(preempted.read_text())["message"])
    if code != 0:
        raise RunStateError(
            f"Run error: a rank of '{run_dir}' failed (exit code {code}); its message is above. Fix the cause and "
            f"resume with `alignlab resume {run_dir}` (finished stages and checkpoints are kept)."
        )


def _ignore_usr1() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_from_slurm(cfg: DictConfig) -> None:
    """RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for a task started by srun (torch.distributed.run
    sets them itself). The first node of the job hosts the rendezvous: at the MASTER_ADDR that `command` gave srun,
    else at that node's name; the port is derived from the job id so that two jobs sharing a node do not collide."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_WORLD_SIZE"] = os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ["SLURM_JOB_NODELIST"]
    os.environ.setdefault("MASTER_ADDR", first_host(nodes))
    job = int(os.environ.get("SLURM_JOB_ID", "0"))
    os.environ["MASTER_PORT"] = str(cfg.launcher.master_port or 20000 + job % 20000)


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist ("gpu[07-08,11],cpu1" -> "gpu07", "r[1-2]-n[01-04]" -> "r1-n01"). Ours,
    not `scontrol show hostnames`: scontrol needs a readable slurm.conf, which a task's node may not have."""
    host, i = "", 0
    while i < len(nodelist) and nodelist[i] != ",":
        if nodelist[i] == "[":
            end = nodelist.index("]", i)
            host += nodelist[i + 1 : end].split(",")[0].split("-")[0]  # the first range's start, zero padding kept
            i = end + 1
        else:
            host += nodelist[i]
            i += 1
    return host


def node_address(node: str) -> str:
    """The address other nodes reach `node` at: its NodeAddr, which slurmctld and the slurmds themselves use (the
    node's name unless slurm.conf sets another), so it works where node names are not in DNS (NodeName=node001
    NodeAddr=10.1.0.1). The node's name when scontrol cannot tell. One query per job, from the launching process,
    rather than one per rank to slurmctld."""
    try:
        proc = subprocess.run(
            ["scontrol", "show", "node", node, "--oneliner"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return node
    match = re.search(r"\bNodeAddr=(\S+)", proc.stdout)
    return match.group(1) if proc.returncode == 0 and match else node


def init_process_group(cfg: DictConfig) -> None:
    """One process group for the whole run, with our backend and timeout (Trainers and accelerate reuse it)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(minutes=int(cfg.distributed.timeout_minutes))
    dist.init_process_group(backend=distributed.backend(cfg), timeout=timeout)
    if cfg.distributed.strategy == "deepspeed":  # DeepSpeed's own comm layer wraps the group (ZeRO-3 model init)
        import deepspeed

        deepspeed.init_distributed(dist_backend=distributed.backend(cfg), timeout=timeout)
