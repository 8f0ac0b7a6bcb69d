"""User-facing errors.

Anything a person can fix (a config key, a data row, a path) raises a subclass of `UserError`; the CLI prints
its message as one paragraph and exits non-zero without a traceback. Everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


class UserError(Exception):
    """An error caused by input the user controls; the message names what and where."""

    exit_code = 2


class ConfigError(UserError):
    """A composed config that is invalid: unknown key, wrong type, bad value, unknown group option."""


class DataError(UserError):
    """A data source that is missing, unreadable or has malformed rows."""


class ModelError(UserError):
    """A model path or id that cannot be resolved or loaded."""


class RunStateError(UserError):
    """A run directory whose state conflicts with the request (changed inputs, corrupt markers)."""


class TrainingDiverged(UserError):
    """A loss became NaN or infinite: training stops before the step is saved, and the stage is not marked done
    (a NaN model must never look finished). Usually a learning rate too high, or broken data or precision."""


def diverged(stage: str, step: int, losses: dict[str, float]) -> TrainingDiverged:
    shown = ", ".join(f"{k}={v}" for k, v in losses.items())
    return TrainingDiverged(
        f"Training error in stage '{stage}': the loss is no longer finite at step {step} ({shown}). Nothing of this "
        f"step was saved and the stage is not done; its last checkpoint stays as it was. Lower "
        f"algo.{stage}.learning_rate, check the data, or train in fp32/bf16 rather than fp16, then run again."
    )


class Preempted(Exception):
    """The job was signalled (SIGUSR1/SIGTERM, e.g. Slurm's warning before the time limit or a preemption) and the
    running stage saved a complete checkpoint: re-running the same run resumes from it. Not an error: exit 75."""

    exit_code = 75  # EX_TEMPFAIL: "try again later", what a requeue does


class DiskFull(UserError):
    """The disk holding the run filled up while writing: not a bug, and the fix is the user's (free space, move
    run.root). Named with the disk, what is free and what a checkpoint of this run takes."""


class InternalError(Exception):
    """An unexpected failure inside a run (a bug, or a library's): one paragraph on the console, the traceback in
    the run's error.log, exit 1."""

    exit_code = 1


def is_disk_full(exc: BaseException, run_dir: Path) -> bool:
    """ENOSPC anywhere in the exception's chain, as Python and safetensors report it; or torch's zip writer failing
    (it reports only "enforce fail at inline_container.cc", "unexpected pos ...") while the run's disk has less
    free than a checkpoint of this run, or under 64 MiB."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        text = str(seen)
        if "No space left on device" in text:
            return True
        if "inline_container.cc" in text or "PytorchStreamWriter failed" in text:
            return shutil.disk_usage(run_dir).free < max(64 << 20, _checkpoint_bytes(run_dir))
        seen = seen.__cause__ or seen.__context__
    return False


def disk_full(run_dir: Path, stage: str | None) -> DiskFull:
    usage = shutil.disk_usage(run_dir)
    need = _checkpoint_bytes(run_dir)
    needs = f" A checkpoint of this run takes {_size(need)}." if need else ""
    return DiskFull(
        f"Disk full: writing the run in {run_dir}{f' (stage {stage!r})' if stage else ''} ran out of space on "
        f"the disk mounted at {_mount_point(run_dir)} ({_size(usage.free)} free of {_size(usage.total)}).{needs} "
        f"Free space there or set run.root to a larger disk, then run the same command again to resume from the "
        f"last complete checkpoint (a half-written one is set aside, not used)."
    )


def _checkpoint_bytes(run_dir: Path) -> int:
    """The largest complete checkpoint of the run so far: about what the next save needs."""
    done = [p.parent for p in run_dir.glob("*/checkpoints/checkpoint-*/COMPLETE")]
    return max((sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in done), default=0)


def internal_error(run_dir: Path, stage: str | None, exc: BaseException) -> InternalError:
    where = f" in stage {stage!r}" if stage else ""
    return InternalError(
        f"Unexpected error{where}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}. The full traceback "
        f"is in {run_dir / 'error.log'}. Finished stages and complete checkpoints are kept: after a fix, the same "
        f"command resumes. If this looks like a bug in alignlab, please report it with that file."
    )


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    unit = 0
    while n >= 1024 and unit < 4:
        n, unit = n / 1024, unit + 1
    return f"{n:.1f} {('KiB', 'MiB', 'GiB', 'TiB')[unit - 1]}"
