"""Files a run leaves behind, written so that a crash at any instant leaves nothing that looks complete.

- `atomic_write_*`: write to a temporary name in the same folder, fsync, rename over the target.
- A stage is finished when its folder holds `DONE`, written last.
- Trainer checkpoints are not atomic (transformers writes `checkpoint-N/` file by file), so `CompleteMarker`
  adds a `COMPLETE` file once every rank has finished writing: the checkpoint's manifest, every file's size and
  sha256. `last_complete_checkpoint` resumes from the newest checkpoint whose files all match its manifest; the
  others (never finished, or damaged since: a file missing, truncated or changed) are moved aside, never deleted,
  into `<checkpoints>-aside/`, out of reach of checkpoint rotation, so a resumed run cannot mix their files
  with new ones and nobody loses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from alignlab.safe_load import verify_checkpoint

DONE = "DONE"
COMPLETE = "COMPLETE"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def is_done(stage_dir: Path) -> bool:
    return (stage_dir / DONE).is_file()


def mark_done(stage_dir: Path) -> None:
    atomic_write_text(stage_dir / DONE, time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")


def write_complete(ckpt: Path, step: int) -> None:
    """Mark `ckpt` complete: COMPLETE holds the step and the manifest of every file written before it."""
    files = {
        str(p.relative_to(ckpt)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(ckpt.rglob("*"))
        if p.is_file() and p.name != COMPLETE
    }
    atomic_write_json(ckpt / COMPLETE, {"step": step, "files": files})


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_damage(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed from (no marker, a file its manifest lists missing, resized or changed), or
    None. A marker from before manifests (the bare step number) vouches for nothing more than completion."""
    marker = ckpt / COMPLETE
    if not marker.is_file():
        return "it was never completed (no COMPLETE marker)"
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "its COMPLETE marker is unreadable"
    if isinstance(manifest, int):  # the marker of an older alignlab: the step only
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return "its COMPLETE marker is not a manifest"
    for name, want in manifest["files"].items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, its manifest says {want['bytes']}"
        if file_sha256(path) != want["sha256"]:
            return f"{name} changed after it was written (sha256 differs from its manifest)"
    return None


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` that is complete and undamaged. Every incomplete one, and each damaged one newer
    than the checkpoint returned, is moved aside into `<folder>-aside/`; a damaged one is named in a note."""
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        if (m := CHECKPOINT.match(child.name)) and child.is_dir():
            if (child / COMPLETE).is_file():
                found.append((int(m.group(1)), child))
            else:  # an interrupted save: routine after a kill
                _set_aside(child, "incomplete")
    for _, child in sorted(found, reverse=True):
        why = checkpoint_damage(child)
        if why is None:
            return child
        # a file changed into an unsafe pickle is an attack to report, not damage to skip
        verify_checkpoint(child, skip_damaged=True)
        aside = _set_aside(child, "damaged")
        print(
            f"[alignlab] note: {child} cannot be resumed from: {why}. Moved it to {aside}; resuming from the "
            "previous checkpoint, if any."
        )
    return None


def _set_aside(checkpoint: Path, why: str) -> Path:
    """Out of the checkpoints folder (whose `checkpoint-*` entries rotation deletes), kept for the user."""
    aside = checkpoint.parent.with_name(checkpoint.parent.name + "-aside")
    aside.mkdir(exist_ok=True)
    target = aside / f"{checkpoint.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}"
    with contextlib.suppress(FileNotFoundError):  # under several ranks, another one may have moved it first
        checkpoint.rename(target)
    return target


class CompleteMarker(TrainerCallback):
    """Marks a trainer checkpoint complete after the Trainer (all ranks) has written it."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                write_complete(ckpt, state.global_step)
        return control
