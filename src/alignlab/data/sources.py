"""Read raw rows from a data source, each tagged with where it came from (file and line or row).

Local files are read by us (not `datasets`) because the error for a bad byte or a broken JSON line must name
the line; folders written by `save_to_disk`, data folders laid out like a Hub repository and Hub ids go through
`datasets`, the same code path a real Hub dataset takes.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from alignlab.errors import DataError

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class RawRow:
    where: str  # "pairs.jsonl line 12", "train.parquet row 4", "org/name[train] row 9"
    data: dict[str, Any]


def resolve_local(path: str) -> Path | None:
    """`pkg://alignlab/...` names a file bundled in the package; anything else is a filesystem path."""
    if path.startswith("pkg://"):
        package, _, rel = path[len("pkg://") :].partition("/")
        return Path(str(resources.files(package).joinpath(rel)))
    local = Path(path).expanduser()
    return local if local.exists() else None


def read_rows(
    path: str, split: str = "train", subset: str | None = None, revision: str | None = None, max_rows: int | None = None
) -> list[RawRow]:
    local = resolve_local(path)
    if local is not None and local.is_file():
        rows = list(_read_file(local))
    elif local is not None and local.is_dir():
        rows = _read_folder(local, split)
    elif HUB_ID.match(path) and not path.startswith((".", "/")):
        rows = _read_hub(path, split, subset, revision)
    else:
        raise DataError(f"Data error: '{path}' does not exist (not a file, a folder, or a Hub dataset id 'org/name').")
    if not rows:
        raise DataError(f"Data error: '{path}' has no rows.")
    return rows[:max_rows] if max_rows else rows


def _decode(raw: bytes, where: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"Data error in '{where}' line {line}: bytes that are not UTF-8 at byte {exc.start} "
            f"({raw[exc.start : exc.start + 4]!r}). Re-save the file as UTF-8."
        ) from None


def _read_file(file: Path) -> Iterator[RawRow]:
    suffix = "".join(file.suffixes[-1:]).lower()
    if suffix in (".jsonl", ".ndjson"):
        text = _decode(file.read_bytes(), file)
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"Data error in '{file}' line {n}: not valid JSON ({exc.msg} at column {exc.colno})."
                ) from None
            if not isinstance(obj, dict):
                raise DataError(f"Data error in '{file}' line {n}: expected a JSON object, got {type(obj).__name__}.")
            yield RawRow(f"{file.name} line {n}", obj)
    elif suffix == ".json":
        text = _decode(file.read_bytes(), file)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"Data error in '{file}' line {exc.lineno}: not valid JSON ({exc.msg}).") from None
        if isinstance(obj, dict):  # {"data": [...]} or {"train": [...]} layouts
            obj = obj.get("data", obj.get("train", obj))
        if not isinstance(obj, list):
            raise DataError(f"Data error in '{file}': expected a list of objects (or JSON lines in a .jsonl file).")
        for n, item in enumerate(obj, start=1):
            if not isinstance(item, dict):
                raise DataError(f"Data error in '{file}' item {n}: expected a JSON object, got {type(item).__name__}.")
            yield RawRow(f"{file.name} item {n}", item)
    elif suffix == ".csv":
        text = _decode(file.read_bytes(), file)
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for item in reader:
            yield RawRow(f"{file.name} line {reader.line_num}", {k: _maybe_json(v) for k, v in item.items()})
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(file)
        except Exception as exc:
            raise DataError(f"Data error in '{file}': not a readable Parquet file ({exc}).") from None
        for n, item in enumerate(table.to_pylist(), start=1):
            yield RawRow(f"{file.name} row {n}", item)
    else:
        raise DataError(f"Data error: '{file}' has an unsupported extension; use .jsonl, .json, .csv or .parquet.")


def _maybe_json(cell: str | None) -> Any:
    """CSV cells holding message lists are JSON text; plain strings stay strings."""
    if cell and cell.lstrip().startswith("[{"):
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return cell
    return cell


def _read_folder(folder: Path, split: str) -> list[RawRow]:
    import datasets

    try:
        if (
            (folder / "dataset_info.json").is_file()
            or (folder / "dataset_dict.json").is_file()
            or (folder / "state.json").is_file()
        ):
            ds = datasets.load_from_disk(str(folder))
        else:
            ds = datasets.load_dataset(str(folder), split=split)
    except Exception as exc:
        raise DataError(f"Data error: cannot read dataset folder '{folder}': {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"Data error: '{folder}' has splits {list(ds)}, not '{split}' (data.*.split).")
        ds = ds[split]
    return [RawRow(f"{folder.name}[{split}] row {n}", item) for n, item in enumerate(ds, start=1)]


def _read_hub(repo: str, split: str, subset: str | None, revision: str | None) -> list[RawRow]:
    import datasets

    try:
        ds = datasets.load_dataset(repo, subset, split=split, revision=revision)
    except Exception as exc:
        raise DataError(
            f"Data error: cannot load Hub dataset '{repo}' (split '{split}'): {' '.join(str(exc).split())[:300]}. "
            "Offline (offline=true) only datasets already in the Hugging Face cache load; otherwise point the "
            "path at a local file or folder."
        ) from None
    return [RawRow(f"{repo}[{split}] row {n}", item) for n, item in enumerate(ds, start=1)]
