"""Read raw rows from a data source, each tagged with where it came from (file and line or row).

Local files are read by us (not `datasets`) because the error for a bad byte or a broken JSON line must name
the line; folders written by `save_to_disk`, data folders laid out like a Hub repository and Hub ids go through
`datasets`, the same code path a real Hub dataset takes.
"""

from __future__ import annotations

import csv
import hashlib
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
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_SHOWN = 10  # bad lines named in one error; the rest are counted
CSV_CELL_LIMIT = 1_000_000  # characters: a longer cell is a broken file, not a prompt


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


def fingerprint(path: str) -> str:
    """sha256 of a local file or folder's files; Hub ids are recorded as given (their revision is in the config).
    A run's data files and a cached reference's model files are identified by it."""
    local = resolve_local(path)
    if local is None:
        return f"hub:{path}"  # a Hub id (its revision is in the config)
    h = hashlib.sha256()
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(local) if f != local else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_rows(
    path: str,
    split: str = "train",
    subset: str | None = None,
    revision: str | None = None,
    max_rows: int | None = None,
    bad_lines: list[tuple[str, str]] | None = None,
) -> list[RawRow]:
    """The rows of a file, folder or Hub dataset. Lines that are not rows raise `BadLines`, or, given a
    `bad_lines` list, are added to it (where, why) while the rows around them are returned."""
    local = resolve_local(path)
    if local is not None and local.is_file():
        try:
            rows = list(_read_file(local))
        except BadLines as exc:
            if bad_lines is None:
                raise
            bad_lines.extend(exc.bad)
            rows = exc.rows
    elif local is not None and local.is_dir():
        rows = _read_folder(local, split)
    elif local is not None:  # exists, but a FIFO, a device (a link to /dev/zero), a socket: reading could hang
        raise DataError(
            f"Data error: '{path}' is not a regular file or folder (a pipe, device or socket); give a data file."
        )
    elif HUB_ID.match(path) and not path.startswith((".", "/")) and not _looks_like_file(path):
        rows = _read_hub(path, split, subset, revision)
    else:
        raise DataError(f"Data error: '{path}' does not exist (not a file, a folder, or a Hub dataset id 'org/name').")
    if not rows and not bad_lines:
        raise DataError(f"Data error: '{path}' has no rows.")
    return rows[:max_rows] if max_rows else rows


def _looks_like_file(path: str) -> bool:
    """A missing path with a data file's extension is a typo in a local path, not a Hub dataset id to try."""
    return Path(path).suffix.lower() in (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".txt")


def _decode(raw: bytes, where: Path) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"Data error in '{where}' line {line}: bytes that are not UTF-8 at byte {exc.start} "
            f"({raw[exc.start : exc.start + 4]!r}). Re-save the file as UTF-8."
        ) from None
    return text.removeprefix("\ufeff")  # a byte-order mark is an encoding detail, not part of the first field


class _BadValue(ValueError):
    """A JSON value that parses but must not train: the message says what and where inside the object."""


class JSONProblem(ValueError):
    """Why a JSON text is refused, and on which line of it when the parser knows."""

    def __init__(self, why: str, lineno: int | None = None) -> None:
        super().__init__(why)
        self.lineno = lineno


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:  # json keeps the last value silently: the row would train on half of what it says
        raise _BadValue(f"the key {dup!r} appears twice in one object")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise _BadValue(f"{name} is not a number JSON allows (non-finite values are refused)")


def _lone_surrogate(obj: Any) -> bool:
    if isinstance(obj, str):
        return _SURROGATE.search(obj) is not None
    if isinstance(obj, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_lone_surrogate(v) for v in obj)
    return False


def parse_json(text: str) -> Any:
    """`json.loads` that refuses what the standard module lets through silently or turns into a traceback:
    duplicate keys (the last would win), NaN / Infinity, lone UTF-16 surrogates (they cannot be encoded back),
    nesting too deep to parse and integers too long to convert. Raises `JSONProblem` with the reason."""
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise JSONProblem(f"not valid JSON ({exc.msg} at column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise JSONProblem("JSON nested too deeply to read") from None
    except _BadValue as exc:
        raise JSONProblem(str(exc)) from None
    except ValueError as exc:  # int digits over sys.get_int_max_str_digits()
        raise JSONProblem(f"a value JSON cannot hold here ({' '.join(str(exc).split())[:120]})") from None
    if _lone_surrogate(obj):
        raise JSONProblem("text with a lone UTF-16 surrogate (an escape like \\ud800 without its pair)")
    return obj


class BadLines(DataError):
    """Lines of a file that are not rows (broken JSON, a ragged CSV row), with the rows read around them: one error
    for every bad line, so that one pass shows everything to fix, and `data.load` can add the rows' own problems."""

    def __init__(self, file: Path, bad: list[tuple[int, str]], rows: list[RawRow]) -> None:
        self.bad = [(f"{file.name} line {n}", why) for n, why in bad]
        self.rows = rows
        if len(bad) == 1:
            n, why = bad[0]
            super().__init__(f"Data error in '{file}' line {n}: {why}.")
            return
        shown = "; ".join(f"line {n}: {why}" for n, why in bad[:MAX_SHOWN])
        more = f"; and {len(bad) - MAX_SHOWN} more" if len(bad) > MAX_SHOWN else ""
        super().__init__(f"Data error in '{file}': {len(bad)} bad lines: {shown}{more}.")


def _read_jsonl(file: Path) -> Iterator[RawRow]:
    text = _decode(file.read_bytes(), file)
    rows, bad = [], []
    # Split on "\n" only: `str.splitlines` also breaks at U+2028 and other characters valid inside JSON strings.
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj = parse_json(line)
        except JSONProblem as exc:
            bad.append((n, str(exc)))
            continue
        if not isinstance(obj, dict):
            bad.append((n, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        rows.append(RawRow(f"{file.name} line {n}", obj))
    if bad:
        raise BadLines(file, bad, rows)
    yield from rows


def _read_json(file: Path) -> Iterator[RawRow]:
    text = _decode(file.read_bytes(), file)
    try:
        obj = parse_json(text)
    except JSONProblem as exc:
        at = f" line {exc.lineno}" if exc.lineno else ""
        raise DataError(f"Data error in '{file}'{at}: {exc}.") from None
    if isinstance(obj, dict):  # {"data": [...]} or {"train": [...]} layouts
        obj = obj.get("data", obj.get("train", obj))
    if not isinstance(obj, list):
        raise DataError(f"Data error in '{file}': expected a list of objects (or JSON lines in a .jsonl file).")
    for n, item in enumerate(obj, start=1):
        if not isinstance(item, dict):
            raise DataError(f"Data error in '{file}' item {n}: expected a JSON object, got {type(item).__name__}.")
        yield RawRow(f"{file.name} item {n}", item)


def _read_csv(file: Path) -> Iterator[RawRow]:
    """Strict CSV: a quote left open (which would swallow the rows after it), a row with more or fewer fields than
    the header and a cell over `CSV_CELL_LIMIT` are errors naming the line, never rows that train."""
    text = _decode(file.read_bytes(), file)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, bad = [], []
    limit = csv.field_size_limit(CSV_CELL_LIMIT)
    try:
        header = next(reader, None)
        if header is None:
            return
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                reason = str(exc)
                if "field larger than field limit" in reason:
                    reason = f"a cell over {CSV_CELL_LIMIT} characters"
                elif "unexpected end of data" in reason or "EOF" in reason:
                    reason = "a quoted cell is never closed (it would swallow every line after it)"
                bad.append((start, f"not valid CSV: {reason}"))
                break  # the reader cannot find the next row's start after a broken one
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                bad.append((start, f"{len(cells)} fields where the header has {len(header)}"))
                continue
            rows.append(RawRow(f"{file.name} line {start}", {k: _maybe_json(v) for k, v in zip(header, cells)}))
    finally:
        csv.field_size_limit(limit)
    if bad:
        raise BadLines(file, bad, rows)
    yield from rows


def _read_file(file: Path) -> Iterator[RawRow]:
    suffix = "".join(file.suffixes[-1:]).lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _read_jsonl(file)
    elif suffix == ".json":
        yield from _read_json(file)
    elif suffix == ".csv":
        yield from _read_csv(file)
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
            return parse_json(cell)
        except JSONProblem:
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
