"""On-policy pair stage: the current policy replies to the training prompts, a judge routes each reply, and the
pairs (with template bias pairs mixed in when `data.bias` is set; cached in `<stage>/pairs.jsonl`, logged as a W&B
table) feed the SFT and DPO stages that follow (`data.preference.path: stage:<this stage>`).

A later round (`after: <earlier pairs stage>`) asks the policy it is given, typically the SFT model, prompts the
earlier round did not use, so that DPO also learns from the replies of the model it starts from (the DPO paper
samples its pairs from the SFT model) on prompts SFT never saw; its output is the earlier pairs plus the new ones.
With `bias_prompts`, it also asks fresh template bias questions and rejects the policy's own wrong answers
(data/bias.py, `onpolicy_pairs`)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from alignlab.data import bias, onpolicy
from alignlab.errors import DataError
from alignlab.evaluation.refusal import is_refusal
from alignlab.generation import generate, trim_to_sentence
from alignlab.models import load_model
from alignlab.stages.common import StageContext

PAIRS_FILE = "pairs.jsonl"


def run(ctx: StageContext) -> dict[str, Any]:
    a = ctx.algo
    rows = onpolicy.read_prompts(a.prompts)
    refusals = onpolicy.read_refusals(a.refusals)
    rng = random.Random(ctx.cfg.seed)
    harmful = [r for r in rows if r.type == "harmful"]
    benign = [r for r in rows if r.type == "benign"]
    rng.shuffle(harmful)
    rng.shuffle(benign)
    earlier: list[dict[str, Any]] = []
    used: set[str] = set()
    if a.after is not None:  # the earlier round's pairs are kept; no earlier round's prompts are asked again
        earlier = _read_jsonl(ctx.stage_dir.parent / a.after / PAIRS_FILE)
        stage = a.after
        while stage is not None:
            used |= {r["prompt"] for r in _read_jsonl(ctx.stage_dir.parent / stage / "generations.jsonl")}
            stage = ctx.cfg.algo[stage].after
        harmful = [r for r in harmful if r.prompt not in used]
        benign = [r for r in benign if r.prompt not in used]
    rows = harmful[: a.max_harmful] + benign[: a.max_benign]

    model = load_model(ctx.input_model, ctx.cfg.model, for_generation=True)
    prompts = [[{"role": "user", "content": r.prompt}] for r in rows]
    print(f"[alignlab] {ctx.name}: generating replies to {len(rows)} prompts")
    greedy = generate(model, ctx.tokenizer, prompts, a.max_new_tokens, a.batch_size, seed=ctx.cfg.seed)
    attempts = [[_clean(g)] for g in greedy]
    # Benign prompts the model refuses get a few sampled tries: a helpful reply of its own beats none.
    retry = [i for i, r in enumerate(rows) if r.type == "benign" and is_refusal(attempts[i][0])]
    for k in range(a.benign_resamples if retry else 0):
        sampled = generate(model, ctx.tokenizer, [prompts[i] for i in retry], a.max_new_tokens, a.batch_size,
                           do_sample=True, temperature=0.8, seed=ctx.cfg.seed + 1 + k)  # fmt: skip
        for i, g in zip(retry, sampled):
            attempts[i].append(_clean(g))

    built = onpolicy.build_pairs(rows, attempts, is_refusal, refusals, own_refusals=a.after is not None)
    mix = ctx.cfg.data.bias
    if mix is not None and a.after is None:  # template bias pairs, `ratio` per safety pair (data/bias.py)
        extra = bias.build_pairs(bias.load_templates(mix.templates), round(mix.ratio * len(built.pairs)),
                                 seed=ctx.cfg.seed, kinds=dict(mix.kinds),
                                 agreeing_rejected=mix.agreeing_rejected)  # fmt: skip
        built.pairs.extend(extra)
        for p in extra:
            built.counts[f"bias_{p['kind']}"] += 1
    if a.bias_prompts:  # a later round in a run with data.bias (config.validate): the policy's own bias answers
        questions = _bias_questions(ctx, a.bias_prompts, used | {p["prompt"][0]["content"] for p in earlier})
        print(f"[alignlab] {ctx.name}: asking {len(questions)} bias questions")
        answers = generate(model, ctx.tokenizer, [q["prompt"] for q in questions], a.max_new_tokens, a.batch_size,
                           seed=ctx.cfg.seed)  # fmt: skip
        extra, records, counts = bias.onpolicy_pairs(questions, [_clean(g) for g in answers])
        built.pairs.extend(extra)
        built.records.extend(records)
        built.counts.update(counts)
    onpolicy.write_jsonl(ctx.stage_dir / "generations.jsonl", built.records)
    onpolicy.write_jsonl(ctx.stage_dir / PAIRS_FILE, earlier + built.pairs)
    ctx.tracker.table(f"{ctx.name}/pairs", ["prompt", "type", "category", "reply", "refused", "outcome"],
                      [[r[k] for k in ("prompt", "type", "category", "reply", "refused", "outcome")]
                       for r in built.records])  # fmt: skip
    metrics = {f"pairs/{k}": v for k, v in sorted(built.counts.items())}
    metrics["pairs/total"] = len(built.pairs)
    metrics["pairs/harmful"] = sum(p["type"] == "harmful" for p in built.pairs)
    metrics["pairs/benign"] = sum(p["type"] == "benign" for p in built.pairs)
    metrics["pairs/bias"] = sum(p["type"] == "bias" for p in built.pairs)
    if a.after is not None:
        metrics["pairs/earlier"] = len(earlier)
        metrics["pairs/written"] = len(earlier) + len(built.pairs)  # what the stages after this one train on
    return metrics


def _bias_questions(ctx: StageContext, n: int, asked: set[str]) -> list[dict[str, Any]]:
    """`n` template questions (ambiguous and disambiguated, in data.bias.kinds' proportions; open-ended replies have
    no answer to read) that no earlier round asked, drawn with a seed of their own, so that they are new scenes."""
    mix = ctx.cfg.data.bias
    kinds = {k: w for k, w in mix.kinds.items() if k in ("ambiguous", "disambiguated")}
    seed = int(hashlib.sha256(f"{ctx.cfg.seed}/{ctx.name}".encode()).hexdigest()[:8], 16)
    drawn = bias.build_pairs(bias.load_templates(mix.templates), 2 * n, seed=seed, kinds=kinds,
                             agreeing_rejected=mix.agreeing_rejected)  # fmt: skip
    return [q for q in drawn if q["prompt"][0]["content"] not in asked][:n]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():  # the pipeline runs the earlier stage first; a run folder edited since may lack it
        raise DataError(f"Data error: '{path}' is missing; the later pairs round reads the earlier round's files.")
    return onpolicy.read_jsonl(path)


def _clean(generation: dict[str, Any]) -> str:
    text = generation["text"]
    return trim_to_sentence(text) if generation["truncated"] else text
