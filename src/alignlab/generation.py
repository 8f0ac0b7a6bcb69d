"""Batched greedy (or sampled) chat generation, shared by on-policy pair building, evaluation and PPO's rollouts.

Padding is done with a token that is *not* the end-of-turn marker: SmolLM2 ships `<|im_end|>` as its pad token,
so masks derived from the pad id would hide the end-of-turn markers inside chat prompts. We pad on the left with
`<|endoftext|>` (or the tokenizer's EOS when that is a different token) and stop on the end-of-turn token.

Greedy replies come from our own decoding loop (`decode`), not `model.generate`: prompts are sorted by their
token length so a batch pads little, and a row leaves the batch (and its KV cache) as soon as it ends, where
`generate` keeps computing every finished row until the batch's longest reply is done. Evaluation's replies end
at very different lengths (a refusal in a dozen tokens, an answer at the cap), so most of a batch's late steps
were spent on finished rows. The token prefix every prompt of a call shares (the chat template's system prompt and
the user turn's opening: 24 of the default evaluation's 47 prompt tokens on average) is run through the model
once and its KV cache copied to each batch, instead of being recomputed for every row. The replies are those of
`generate` token for token (`benchmarks/generation_speed.py` checks it on the default evaluation). Sampled replies
(PPO's rollouts, resampled pair replies) come from the same loop, each row's next token drawn from its own
temperature-scaled, top-k-cut distribution as `generate` draws it; they are not `generate`'s token for token, since
`generate` also draws for finished rows, which takes different random numbers. Under ZeRO-3 every path stays with
`generate(synced_gpus)`, which keeps the ranks in step.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers.integrations import is_deepspeed_zero3_enabled


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
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    token_ids = tok(texts, add_special_tokens=False)["input_ids"]
    lengths = [len(ids) for ids in token_ids]
    own_loop = not is_deepspeed_zero3_enabled()
    prefix = shared_prefix(token_ids) if own_loop else []
    prefix_cache = prefill_prefix(model, prefix, device) if prefix else None
    sampler = Sampler(temperature, 0, torch.Generator(device).manual_seed(seed)) if do_sample else None
    # Longest first: batches of similar length waste less compute on padding.
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    results: list[dict[str, Any] | None] = [None] * len(prompts)
    generator_seed = seed
    for batch_idx in _batches(order, batch_size):
        enc = tok.pad({"input_ids": [token_ids[i][len(prefix) :] for i in batch_idx]}, return_tensors="pt")
        enc = enc.to(device)
        if own_loop:
            ids, mask = enc["input_ids"], enc["attention_mask"]
            replies = decode(model, ids, mask, max_new_tokens, stops, prefix_cache, sampler)
        else:  # generate(synced_gpus) keeps ZeRO-3 ranks in step
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
            replies = out[:, enc["input_ids"].shape[1] :].tolist()
        for row, i in enumerate(batch_idx):
            reply = replies[row]
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


def shared_prefix(token_ids: list[list[int]]) -> list[int]:
    """The longest token prefix all prompts share, short of each prompt's last token (every row keeps one token
    of its own for the first step's logits)."""
    if not token_ids:
        return []
    first, shortest = token_ids[0], min(len(ids) for ids in token_ids)
    n = 0
    while n < shortest - 1 and all(ids[n] == first[n] for ids in token_ids):
        n += 1
    return first[:n]


@torch.no_grad()
def prefill_prefix(model: Any, prefix: list[int], device: torch.device) -> Any:
    """The KV cache of the shared prefix, computed once for one row."""
    from transformers import DynamicCache

    cache = DynamicCache()
    model(input_ids=torch.tensor([prefix], device=device), past_key_values=cache, logits_to_keep=1)
    return cache


@dataclass
class Sampler:
    """Draws each row's next token as `generate(do_sample=True, temperature=..., top_k=...)` does: logits divided by
    the temperature, all but the `top_k` largest dropped (0: none), softmax, one multinomial draw: from `generator`
    (on the logits' device) so a seeded call is reproducible, or from torch's global generator (None), whose state
    a training checkpoint carries."""

    temperature: float
    top_k: int = 0
    generator: torch.Generator | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float() / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=self.generator).squeeze(1)


@torch.no_grad()
def decode(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: int,
    stops: list[int],
    prefix_cache: Any = None,
    sampler: Sampler | None = None,
) -> list[list[int]]:
    """Each left-padded row's reply, greedy or drawn by `sampler` (its stop token included when it ends), computing
    only the rows still generating: a row that ends leaves the batch, its KV cache rows with it
    (DynamicCache.batch_select_indices).
    With `prefix_cache` (one row's cache of the tokens every row starts with), `ids` hold what follows the prefix:
    each row is the prefix, its padding, then its own tokens, which the attention mask makes the same computation
    as the padding first. Positions follow the attention mask, as `generate` sets them, so padding does not shift a
    row."""
    from transformers import DynamicCache

    if prefix_cache is None:
        cache = DynamicCache()
    else:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(ids.shape[0])
        mask = torch.cat([mask.new_ones(ids.shape[0], prefix_cache.get_seq_length()), mask], dim=1)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, logits_to_keep=1
    ).logits
    live = torch.arange(ids.shape[0], device=ids.device)  # original row of each row still in the batch
    replies: list[list[int]] = [[] for _ in range(ids.shape[0])]
    stop = torch.tensor(stops, device=ids.device)
    for step in range(max_new_tokens):
        token = logits[:, -1].argmax(-1) if sampler is None else sampler(logits[:, -1])
        for row, t in zip(live.tolist(), token.tolist()):
            replies[row].append(t)
        going = ~torch.isin(token, stop)
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            live, token, mask, positions = live[keep], token[keep], mask[keep], positions[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(
            input_ids=token[:, None], attention_mask=mask, position_ids=positions, past_key_values=cache
        ).logits
    return replies


def trim_to_sentence(text: str) -> str:
    """A reply cut off by max_new_tokens, shortened to its last complete sentence (when it has one), so a model
    trained on it learns to finish its sentences and stop rather than to stop mid-word."""
    cut = max(text.rfind(p) for p in (". ", "! ", "? ", ".\n", "\n\n"))
    if text.rstrip().endswith((".", "!", "?")):
        return text.rstrip()
    return text[: cut + 1].rstrip() if cut > 0 else text.rstrip()
