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


class Preempted(Exception):
    """The job was signalled (SIGUSR1/SIGTERM, e.g. Slurm's warning before the time limit or a preemption) and the
    running stage saved a complete checkpoint: re-running the same run resumes from it. Not an error: exit 75."""

    exit_code = 75  # EX_TEMPFAIL: "try again later", what a requeue does
