"""User-facing errors.

Anything a person can fix (a config key, a data row, a path) raises a subclass of `UserError`; the CLI prints
its message as one paragraph and exits non-zero without a traceback. Everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


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
