"""Preemption: SIGUSR1 or SIGTERM means "the job is about to end": save a checkpoint and exit, to resume later.

Slurm sends SIGUSR1 before the time limit (`#SBATCH --signal=B:USR1@300`, forwarded by our sbatch scripts) and
SIGTERM on preemption. A training stage stops at the next step boundary, with a complete checkpoint, and the run
exits with `Preempted` (75); the sbatch script then requeues the job, which resumes the same run directory and the
same W&B run. Outside a training loop (loading, evaluation, pair generation) there is nothing to checkpoint: the
signal raises `Preempted` at once, and the interrupted stage reruns from its start after the requeue.

Every rank receives the signal (srun forwards it to all tasks; locally the driver signals every rank), perhaps at
different steps: `stop_requested` takes the maximum over ranks, so all ranks stop after the same step.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from alignlab.errors import Preempted

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_state = {"requested": False, "in_loop": False}


def _on_signal(signum: int, frame: Any) -> None:
    first = not _state["requested"]
    _state["requested"] = True
    if first:
        print(f"[alignlab] received {signal.Signals(signum).name}: checkpointing and stopping", flush=True)
    if not _state["in_loop"]:
        raise Preempted(f"stopped by {signal.Signals(signum).name} outside a training step; re-run to resume.")


@contextmanager
def handled() -> Iterator[None]:
    """Install the handlers for the duration of a run (the process's previous handlers are restored after)."""
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    _state.update(requested=False, in_loop=False)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def training_loop() -> Iterator[None]:
    """Inside, a signal only sets the flag; the loop checks `stop_requested` at each step boundary."""
    _state["in_loop"] = True
    try:
        yield
    finally:
        _state["in_loop"] = False


def stop_requested() -> bool:
    """Whether any rank was signalled (a collective when several ranks run: call it on every rank)."""
    flag = _state["requested"]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([1.0 if flag else 0.0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flag = bool(t.item())
    return flag


def stopped(stage: str, checkpoint: Path | None) -> Preempted:
    where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint yet"
    return Preempted(f"stage '{stage}' stopped by a signal after saving {where}; re-run (or requeue) to resume.")


class PreemptionCallback(TrainerCallback):
    """Ends a Trainer's loop after the current step with a checkpoint of it (the Trainer saves when asked)."""

    def __init__(self) -> None:
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        if stop_requested():
            control.should_save = True
            control.should_training_stop = True
            self.stopped = True
        return control
