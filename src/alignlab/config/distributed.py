"""`distributed`, `launcher` and `slurm`: how training spreads over ranks (distributed.py), how many ranks a run
spawns (launch.py), and the job a Slurm submission asks for (slurm.py). Group files: conf/distributed/."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import DictConfig

from alignlab.config.checks import check, choice, positive
from alignlab.config.train import Precision

Strategy = Literal["single", "ddp", "deepspeed"]
Backend = Literal["auto", "nccl", "gloo"]
ZeroStage = Literal[0, 1, 2, 3]


@dataclass
class DistributedConfig:
    """How training stages spread over ranks (distributed.py); one file per strategy in conf/distributed/.

    The DeepSpeed config is generated from these fields in `distributed.deepspeed_config`, never copied as JSON."""

    name: str = field(default="single", metadata={"help": "The strategy file's name (`conf/distributed/<name>.yaml`)."})
    strategy: str = field(
        default="single",
        metadata={"help": "single: one process; ddp: torch DDP; deepspeed: DeepSpeed ZeRO.", "choices": Strategy},
    )
    zero_stage: int = field(
        default=0,
        metadata={
            "help": "deepspeed: 0 (replicas), 1 (+ optimizer state sharded), 2 (+ gradients), 3 (+ parameters).",
            "choices": ZeroStage,
        },
    )
    offload_optimizer: bool = field(
        default=False, metadata={"help": "ZeRO >= 1: optimizer state and step on the CPU (DeepSpeedCPUAdam)."}
    )
    offload_params: bool = field(default=False, metadata={"help": "ZeRO-3: parameters on the CPU between uses."})
    precision: str | None = field(
        default=None,
        metadata={"help": "For every training stage; None: each `algo.<stage>.precision`.", "choices": Precision},
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "For every training stage; None: each `algo.<stage>`'s own setting."}
    )
    backend: str = field(
        default="auto",
        metadata={"help": "torch.distributed backend; auto: nccl on CUDA, gloo on the CPU.", "choices": Backend},
    )
    timeout_minutes: int = field(
        default=180, metadata={"help": "Collective timeout: the longest one rank may wait for another."}
    )
    deepspeed: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Merged over the generated DeepSpeed config, e.g. "
            "{zero_optimization: {reduce_bucket_size: 5.0e+8}}."
        },
    )


@dataclass
class LauncherConfig:
    """How many ranks a run spawns (launch.py): locally through torch.distributed.run, under Slurm through srun."""

    nproc_per_node: int = field(default=1, metadata={"help": "Ranks per node: GPUs per node, or CPU processes."})
    nnodes: int = field(
        default=1, metadata={"help": "Nodes (Slurm allocations only; the rendezvous is on the first node)."}
    )
    master_port: int | None = field(
        default=None, metadata={"help": "None: a free port locally, 20000 + job id % 20000 under Slurm."}
    )


@dataclass
class SlurmConfig:
    """The `#SBATCH` lines of `alignlab slurm submit` (slurm.py renders the templates in slurm/)."""

    partition: str | None = field(default=None, metadata={"help": "--partition."})
    account: str | None = field(default=None, metadata={"help": "--account."})
    qos: str | None = field(default=None, metadata={"help": "--qos."})
    time: str = field(default="04:00:00", metadata={"help": "--time: [days-]hours:minutes:seconds."})
    gpus_per_node: int = field(
        default=0, metadata={"help": "--gpus-per-node (0 on CPU-only clusters); one per rank when set."}
    )
    cpus_per_task: int | None = field(
        default=None, metadata={"help": "--cpus-per-task, per rank; None: Slurm's default."}
    )
    mem: str | None = field(default=None, metadata={"help": "--mem, per node, e.g. 200G."})
    mail_user: str | None = field(default=None, metadata={"help": "--mail-user."})
    mail_type: str | None = field(default=None, metadata={"help": "--mail-type, e.g. END,FAIL."})
    job_name: str | None = field(default=None, metadata={"help": "--job-name; None: `alignlab-<name>`."})
    signal_seconds: int = field(
        default=300,
        metadata={"help": "SIGUSR1 this long before the time limit: checkpoint, requeue, resume."},
    )
    requeue: bool = field(default=True, metadata={"help": "Requeue a preempted (or signalled) job so that it resumes."})
    array_parallel: int | None = field(
        default=None, metadata={"help": "Sweep arrays: at most this many members at once (%N)."}
    )
    setup: list[str] = field(
        default_factory=list, metadata={"help": "Shell lines before the run (module load, source .venv/...)."}
    )
    extra: list[str] = field(
        default_factory=list, metadata={"help": 'More #SBATCH options, e.g. ["--constraint=a100"].'}
    )


def check_distributed(cfg: DictConfig) -> None:
    d = cfg.distributed
    choice(d, "strategy", "distributed")
    choice(d, "backend", "distributed")
    if d.precision is not None:
        choice(d, "precision", "distributed")
    check(d.zero_stage in (0, 1, 2, 3), "distributed.zero_stage", f"got {d.zero_stage}, expected 0, 1, 2 or 3.")
    if d.strategy != "deepspeed":
        check(
            d.zero_stage == 0 and not (d.offload_optimizer or d.offload_params),
            "distributed.zero_stage",
            f"ZeRO stages and offload need strategy=deepspeed (got strategy={d.strategy}).",
        )
    check(
        not d.offload_params or d.zero_stage == 3,
        "distributed.offload_params",
        f"parameter offload needs ZeRO stage 3 (got {d.zero_stage}).",
    )
    check(
        not d.offload_optimizer or d.zero_stage >= 1,
        "distributed.offload_optimizer",
        "optimizer offload needs ZeRO stage 1, 2 or 3.",
    )
    positive(d, "timeout_minutes", "distributed")
    check_launcher(cfg)
    check_slurm(cfg)


def check_launcher(cfg: DictConfig) -> None:
    n = cfg.launcher
    positive(n, "nproc_per_node", "launcher")
    positive(n, "nnodes", "launcher")
    if n.master_port is not None:
        check(1024 <= n.master_port < 65536, "launcher.master_port", f"got {n.master_port}, expected 1024-65535.")
    world = n.nproc_per_node * n.nnodes
    check(
        world == 1 or cfg.distributed.strategy != "single",
        "distributed",
        f"{world} ranks asked for (launcher.nproc_per_node x launcher.nnodes) with distributed=single: "
        "choose distributed=ddp, zero1, zero2, zero3 or zero3-offload.",
    )


def check_slurm(cfg: DictConfig) -> None:
    s, n = cfg.slurm, cfg.launcher
    check(s.gpus_per_node >= 0, "slurm.gpus_per_node", f"must be >= 0, got {s.gpus_per_node}.")
    check(
        s.gpus_per_node in (0, n.nproc_per_node),
        "slurm.gpus_per_node",
        f"{s.gpus_per_node} GPUs per node for {n.nproc_per_node} ranks per node (launcher.nproc_per_node): "
        "one rank drives one GPU.",
    )
    check(s.signal_seconds >= 0, "slurm.signal_seconds", f"must be >= 0, got {s.signal_seconds}.")
    check(
        bool(re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", s.time)),
        "slurm.time",
        f"got {s.time!r}, expected Slurm's [days-]hours:minutes:seconds, e.g. 04:00:00 or 2-00:00:00.",
    )
