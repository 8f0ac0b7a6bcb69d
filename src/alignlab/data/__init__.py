"""Preference and SFT data: read any supported source, normalize it, validate every row before training.

`load(source, kind, data_cfg, tokenizer)` returns the clean rows and a `DataReport`; any malformed row raises one
`DataError` listing the rows at fault (file and line), so a bad file never starts a run. Length and duplicate
policies (`data.on_overlength`, `data.on_duplicate`) are applied here and counted in the report.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alignlab.data import formats
from alignlab.data.sources import RawRow, read_rows
from alignlab.errors import DataError

MAX_LISTED = 8  # problems spelled out in an error; the rest are counted


@dataclass
class DataReport:
    source: str
    kind: str  # "preference" or "sft"
    format: str = "?"
    rows_read: int = 0
    rows_kept: int = 0
    duplicates: int = 0
    overlength: int = 0
    overlength_action: str = "truncate"
    prompts_cut: int = 0  # truncate: prompts that filled the window, cut from their start to half of it
    token_lengths: list[int] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lengths = self.token_lengths
        return {
            "source": self.source,
            "kind": self.kind,
            "format": self.format,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "duplicates": self.duplicates,
            "overlength": self.overlength,
            "overlength_action": self.overlength_action,
            "prompts_cut": self.prompts_cut,
            "problems": len(self.problems),
            "tokens_min": min(lengths) if lengths else None,
            "tokens_median": statistics.median(lengths) if lengths else None,
            "tokens_max": max(lengths) if lengths else None,
        }


def load(source: DictConfig, kind: str, data_cfg: DictConfig, tokenizer: Any | None) -> tuple[list[dict], DataReport]:
    """Read, normalize and validate one source. `tokenizer=None` skips the token-length checks."""
    report = DataReport(source=str(source.path), kind=kind, overlength_action=data_cfg.on_overlength)
    raw = read_rows(
        str(source.path), source.split, source.subset, source.revision, source.max_rows, bad_lines=report.problems
    )
    if source.get("columns"):
        raw = _renamed(raw, dict(source.columns), str(source.path))
    report.rows_read = len(raw) + len(report.problems)  # lines that are not rows count as malformed rows
    if not raw:
        raise DataError(_describe(report))
    fmt = source.format
    if fmt == "auto":
        try:
            fmt = formats.detect(raw[0].data, "sft" if kind == "sft" else "preference")
        except formats.RowProblem as exc:
            raise DataError(
                f"Data error in '{source.path}' ({raw[0].where}): {exc}. Set data.*.format to one of "
                "conversational, plain, hh, pku, prompt_completion, messages."
            ) from None
    sft_formats = ("prompt_completion", "messages")
    if (kind == "sft") != (fmt in sft_formats):
        expected = "prompt_completion or messages" if kind == "sft" else "conversational, plain, hh or pku"
        raise DataError(
            f"Data error: '{source.path}' is read as {kind} data, so its format must be {expected}, not '{fmt}'."
        )
    report.format = fmt

    rows, wheres = [], []
    for r in raw:
        try:
            rows.append(formats.normalize(r.data, fmt, kind, source.pku_choose_by))
            wheres.append(r.where)
        except formats.RowProblem as exc:
            report.problems.append((r.where, str(exc)))
    if report.problems:
        raise DataError(_describe(report))

    rows, wheres = _dedupe(rows, wheres, data_cfg.on_duplicate, report)
    if tokenizer is not None:
        _check_control_tokens(rows, wheres, tokenizer, report)
        rows = _check_lengths(rows, wheres, tokenizer, data_cfg, report)
    report.rows_kept = len(rows)
    if not rows:
        raise DataError(f"Data error: no rows of '{source.path}' are left after the length and duplicate checks.")
    return rows, report


def _renamed(raw: list[RawRow], columns: dict[str, str], path: str) -> list[RawRow]:
    """Rows with the file's columns under the names alignlab reads (`columns`: expected -> the file's). A mapped
    column missing from a row is that row's error; every such row is named in one message."""
    missing = [(r.where, [c for c in columns.values() if c not in r.data]) for r in raw]
    missing = [(where, cols) for where, cols in missing if cols]
    if missing:
        listed = "; ".join(f"{where}: no column {', '.join(map(repr, cols))}" for where, cols in missing[:MAX_LISTED])
        more = f"; and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise DataError(
            f"Data error in '{path}': {len(missing)} of {len(raw)} rows lack a column named in data.*.columns "
            f"({listed}{more})."
        )
    renamed = []
    for r in raw:
        row = {k: v for k, v in r.data.items() if k not in columns}  # the mapped column replaces one of that name
        row.update({want: r.data[have] for want, have in columns.items()})
        renamed.append(RawRow(r.where, row))
    return renamed


def load_stage_pairs(run_dir: Path, stage: str, data_cfg: DictConfig, tokenizer: Any) -> tuple[list[dict], DataReport]:
    """Pairs an earlier stage of a run wrote (`stage:<name>`) go through the same validation as any data file."""
    from alignlab.config import SourceConfig

    path = run_dir / stage / "pairs.jsonl"
    if not path.is_file():
        raise DataError(f"Data error: stage '{stage}' of run '{run_dir}' has written no pairs ({path} is missing).")
    return load(
        OmegaConf.structured(SourceConfig(path=str(path), format="conversational")), "preference", data_cfg, tokenizer
    )


def _describe(report: DataReport) -> str:
    listed = "; ".join(f"{where}: {msg}" for where, msg in report.problems[:MAX_LISTED])
    more = len(report.problems) - MAX_LISTED
    tail = f"; and {more} more" if more > 0 else ""
    return (
        f"Data error in '{report.source}': {len(report.problems)} of {report.rows_read} rows are malformed "
        f"({report.format} format). {listed}{tail}. Fix or remove these rows; nothing was trained."
    )


def _dedupe(rows: list[dict], wheres: list[str], policy: str, report: DataReport) -> tuple[list[dict], list[str]]:
    seen: dict[str, str] = {}
    kept, kept_where = [], []
    for row, where in zip(rows, wheres):
        key = json.dumps(row, sort_keys=True)
        if key in seen:
            report.duplicates += 1
            if policy == "error":
                report.problems.append((where, f"duplicate of {seen[key]}"))
            if policy != "keep":
                continue
        else:
            seen[key] = where
        kept.append(row)
        kept_where.append(where)
    if report.problems:
        raise DataError(_describe(report) + " (data.on_duplicate=error; use drop to skip duplicates.)")
    return kept, kept_where


# Turn markers as chat templates write them: ChatML and Llama 3 (<|...|>), Llama 2 / Mistral ([INST], <s>),
# Gemma (<start_of_turn>). Found in a template's own rendering, they are control text even where the tokenizer
# does not register them as special tokens (its template then writes them as plain text, as a row could).
TEMPLATE_MARKER = re.compile(r"<\|[^<>|\s]{1,40}\|>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>")


def control_strings(tokenizer: Any) -> set[str]:
    """The tokenizer's special tokens, plus the turn markers its chat template renders around messages."""
    found = {t for t in tokenizer.all_special_tokens if t and len(t) > 1}
    turns = [{"role": "user", "content": "\x00"}, {"role": "assistant", "content": "\x00"}]
    try:
        rendered = tokenizer.apply_chat_template(turns, tokenize=False)
    except Exception:  # no template, or one that needs other turns: the special tokens still apply
        return found
    for fragment in str(rendered).split("\x00"):
        found.update(TEMPLATE_MARKER.findall(fragment))
    return found


def _check_control_tokens(rows: list[dict], wheres: list[str], tokenizer: Any, report: DataReport) -> None:
    """No message may contain the tokenizer's special tokens as text (`<|im_end|>`, `<|im_start|>`, ...): the chat
    template would read them as turn boundaries, so a row could end its own turn and forge another (a prompt
    injection into the training data), and the tokens trained on would not be the text the row shows."""
    special = sorted(control_strings(tokenizer), key=len, reverse=True)
    if not special:
        return
    for row, where in zip(rows, wheres):
        for key in ("prompt", "chosen", "rejected", "completion"):
            for i, message in enumerate(row.get(key) or []):
                found = next((t for t in special if t in message["content"]), None)
                if found:
                    report.problems.append(
                        (where, f"'{key}[{i}]' contains the chat template's control token {found!r} as text")
                    )
    if report.problems:
        raise DataError(
            _describe(report) + " Remove or escape those tokens: the chat template would read them as turn markers."
        )


def _check_lengths(
    rows: list[dict], wheres: list[str], tokenizer: Any, data_cfg: DictConfig, report: DataReport
) -> list[dict]:
    """Apply `data.on_overlength` to rows longer than `data.max_length` (prompt and the longer reply, templated).
    truncate: the trainers cut the reply; a prompt that fills the window by itself would leave no reply token to
    learn from, so it is cut here, from its start (the question is usually at its end), to half the window (to all
    but one token where the chat template's own tokens fill half of it)."""
    limit = data_cfg.max_length
    kept = []
    for row, where in zip(rows, wheres):
        n, prompt_n = _lengths(tokenizer, row)
        report.token_lengths.append(n)
        if n > limit or prompt_n >= limit:
            report.overlength += 1
            if data_cfg.on_overlength == "error":
                report.problems.append((where, f"{n} tokens, over data.max_length={limit}"))
            if data_cfg.on_overlength == "drop":
                continue
            if data_cfg.on_overlength == "truncate" and prompt_n >= limit:
                # half the window; in a window so small that the template's own tokens fill half, all but one token
                row = _cut_prompt(tokenizer, row, limit // 2) or _cut_prompt(tokenizer, row, limit - 1)
                if row is None:  # the template alone fills the window: no prompt fits
                    continue
                report.prompts_cut += 1
        kept.append(row)
    if report.problems:
        raise DataError(_describe(report) + " (data.on_overlength=error; use truncate or drop.)")
    return kept


def _lengths(tokenizer: Any, row: dict) -> tuple[int, int]:
    """Tokens of the prompt with its longer reply, and of the prompt with the generation prompt, templated."""
    replies = [row["chosen"], row["rejected"]] if "chosen" in row else [row["completion"]]
    n = max(
        len(tokenizer.apply_chat_template(row["prompt"] + reply, tokenize=True, return_dict=True)["input_ids"])
        for reply in replies
    )
    return n, _prompt_tokens(tokenizer, row["prompt"])


def _prompt_tokens(tokenizer: Any, prompt: list[dict[str, str]]) -> int:
    ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)
    return len(ids["input_ids"])


def _cut_prompt(tokenizer: Any, row: dict, room: int) -> dict | None:
    """`row` with its prompt shortened to at most `room` tokens: earlier messages dropped first (the last one is
    kept), then the last one's text cut from its start at a word boundary, by bisection on its length. None when
    even an empty last message does not fit."""
    prompt = [dict(m) for m in row["prompt"]]
    while len(prompt) > 1 and _prompt_tokens(tokenizer, prompt) > room:
        prompt.pop(0)
    text = prompt[-1]["content"]
    if _prompt_tokens(tokenizer, [*prompt[:-1], {**prompt[-1], "content": ""}]) > room:
        return None
    low, high = 0, len(text)  # the longest kept tail that fits lies in [low, high]
    while low < high:
        mid = (low + high + 1) // 2
        if _prompt_tokens(tokenizer, [*prompt[:-1], {**prompt[-1], "content": text[-mid:]}]) <= room:
            low = mid
        else:
            high = mid - 1
    tail = text[len(text) - low :]
    if " " in tail and low < len(text):
        tail = tail.split(" ", 1)[1]  # start at a whole word
    return {**row, "prompt": [*prompt[:-1], {**prompt[-1], "content": tail}]}


def as_sft(pairs: list[dict]) -> list[dict]:
    return [formats.chosen_as_sft(p) for p in pairs]


def without_labels(pairs: list[dict]) -> list[dict]:
    """Prompt and replies only: what a trainer that reads every column (DPO, reward model) should be given."""
    return [formats.pair_only(p) for p in pairs]


SIGN_COLUMNS = ("chosen_sign", "rejected_sign")  # a cost model's targets: +1 unsafe, -1 safe, 0 unlabelled


def safety_sign(label: bool | None) -> int:
    """A reply's cost sign target: +1 unsafe, -1 safe, 0 unlabelled (no sign term, no pairwise term)."""
    return 0 if label is None else (-1 if label else 1)


def labelled_pairs(pairs: list[dict]) -> list[dict]:
    """The pairs with at least one safety label, with the labels as sign columns; unlabelled pairs teach a cost
    model nothing."""
    return [
        {
            **formats.pair_only(p),
            **{col: safety_sign(p.get(key)) for col, key in zip(SIGN_COLUMNS, formats.SAFETY_KEYS)},
        }
        for p in pairs
        if any(key in p for key in formats.SAFETY_KEYS)
    ]


def check_safety_labels(rows: list[dict], source: str, stage: str) -> None:
    """Fail before any compute when the labels cannot train a cost model whose sign means something (called by
    pipeline.prepare for data files, and by the cm stage for pairs a stage of the run wrote)."""
    if not rows:
        raise DataError(
            f"Data error: the {stage} stage trains on safety labels, but no pair of '{source}' "
            "(data.preference) has any: add boolean chosen_safe / rejected_safe columns, or use PKU-SafeRLHF "
            "(is_response_0_safe / is_response_1_safe) or on-policy pairs (stage:<pairs stage>)."
        )
    signs = {row[col] for row in rows for col in SIGN_COLUMNS} - {0}
    if len(signs) == 1:
        which = "safe" if signs == {-1} else "unsafe"
        raise DataError(
            f"Data error: every labelled reply of '{source}' (data.preference) is {which}, so the {stage} stage "
            "cannot learn where safe ends: it needs both safe and unsafe replies."
        )


def unique_prompts(pairs: list[dict]) -> list[list[dict[str, str]]]:
    """Each prompt of the preference pairs once, in first-seen order: what online RL stages (PPO, GRPO, RLOO)
    sample from (several pairs often share a prompt)."""
    seen: dict[str, list[dict[str, str]]] = {}
    for row in pairs:
        seen.setdefault(json.dumps(row["prompt"], sort_keys=True), row["prompt"])
    return list(seen.values())
