"""Refusal calibration stage: set how readily the policy refuses, by a bias on the first token of its refusals
fitted on labelled prompts, folded into the saved weights so that plain greedy `generate` makes the calibrated
decision (issue 33's fifth candidate; Jain et al. 2024 set a refusal token's rate with a threshold at inference).

A refusal is decided at the reply's first token (experiments/safety-frontier: the policy's refusals open with a
handful of tokens, "I" above all). The stage

1. finds those tokens: the policy's greedy openings (`opening_tokens` tokens) on the calibration prompts, judged
   (`<stage>/openings.jsonl`); a first token whose openings are mostly refusals is a refusal token. With
   `model.refusal_token`, which opens every refusal the policy was trained on, that token alone, which must
   then also lose every later position: u is fitted to shift the first position and not the later ones of the
   policy's greedy replies (`later_tokens`), and a second direction pushes the token down at those (a token that
   switches a reply to a refusal mid-way is what training it alone produced: experiments/safety-frontier);
2. reads, at each calibration prompt's last position, the output layer's input h and the logits;
3. adds `delta * u` to the output rows of the refusal tokens, u = m / |m|^2 with m the mean of h over the prompts.
   The output layer has no bias, so this is the nearest thing to one: the refusal tokens' logits move by
   delta * (u . h), which is delta on average at the reply's first position (the shift's spread is reported);
4. with `probe_gain` > 0, also adds `probe_gain * w` to those rows, w a linear read-out of the prompt's
   harmfulness at the same position (+1 harmful, -1 benign on `probe_prompts` less the calibration prompts, and 0
   at the later positions of the calibration prompts' greedy replies, which carry no label; u is then fitted to
   leave those positions alone too, as with a refusal token), so the first token follows what the representation
   tells apart where a bias moves every prompt alike (measured in experiments/safety-frontier, "The refusal
   decision set by a read-out of harmfulness": it decides the held-out training prompts, and the model's
   refusals of benign lookalikes open with other tokens);
5. picks delta by bisection so that the refusal tokens win the first position on `refusal_rate` of the harmful
   calibration prompts, computed exactly for the edited weights;
6. saves the model with its output layer untied from the input embeddings (a tied model would move the refusal
   tokens' input embeddings too), a normal checkpoint of the same architecture.

No library sets a first-token bias by editing weights; this is our own (a few lines of tensor algebra).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from alignlab.config.root import pairs_judge
from alignlab.console import Progress
from alignlab.data import onpolicy
from alignlab.errors import DataError
from alignlab.evaluation.judges import build_judge
from alignlab.evaluation.likelihood import context_ids, right_padded
from alignlab.generation import generate, generation_tokenizer
from alignlab.models import load_model, refusal_token_id
from alignlab.training.context import StageContext
from alignlab.training.saving import save_model


def run(ctx: StageContext) -> dict[str, Any]:
    a = ctx.algo
    rows = onpolicy.calibration_prompts(a.prompts, f"algo.{ctx.name}.prompts", ctx.cfg, ctx.stage_dir.parent)
    fit_rows = onpolicy.readout_prompts(a.probe_prompts, f"algo.{ctx.name}.probe_prompts", rows) if a.probe_gain else []
    harmful = torch.tensor([r.type == "harmful" for r in rows])
    model = load_model(ctx.input_model, ctx.cfg.model).eval()  # the dtype it is saved in (bf16 rounds the edit)
    convs = [[{"role": "user", "content": r.prompt}] for r in rows]
    judge = build_judge(ctx.cfg.eval.judges[pairs_judge(ctx.cfg, ctx.name)], Path(ctx.cfg.eval.benchmarks_dir))
    marker = refusal_token_id(ctx.tokenizer, ctx.cfg.model)
    read_later = marker is not None or a.probe_gain > 0  # later positions: the token's, and the read-out's zeros
    replies = generate(
        model,
        ctx.tokenizer,
        convs,
        max(a.opening_tokens, a.later_tokens) if read_later else a.opening_tokens,
        a.batch_size,
        progress=Progress(f"{ctx.name}: openings", len(rows)),
    )
    texts = [ctx.tokenizer.decode(g["token_ids"][: a.opening_tokens], skip_special_tokens=True) for g in replies]
    refused = judge.refused([r.prompt for r in rows], texts)
    tokens = refusal_tokens([g["token_ids"][:1] for g in replies], refused) if marker is None else [marker]
    onpolicy.write_jsonl(  # what the refusal tokens were read from, for inspection
        ctx.stage_dir / "openings.jsonl",
        [
            {"prompt": r.prompt, "type": r.type, "opening": t, "refused": no}
            for r, t, no in zip(rows, texts, refused, strict=True)
        ],
    )
    if not tokens:
        raise DataError(
            f"Data error: stage '{ctx.name}': the policy begins no reply to the {len(rows)} prompts of "
            f"'{a.prompts}' with a refusal, so there is no refusal decision to calibrate."
        )
    hidden, logits = first_position(model, ctx.tokenizer, convs, a.batch_size)
    mask = torch.zeros(logits.shape[1], dtype=torch.bool)
    mask[tokens] = True
    extra: dict[str, Any] = {}
    if read_later:
        later, margin = later_positions(model, ctx.tokenizer, convs, [g["token_ids"] for g in replies], marker, a)
        if not len(later):
            needs = f"'{ctx.cfg.model.refusal_token}'" if marker is not None else "the read-out (probe_gain)"
            raise DataError(
                f"Data error: stage '{ctx.name}': the policy's greedy replies to the {len(rows)} prompts of "
                f"'{a.prompts}' are at most one token long, which leaves no later position to keep {needs} out of "
                f"(algo.{ctx.name}.later_tokens: {a.later_tokens})."
            )
        # with the later positions read, u leaves them alone too (for the read-out's runs as for the token's)
        direction, away = first_position_directions(hidden, later)
    else:
        direction = hidden.mean(0) / hidden.mean(0).square().sum()
    shift = hidden @ direction
    moved = logits  # the first position's logits with all but delta applied (the read-out, the push)
    if a.probe_gain > 0:
        fit_convs = [[{"role": "user", "content": r.prompt}] for r in fit_rows]
        fit_harmful = torch.tensor([r.type == "harmful" for r in fit_rows])
        fit_hidden = first_position(model, ctx.tokenizer, fit_convs, a.batch_size)[0]
        readout = harm_readout(fit_hidden, fit_harmful, later, a.probe_ridge)
        moved = logits.clone()
        moved[:, mask] += a.probe_gain * (hidden @ readout)[:, None]
        extra = {
            "calibrate/probe_prompts": len(fit_rows),
            "calibrate/probe_auroc_fitted": auroc(fit_hidden @ readout, fit_harmful),
            "calibrate/probe_auroc_calibration": auroc(hidden @ readout, harmful),
            "calibrate/probe_later_shift_max": (a.probe_gain * (later @ readout)).abs().max().item(),
        }
    if marker is None:
        delta = fit_delta(moved, shift, mask, harmful, a.refusal_rate, ctx.name)
        vector = delta * direction
    else:
        delta, push = 0.0, 0.0
        steer = moved  # the read-out's move of the first position, if any; the push comes on top of it
        for _ in range(2):  # delta moves the later positions a little, the push the first ones: each fitted twice
            later_margin = margin + delta * (later @ direction)
            if a.probe_gain > 0:
                later_margin = later_margin + a.probe_gain * (later @ readout)
            push = push_down(later_margin, later @ away)
            moved = steer.clone()
            moved[:, marker] -= push * (hidden @ away)
            delta = fit_delta(moved, shift, mask, harmful, a.refusal_rate, ctx.name)
        vector = delta * direction - push * away
        extra |= {
            "calibrate/later_positions": len(margin),
            "calibrate/later_token_wins_before": int((margin > 0).sum()),
            "calibrate/later_push": push,
            "calibrate/first_shift_of_push_max": (push * (hidden @ away)).abs().max().item(),
        }
    if a.probe_gain > 0:
        vector = vector + a.probe_gain * readout
    if marker is not None:
        extra["calibrate/later_token_wins_after"] = int((margin + later @ vector > 0).sum())
    before, after = first_token_refusals(logits, shift, mask, 0.0), first_token_refusals(moved, shift, mask, delta)
    fold_bias(model, tokens, vector)
    save_model(model, ctx)
    return extra | {
        "calibrate/delta": delta,
        "calibrate/prompts_harmful": int(harmful.sum()),
        "calibrate/prompts_benign": int((~harmful).sum()),
        "calibrate/refusal_tokens": " ".join(ctx.tokenizer.convert_ids_to_tokens(tokens)),
        "calibrate/shift_sd": shift.std().item(),
        "calibrate/shift_min": shift.min().item(),
        "calibrate/shift_max": shift.max().item(),
        "calibrate/harmful_refused_before": before[harmful].float().mean().item(),
        "calibrate/benign_refused_before": before[~harmful].float().mean().item(),
        "calibrate/harmful_refused_after": after[harmful].float().mean().item(),
        "calibrate/benign_refused_after": after[~harmful].float().mean().item(),
    }


def harm_readout(first: torch.Tensor, harmful: torch.Tensor, later: torch.Tensor, ridge: float) -> torch.Tensor:
    """w with w . h = +1 at the harmful prompts' first positions, -1 at the benign ones' and 0 at the later
    positions (ridge least squares, the three groups weighted equally), so that a token row moved by w moves its
    logit with the prompt's harmfulness at the first position and leaves the rest of the reply alone."""
    y = torch.cat([harmful.double() * 2 - 1, torch.zeros(len(later), dtype=torch.float64)])
    groups = [harmful, ~harmful]
    w = torch.cat([sum(g.double() / (3 * g.sum()) for g in groups), torch.full((len(later),), 1 / (3 * len(later)))])
    return weighted_ridge(torch.cat([first, later]), y[:, None], w, ridge)[:, 0]


def auroc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """The chance that a positive scores above a negative (ties count half): the Mann-Whitney statistic
    (experiments/safety-frontier's separability and first-token studies use it too)."""
    pos, neg = score[positive], score[~positive]
    return ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean().item()


def refusal_tokens(first: list[list[int]], refused: list[bool]) -> list[int]:
    """The first tokens whose openings the judge calls refusals more often than not (an empty reply has none)."""
    yes, no = Counter(), Counter()
    for ids, r in zip(first, refused, strict=True):
        if ids:
            (yes if r else no)[ids[0]] += 1
    return sorted(t for t in yes if yes[t] > no[t])


@torch.no_grad()
def first_position(
    model: Any, tokenizer: Any, convs: list[list[dict[str, str]]], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output layer's input and the logits at the reply's first position (left padding: the last column)."""
    tok = generation_tokenizer(tokenizer)
    head = model.get_output_embeddings()
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _o: captured.append(args[0][:, -1].float()))
    logits = []
    try:
        for start in range(0, len(convs), batch_size):
            texts = [
                tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                for c in convs[start : start + batch_size]
            ]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(head.weight.device)
            logits.append(model(**enc, logits_to_keep=1).logits[:, -1].float().cpu())
    finally:
        hook.remove()
    return torch.cat(captured).cpu(), torch.cat(logits)


LATER_GAP = 5.0  # logits by which a dedicated refusal token must lose every later position read


@torch.no_grad()
def later_positions(
    model: Any,
    tokenizer: Any,
    convs: list[list[dict[str, str]]],
    replies: list[list[int]],
    token: int | None,
    a: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """At every position of the policy's greedy replies after the first: the output layer's input, and by how many
    logits `token` beats the best other token there (negative: it loses; none without a token). A dedicated refusal
    token belongs at the first position only; these are where it must not win."""
    tok = generation_tokenizer(tokenizer)
    head = model.get_output_embeddings()
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _o: captured.append(args[0].float()))
    hidden, margins = [], []
    try:
        for start in range(0, len(convs), a.batch_size):
            seqs, spans = [], []
            for conv, reply in zip(convs[start : start + a.batch_size], replies[start : start + a.batch_size]):
                prompt = context_ids(tok, conv)
                seqs.append(prompt + reply[: a.later_tokens])
                spans.append((len(prompt), min(len(reply), a.later_tokens)))
            ids, attn = right_padded(seqs, tok.pad_token_id)
            captured.clear()
            logits = model(input_ids=ids.to(head.weight.device), attention_mask=attn.to(head.weight.device)).logits
            for i, (p_len, r_len) in enumerate(spans):
                span = slice(p_len, p_len + r_len - 1)  # predicting the reply's second token onwards
                hidden.append(captured[0][i, span].cpu())
                if token is not None:
                    at = logits[i, span].float()
                    others = at.clone()
                    others[:, token] = float("-inf")
                    margins.append((at[:, token] - others.max(-1).values).cpu())
    finally:
        hook.remove()
    return torch.cat(hidden), torch.cat(margins) if margins else torch.empty(0)


def first_position_directions(first: torch.Tensor, later: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two directions of the output layer's input: u with u . h = 1 at the first positions and 0 at the later ones,
    and v the other way round (ridge regressions, each group weighted equally), so that adding `delta * u - push *
    v` to a token's output row moves its logit at the reply's first position by about delta and pushes it down
    everywhere after."""
    w = torch.cat([torch.full((len(first),), 0.5 / len(first)), torch.full((len(later),), 0.5 / len(later))])
    y = torch.zeros(len(first) + len(later), 2, dtype=torch.float64)
    y[: len(first), 0] = 1.0
    y[len(first) :, 1] = 1.0
    u, v = weighted_ridge(torch.cat([first, later]), y, w, 1e-4).T
    return u, v


def weighted_ridge(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, ridge: float) -> torch.Tensor:
    """The coefficients (one column per column of y) of a least-squares fit of y on x with row weights w, the
    penalty `ridge` times the mean eigenvalue of the weighted Gram matrix (scale-free), in float64."""
    x, w = x.double(), w.double()
    gram = x.T @ (w[:, None] * x)
    gram += ridge * gram.trace() / len(gram) * torch.eye(len(gram), dtype=torch.float64)
    return torch.linalg.solve(gram, x.T @ (w[:, None] * y)).float()


def push_down(margin: torch.Tensor, away: torch.Tensor) -> float:
    """The smallest push along `away` that leaves the token LATER_GAP logits behind the best other token at every
    later position where `away` reaches (away . h > 0.1; the count where it still wins is reported)."""
    reach = away > 0.1
    need = (margin[reach] + LATER_GAP) / away[reach]
    return max(0.0, need.max().item()) if reach.any() else 0.0


def first_token_refusals(logits: torch.Tensor, shift: torch.Tensor, mask: torch.Tensor, delta: float) -> torch.Tensor:
    """Per prompt: whether a refusal token wins the first position once its logits move by delta * shift."""
    return (logits[:, mask] + delta * shift[:, None]).max(-1).values > logits[:, ~mask].max(-1).values


def fit_delta(
    logits: torch.Tensor,
    shift: torch.Tensor,
    mask: torch.Tensor,
    harmful: torch.Tensor,
    rate: float,
    stage: str = "calibrate",
) -> float:
    """The smallest delta at which the refusal tokens win on at least `rate` of the harmful prompts (the share
    rises with delta, since every shift is positive): bisection, to 1e-4."""
    if (shift <= 0).any():
        raise DataError(
            f"Data error: stage '{stage}': the fitted first-position direction does not shift the logits of "
            f"{int((shift <= 0).sum())} of the {len(shift)} calibration prompts up (algo.{stage}.prompts: more "
            "prompts give a steadier fit)."
        )

    def share(delta: float) -> float:
        return first_token_refusals(logits, shift, mask, delta)[harmful].float().mean().item()

    span = (logits.max() - logits.min()).item() / shift.min().item() + 1.0  # beyond it every decision is made
    low, high = -span, span
    while high - low > 1e-4:
        mid = (low + high) / 2
        low, high = (low, mid) if share(mid) >= rate else (mid, high)
    return high


@torch.no_grad()
def fold_bias(model: Any, tokens: list[int], vector: torch.Tensor) -> None:
    """Add `vector` to the output rows of `tokens`, after untying the output layer from the input embeddings."""
    head = model.get_output_embeddings()
    weight = head.weight.detach().clone()
    weight[tokens] += vector.to(weight.dtype)
    head.weight = torch.nn.Parameter(weight)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):  # multimodal configs keep the flag on their text config
        model.config.get_text_config().tie_word_embeddings = False
