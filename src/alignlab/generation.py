"""Batched greedy (or sampled) chat generation, shared by on-policy pair building and evaluation.

Padding is done with a token that is *not* the end-of-turn marker: SmolLM2 ships `<|im_end|>` as its pad token,
so masks derived from the pad id would hide the end-of-turn markers inside chat prompts. We pad on the left with
`<|endoftext|>` (or the tokenizer's EOS when that is a different token) and stop on the end-of-turn token.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch


def generation_tokenizer(tokenizer: Any) -> Any:
    tok = copy.copy(tokenizer)
    tok.padding_side = "left"
    end_of_turn = tokenizer.eos_token
    for candidate in ("<|endoftext|>", "<pad>", "<unk>"):
        if candidate in tokenizer.get_vocab() and candidate != end_of_turn:
            tok.pad_token = candidate
            break
    return tok


def stop_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.get_vocab().get(token)
        if tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Reply to each conversation; returns dicts with `text`, `token_ids` (the reply) and `truncated`."""
    tok = generation_tokenizer(tokenizer)
    stops = stop_ids(tokenizer)
    model.eval()
    device = next(model.parameters()).device
    # Longest first: batches of similar length waste less compute on padding.
    order = sorted(range(len(prompts)), key=lambda i: -len(str(prompts[i])))
    results: list[dict[str, Any] | None] = [None] * len(prompts)
    generator_seed = seed
    for batch_idx in _batches(order, batch_size):
        texts = [tok.apply_chat_template(prompts[i], add_generation_prompt=True, tokenize=False) for i in batch_idx]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        if do_sample:
            torch.manual_seed(generator_seed)
            generator_seed += 1
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=None,
            top_k=None,
            eos_token_id=stops,
            pad_token_id=tok.pad_token_id,
        )
        for row, i in enumerate(batch_idx):
            reply = out[row, enc["input_ids"].shape[1] :].tolist()
            ended = next((k for k, t in enumerate(reply) if t in stops), None)
            ids = reply[:ended] if ended is not None else [t for t in reply if t != tok.pad_token_id]
            results[i] = {
                "text": tokenizer.decode(ids, skip_special_tokens=True).strip(),
                "token_ids": ids,
                "truncated": ended is None,
            }
        if progress is not None:
            progress(len(batch_idx))
    return results  # type: ignore[return-value]


def trim_to_sentence(text: str) -> str:
    """A reply cut off by max_new_tokens, shortened to its last complete sentence (when it has one), so a model
    trained on it learns to finish its sentences and stop rather than to stop mid-word."""
    cut = max(text.rfind(p) for p in (". ", "! ", "? ", ".\n", "\n\n"))
    if text.rstrip().endswith((".", "!", "?")):
        return text.rstrip()
    return text[: cut + 1].rstrip() if cut > 0 else text.rstrip()
