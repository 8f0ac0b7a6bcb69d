"""CHES: how alike a preference pair's chosen and rejected replies look to the model (Razin et al., "Unintentional
Unalignment: Likelihood Displacement in Direct Preference Optimization", ICLR 2025).

DPO can lower the likelihood of the chosen reply along with the rejected one; the paper traces this to pairs whose
two replies have similar hidden embeddings, and measures it with the centered hidden embedding similarity

    CHES(x, y+, y-) = <h+, h-> - ||h+||^2,

where h+ and h- are the last layer's hidden states at the positions that predict each reply token (the last
prompt token up to the reply's second-to-last token), here averaged over those positions: the length-normalised
score, which the paper found the better predictor. On refusal pairs, dropping the highest-scoring ones kept DPO
from lowering the refusals' likelihood. No library computes it, hence our own.
"""

from __future__ import annotations

from typing import Any

import torch

from alignlab.evaluation.likelihood import context_ids, right_padded
from alignlab.generation import generation_tokenizer


@torch.no_grad()
def ches_scores(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, str]]],
    chosen: list[str],
    rejected: list[str],
    batch_size: int = 16,
) -> list[float]:
    """Length-normalised CHES of each (prompt, chosen, rejected); higher: the two replies look more alike."""
    h_chosen = _mean_reply_states(model, tokenizer, prompts, chosen, batch_size)
    h_rejected = _mean_reply_states(model, tokenizer, prompts, rejected, batch_size)
    return [float(c @ r - c @ c) for c, r in zip(h_chosen, h_rejected, strict=True)]


def _mean_reply_states(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], replies: list[str], batch_size: int
) -> list[torch.Tensor]:
    """The mean last-layer hidden state over the positions that predict each reply's tokens (fp32)."""
    tok = generation_tokenizer(tokenizer)
    seqs = []
    for prompt, reply in zip(prompts, replies, strict=True):
        prefix = context_ids(tok, prompt)
        seqs.append((prefix + tok(reply, add_special_tokens=False)["input_ids"], len(prefix)))
    model.eval()
    device = next(model.parameters()).device
    out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        ids, mask = right_padded([seqs[i][0] for i in batch], tok.pad_token_id)
        hidden = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        last = hidden.hidden_states[-1]
        for row, i in enumerate(batch):
            full, prefix = seqs[i]
            out[i] = last[row, prefix - 1 : len(full) - 1].float().mean(0).cpu()
    return out
