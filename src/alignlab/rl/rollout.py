"""PPO's rollouts: an iteration's prompts, the policy's sampled replies, and everything the update needs from them
(log-probabilities of policy and reference at sampling time, values, the scorers' rewards and costs), detached.

Replies stop on the end-of-turn token, which stays part of the reply so the policy keeps learning to stop.
Generation unwraps (and under ZeRO-3 gathers) the policy via TRL's `unwrap_model_for_generation`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from omegaconf import DictConfig

from alignlab.generation import Sampler, decode, generation_tokenizer, prefill_prefix, shared_prefix, stop_ids
from alignlab.rl.actor_critic import ActorCritic
from alignlab.rl.scorers import Scorer
from alignlab.training.context import StageContext


@dataclass
class Rollout:
    """One batch of prompts and sampled replies with everything PPO needs, detached."""

    ids: torch.Tensor  # (B, P + T) left-padded prompt, then the reply padded on the right
    attn: torch.Tensor  # (B, P + T)
    prompt_len: int  # P
    mask: torch.Tensor  # (B, T) 1 on reply tokens (end-of-turn included)
    logp: torch.Tensor  # (B, T) policy log-probabilities at sampling time
    ref_logp: torch.Tensor  # (B, T)
    values: torch.Tensor  # (B, T, streams)
    scores: torch.Tensor  # (B, streams): reward (and cost) of each whole reply
    truncated: torch.Tensor  # (B,) reply cut off by max_new_tokens
    replies: list[str]


def prompt_batch(prompts: list[Any], iteration: int, batch_size: int, seed: int) -> list[Any]:
    """The prompts of an iteration: a fresh seeded shuffle per pass over the set, so resuming at iteration k
    draws exactly what an uninterrupted run would have."""
    n, out = len(prompts), []
    start = iteration * batch_size
    for k in range(start, start + batch_size):
        epoch, i = divmod(k, n)
        order = list(range(n))
        random.Random(seed + epoch).shuffle(order)
        out.append(prompts[order[i]])
    return out


def response_mask(reply_ids: torch.Tensor, stops: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """1 up to and including the first stop token; a reply without one (cut off) is all real tokens."""
    is_stop = torch.isin(reply_ids, torch.tensor(stops, device=reply_ids.device))
    seen_before = (is_stop.cumsum(1) - is_stop.long()) > 0
    return (~seen_before).long(), ~is_stop.any(1)


def reply_logps(logits: torch.Tensor, reply_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-probabilities of the T reply tokens at the sampling temperature, from the logits of the last T + 1
    positions (`logits_to_keep=T + 1`: the prompt's last token predicts the first reply token; the last position
    predicts past the reply and is dropped). Only these positions go through the LM head: over a 49k vocabulary
    the prompt's logits were a large share of a scoring pass and of their log-softmax, and PPO never reads them."""
    return torch.log_softmax(logits[:, :-1].float() / temperature, -1).gather(-1, reply_ids[..., None]).squeeze(-1)


@torch.no_grad()
def rollout(
    ac: ActorCritic,
    reference: torch.nn.Module | None,
    acc: Accelerator,
    ctx: StageContext,
    conversations: list[list[dict[str, str]]],
    scorers: list[Scorer],
) -> Rollout:
    """Sample one reply per conversation, then score the whole batch: log-probabilities, values and rewards."""
    ids, attn, P, mask, truncated = _sample(ac, acc, ctx, conversations)
    logp, ref_logp, values = _logps_and_values(ac, reference, acc, ctx.algo, ids, attn, P)
    reply = ids[:, P:]
    replies = [ctx.tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip() for r, m in zip(reply, mask)]
    scores = torch.stack([s(conversations, replies).float() for s in scorers], dim=1).to(acc.device)
    return Rollout(ids, attn, P, mask.float(), logp, ref_logp, values, scores, truncated, replies)


def _sample(
    ac: ActorCritic, acc: Accelerator, ctx: StageContext, conversations: list[list[dict[str, str]]]
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """Left-padded prompts (a long one keeps its end, where the question is) and the sampled replies after them,
    padded on the right past their first stop token: ids, attention mask, prompt length, reply mask, cut off.
    Replies come from our decoding loop (generation.decode: finished rows leave the batch, the prompts' shared
    prefix is computed once), drawn from torch's global generator, which a checkpoint restores; under ZeRO-3 from
    `generate`, which keeps the ranks in step."""
    from transformers.integrations import is_deepspeed_zero3_enabled
    from trl.models.utils import unwrap_model_for_generation

    a = ctx.algo
    tok = generation_tokenizer(ctx.tokenizer)
    tok.truncation_side = "left"
    stops = stop_ids(ctx.tokenizer)
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    max_prompt = max(ctx.cfg.data.max_length - a.max_new_tokens, 8)
    token_ids = tok(texts, truncation=True, max_length=max_prompt, add_special_tokens=False)["input_ids"]
    enc = tok.pad({"input_ids": token_ids}, return_tensors="pt").to(acc.device)
    P = enc["input_ids"].shape[1]
    gen_batch = a.generation_batch_size or a.batch_size
    own_loop = not is_deepspeed_zero3_enabled()
    ac.eval()
    replies: list[list[int]] = []
    with unwrap_model_for_generation(ac, acc) as unwrapped, acc.autocast():
        if own_loop:
            prefix = shared_prefix(token_ids)
            cache = prefill_prefix(unwrapped.policy, prefix, acc.device) if prefix else None
            sampler = Sampler(a.temperature, a.top_k or 0)
        for i in range(0, len(texts), gen_batch):
            if own_loop:
                rest = [t[len(prefix) :] for t in token_ids[i : i + gen_batch]]
                rest = tok.pad({"input_ids": rest}, return_tensors="pt").to(acc.device)
                replies += decode(
                    unwrapped.policy, rest["input_ids"], rest["attention_mask"], a.max_new_tokens, stops, cache, sampler
                )
                continue
            out = unwrapped.policy.generate(
                input_ids=enc["input_ids"][i : i + gen_batch],
                attention_mask=enc["attention_mask"][i : i + gen_batch],
                max_new_tokens=a.max_new_tokens,
                do_sample=True,
                temperature=a.temperature,
                top_k=a.top_k or 0,
                top_p=1.0,
                eos_token_id=stops,
                pad_token_id=tok.pad_token_id,
            )
            replies += out[:, P:].tolist()
    T = max(len(r) for r in replies)
    reply = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in replies], device=acc.device)
    mask, truncated = response_mask(reply, stops)
    reply = torch.where(mask.bool(), reply, tok.pad_token_id)
    ids = torch.cat([enc["input_ids"], reply], 1)
    attn = torch.cat([enc["attention_mask"], mask], 1)
    return ids, attn, P, mask, truncated


def _logps_and_values(
    ac: ActorCritic,
    reference: torch.nn.Module | None,
    acc: Accelerator,
    a: DictConfig,
    ids: torch.Tensor,
    attn: torch.Tensor,
    P: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of the replies under the policy and the reference, and the values, in
    `mini_batch_size` chunks. With LoRA and no separate reference, the reference is the policy with its adapter
    switched off."""
    logps, ref_logps, values = [], [], []
    keep = ids.shape[1] - P + 1  # the reply's positions and the prompt's last (reply_logps)
    for i in range(0, ids.shape[0], a.mini_batch_size):
        sl = slice(i, i + a.mini_batch_size)
        with acc.autocast():
            logits, v = ac(ids[sl], attn[sl], logits_to_keep=keep)
            logps.append(reply_logps(logits, ids[sl, P:], a.temperature))
            values.append(v[:, P - 1 : -1].float())
            if reference is None:
                with acc.unwrap_model(ac).policy.disable_adapter():
                    ref_logits, _ = ac(ids[sl], attn[sl], logits_to_keep=keep)
            else:
                pos = (attn[sl].cumsum(1) - 1).clamp(min=0)
                ref_out = reference(input_ids=ids[sl], attention_mask=attn[sl], position_ids=pos, logits_to_keep=keep)
                ref_logits = ref_out.logits
            ref_logps.append(reply_logps(ref_logits, ids[sl, P:], a.temperature))
    return torch.cat(logps), torch.cat(ref_logps), torch.cat(values)
