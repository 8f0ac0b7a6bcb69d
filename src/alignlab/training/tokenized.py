"""Rows tokenized as TRL's SFT and DPO trainers tokenize conversational rows, for data their own preparation
cannot express: reply openings (`algo.pairs.opening_tokens`), which must not end with the end-of-turn token the
chat template closes every reply with. Our own code because TRL has no option for a reply left open; the tests
check that a conversational row comes out token for token as TRL makes it."""

from __future__ import annotations

from typing import Any


def completion(row: dict[str, Any], tok: Any) -> dict[str, list[int]]:
    """An SFT row: a prompt/completion conversation as SFTTrainer tokenizes it (the completion starts where the
    prompt alone and the whole conversation diverge), or a prompt and an `opening`: the prompt's ids, then the
    opening's, nothing after."""
    prompt = _prompt_ids(row, tok)
    if row.get("opening") is not None:
        ids = prompt + _ids(tok, row["opening"])
        n = len(prompt)
    else:
        ids = _ids(tok, tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False))
        n = _common_prefix(prompt, ids)
    return {"input_ids": ids, "completion_mask": [0] * n + [1] * (len(ids) - n)}


def pair(row: dict[str, Any], tok: Any) -> dict[str, list[int]]:
    """A DPO row: a conversational pair as DPOTrainer tokenizes it (the replies start where the prompt alone and
    each whole conversation first diverge), or an `opening` and a `rejected` opening: the prompt's ids, then each
    opening's, nothing after."""
    prompt = _prompt_ids(row, tok)
    if row.get("opening") is not None:
        chosen, rejected = _ids(tok, row["opening"]), _ids(tok, row["rejected"])
        return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}
    chosen = _ids(tok, tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False))
    rejected = _ids(tok, tok.apply_chat_template(row["prompt"] + row["rejected"], tokenize=False))
    n = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
    return {"prompt_ids": prompt[:n], "chosen_ids": chosen[n:], "rejected_ids": rejected[n:]}


def _prompt_ids(row: dict[str, Any], tok: Any) -> list[int]:
    return _ids(tok, tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False))


def _ids(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
