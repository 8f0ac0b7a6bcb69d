"""Read the records of an offline W&B run file (`run-<id>.wandb`) to check what was logged, without network.

The file is W&B's LevelDB-style log (wandb/sdk/internal/datastore.py in older wandb releases, which 0.31 no
longer ships in Python): a 7-byte header, then 32 KiB blocks of chunks `crc32 (4) | length (2) | type (1) |
payload`, chunk types FULL=1, FIRST=2, MIDDLE=3, LAST=4; payloads reassemble into `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
CHUNK_HEADER = 7
WAIT_S = 30.0  # how long records() waits for a run file's exit record


def records(path: Path) -> list[Any]:
    """The file's records, once it holds the run's `exit` record or after WAIT_S: `run.finish()` can return
    before W&B's service process has written the file out (test_tracking failed so in 2 of 5 runs on a 2-core
    machine), so a reader right after it may otherwise miss records."""
    deadline = time.monotonic() + WAIT_S
    while True:
        out = _parse(path)
        if any(r.WhichOneof("record_type") == "exit" for r in out) or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _parse(path: Path) -> list[Any]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pending, pos = [], b"", HEADER
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - (pos % BLOCK)
        if left_in_block < CHUNK_HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        payload = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def history_keys(path: Path) -> set[str]:
    return {
        item.key or "/".join(item.nested_key)
        for r in records(path)
        if r.WhichOneof("record_type") == "history"
        for item in r.history.item
    }


def config(path: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "config":
            for item in r.config.update:
                cfg[item.key] = json.loads(item.value_json)
        if r.WhichOneof("record_type") == "run":
            for item in r.run.config.update:
                cfg[item.key] = json.loads(item.value_json)
    return cfg


def run_record(path: Path) -> Any:
    """The last `run` record: its job_type, tags, group, name."""
    runs = [r.run for r in records(path) if r.WhichOneof("record_type") == "run"]
    assert runs, f"{path} holds no run record"
    return runs[-1]


def history(path: Path) -> list[dict[str, Any]]:
    """Every logged history row as {key: value}."""
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item})
    return rows
