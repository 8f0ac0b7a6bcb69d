"""Adapters from the common preference and SFT formats to one schema.

Preference rows become `{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}`
and SFT rows `{"prompt": [messages], "completion": [assistant message]}`: always conversational, so one chat
template renders the prompt/response boundary identically in SFT and DPO and every reply ends with the
template's end-of-turn token (the model keeps learning to stop). Where the source labels each reply's safety
(PKU-SafeRLHF's `is_response_0_safe` / `is_response_1_safe`, or `chosen_safe` / `rejected_safe` columns), a
preference row also has `chosen_safe` / `rejected_safe` (bool): the cost-model stage trains on them.

Each adapter returns the normalized row or raises `RowProblem` with a message naming the field at fault.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

ROLES = ("system", "user", "assistant")
PAIR_KEYS = ("prompt", "chosen", "rejected")
SAFETY_KEYS = ("chosen_safe", "rejected_safe")


class RowProblem(Exception):
    """A malformed row; the caller adds the file and line."""


def detect(row: dict[str, Any], kind: str) -> str:
    keys = set(row)
    if kind == "sft":
        if "messages" in keys:
            return "messages"
        if {"prompt", "completion"} <= keys:
            return "prompt_completion"
        raise RowProblem(
            f"cannot tell the SFT format from columns {sorted(keys)}: expected 'messages' or 'prompt' and 'completion'"
        )
    if {"response_0", "response_1"} <= keys:
        return "pku"
    if {"chosen", "rejected"} <= keys:
        if "prompt" not in keys:
            return "hh" if isinstance(row["chosen"], str) else "conversational"
        return "conversational" if isinstance(row["prompt"], list) or isinstance(row["chosen"], list) else "plain"
    raise RowProblem(
        f"cannot tell the preference format from columns {sorted(keys)}: expected 'prompt'/'chosen'/"
        "'rejected', HH-RLHF 'chosen'/'rejected' transcripts, or PKU-SafeRLHF 'response_0'/'response_1'"
    )


def _text(row: dict[str, Any], key: str) -> str:
    if key not in row or row[key] is None:
        raise RowProblem(f"'{key}' is missing")
    value = row[key]
    if isinstance(value, list):
        raise RowProblem(
            f"'{key}' is a message list but this file's rows are read as plain strings "
            "(format detected from its first row)"
        )
    if not isinstance(value, str):
        raise RowProblem(f"'{key}' should be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowProblem(f"'{key}' is empty")
    return value


def _messages(value: Any, key: str) -> list[dict[str, str]]:
    if value is None:
        raise RowProblem(f"'{key}' is missing")
    if isinstance(value, str):
        raise RowProblem(f"'{key}' is a string but the row's other fields are message lists")
    if not isinstance(value, list) or not value:
        raise RowProblem(f"'{key}' should be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowProblem(f"'{key}[{i}]' should be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise RowProblem(f"'{key}[{i}]' has role '{m['role']}', expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise RowProblem(f"'{key}[{i}].content' must be text, got {type(m['content']).__name__}")
        if not m["content"].strip():
            raise RowProblem(f"'{key}[{i}]' has empty content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _check_prompt(prompt: list[dict[str, str]], key: str = "prompt") -> None:
    if prompt[-1]["role"] != "user":
        raise RowProblem(f"'{key}' should end with a user turn, ends with '{prompt[-1]['role']}'")


def _reply(value: Any, key: str) -> list[dict[str, str]]:
    msgs = _messages(value, key)
    if any(m["role"] != "assistant" for m in msgs):
        raise RowProblem(f"'{key}' should hold assistant turns only, has roles {[m['role'] for m in msgs]}")
    return msgs


def _safety(value: Any, key: str) -> bool | None:
    """A reply's safety label: a bool, 0/1 or "true"/"false" (CSV cells); missing, null, empty or NaN means
    unlabelled."""
    if isinstance(value, str):
        value = {"": None, "true": True, "false": False}.get(value.strip().lower(), value)
    if value is None or value != value:  # NaN: an empty cell of a numeric column
        return None
    if value in (0, 1):  # also True/False and numpy bools
        return bool(value)
    raise RowProblem(f"'{key}' should be true, false or null, got {value!r}")


def _pair(
    prompt: list[dict[str, str]],
    chosen: list[dict[str, str]],
    rejected: list[dict[str, str]],
    chosen_safe: bool | None = None,
    rejected_safe: bool | None = None,
) -> dict[str, Any]:
    _check_prompt(prompt)
    if chosen == rejected:
        raise RowProblem("'chosen' and 'rejected' are identical")
    if _comparable(chosen) == _comparable(rejected):
        raise RowProblem(
            "'chosen' and 'rejected' differ only in whitespace or Unicode form (identical after NFKC normalisation "
            "and collapsing whitespace), so the pair teaches nothing but that difference"
        )
    row: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    for key, label in zip(SAFETY_KEYS, (chosen_safe, rejected_safe)):
        if label is not None:  # unlabelled rows keep the three keys every stage reads
            row[key] = label
    return row


def _comparable(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    """Messages as a reader sees them: NFKC-normalised (full-width letters, ligatures, composed accents), case
    kept, whitespace runs collapsed. Two replies equal under this differ in bytes only."""
    return [(m["role"], " ".join(unicodedata.normalize("NFKC", m["content"]).split())) for m in messages]


def _row_safety(row: dict[str, Any]) -> dict[str, bool | None]:
    """The `chosen_safe` / `rejected_safe` columns of a conversational or plain row, as `_pair` keywords."""
    return {key: _safety(row.get(key), key) for key in SAFETY_KEYS}


def conversational(row: dict[str, Any]) -> dict[str, Any]:
    if "prompt" not in row:  # TRL's implicit-prompt layout: whole conversations, shared prefix is the prompt
        chosen, rejected = _messages(row.get("chosen"), "chosen"), _messages(row.get("rejected"), "rejected")
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise RowProblem("'chosen' and 'rejected' share no prompt turns")
        return _pair(chosen[:n], _reply(chosen[n:], "chosen"), _reply(rejected[n:], "rejected"), **_row_safety(row))
    prompt = row["prompt"]
    prompt = (
        [{"role": "user", "content": _text(row, "prompt")}] if isinstance(prompt, str) else _messages(prompt, "prompt")
    )
    return _pair(
        prompt, _reply(row.get("chosen"), "chosen"), _reply(row.get("rejected"), "rejected"), **_row_safety(row)
    )


def plain(row: dict[str, Any]) -> dict[str, Any]:
    prompt, chosen, rejected = _text(row, "prompt"), _text(row, "chosen"), _text(row, "rejected")
    # A frequent mistake: `chosen` holding the whole conversation. Strip the prompt when both replies repeat it.
    if chosen.startswith(prompt) and rejected.startswith(prompt) and len(chosen) > len(prompt) < len(rejected):
        chosen, rejected = chosen[len(prompt) :].lstrip(), rejected[len(prompt) :].lstrip()
    if not chosen.strip() or not rejected.strip():
        raise RowProblem("'chosen' or 'rejected' is empty once the repeated prompt is removed")
    return _pair(
        [{"role": "user", "content": prompt}],
        [{"role": "assistant", "content": chosen}],
        [{"role": "assistant", "content": rejected}],
        **_row_safety(row),
    )


HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def _hh_turns(text: str, key: str) -> list[dict[str, str]]:
    parts = HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise RowProblem(f"'{key}' is not an HH-RLHF transcript (expected '\\n\\nHuman: ...\\n\\nAssistant: ...')")
    turns = [
        {"role": "user" if who == "Human" else "assistant", "content": body.strip()}
        for who, body in zip(parts[1::2], parts[2::2])
    ]
    if turns[-1]["role"] != "assistant" or not turns[-1]["content"]:
        raise RowProblem(f"'{key}' does not end with a non-empty Assistant turn")
    return turns


def hh(row: dict[str, Any]) -> dict[str, Any]:
    chosen, rejected = _hh_turns(_text(row, "chosen"), "chosen"), _hh_turns(_text(row, "rejected"), "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise RowProblem("'chosen' and 'rejected' transcripts differ before their last Assistant turn")
    if any(not t["content"] for t in chosen[:-1]):
        raise RowProblem("a Human or Assistant turn before the reply is empty")
    return _pair(chosen[:-1], chosen[-1:], rejected[-1:])


def pku(row: dict[str, Any], choose_by: str) -> dict[str, Any]:
    prompt = _text(row, "prompt")
    responses = [_text(row, "response_0"), _text(row, "response_1")]
    id_key = "better_response_id" if choose_by == "better" else "safer_response_id"
    best = row.get(id_key)
    if best not in (0, 1, "0", "1"):
        raise RowProblem(f"'{id_key}' should be 0 or 1, got {best!r}")
    best = int(best)
    safe = [_safety(row.get(f"is_response_{i}_safe"), f"is_response_{i}_safe") for i in (0, 1)]
    return _pair(
        [{"role": "user", "content": prompt}],
        [{"role": "assistant", "content": responses[best]}],
        [{"role": "assistant", "content": responses[1 - best]}],
        chosen_safe=safe[best],
        rejected_safe=safe[1 - best],
    )


def sft(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    if fmt == "messages":
        msgs = _messages(row.get("messages"), "messages")
        if msgs[-1]["role"] != "assistant":
            raise RowProblem("'messages' should end with an assistant turn (the one trained on)")
        k = len(msgs) - 1
        while k > 0 and msgs[k - 1]["role"] == "assistant":
            k -= 1
        if k == 0:
            raise RowProblem("'messages' has no user turn before the final assistant turn")
        prompt, completion = msgs[:k], msgs[k:]
    else:
        p, c = row.get("prompt"), row.get("completion")
        prompt = [{"role": "user", "content": _text(row, "prompt")}] if isinstance(p, str) else _messages(p, "prompt")
        completion = (
            [{"role": "assistant", "content": _text(row, "completion")}]
            if isinstance(c, str)
            else _reply(c, "completion")
        )
    _check_prompt(prompt)
    return {"prompt": prompt, "completion": completion}


def normalize(row: dict[str, Any], fmt: str, kind: str, pku_choose_by: str = "better") -> dict[str, Any]:
    if kind == "sft":
        return sft(row, fmt)
    if fmt == "pku":
        return pku(row, pku_choose_by)
    return {"conversational": conversational, "plain": plain, "hh": hh}[fmt](row)


def pair_only(row: dict[str, Any]) -> dict[str, Any]:
    """The prompt and the two replies of a row, for trainers that take every column as a feature (DPO, reward):
    safety labels are present on some rows only, and a column missing from some rows breaks `Dataset.from_list`."""
    return {key: row[key] for key in PAIR_KEYS}


def chosen_as_sft(pair: dict[str, Any]) -> dict[str, Any]:
    """SFT on the chosen replies of preference pairs (the usual start of an SFT -> DPO pipeline)."""
    return {"prompt": pair["prompt"], "completion": pair["chosen"]}
