"""Loading state from a run folder without running code from it.

torch's `.pt` / `.bin` / `.pkl` files are pickles, and a pickle may name any Python callable, which unpickling
calls. A file planted in (or swapped into) a checkpoint folder would therefore run its code on the next
`alignlab resume`, and Slurm requeues resume on their own. So nothing alignlab resumes from is unpickled with
`weights_only=False`:

- what alignlab itself writes (the PPO state: iteration, history, controllers, RNG, scheduler) holds only
  tensors and plain data, read with `load_state` (`torch.load(weights_only=True)`);
- what libraries write and read themselves (accelerate's optimizer / RNG files and its custom-object pickles,
  transformers' Trainer files, DeepSpeed's engine states, some of which those libraries unpickle unrestricted)
  is checked by `verify_checkpoint` before any library opens the folder: every pickle in it must load under
  torch's weights-only unpickler, which builds tensors, containers and a short allow-list of plain classes and
  refuses every other global. The allow-list (`_library_globals`) names the few data classes those libraries
  put in their checkpoints (numpy arrays in RNG states; DeepSpeed's loss scaler, ZeRO stage enum and
  parameter-slice addresses).

A refused file stops the run before anything is loaded, with one paragraph naming the file and what it holds.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from alignlab.errors import RunStateError

PICKLE_SUFFIXES = frozenset((".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"))
# transformers saves its TrainingArguments (a pickled dataclass) for people to inspect and never reads it back,
# nor does any library alignlab runs: it is neither checked nor loaded.
WRITTEN_NOT_READ = frozenset(("training_args.bin",))


def _library_globals() -> list[Callable[..., Any] | type]:
    """Plain data classes that accelerate and DeepSpeed put into the checkpoints they write (constructing one runs
    no user-controlled code); imported lazily so that a missing optional library only shortens the list."""
    found: list[Any] = []
    try:  # accelerate's own list: numpy arrays and dtypes inside its RNG-state pickles
        from accelerate.utils.other import TORCH_SAFE_GLOBALS

        found.extend(TORCH_SAFE_GLOBALS)
    except ImportError:
        pass
    try:  # DeepSpeed's ZeRO optimizer states hold its loss scaler, stage enum and parameter-slice addresses
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        found.extend((LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address))
    except ImportError:
        pass
    return found


@contextmanager
def _allowed() -> Iterator[None]:
    with torch.serialization.safe_globals(_library_globals()):
        yield


def _refusal(path: Path, exc: Exception) -> RunStateError:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    what = f"the global `{found.group(1)}`" if found else "an object torch's weights-only unpickler refuses"
    return RunStateError(
        f"Refusing to load {path}: it is a pickle that names {what}, which is not tensor data, and unpickling it "
        f"could run code. alignlab loads checkpoints only with torch's weights-only unpickler, so a file planted "
        f"in a run folder cannot run on resume. If this checkpoint is yours and you trust it, move the folder "
        f"{path.parent} aside and the stage resumes from its previous checkpoint (or starts afresh)."
    )


def load_state(path: Path) -> Any:
    """A state file alignlab wrote with `torch.save`: tensors and plain Python data only."""
    try:
        with _allowed():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise RunStateError(
            f"Cannot read {path}: {' '.join(str(exc).split())[:300]}. The file is damaged or truncated; move "
            f"{path.parent} aside to resume from the previous checkpoint."
        ) from None


def pickle_files(folder: Path) -> list[Path]:
    """Every file under `folder` that torch or a library may unpickle (safetensors and JSON are data only)."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES and p.name not in WRITTEN_NOT_READ
    )


def _load_weights_only(path: Path) -> None:
    """Load `path` under torch's weights-only unpickler (and our allowed globals), tensors memory-mapped where the
    file is in torch's zip format; an old-format pickle is read whole."""
    with _allowed():
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            torch.load(path, map_location="cpu", weights_only=True)


def verify_checkpoint(folder: Path, skip_damaged: bool = False) -> None:
    """Refuse a checkpoint folder with any pickle that torch's weights-only unpickler rejects, before a library
    (accelerate's custom objects, DeepSpeed's engine) unpickles it without that restriction. Tensors are
    memory-mapped, not read, so the check costs little even for large optimizer states. `skip_damaged`: for a
    checkpoint already failing its manifest, about to be set aside, an unreadable file is passed over (the
    unpickler fails on truncated or garbled files in many ways): only a planted one, an attack, is reported."""
    for path in pickle_files(folder):
        try:
            _load_weights_only(path)
        except pickle.UnpicklingError as exc:
            raise _refusal(path, exc) from None
        except Exception as exc:
            if skip_damaged:
                continue
            if not isinstance(exc, (RuntimeError, EOFError, OSError, ValueError)):
                raise
            raise RunStateError(
                f"Cannot read {path}: {' '.join(str(exc).split())[:300]}. The checkpoint is damaged; move {folder} "
                f"aside to resume from the previous checkpoint."
            ) from None
