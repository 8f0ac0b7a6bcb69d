"""A run directory's identity and its lock: one config per run folder, one process at a time.

- Identity. A run folder holds the config it was started with (`config.yaml`) and that file's sha256
  (`config.sha256`). Starting it again with a different config (a fixed `run.id` and other settings or data) is
  refused with the keys that differ, never skipped as "done" under the old results; a `config.yaml` edited after
  the run started is refused on resume, since the finished stages and caches no longer match it.
- Lock. `run.lock` is held (an exclusive `flock`) by the process that runs the pipeline, so the same command
  started twice does not train twice into one folder. The kernel drops the lock when its holder dies, so a lock
  left by a killed process is taken over at once; the file names the last holder (host, pid, time) for the
  message and the note. `flock` is per host: on a shared file system two hosts are kept apart only where the file
  system supports it (most NFS v4 and Lustre set-ups do).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from alignlab.artifacts import atomic_write_text
from alignlab.errors import RunStateError

LOCK, DIGEST = "run.lock", "config.sha256"
# Keys that say where and how a run executes, not what it computes (they are outside the run id's hash too).
PLACEMENT = ("run", "logger", "slurm", "launcher")
# Of those, the ones a resumed job runs with (the frozen file's, read by `alignlab resume` in a Slurm job): changing
# them on an unfinished run is refused unless the user says to adopt them. The rendezvous port is picked per job.
RESOURCES, PER_JOB = ("slurm", "launcher"), ("launcher.master_port",)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_config(run_dir: Path, yaml_text: str) -> None:
    """Write the frozen config and its digest, once: the first start of a run defines it."""
    if not (run_dir / "config.yaml").is_file():
        atomic_write_text(run_dir / "config.yaml", yaml_text)
    if not (run_dir / DIGEST).is_file():
        atomic_write_text(run_dir / DIGEST, digest((run_dir / "config.yaml").read_text(encoding="utf-8")) + "\n")


def check_frozen_unedited(run_dir: Path) -> None:
    """`config.yaml` still has the digest recorded when the run started (runs from before the digest pass)."""
    recorded = run_dir / DIGEST
    if not recorded.is_file():
        return
    now = digest((run_dir / "config.yaml").read_text(encoding="utf-8"))
    if recorded.read_text().strip() != now:
        raise RunStateError(
            f"Run error: {run_dir / 'config.yaml'} was edited or damaged after the run started (its sha256 no "
            f"longer matches {recorded.name}), so the finished stages, cached pairs and checkpoints no longer match "
            "it. Start a new run with the changed settings (alignlab run ... run.id=<new name>), or restore the file."
        )


def check_same_config(run_dir: Path, snapshot: dict[str, Any]) -> None:
    """A run folder that exists was started with this config, up to where and how it runs (`PLACEMENT`). Only for
    a config composed anew: a resumed run reads the frozen file itself (`check_frozen_unedited` guards that)."""
    frozen = _frozen(run_dir)
    if frozen is None:
        return
    changed = _differences(_flat(_computed(frozen)), _flat(_computed(snapshot)))
    if changed:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise RunStateError(
            f"Run error: run '{run_dir}' exists with a different config ({shown}{more}). Its finished stages were "
            "computed with the old one. Resume it as it was with `alignlab resume " + str(run_dir) + "`, or start "
            "a new run: run.id=<new name> (or leave run.id unset: the id is then a hash of the config)."
        )


def resource_changes(run_dir: Path, snapshot: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, frozen value, new value) for each slurm.* / launcher.* setting `snapshot` changes in an existing run."""
    frozen = _frozen(run_dir)
    if frozen is None:
        return []
    old, new = ({k: c[k] for k in RESOURCES if k in c} for c in (frozen, snapshot))
    return [change for change in _differences(_flat(old), _flat(new)) if change[0] not in PER_JOB]


def adopt_resources(run_dir: Path, snapshot: dict[str, Any]) -> None:
    """Rewrite the frozen config's slurm.* and launcher.* with `snapshot`'s (and its digest), everything else as it
    was: the run's later resumes (a requeued Slurm job's included) then use the resources it was moved to."""
    check_frozen_unedited(run_dir)
    frozen = OmegaConf.load(run_dir / "config.yaml")
    for key in RESOURCES:
        if key in snapshot:
            frozen[key] = snapshot[key]
    text = OmegaConf.to_yaml(frozen)
    atomic_write_text(run_dir / "config.yaml", text)
    atomic_write_text(run_dir / DIGEST, digest(text) + "\n")


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock for the block; refuse at once if another live process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunStateError(
                f"Run error: run '{run_dir}' is in use by {_holder(path)}; the same run cannot train twice at once. "
                "Wait for it to finish (or stop it), or start a separate run with run.id=<new name>."
            ) from None
        previous = _holder(path)
        if previous != "an unknown process" and not _alive(path):
            print(f"[alignlab] note: taking over the lock of {run_dir} from {previous}, which is no longer running")
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%FT%T%z")}))
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return "an unknown process"
    if not info:
        return "an unknown process"
    return f"pid {info.get('pid')} on {info.get('host')} (since {info.get('since')})"


def _alive(path: Path) -> bool:
    """Whether the pid the lock file names still runs on this host (another host's cannot be checked: assume so)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if info.get("host") != socket.gethostname():
            return True
        os.kill(int(info["pid"]), 0)
        return True
    except (ProcessLookupError, ValueError, KeyError, json.JSONDecodeError, TypeError):
        return False
    except PermissionError:  # it exists, owned by someone else
        return True


def _frozen(run_dir: Path) -> dict[str, Any] | None:
    """The run folder's frozen config as a plain dict, unresolved; None for a folder not started yet."""
    path = run_dir / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else None


def _computed(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in PLACEMENT}


def _flat(node: Any, key: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k2: v2 for k, v in node.items() for k2, v2 in _flat(v, f"{key}.{k}" if key else str(k)).items()}
    return {key: node}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Values that differ under keys both configs have: a key only one has is a schema field added or removed by
    another alignlab version (`code_changed` warns of those), not a setting the user changed."""
    return [(k, old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]]
