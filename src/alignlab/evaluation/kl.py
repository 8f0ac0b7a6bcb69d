"""KL divergence of a policy to its reference on the policy's own replies.

For each reply y to prompt x: KL = sum_t sum_v pi(v | x, y_<t) [log pi(v | x, y_<t) - log ref(v | x, y_<t)],
the exact per-position KL over the vocabulary, summed over the reply's tokens (nats per reply). This is the
quantity the KL-regularised RLHF objective bounds; we report its mean over prompts.
"""

from __future__ import annotations

from typing import Any

import torch

from alignlab.evaluation.likelihood import context_ids, right_padded
from alignlab.generation import generation_tokenizer


@torch.no_grad()
def sequence_kl(
    policy: Any, ref: Any, tokenizer: Any, prompts: list[list[dict]], replies: list[list[int]], batch_size: int = 16
) -> list[float]:
    tok = generation_tokenizer(tokenizer)
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        seqs, reply_spans = [], []
        for conv, reply in zip(prompts[start : start + batch_size], replies[start : start + batch_size]):
            prompt_ids = context_ids(tok, conv)
            seqs.append(prompt_ids + reply)
            reply_spans.append((len(prompt_ids), len(reply)))
        ids, mask = right_padded(seqs, tok.pad_token_id)
        policy_logits = policy(input_ids=ids, attention_mask=mask).logits
        ref_logits = ref(input_ids=ids, attention_mask=mask).logits
        for i, (p_len, r_len) in enumerate(reply_spans):
            # logits at position t predict token t+1: reply tokens are predicted from p_len-1 .. p_len+r_len-2.
            # Only those positions go through the vocabulary-wide softmax, one reply at a time: over the whole batch
            # (prompts and padding included) its fp32 temporaries made SmolLM2's final evaluation peak at 6.7 GiB
            # (3.3 GiB this way, run alone).
            span = slice(p_len - 1, p_len - 1 + r_len)  # empty for an empty reply: a KL of 0
            logp = torch.log_softmax(policy_logits[i, span].float(), -1)
            logq = torch.log_softmax(ref_logits[i, span].float(), -1)
            out.append((logp.exp() * (logp - logq)).sum().item())
    return out
