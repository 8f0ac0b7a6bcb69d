"""Reference log-probabilities computed once per (reference model, pairs, tokenisation) and reused by every run.

DPO's reference term, log pi_ref(reply | prompt) summed over the reply, depends only on the reference model, the
tokens and how they are scored. TRL precomputes it per trainer and caches it beside a dataset's files, keyed by the
dataset's fingerprint and a hash of the model in memory (for a LoRA policy that includes the freshly initialised
adapter, so no two seeds share it; an in-memory dataset's cache is a private temporary folder). A beta or loss sweep
therefore repeats the same reference pass in every member. This cache lives in the run tree
(`<run.root>/.cache/ref_logps/<key>/logps.json`), keyed by a content hash of the reference's files and of every
setting that changes the numbers, and stores one entry per pair, keyed by the hash of its token ids: a run computes
only the pairs no earlier run scored, so sweep members, resumed runs and evaluation subsets of the training pairs
reuse it. A lock makes concurrent runs (Slurm array members) wait for the first one instead of repeating its work.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from datasets import Dataset

from alignlab import distributed
from alignlab.artifacts import atomic_write_json

COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def content_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def row_key(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int]) -> str:
    return hashlib.sha256(json.dumps([prompt_ids, chosen_ids, rejected_ids]).encode()).hexdigest()[:24]


def pairs_digest(pairs: Any) -> str:
    """The checksum stored beside the cached values: a file edited by hand or damaged on disk is recomputed."""
    return hashlib.sha256(json.dumps(pairs, sort_keys=True).encode()).hexdigest()


class RefLogpCache:
    """One cache entry: the folder of a (reference, settings) key, holding every pair scored under it."""

    def __init__(self, root: Path, parts: dict[str, Any]):
        self.parts = parts
        self.folder = root / content_key(parts)

    @property
    def file(self) -> Path:
        return self.folder / "logps.json"

    def read(self) -> dict[str, list[float]]:
        if not self.file.is_file():
            return {}
        try:
            stored = json.loads(self.file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):  # written atomically: only a damaged file gets here
            print(f"[alignlab] note: reference log-prob cache {self.file} is unreadable; recomputing it")
            return {}
        if not isinstance(stored, dict) or stored.get("key") != self.parts:
            return {}
        if stored.get("sha256") != pairs_digest(stored.get("pairs")):  # edited or damaged since it was written
            print(f"[alignlab] note: reference log-prob cache {self.file} fails its checksum; recomputing it")
            return {}
        return stored["pairs"]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Rank 0 holds the entry's lock while it reads, computes and writes (other ranks follow its lead)."""
        if not distributed.is_main():
            yield
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def attach(self, dataset: Dataset, compute: Callable[[Dataset], Dataset]) -> Dataset:
        """`dataset` (tokenised pairs) with the two reference columns, from the cache where it has them and from
        `compute` (a collective under several ranks: every rank calls it with the same rows) where it has not."""
        keys = [
            row_key(p, c, r) for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])
        ]
        with self.locked():
            stored = self.read() if distributed.is_main() else {}
            stored = _from_rank0(stored)
            missing = sorted({i for i, k in enumerate(keys) if k not in stored})
            if missing:
                scored = compute(dataset.select(missing))
                for i, chosen, rejected in zip(missing, scored[COLUMNS[0]], scored[COLUMNS[1]]):
                    stored[keys[i]] = [float(chosen), float(rejected)]
                if distributed.is_main():
                    atomic_write_json(self.file, {"key": self.parts, "pairs": stored, "sha256": pairs_digest(stored)})
        distributed.barrier()
        values = [stored[k] for k in keys]
        return dataset.add_column(COLUMNS[0], [v[0] for v in values]).add_column(COLUMNS[1], [v[1] for v in values])


def _from_rank0(value: Any) -> Any:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value
