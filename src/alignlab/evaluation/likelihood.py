"""Log-likelihood of given continuations under a causal LM, batched: what the bias benchmarks and the DPO
implicit reward are computed from.

`score` runs each (context, continuation) as one sequence. `score_choices` scores several continuations of one
context (BBQ's three answers, a pair's chosen and rejected replies) from a single pass over the context, whose
key/value cache the continuations then attend to: a BBQ item is ~120 tokens of context and ~5 of answer, so this
does a third of the work. Neither transformers nor TRL has a helper for it, hence our own.

A context is either a chat conversation (the continuation is then the assistant's reply, scored inside the
model's chat template, as a chat model is used) or a plain string (an empty string: the continuation is scored
as raw text after the BOS token, or EOS where the tokenizer has no BOS, so its first token is scored too).
Sequences are right-padded; only continuation tokens count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from alignlab.generation import generation_tokenizer


@dataclass(frozen=True)
class Scored:
    logprob: float  # sum of the continuation's token log-probabilities (nats)
    n_tokens: int

    @property
    def mean(self) -> float:
        return self.logprob / self.n_tokens if self.n_tokens else 0.0


def context_ids(tokenizer: Any, context: list[dict[str, str]] | str) -> list[int]:
    if isinstance(context, str):
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [start] + tokenizer(context, add_special_tokens=False)["input_ids"]
    return tokenizer.apply_chat_template(context, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]


def right_padded(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded on the right: positions stay those of the unpadded sequences."""
    ids = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def score(
    model: Any,
    tokenizer: Any,
    contexts: list[list[dict[str, str]] | str],
    continuations: list[str],
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> list[Scored]:
    """log p(continuation | context) for each pair; longest first so batches share a length."""
    tok = generation_tokenizer(tokenizer)
    seqs: list[tuple[list[int], int]] = []
    for ctx, cont in zip(contexts, continuations, strict=True):
        prefix = context_ids(tok, ctx)
        seqs.append((prefix + tok(cont, add_special_tokens=False)["input_ids"], len(prefix)))
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    out: list[Scored | None] = [None] * len(seqs)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask = right_padded([seqs[i][0] for i in batch], tok.pad_token_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(batch):
            full, prefix = seqs[i]
            # logits at position t predict token t+1: continuation tokens are predicted from prefix-1 onwards.
            # Normalise only those positions: a BBQ answer is 5 of 100 tokens, and the vocabulary is 49k wide.
            picked = torch.log_softmax(logits[row, prefix - 1 : len(full) - 1].float(), -1)
            targets = ids[row, prefix : len(full)].to(device)
            out[i] = Scored(picked.gather(-1, targets[:, None]).sum().item(), len(full) - prefix)
        if progress is not None:
            progress(len(batch))
    return out  # type: ignore[return-value]


@torch.no_grad()
def score_choices(
    model: Any,
    tokenizer: Any,
    contexts: list[list[dict[str, str]] | str],
    choices: list[list[str]],
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> list[list[Scored]]:
    """log p(choice | context) for every choice of every context, each context run once.

    The contexts go through the model right-padded, with their cache; the cache is then repeated once per
    choice, and the choices follow it with their true positions (`position_ids`: each context's own length) and
    an attention mask that hides the contexts' padding, so each choice sees exactly its unpadded context. A
    choice's first token is predicted by the context's last logits, the others by the choice pass.
    """
    tok = generation_tokenizer(tokenizer)
    prefixes = [context_ids(tok, ctx) for ctx in contexts]
    options = [[tok(c, add_special_tokens=False)["input_ids"] for c in cs] for cs in choices]
    if len(options) != len(prefixes):
        raise ValueError(f"score_choices: {len(prefixes)} contexts but {len(options)} lists of choices")
    if not all(options):
        raise ValueError(f"score_choices: contexts {[i for i, o in enumerate(options) if not o]} have no choices")
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prefixes)), key=lambda i: -len(prefixes[i]))
    out: list[list[Scored]] = [[] for _ in prefixes]
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask = right_padded([prefixes[i] for i in batch], tok.pad_token_id)
        context = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True)
        lengths = torch.tensor([len(prefixes[i]) for i in batch])
        first = torch.log_softmax(context.logits[torch.arange(len(batch)), lengths - 1].float(), -1)
        rows = [(r, c) for r, i in enumerate(batch) for c in options[i]]  # (row of the context, choice ids)
        of_context = torch.tensor([r for r, _ in rows])
        cache = context.past_key_values
        cache.reorder_cache(of_context.to(device))  # one copy of the context's keys and values per choice
        cont, cont_mask = right_padded([c or [tok.pad_token_id] for _, c in rows], tok.pad_token_id)
        positions = lengths[of_context][:, None] + torch.arange(cont.shape[1])
        full_mask = torch.cat([mask[of_context], cont_mask], 1)
        logits = model(
            input_ids=cont.to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            attention_mask=full_mask.to(device),
        ).logits
        for j, (r, c) in enumerate(rows):
            if not c:
                out[batch[r]].append(Scored(0.0, 0))
                continue
            total = first[r, c[0]].item()
            if len(c) > 1:  # logits at choice position t predict its token t+1
                rest = torch.log_softmax(logits[j, : len(c) - 1].float(), -1)
                total += rest.gather(-1, torch.tensor(c[1:], device=device)[:, None]).sum().item()
            out[batch[r]].append(Scored(total, len(c)))
        if progress is not None:
            progress(len(batch))
    return out
