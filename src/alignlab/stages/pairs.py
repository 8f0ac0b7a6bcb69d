"""On-policy pair stage: the current policy replies to the training prompts, a judge routes each reply, and the
pairs (with template bias pairs mixed in when `data.bias` is set; cached in `<stage>/pairs.jsonl`, logged as a W&B
table) feed the SFT and DPO stages that follow (`data.preference.path: stage:<this stage>`).

A later round (`after: <earlier pairs stage>`) asks the policy it is given, typically the SFT model, prompts the
earlier round did not use, so that DPO also learns from the replies of the model it starts from (the DPO paper
samples its pairs from the SFT model) on prompts SFT never saw; its output is the earlier pairs plus the new ones.
With `reask_benign`, it also asks the earlier rounds' benign prompts again and rejects the policy's own refusals
and evasions of them. With `bias_prompts`, it also asks fresh template bias questions and rejects the policy's own
wrong answers (data/bias.py, `onpolicy_pairs`). With `failures_only` it is a correction round (iterative DPO): it
asks the policy every training prompt again and writes pairs of its mistakes alone (with `replay_harmful`, beside a
seeded draw of the earlier round's harmful pairs), for a DPO stage that starts from the policy
(pipeline=safety-correct)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from alignlab.config.root import pairs_judge
from alignlab.console import Progress
from alignlab.data import bias, mix, onpolicy
from alignlab.errors import DataError
from alignlab.evaluation.ches import ches_scores
from alignlab.evaluation.judges import Judge, RuleJudge, build_judge
from alignlab.generation import generate, trim_to_sentence
from alignlab.models import load_model
from alignlab.training.context import StageContext

PAIRS_FILE = "pairs.jsonl"
TABLE_COLUMNS = ("prompt", "type", "category", "reply", "refused", "outcome")


def run(ctx: StageContext) -> dict[str, Any]:
    a = ctx.algo
    prompts, held = onpolicy.split_held_out(onpolicy.read_prompts(a.prompts), a.hold_out)
    if a.hold_out:
        onpolicy.write_jsonl(ctx.stage_dir / onpolicy.HELD_OUT_FILE, [vars(r) for r in held])
    refusals = onpolicy.read_refusals(a.refusals, ctx.cfg.model.refusal_token or "")
    earlier, used = _earlier_round(ctx)
    rows = _new_prompts(ctx, prompts, set() if a.failures_only else used)
    judge_name = pairs_judge(ctx.cfg, ctx.name)
    judge = build_judge(ctx.cfg.eval.judges[judge_name], Path(ctx.cfg.eval.benchmarks_dir))
    model = load_model(ctx.input_model, ctx.cfg.model, for_generation=True)
    built = onpolicy.PairBuild()
    if a.reask_benign:
        earlier = _reask_benign(ctx, model, judge, earlier, built)
    attempts, raw = _replies(ctx, model, rows, judge) if rows else ([], [])
    options = {
        "own_refusals": a.after is not None,
        "specific_refusals": a.specific_refusals,
        "specific_rejected": a.specific_rejected,
        "failures_only": a.failures_only,
        "refusal_token": ctx.cfg.model.refusal_token or "",
    }
    helpful = _helpful_verdicts(judge, rows, attempts, raw) if a.helpful_chosen else None
    new = onpolicy.build_pairs(
        rows, attempts, _verdicts(judge, rows, attempts), refusals, **options, is_helpful=helpful
    )
    built.pairs, built.records = new.pairs, built.records + new.records
    built.counts.update(new.counts)
    if not isinstance(judge, RuleJudge):  # what the choice of judge changed: outcomes the rules decide otherwise
        rules = RuleJudge(ctx.cfg.eval.judges[judge_name])
        verdicts = _verdicts(rules, rows, attempts)
        by_rules = onpolicy.build_pairs(rows, attempts, verdicts, refusals, **options, is_helpful=helpful)
        built.counts["changed_vs_rules"] = sum(
            x["outcome"] != y["outcome"] for x, y in zip(new.records, by_rules.records, strict=True)
        )
    if a.ches_drop:
        _drop_similar_pairs(ctx, model, built)
    if ctx.cfg.data.bias is not None and a.after is None:  # template bias pairs, `ratio` per safety pair
        extra = mix.mixed_pairs(ctx.cfg.data.bias, len(built.pairs), ctx.cfg.seed)
        built.pairs.extend(extra)
        for p in extra:
            built.counts[f"bias_{p['kind']}"] += 1
    if a.bias_prompts:  # a later round in a run with data.bias (config.validate): the policy's own bias answers
        _ask_bias_questions(ctx, model, built, used | {p["prompt"][0]["content"] for p in earlier})
    if a.opening_tokens:
        asked = used | {r.prompt for r in rows}
        openings = _openings(ctx, model, [r for r in prompts if r.prompt not in asked], refusals, judge, built)
        onpolicy.write_jsonl(ctx.stage_dir / onpolicy.OPENINGS_FILE, openings)
    onpolicy.write_jsonl(ctx.stage_dir / "generations.jsonl", built.records)
    if a.failures_only:  # its mistakes, not what it gets right; plus `replay_harmful` of the earlier harmful pairs
        earlier = replayed_harmful(earlier, a.replay_harmful, random.Random(ctx.cfg.seed))
    onpolicy.write_jsonl(ctx.stage_dir / PAIRS_FILE, earlier + built.pairs)
    table = [[r[k] for k in TABLE_COLUMNS] for r in built.records]
    ctx.tracker.table(f"{ctx.name}/pairs", list(TABLE_COLUMNS), table)
    return _metrics(built, earlier if a.after is not None else None)


def _earlier_round(ctx: StageContext) -> tuple[list[dict[str, Any]], set[str]]:
    """A later round's inputs: the earlier round's pairs (kept), and every prompt any earlier round asked (never
    asked again). A first round has neither."""
    earlier: list[dict[str, Any]] = []
    used: set[str] = set()
    stage = ctx.algo.after
    if stage is not None:
        earlier = _read_jsonl(ctx.stage_dir.parent / stage / PAIRS_FILE)
    while stage is not None:
        used |= {r["prompt"] for r in _read_jsonl(ctx.stage_dir.parent / stage / "generations.jsonl")}
        stage = ctx.cfg.algo[stage].after
    return earlier, used


def replayed_harmful(earlier: list[dict[str, Any]], n: int, rng: random.Random) -> list[dict[str, Any]]:
    """`n` of the earlier round's harmful pairs (all where there are fewer), drawn with `rng`, in their order."""
    harmful = [i for i, p in enumerate(earlier) if p["type"] == "harmful"]
    return [earlier[i] for i in sorted(rng.sample(harmful, min(n, len(harmful))))]


def _reask_benign(
    ctx: StageContext, model: Any, judge: Any, earlier: list[dict[str, Any]], built: onpolicy.PairBuild
) -> list[dict[str, Any]]:
    """`reask_benign`: the earlier rounds' benign pairs, each whose prompt the policy now refuses (with
    `helpful_chosen`: or answers without attempting the task, judged as generated) rejecting the policy's own
    greedy reply instead of the earlier one. The chosen reply stays the earlier round's; a reply the policy gets
    right, or the chosen reply said again, leaves its pair as it was. Each prompt asked gets a record
    (`generations.jsonl`)."""
    a = ctx.algo
    at = [i for i, p in enumerate(earlier) if p["type"] == "benign"]
    if not at:
        return earlier
    convs = [earlier[i]["prompt"] for i in at]
    greedy = generate(
        model,
        ctx.tokenizer,
        convs,
        a.max_new_tokens,
        a.batch_size,
        seed=ctx.cfg.seed,
        progress=Progress(f"{ctx.name}: earlier benign prompts again", len(convs)),
    )
    texts = [_clean(g) for g in greedy]
    asked = [c[-1]["content"] for c in convs]
    refused = judge.refused(asked, texts)
    helps = judge.helpful(asked, [g["text"] for g in greedy]) if a.helpful_chosen else [True] * len(texts)
    out = list(earlier)
    for i, prompt, text, no, ok in zip(at, asked, texts, refused, helps, strict=True):
        # the chosen reply itself, said again, stays chosen: a pair never rejects what it prefers
        wrong = (no or not ok) and bool(text.strip()) and text != earlier[i]["chosen"][0]["content"]
        if wrong:  # a refusal opens with model.refusal_token, as build_pairs writes them (decoding dropped it)
            rejected = (ctx.cfg.model.refusal_token or "") + text if no else text
            out[i] = {**earlier[i], "rejected": [{"role": "assistant", "content": rejected}]}
        outcome = "asked again: own reply rejected" if wrong else "asked again: pair kept"
        built.counts[f"benign/{outcome.split(': ')[1].replace(' ', '_')}"] += 1
        record = {"prompt": prompt, "type": "benign", "category": earlier[i].get("category"), "reply": text}
        built.records.append(record | {"refused": no, "outcome": outcome})
    return out


def _new_prompts(ctx: StageContext, rows: list[onpolicy.PromptRow], used: set[str]) -> list[onpolicy.PromptRow]:
    """`max_harmful` harmful and `max_benign` benign prompts not in `used` (those an earlier round asked), in a
    seeded order (with `stratify`, one that keeps every prefix in proportion to the categories)."""
    a = ctx.algo
    rng = random.Random(ctx.cfg.seed)
    harmful = [r for r in rows if r.type == "harmful"]
    benign = [r for r in rows if r.type == "benign"]
    rng.shuffle(harmful)
    rng.shuffle(benign)
    harmful = [r for r in harmful if r.prompt not in used]
    benign = [r for r in benign if r.prompt not in used]
    if a.stratify:
        harmful, benign = stratified_order(harmful, rng), stratified_order(benign, rng)
    return harmful[: a.max_harmful] + benign[: a.max_benign]


def stratified_order(rows: list[onpolicy.PromptRow], rng: random.Random) -> list[onpolicy.PromptRow]:
    """`rows` reordered so that every prefix holds each category at most one prompt from its share: at each place
    the category furthest below its share so far comes next (its next row, in the given order; ties broken by a
    seeded order of the categories). A few lines, so written here rather than taken from a library."""
    by_category: dict[str, list[onpolicy.PromptRow]] = {}
    for r in rows:
        by_category.setdefault(r.category, []).append(r)
    categories = sorted(by_category)
    rng.shuffle(categories)
    taken = dict.fromkeys(categories, 0)
    order = []
    for k in range(1, len(rows) + 1):
        left = [c for c in categories if taken[c] < len(by_category[c])]
        c = max(left, key=lambda c: k * len(by_category[c]) / len(rows) - taken[c])
        order.append(by_category[c][taken[c]])
        taken[c] += 1
    return order


def _verdicts(judge: Judge, rows: list[onpolicy.PromptRow], attempts: list[list[str]]) -> Any:
    """`judge` on every attempt at once (a model judge batches), as the `is_refusal(reply, prompt)` that
    `onpolicy.build_pairs` asks."""
    flat = [(r.prompt, text) for r, tries in zip(rows, attempts, strict=True) for text in tries]
    refused = dict(zip(flat, judge.refused([p for p, _ in flat], [t for _, t in flat]), strict=True)) if flat else {}
    return lambda reply, prompt: refused[(prompt, reply)]


def _helpful_verdicts(
    judge: Any, rows: list[onpolicy.PromptRow], attempts: list[list[str]], raw: list[list[str]]
) -> Any:
    """`judge`'s helpful axis on every attempt at a benign prompt, as the `is_helpful(reply, prompt)` that
    `onpolicy.build_pairs` asks (config validation has made sure the judge reads it). Each attempt is judged as
    generated (`raw`), before a reply cut off at max_new_tokens is trimmed to its last full sentence: the judge
    was fitted on untrimmed replies, and a trimmed one ("Here's a simple recipe:") reads as no attempt."""
    benign = [(r, c, w) for r, c, w in zip(rows, attempts, raw, strict=True) if r.type == "benign"]
    keys = [(r.prompt, text) for r, tries, _ in benign for text in tries]
    texts = [text for _, _, tries in benign for text in tries]
    helpful = dict(zip(keys, judge.helpful([p for p, _ in keys], texts), strict=True)) if keys else {}
    return lambda reply, prompt: helpful[(prompt, reply)]


def _replies(
    ctx: StageContext, model: Any, rows: list[onpolicy.PromptRow], judge: Judge
) -> tuple[list[list[str]], list[list[str]]]:
    """Each prompt's greedy reply, then for benign prompts the judge calls refused (with `helpful_chosen`: or not
    attempting the task) a few sampled tries: a helpful reply of its own beats none. Returns the tries as the pairs
    use them (cut-off replies trimmed to a sentence) and as generated."""
    a = ctx.algo
    prompts = [[{"role": "user", "content": r.prompt}] for r in rows]
    print(f"[alignlab] {ctx.name}: generating replies to {len(rows)} prompts")
    greedy = generate(
        model,
        ctx.tokenizer,
        prompts,
        a.max_new_tokens,
        a.batch_size,
        seed=ctx.cfg.seed,
        progress=Progress(f"{ctx.name}: greedy replies", len(prompts)),
    )
    attempts, raw = [[_clean(g)] for g in greedy], [[g["text"]] for g in greedy]
    benign = [i for i, r in enumerate(rows) if r.type == "benign"]
    asked = [rows[i].prompt for i in benign]
    wanting = judge.refused(asked, [attempts[i][0] for i in benign])
    if a.helpful_chosen:
        helps = judge.helpful(asked, [raw[i][0] for i in benign])
        wanting = [no or not ok for no, ok in zip(wanting, helps, strict=True)]
    retry = [i for i, bad in zip(benign, wanting, strict=True) if bad]
    for k in range(a.benign_resamples if retry else 0):
        sampled = generate(
            model,
            ctx.tokenizer,
            [prompts[i] for i in retry],
            a.max_new_tokens,
            a.batch_size,
            do_sample=True,
            temperature=0.8,
            seed=ctx.cfg.seed + 1 + k,
            progress=Progress(f"{ctx.name}: resampled benign replies ({k + 1})", len(retry)),
        )
        for i, g in zip(retry, sampled):
            attempts[i].append(_clean(g))
            raw[i].append(g["text"])
    return attempts, raw


def _drop_similar_pairs(ctx: StageContext, model: Any, built: onpolicy.PairBuild) -> None:
    """Drop the `ches_drop` fraction of the pairs of the types `ches_drop_from` names whose chosen and rejected
    replies the model finds most alike (highest CHES); every pair keeps its score (`ches`) and each dropped
    prompt's record (generations.jsonl) says so, beside its score."""
    pairs = built.pairs
    scores = ches_scores(
        model,
        ctx.tokenizer,
        [p["prompt"] for p in pairs],
        [p["chosen"][0]["content"] for p in pairs],
        [p["rejected"][0]["content"] for p in pairs],
        batch_size=ctx.algo.batch_size,
    )
    for pair, score in zip(pairs, scores, strict=True):
        pair["ches"] = round(score, 4)
    candidates = [p for p in pairs if p["type"] in ctx.algo.ches_drop_from]
    n_drop = round(len(candidates) * ctx.algo.ches_drop)
    dropped = sorted(candidates, key=lambda p: -p["ches"])[:n_drop]
    gone = {p["prompt"][0]["content"] for p in dropped}
    built.pairs = [p for p in pairs if p["prompt"][0]["content"] not in gone]
    score_of = {p["prompt"][0]["content"]: p["ches"] for p in pairs}
    for record in built.records:
        if record["prompt"] in score_of:
            record["ches"] = score_of[record["prompt"]]
        if record["prompt"] in gone:
            record["outcome"] += " (dropped: high CHES)"
    for p in dropped:
        built.counts[f"{p['type']}/dropped_high_ches"] += 1
    kinds = " and ".join(ctx.algo.ches_drop_from)
    print(f"[alignlab] {ctx.name}: dropped {n_drop} of {len(candidates)} {kinds} pairs with the highest CHES")


def _openings(
    ctx: StageContext,
    model: Any,
    rows: list[onpolicy.PromptRow],
    refusals: dict[str, list[str]],
    judge: Judge,
    built: onpolicy.PairBuild,
) -> list[dict[str, Any]]:
    """The first `opening_tokens` tokens of the reply each of `rows` should get: a bundled refusal's for a harmful
    prompt (no generation), the model's own greedy reply's for a benign one (a few decoding steps), left out where
    the judge calls that opening a refusal. With `opening_pairs`, each also gets the opening to reject: the model's
    own for a harmful prompt (none where it already refuses), a bundled refusal's for a benign one. The pairs teach
    what follows an opening; these teach the decision on every labelled prompt, which the model's own hidden states
    already separate well (experiments/safety-frontier, separability.md)."""
    a, tok = ctx.algo, ctx.tokenizer
    asked = [r for r in rows if r.type == "benign" or a.opening_pairs]
    print(f"[alignlab] {ctx.name}: reply openings for {len(rows)} prompts, {len(asked)} of them the model's own")
    replies = generate(
        model,
        tok,
        [[{"role": "user", "content": r.prompt}] for r in asked],
        a.opening_tokens,
        a.batch_size,
        seed=ctx.cfg.seed,
        progress=Progress(f"{ctx.name}: own openings", len(asked)),
    )
    texts = [tok.decode(g["token_ids"][: a.opening_tokens], skip_special_tokens=True) for g in replies]
    refused = judge.refused([r.prompt for r in asked], texts) if asked else []
    own = {r.prompt: (text, no or not text.strip()) for r, text, no in zip(asked, texts, refused, strict=True)}
    out = []
    for row in rows:
        refusal = onpolicy.refusal_for(row, refusals, a.specific_refusals, a.specific_rejected)
        refusal = tok.decode(tok(refusal, add_special_tokens=False)["input_ids"][: a.opening_tokens])
        text, refuses = own.get(row.prompt, ("", True))
        if row.type == "harmful":
            record = _opening_row(row, refusal, (None if refuses else text) if a.opening_pairs else None)
        elif refuses:
            built.counts["openings/benign_refused_left_out"] += 1
            continue
        else:
            record = _opening_row(row, text, refusal if a.opening_pairs else None)
        out.append(record)
    for kind in ("harmful", "benign"):
        built.counts[f"openings/{kind}"] = sum(o["type"] == kind for o in out)
        if a.opening_pairs:
            built.counts[f"openings/{kind}_pairs"] = sum(o["type"] == kind and o["rejected"] is not None for o in out)
    return out


def _opening_row(row: onpolicy.PromptRow, text: str, rejected: str | None) -> dict[str, Any]:
    user = [{"role": "user", "content": row.prompt}]
    return {"prompt": user, "opening": text, "rejected": rejected, "type": row.type}


def _ask_bias_questions(ctx: StageContext, model: Any, built: onpolicy.PairBuild, asked: set[str]) -> None:
    """`bias_prompts` fresh template questions (data/mix.py) to the policy; pairs that reject its own wrong answers
    join `built` (data/bias.py, `onpolicy_pairs`). The draw's seed is the stage's own, so they are new scenes."""
    a = ctx.algo
    seed = int(hashlib.sha256(f"{ctx.cfg.seed}/{ctx.name}".encode()).hexdigest()[:8], 16)
    questions = mix.fresh_questions(ctx.cfg.data.bias, a.bias_prompts, asked, seed)
    print(f"[alignlab] {ctx.name}: asking {len(questions)} bias questions")
    answers = generate(
        model,
        ctx.tokenizer,
        [q["prompt"] for q in questions],
        a.max_new_tokens,
        a.batch_size,
        seed=ctx.cfg.seed,
        progress=Progress(f"{ctx.name}: bias questions", len(questions)),
    )
    extra, records, counts = bias.onpolicy_pairs(questions, [_clean(g) for g in answers])
    built.pairs.extend(extra)
    built.records.extend(records)
    built.counts.update(counts)


def _metrics(built: onpolicy.PairBuild, earlier: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Pair counts by outcome and type; a later round (`earlier` given) adds what it kept and what it wrote."""
    metrics: dict[str, Any] = {f"pairs/{k}": v for k, v in sorted(built.counts.items())}
    metrics["pairs/total"] = len(built.pairs)
    for kind in ("harmful", "benign", "bias"):
        metrics[f"pairs/{kind}"] = sum(p["type"] == kind for p in built.pairs)
    if earlier is not None:
        metrics["pairs/earlier"] = len(earlier)
        metrics["pairs/written"] = len(earlier) + len(built.pairs)  # what the stages after this one train on
    return metrics


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():  # the pipeline runs the earlier stage first; a run folder edited since may lack it
        raise DataError(f"Data error: '{path}' is missing; the later pairs round reads the earlier round's files.")
    return onpolicy.read_jsonl(path)


def _clean(generation: dict[str, Any]) -> str:
    text = generation["text"]
    return trim_to_sentence(text) if generation["truncated"] else text
