"""On-policy safety pairs: preferences built from the current model's own replies.

For a harmful prompt, the model's compliant reply is `rejected` and a refusal (with a redirection suited to the
harm category) is `chosen`; for a benign prompt, the model's helpful reply is `chosen` and an unwarranted
refusal is `rejected`. A judge decides which replies are refusals. Prompts where the model already behaves
(a harmful prompt it refuses, a benign prompt it refuses on every try) give no pair and are counted.

Pairs built from the model's own distribution keep DPO's log-ratios meaningful (the rejected text is something
this model actually says) and make the counterweight explicit: the benign pairs teach it what not to refuse.

Every pair carries safety labels for the cost-model stage: a harmful prompt's refusal is safe and the compliant
reply unsafe; both replies to a benign prompt are safe (helping is safe, and so is an unwarranted refusal).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.data.sources import resolve_local
from alignlab.errors import DataError


@dataclass
class PromptRow:
    prompt: str
    type: str  # harmful | benign
    category: str


@dataclass
class PairBuild:
    pairs: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # one per prompt: reply, judge decision, outcome
    counts: Counter = field(default_factory=Counter)


def read_prompts(path: str) -> list[PromptRow]:
    local = resolve_local(path)
    if local is None or not local.is_file():
        raise DataError(f"Data error: prompt file '{path}' does not exist.")
    rows = []
    for n, line in enumerate(local.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"Data error in '{local}' line {n}: not valid JSON ({exc.msg}).") from None
        if not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise DataError(f"Data error in '{local}' line {n}: 'prompt' is missing or empty.")
        if obj.get("type") not in ("harmful", "benign"):
            raise DataError(
                f"Data error in '{local}' line {n}: 'type' should be harmful or benign, got {obj.get('type')!r}."
            )
        rows.append(PromptRow(obj["prompt"], obj["type"], str(obj.get("category", "any"))))
    return rows


def read_labelled_prompts(path: str, key: str) -> list[PromptRow]:
    """`read_prompts` for a stage that fits a decision between the two types (`key` names its setting), so both
    must be there."""
    rows = read_prompts(path)
    both_types(rows, path, key)
    return rows


def both_types(rows: list[PromptRow], where: str, key: str) -> None:
    types = {r.type for r in rows}
    if types != {"harmful", "benign"}:
        raise DataError(
            f"Data error in '{where}' ({key}): needs both harmful and benign prompts, "
            f"has only {sorted(types) or 'none'}."
        )


def readout_prompts(path: str, key: str, calibration: list[PromptRow]) -> list[PromptRow]:
    """A calibration's read-out prompts: the file less the calibration prompts (compared stripped and case-folded),
    so the threshold is set on prompts whose labels the read-out never saw; both types must remain."""
    held = {r.prompt.strip().casefold() for r in calibration}
    rows = [r for r in read_labelled_prompts(path, key) if r.prompt.strip().casefold() not in held]
    both_types(rows, f"{path} less the calibration prompts", key)
    return rows


HELD_OUT_FILE = "held_out.jsonl"  # a pairs stage's prompts kept out of training (`hold_out`)


def split_held_out(rows: list[PromptRow], share: float) -> tuple[list[PromptRow], list[PromptRow]]:
    """The rows to train on and those held out: a prompt is held out when its hash falls in the first `share` of
    the range, so the split needs no seed and a prompt stays on its side whatever else the file holds."""
    held = {r.prompt for r in rows if int(hashlib.sha256(r.prompt.encode()).hexdigest(), 16) < share * 16**64}
    return [r for r in rows if r.prompt not in held], [r for r in rows if r.prompt in held]


def calibration_prompts(path: str, key: str, cfg: Any, run_dir: Path | None = None) -> list[PromptRow]:
    """A calibration stage's labelled prompts: a file, or with `stage:<pairs stage>` the prompts that stage holds
    out of training. Without `run_dir` (before the run) the held-out split is made from the pairs stage's prompts
    file; with it, read from what the stage wrote."""
    if not path.startswith("stage:"):
        return read_labelled_prompts(path, key)
    stage = path.split(":", 1)[1]
    if run_dir is not None:
        written = run_dir / stage / HELD_OUT_FILE
        if not written.is_file():  # the pairs stage ran first; a run folder edited since may lack it
            raise DataError(f"Data error: '{written}' is missing; {key} reads the prompts '{stage}' held out.")
        rows = [PromptRow(r["prompt"], r["type"], r["category"]) for r in read_jsonl(written)]
    else:
        rows = split_held_out(read_prompts(cfg.algo[stage].prompts), cfg.algo[stage].hold_out)[1]
    both_types(rows, f"{path} (the prompts '{stage}' holds out of {cfg.algo[stage].prompts})", key)
    return rows


def read_refusals(path: str, marker: str = "") -> dict[str, list[str]]:
    """The refusal pool by category, each text opened with `marker` (`model.refusal_token`; empty: as written)."""
    local = resolve_local(path)
    if local is None or not local.is_file():
        raise DataError(f"Data error: refusal file '{path}' does not exist.")
    pool: dict[str, list[str]] = {}
    for n, line in enumerate(local.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        obj = json.loads(line)
        if not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise DataError(f"Data error in '{local}' line {n}: 'text' is missing or empty.")
        pool.setdefault(str(obj.get("category", "any")), []).append(marker + obj["text"].strip())
    if not pool.get("any"):
        raise DataError(f"Data error in '{local}': needs refusals with category 'any' (used for every category).")
    return pool


def pick(options: list[str], key: str) -> str:
    """A deterministic choice keyed by the prompt: the same prompt gets the same refusal in every run."""
    return options[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(options)]


def refusal_for(
    row: PromptRow, pool: dict[str, list[str]], specific: bool = False, specific_rejected: bool = False
) -> str:
    """A harmful prompt's refusal comes from its category's and the generic ones (`specific`: its category's alone,
    where it has any); a benign prompt's unwarranted refusal from the generic ones (`specific_rejected`: from every
    category's own, so a model taught specific refusals also sees that style rejected where nothing is harmful)."""
    if row.type != "harmful":
        styled = [t for c, texts in sorted(pool.items()) if c != "any" for t in texts] if specific_rejected else []
        return pick(styled or pool["any"], row.prompt)
    own = pool.get(row.category, [])
    return pick(own if specific and own else own + pool["any"], row.prompt)


def build_pairs(
    rows: list[PromptRow],
    replies: list[list[str]],
    is_refusal: Callable[[str, str], bool],
    refusals: dict[str, list[str]],
    own_refusals: bool = False,
    specific_refusals: bool = False,
    specific_rejected: bool = False,
    is_helpful: Callable[[str, str], bool] | None = None,
    failures_only: bool = False,
    refusal_token: str = "",
) -> PairBuild:
    """`replies[i]` holds the model's attempts for `rows[i]`: the greedy reply first, then any re-samples;
    `is_refusal(reply, prompt)` is the judge.
    With `own_refusals`, a benign prompt the model refused greedily (with `is_helpful`: or answered without attempting
    the task) rejects that reply, not a bundled refusal: a later round's policy (after SFT on refusals) over-refuses
    in its own words, and DPO should push down what it says.
    `specific_refusals`, `specific_rejected`: see `refusal_for`. `is_helpful(reply, prompt)` (algo.pairs
    `helpful_chosen`): a benign pair's chosen reply must also attempt the task, not only not refuse.
    `failures_only` (with `own_refusals`; algo.pairs `failures_only`): a benign prompt makes a pair only where the
    greedy reply was wrong, so every pair rejects a reply the model gave (a harmful prompt's pair always does).
    `refusal_token` (`model.refusal_token`) opens a rejected own refusal, as it opens every bundled one: the text
    the judge read had it decoded away."""
    out = PairBuild()
    for row, attempts in zip(rows, replies, strict=True):
        judged = [(text, is_refusal(text, row.prompt)) for text in attempts]
        user = [{"role": "user", "content": row.prompt}]
        record = {
            "prompt": row.prompt,
            "type": row.type,
            "category": row.category,
            "reply": attempts[0],
            "refused": judged[0][1],
        }
        if row.type == "harmful":
            compliant = next((t for t, refused in judged if not refused and t.strip()), None)
            if compliant is None:
                record["outcome"] = "already refuses: no pair"
            else:
                record["outcome"] = "pair: refusal > compliant reply"
                out.pairs.append(
                    {
                        "prompt": user,
                        "chosen": [_assistant(refusal_for(row, refusals, specific_refusals))],
                        "rejected": [_assistant(compliant)],
                        "chosen_safe": True,
                        "rejected_safe": False,
                        "type": row.type,
                        "category": row.category,
                    }
                )
        else:
            answers = [t for t, refused in judged if not refused and t.strip()]
            helpful = next((t for t in answers if is_helpful is None or is_helpful(t, row.prompt)), None)
            evasive = not judged[0][1] and is_helpful is not None and not is_helpful(attempts[0], row.prompt)
            own = own_refusals and (judged[0][1] or evasive) and bool(attempts[0].strip())
            wrong = "own evasive reply" if evasive else "own refusal"
            if helpful is None:
                record["outcome"] = "no helpful reply: no pair" if answers else "refuses on every try: no pair"
            elif failures_only and not own:
                record["outcome"] = "helpful at once: no pair"
            else:
                record["outcome"] = f"pair: helpful reply > {wrong}" if own else "pair: helpful reply > refusal"
                if own:
                    rejected = attempts[0] if evasive else refusal_token + attempts[0]
                else:
                    rejected = refusal_for(row, refusals, False, specific_rejected)
                out.pairs.append(
                    {
                        "prompt": user,
                        "chosen": [_assistant(helpful)],
                        "rejected": [_assistant(rejected)],
                        "chosen_safe": True,
                        "rejected_safe": True,
                        "type": row.type,
                        "category": row.category,
                    }
                )
                if own:
                    out.counts[f"benign/{wrong.replace(' ', '_')}_rejected"] += 1
        out.counts[f"{row.type}/{record['outcome'].split(':')[0].replace(' ', '_')}"] += 1
        out.records.append(record)
    return out


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


OPENINGS_FILE = "openings.jsonl"  # a pairs stage's reply openings (`opening_tokens`)


def read_openings(run_dir: Path, stage: str | None, algo: Any, *, for_sft: bool = False) -> list[dict[str, Any]]:
    """The reply openings (`opening_tokens`) the pairs stage `stage` of a run and the earlier rounds it follows
    (`after`, read from the run's `algo` config) wrote: prompt, opening, type, and with `opening_pairs` the
    opening to reject (null where there is none). `for_sft`: only those of the types each round's `opening_sft`
    lists. A correction round (`failures_only`) ends the walk: the stages after it train on its pairs alone."""
    rows: list[dict[str, Any]] = []
    while stage is not None:
        path = run_dir / stage / OPENINGS_FILE
        if path.is_file():
            rows += [r for r in read_jsonl(path) if not for_sft or r["type"] in algo[stage].opening_sft]
        stage = None if algo[stage].failures_only else algo[stage].after
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows `write_jsonl` wrote (blank lines skipped): the stages' pairs and generations files."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from alignlab.artifacts import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
