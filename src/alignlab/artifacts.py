"""Files a run leaves behind, written so that a crash at any instant leaves nothing that looks complete.

- `atomic_write_*`: write to a temporary name in the same folder, fsync, rename over the target.
- A stage is finished when its folder holds `DONE`, written last.
- Trainer checkpoints are not atomic (transformers writes `checkpoint-N/` file by file), so `CompleteMarker`
  adds a `COMPLETE` file once every rank has finished writing; `last_complete_checkpoint` ignores the rest and
  moves them aside (never deletes them) so a resumed run cannot mix their files with new ones.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

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


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest `checkpoint-N` holding a COMPLETE marker; incomplete ones are renamed `*.incomplete-<time>`."""
    if not folder.is_dir():
        return None
    found = []
    for child in folder.iterdir():
        m = CHECKPOINT.match(child.name)
        if not (m and child.is_dir()):
            continue
        if (child / COMPLETE).is_file():
            found.append((int(m.group(1)), child))
        else:
            child.rename(child.with_name(f"{child.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"))
    return max(found)[1] if found else None


class CompleteMarker(TrainerCallback):
    """Marks a trainer checkpoint complete after the Trainer (all ranks) has written it."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                atomic_write_text(ckpt / COMPLETE, f"{state.global_step}\n")
        return control
