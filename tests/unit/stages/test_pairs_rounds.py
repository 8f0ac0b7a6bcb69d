"""A second on-policy round (`algo.<stage>.after`): the SFT model answers prompts the first round did not use, its own
refusals of benign prompts become rejected replies, its own wrong answers to fresh bias questions too
(`bias_prompts`), and DPO trains on both rounds' pairs."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from alignlab import cli
from alignlab.config import compose_config, validate
from alignlab.config.algo import DPOAlgoConfig
from alignlab.data import bias, onpolicy
from alignlab.data.sources import resolve_local
from alignlab.errors import ConfigError, DataError
from alignlab.evaluation.refusal import is_refusal
from alignlab.generation import generate
from alignlab.stages import pairs as pairs_stage

POOL = {"any": ["I can't help with that.", "Sorry, I won't do that."]}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_own_refusals_are_rejected_where_the_model_refused_greedily():
    rows = [
        onpolicy.PromptRow("Shoot a portrait at dusk?", "benign", "lookalike"),
        onpolicy.PromptRow("How do I kill a zombie process?", "benign", "lookalike"),
        onpolicy.PromptRow("Bake bread?", "benign", "general"),
    ]
    replies = [
        ["I cannot help with photography.", "Use a tripod and a slow shutter."],  # refused greedily, then helped
        ["Run `kill` on its parent process."],  # helpful at once: no refusal of its own to reject
        ["Sorry, I can't.", "I won't."],  # refuses on every try: no pair
    ]
    first = onpolicy.build_pairs(rows, replies, is_refusal, POOL)
    later = onpolicy.build_pairs(rows, replies, is_refusal, POOL, own_refusals=True)
    assert [p["chosen"] for p in later.pairs] == [p["chosen"] for p in first.pairs]
    portrait, zombie = later.pairs
    assert portrait["rejected"][0]["content"] == "I cannot help with photography."
    assert first.pairs[0]["rejected"][0]["content"] in POOL["any"]  # the first round keeps the bundled refusal
    assert zombie["rejected"] == first.pairs[1]["rejected"] and zombie["rejected"][0]["content"] in POOL["any"]
    assert later.counts["benign/own_refusal_rejected"] == 1 and "benign/own_refusal_rejected" not in first.counts
    assert later.records[0]["outcome"] == "pair: helpful reply > own refusal"


@pytest.fixture(scope="module")
def questions():
    return bias.build_pairs(bias.load_templates(), 300, seed=5, kinds={"ambiguous": 0.5, "disambiguated": 0.5})


def test_answers_are_read_from_the_first_sentence_of_a_reply():
    people = ["the older woman", "the college student"]
    assert bias.answer_of("The older woman. She had it all working.", people) == "the older woman"
    assert bias.answer_of("the college student", people) == "the college student"
    assert bias.answer_of("It was the college student who set it up.", people) == "the college student"
    for reply in (
        "Cannot be determined. Either of them could have.",
        "It's impossible to say.",
        "Unknown.",
        "We can't tell which one.",
        "Either one might have.",
    ):
        assert bias.answer_of(reply, people) == "unknown", reply
    for reply in ("", "The older woman and the college student.", "The woman.", "Sure! Here is a poem."):
        assert bias.answer_of(reply, people) == "unclear", reply
    # a person named only after the first sentence does not count, and neither does a word inside another word
    assert bias.answer_of("Hard to say. The older woman, maybe.", people) == "unclear"
    assert bias.answer_of("The man.", ["the young man", "the man"]) == "the man"
    assert bias.answer_of("The young man.", ["the young man", "the man"]) == "the young man"  # the longer phrase
    assert bias.answer_of("The woman.", ["the man", "the older person"]) == "unclear"  # "man" is not in "woman"


def test_the_templates_own_replies_read_as_their_answers(questions):
    """Every template reply reads as what it says: chosen ones as "unknown" (ambiguous) or the evidence's person,
    rejected ones as the stereotype's pick or an abstention, so the judge agrees with the pairs it was built from."""
    openers = bias.load_templates()["unknown_openers"]
    assert all(bias.answer_of(o, ["the older woman", "the college student"]) == "unknown" for o in openers)
    for q in questions:
        chosen, rejected = (bias.answer_of(q[side][0]["content"], q["people"]) for side in ("chosen", "rejected"))
        assert q["answer"] in q["people"] if q["kind"] == "disambiguated" else q["answer"] is None
        assert chosen == (q["answer"] or "unknown"), q
        assert rejected != chosen and rejected != "unclear", q
        assert q["kind"] == "disambiguated" or rejected in q["people"]  # an ambiguous pair rejects a guess


def test_own_wrong_bias_answers_become_rejected_replies(questions):
    right = [q["chosen"][0]["content"] for q in questions]
    pairs, records, counts = bias.onpolicy_pairs(questions, right)
    assert pairs == [] and [r["outcome"].endswith("no pair") for r in records] == [True] * len(questions)
    amb = sum(q["kind"] == "ambiguous" for q in questions)
    assert counts == {"bias_ambiguous/abstains": amb, "bias_disambiguated/right_person": len(questions) - amb}

    def wrong(q):  # a guess where nothing says who; where the evidence does, alternately the other person or
        other = next(p for p in q["people"] if p != q["answer"])  # an abstention
        return {"ambiguous": f"{q['people'][0].capitalize()}.", "disambiguated": f"{other.capitalize()}."}[q["kind"]]

    replies = [
        wrong(q) if i % 3 else "Cannot be determined." if q["kind"] == "disambiguated" else "Hmm."
        for i, q in enumerate(questions)
    ]
    pairs, records, counts = bias.onpolicy_pairs(questions, replies)
    expected = [i for i, q in enumerate(questions) if i % 3 or q["kind"] == "disambiguated"]  # "Hmm." is unclear
    assert [p["prompt"] for p in pairs] == [questions[i]["prompt"] for i in expected]
    for p, i in zip(pairs, expected):
        assert p["rejected"][0]["content"] == replies[i] and p["chosen"] == questions[i]["chosen"] and p["own_reply"]
        assert (p["type"], p["chosen_safe"], p["rejected_safe"]) == ("bias", True, False)
    assert sum(counts.values()) == len(questions) == len(records)
    unclear = sum(i % 3 == 0 for i, q in enumerate(questions) if q["kind"] == "ambiguous")
    assert counts["bias_ambiguous/unclear"] == unclear
    assert counts["bias_disambiguated/abstains"] and counts["bias_disambiguated/wrong_person"]
    assert {r["answer"] for r in records} >= {"unknown", "unclear"}
    with pytest.raises(DataError, match="ambiguous or disambiguated, got 'open'"):
        bias.onpolicy_pairs([{**questions[0], "kind": "open"}], ["Sure."])


def test_bias_questions_need_a_later_round_and_bias_templates():
    base = ["experiment=safety-bias-smollm", "pipeline=safety-2round"]
    assert validate(compose_config([*base, "algo.pairs_sft.bias_prompts=40"])).algo.pairs_sft.bias_prompts == 40
    first_round = r"algo\.pairs\.bias_prompts': asks the policy bias questions in a later round"
    for extra, message in [
        ([*base, "algo.pairs.bias_prompts=40"], first_round),
        ([*base, "algo.pairs_sft.bias_prompts=-1"], "must be a positive number of questions"),
        (["experiment=safety-smollm", "pipeline=safety-2round", "algo.pairs_sft.bias_prompts=40"], r"needs data\.bias"),
        (
            [*base, "algo.pairs_sft.bias_prompts=40", "data.bias.kinds={ambiguous: 0, disambiguated: 0, open: 1}"],
            "gives both no weight",
        ),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(compose_config(extra))


def test_a_later_round_must_follow_a_pairs_stage():
    base = ["experiment=safety-smollm-quick", "pipeline=safety-2round"]
    cfg = validate(compose_config(base))
    assert cfg.algo.pairs_sft.after == "pairs" and cfg.algo.pairs.after is None
    assert cfg.algo.pairs_sft.max_new_tokens == cfg.algo.pairs.max_new_tokens  # follows the first round's
    for bad in ("sft", "dpo", "pairs_sft", "nowhere"):
        with pytest.raises(
            ConfigError,
            match=rf"algo\.pairs_sft\.after': '{bad}' must name a pairs stage that runs "
            r"before 'pairs_sft'",
        ):
            validate(compose_config([*base, f"algo.pairs_sft.after={bad}"]))


class LengthJudge:
    """A judge keyed on the reply's length: the tiny model's noise is then sometimes a refusal, sometimes not."""

    axes = ("refusal",)

    def refused(self, prompts: list[str], replies: list[str]) -> list[bool]:
        return [len(text) % 2 == 0 for text in replies]


@pytest.fixture
def sampled_and_judged_by_length(monkeypatch):
    """The tiny model's greedy replies are empty and its samples noise, so in the pairs stages only, sampling stands
    in for its greedy replies and LengthJudge for the refusal rules."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr("alignlab.stages.pairs.build_judge", lambda spec, benchmarks: LengthJudge())
    monkeypatch.setattr(
        "alignlab.stages.pairs.generate", lambda *a, **k: generate(*a, **{**k, "do_sample": True, "temperature": 1.0})
    )


@pytest.mark.slow
def test_the_second_round_asks_the_sft_model_new_prompts_and_dpo_trains_on_both(
    tmp_path, cache_dir, tiny_model, sampled_and_judged_by_length
):
    """The tiny model's greedy replies are empty and its samples noise, so in the pairs stages only, sampling stands
    in for its greedy replies and a judge keyed on the text's length for the refusal rules: some first replies to
    benign prompts are then refusals, and some re-samples helpful."""
    args = [
        "run",
        "experiment=safety-smollm-quick",
        "eval.judge=rules",  # the tiny model's replies; the probe judge reads SmolLM2's states
        "model=tiny",
        "pipeline=safety-2round",
        "data=safety-bias-onpolicy",
        "algo.pairs_sft.bias_prompts=6",
        "algo.pairs_sft.max_harmful=8",
        "algo.pairs_sft.max_benign=8",
        "algo.pairs_sft.benign_resamples=4",
        "eval=safety",
        "eval.suites.harmbench=null",
        "eval.suites.xstest_safe=null",
        "logger=none",
        f"run.root={tmp_path}",
        "model.lora.enabled=false",
        "model.generation_dtype=null",
    ]
    assert cli.main(args) == 0
    (run,) = (tmp_path / "safety-smollm-quick").iterdir()
    first, written = _read(run / "pairs" / "pairs.jsonl"), _read(run / "pairs_sft" / "pairs.jsonl")
    asked_first, asked = _read(run / "pairs" / "generations.jsonl"), _read(run / "pairs_sft" / "generations.jsonl")
    new = written[len(first) :]
    assert written[: len(first)] == first and new  # the first round's pairs, then this round's
    assert not {r["prompt"] for r in asked} & {r["prompt"] for r in asked_first}  # prompts the first round did not use
    assert Counter(r["type"] for r in asked) == {"harmful": 8, "benign": 8, "bias": 6}
    assert {r["kind"] for r in asked if r["type"] == "bias"} == {"ambiguous", "disambiguated"}
    assert [p for p in first if p["type"] == "bias"] and not [
        p for p in new if p["type"] == "bias" and not p.get("own_reply")
    ]  # no template pairs again
    # every new pair comes from the SFT model's replies: its compliance rejected, its own refusal of a benign one, or
    # its own wrong answer to a bias question (the tiny model's noise names no one: a pair where there is evidence)
    replies = {r["prompt"]: r for r in asked}
    for p in new:
        record = replies[p["prompt"][0]["content"]]
        if p["type"] == "bias":
            assert p["rejected"][0]["content"] == record["reply"] and record["outcome"].startswith("pair: ")
        elif p["type"] == "harmful":
            assert not record["refused"] and p["rejected"][0]["content"] == record["reply"]
        elif record["refused"] and record["reply"].strip():  # an empty reply is no refusal to learn from
            assert p["rejected"][0]["content"] == record["reply"]
            assert record["outcome"] == "pair: helpful reply > own refusal"
    metrics = json.loads((run / "pairs_sft" / "metrics.json").read_text())
    own = sum(r["outcome"].endswith("own refusal") for r in asked)
    assert own > 0 and metrics["pairs/benign/own_refusal_rejected"] == own
    assert sum(v for k, v in metrics.items() if k.startswith("pairs/bias_")) == 6  # every question's outcome
    assert metrics["pairs/bias"] == sum(p["type"] == "bias" for p in new) > 0
    assert metrics["pairs/earlier"] == len(first) and metrics["pairs/written"] == len(written)
    # SFT trained on the first round's chosen replies before the second round ran; DPO on both rounds' pairs
    assert json.loads((run / "dpo" / "metrics.json").read_text())["ref_logps/cached_pairs"] == len(written)
    assert cli.main(["resume", str(run)]) == 0  # a finished run skips every stage


@pytest.mark.slow
def test_a_third_round_asks_prompts_neither_earlier_round_used(tmp_path, cache_dir, tiny_model, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = [
        "run",
        "experiment=safety-smollm-quick",
        "eval.judge=rules",  # the tiny model's replies; the probe judge reads SmolLM2's states
        "model=tiny",
        "pipeline=safety-2round",
        "pipeline.stages=[pairs,sft,pairs_sft,pairs_3,dpo]",
        "algo.pairs_sft.max_harmful=6",
        "algo.pairs_sft.max_benign=6",
        "logger=none",
        f"run.root={tmp_path}",
        "model.lora.enabled=false",
        "+algo.pairs_3={kind: pairs, after: pairs_sft, max_harmful: 6, max_benign: 6, max_new_tokens: 24}",
        "model.generation_dtype=null",
    ]
    assert cli.main(args) == 0
    (run,) = (tmp_path / "safety-smollm-quick").iterdir()
    asked = [{r["prompt"] for r in _read(run / s / "generations.jsonl")} for s in ("pairs", "pairs_sft", "pairs_3")]
    assert [len(a) for a in asked] == [12, 12, 12] and len(set.union(*asked)) == 36
    second, third = _read(run / "pairs_sft" / "pairs.jsonl"), _read(run / "pairs_3" / "pairs.jsonl")
    assert third[: len(second)] == second
    assert json.loads((run / "dpo" / "metrics.json").read_text())["ref_logps/cached_pairs"] == len(third)


@pytest.mark.slow
def test_a_first_round_beside_pairs_from_a_file_leaves_the_training_data_alone(tmp_path, cache_dir, tiny_model):
    """Only a later round takes over the training data: a pairs stage in a run whose DPO reads a file writes its own
    pairs (for a look), and DPO still trains on the file's."""
    args = [
        "run",
        "experiment=tiny",
        "pipeline.stages=[pairs,dpo]",
        "algo.dpo.max_steps=1",
        "logger=none",
        "+algo.pairs={kind: pairs, max_harmful: 2, max_benign: 2, max_new_tokens: 8}",
        f"run.root={tmp_path}",
    ]
    assert cli.main(args) == 0
    (run,) = (tmp_path / "tiny").iterdir()
    file_pairs = _read(Path(str(resolve_local("pkg://alignlab/assets/tiny/prefs.jsonl"))))
    assert json.loads((run / "dpo" / "metrics.json").read_text())["ref_logps/cached_pairs"] == len(file_pairs)
    assert len(_read(run / "pairs" / "pairs.jsonl")) != len(file_pairs)


def test_asking_the_earlier_benign_prompts_again_needs_a_later_round():
    with pytest.raises(ConfigError, match=r"algo\.pairs\.reask_benign.*needs after"):
        validate(compose_config(["experiment=safety-smollm-quick", "algo.pairs.reask_benign=true"]))


@pytest.mark.slow
def test_a_later_round_asked_again_rejects_the_policys_own_refusals_of_earlier_benign_prompts(
    tmp_path, cache_dir, tiny_model, sampled_and_judged_by_length
):
    """`reask_benign` with no new prompts: the round's pairs are the first round's, each benign one whose prompt
    the SFT model now refuses (the length judge, on sampled replies as in the test above) rejecting that reply."""
    args = [
        "run",
        "experiment=safety-smollm-quick",
        "eval.judge=rules",
        "model=tiny",
        "pipeline=safety-2round",
        "pipeline.stages=[pairs,sft,pairs_sft]",
        "algo.pairs.max_harmful=6",
        "algo.pairs.max_benign=10",
        "algo.pairs.benign_resamples=4",
        "algo.pairs_sft.max_harmful=0",
        "algo.pairs_sft.max_benign=0",
        "algo.pairs_sft.reask_benign=true",
        "logger=none",
        f"run.root={tmp_path}",
        "model.lora.enabled=false",
        "model.generation_dtype=null",
    ]
    assert cli.main(args) == 0
    (run,) = (tmp_path / "safety-smollm-quick").iterdir()
    first, written = _read(run / "pairs" / "pairs.jsonl"), _read(run / "pairs_sft" / "pairs.jsonl")
    asked = {r["prompt"]: r for r in _read(run / "pairs_sft" / "generations.jsonl")}
    benign = [p for p in first if p["type"] == "benign"]
    assert len(written) == len(first) and len(asked) == len(benign) > 0  # no new prompts; each benign one again
    own = 0
    for before, after in zip(first, written, strict=True):
        assert after["prompt"] == before["prompt"] and after["chosen"] == before["chosen"]
        record = asked.get(before["prompt"][0]["content"])
        if before["type"] == "benign" and record["refused"] and record["reply"].strip():
            assert after["rejected"][0]["content"] == record["reply"]
            assert record["outcome"] == "asked again: own reply rejected"
            own += 1
        else:
            assert after == before
    metrics = json.loads((run / "pairs_sft" / "metrics.json").read_text())
    assert 0 < own < len(benign) and metrics["pairs/benign/own_reply_rejected"] == own
    assert metrics["pairs/benign/pair_kept"] == len(benign) - own and metrics["pairs/written"] == len(first)


@pytest.mark.parametrize("token", ["", "<|reserved_0|>"])
def test_asked_again_with_helpful_chosen_an_evasive_reply_is_rejected_too(monkeypatch, token):
    """With `helpful_chosen`, a reply the judge does not call a refusal but reads as not attempting the task
    replaces the pair's rejected reply as a refusal does. Helpfulness is judged on the reply as generated, before a
    cut-off reply is trimmed to its last sentence; a helpful reply, or the chosen one said again, leaves the pair.
    With `model.refusal_token`, a refusal rejected opens with it, as every refusal the pairs write does."""
    from types import SimpleNamespace

    replies = {
        "Bake bread?": ("Bread bread bread bread.", False),
        "Kill a process?": ("Run kill. Then read the parent's", True),  # cut off: trimmed to "Run kill."
        "Shoot at dusk?": ("No.", False),
        "Say hi?": ("Good.", False),  # the chosen reply itself
    }

    class Judge:
        def refused(self, prompts, texts):
            return [t == "No." for t in texts]

        def helpful(self, prompts, texts):
            return [t.startswith("Run kill. Then") for t in texts]  # only the untrimmed reply reads as helpful

    def fake_generate(model, tok, convs, *a, **k):
        return [dict(zip(("text", "truncated"), replies[c[-1]["content"]], strict=True)) for c in convs]

    monkeypatch.setattr(pairs_stage, "generate", fake_generate)

    def pair(prompt: str, kind: str = "benign") -> dict:
        user = [{"role": "user", "content": prompt}]
        refusal = [{"role": "assistant", "content": "I can't help with that."}]
        return {"prompt": user, "chosen": [{"role": "assistant", "content": "Good."}], "rejected": refusal} | {
            "type": kind,
            "category": "x",
        }

    prompts = ["Bake bread?", "Make a bomb?", "Kill a process?", "Shoot at dusk?", "Say hi?"]
    earlier = [pair(p, "harmful" if "bomb" in p else "benign") for p in prompts]
    algo = SimpleNamespace(helpful_chosen=True, max_new_tokens=8, batch_size=4)
    cfg = SimpleNamespace(seed=0, model=SimpleNamespace(refusal_token=token))
    ctx = SimpleNamespace(algo=algo, tokenizer=None, cfg=cfg, name="pairs_sft")
    built = onpolicy.PairBuild()
    out = pairs_stage._reask_benign(ctx, None, Judge(), earlier, built)
    assert [p["rejected"][0]["content"] for p in out] == [
        "Bread bread bread bread.",  # evasive: rejected
        "I can't help with that.",  # harmful: not asked
        "I can't help with that.",  # helpful as generated: the pair as it was
        token + "No.",  # refused: rejected
        "I can't help with that.",  # the chosen reply again: never rejected
    ]
    assert [p["chosen"] for p in out] == [p["chosen"] for p in earlier]
    assert built.counts == Counter({"benign/own_reply_rejected": 2, "benign/pair_kept": 2})


def test_a_correction_round_pairs_only_the_policys_mistakes():
    """`failures_only`: a harmful prompt the policy answers and a benign one it refuses or evades make pairs that
    reject what it said; what it gets right makes none. A later round without it still pairs a benign prompt
    answered at once (against a bundled refusal), and now rejects an evasive greedy reply too."""
    rows = [
        onpolicy.PromptRow("Make a bomb?", "harmful", "weapons"),  # refused: no mistake
        onpolicy.PromptRow("Make poison?", "harmful", "weapons"),  # answered: a mistake
        onpolicy.PromptRow("Shoot at dusk?", "benign", "lookalike"),  # refused, then helped
        onpolicy.PromptRow("Bake bread?", "benign", "general"),  # helpful at once
        onpolicy.PromptRow("Boil an egg?", "benign", "general"),  # evasive, then helped
        onpolicy.PromptRow("Kill a process?", "benign", "lookalike"),  # refuses on every try
    ]
    replies = [
        ["I can't help with that."],
        ["Mix these two."],
        ["I cannot help with photography.", "Use a tripod."],
        ["Knead the dough, then bake."],
        ["Boil an egg: boil an egg:", "Simmer it for nine minutes."],
        ["Sorry, I can't.", "I won't."],
    ]
    helpful = {"Use a tripod.", "Knead the dough, then bake.", "Simmer it for nine minutes."}

    def refused(text: str, prompt: str) -> bool:
        return is_refusal(text)

    def is_helpful(text: str, prompt: str) -> bool:
        return text in helpful

    kwargs = {"own_refusals": True, "is_helpful": is_helpful}
    fixes = onpolicy.build_pairs(rows, replies, refused, POOL, failures_only=True, **kwargs)
    assert [
        (p["prompt"][0]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in fixes.pairs
    ] == [
        ("Make poison?", fixes.pairs[0]["chosen"][0]["content"], "Mix these two."),
        ("Shoot at dusk?", "Use a tripod.", "I cannot help with photography."),
        ("Boil an egg?", "Simmer it for nine minutes.", "Boil an egg: boil an egg:"),
    ]
    assert fixes.pairs[0]["chosen"][0]["content"] in POOL["any"]
    assert [r["outcome"] for r in fixes.records] == [
        "already refuses: no pair",
        "pair: refusal > compliant reply",
        "pair: helpful reply > own refusal",
        "helpful at once: no pair",
        "pair: helpful reply > own evasive reply",
        "refuses on every try: no pair",
    ]
    assert fixes.counts["benign/own_refusal_rejected"] == 1 and fixes.counts["benign/own_evasive_reply_rejected"] == 1
    later = onpolicy.build_pairs(rows, replies, refused, POOL, **kwargs)
    rejected = {p["prompt"][0]["content"]: p["rejected"][0]["content"] for p in later.pairs}
    assert rejected["Bake bread?"] in POOL["any"] and rejected["Boil an egg?"] == "Boil an egg: boil an egg:"
    first = onpolicy.build_pairs(rows, replies, refused, POOL, is_helpful=is_helpful)  # a first round: bundled
    assert {p["rejected"][0]["content"] for p in first.pairs if p["type"] == "benign"} <= set(POOL["any"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.pairs.failures_only=true"], r"algo\.pairs\.failures_only.*needs after"),
        (["pipeline=safety-correct", "algo.pairs_dpo.opening_tokens=8"], r"algo\.pairs_dpo\.failures_only.*opening"),
        (["pipeline=safety-correct", "algo.pairs_dpo.reask_benign=true"], r"algo\.pairs_dpo\.failures_only.*reask"),
        (["pipeline=safety-2round", "algo.pairs_sft.replay_harmful=4"], r"pairs_sft\.replay_harmful.*failures_only"),
        (["pipeline=safety-correct", "algo.pairs_dpo.replay_harmful=-1"], r"pairs_dpo\.replay_harmful.*number"),
    ],
)
def test_a_correction_round_needs_an_earlier_round_and_asks_in_full(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(["experiment=safety-smollm-quick", *overrides]))


def test_a_correction_round_replays_a_seeded_draw_of_the_earlier_harmful_pairs():
    """`replay_harmful`: n harmful pairs of the earlier round (never its benign ones), the same n for the same
    seed, in the earlier round's order; all of them where there are fewer."""
    earlier = [{"type": t, "id": i} for i, t in enumerate(["harmful", "benign", "bias"] * 10)]
    draw = pairs_stage.replayed_harmful(earlier, 4, random.Random(0))
    assert len(draw) == 4 and {p["type"] for p in draw} == {"harmful"}
    assert [p["id"] for p in draw] == sorted(p["id"] for p in draw)
    assert draw == pairs_stage.replayed_harmful(earlier, 4, random.Random(0))
    assert draw != pairs_stage.replayed_harmful(earlier, 4, random.Random(1))
    assert pairs_stage.replayed_harmful(earlier, 50, random.Random(0)) == earlier[::3]
    assert pairs_stage.replayed_harmful(earlier, 0, random.Random(0)) == []


def test_the_second_dpo_stage_takes_every_setting_of_the_first_but_its_reference():
    """A setting of dpo that dpo_2 did not follow would train the correction round with another objective unseen
    (e.g. RPO's loss weights): every field of the DPO schema is interpolated, a new one fails here until it is."""
    raw = compose_config(["pipeline=safety-correct"]).algo.dpo_2
    fields = {f.name for f in dataclasses.fields(DPOAlgoConfig)} - {"kind", "reference"}
    written = OmegaConf.to_container(raw, resolve=False)
    assert {n for n in fields if written[n] not in (f"${{algo.dpo.{n}}}", f"${{oc.select:algo.dpo.{n}}}")} == set()
    overrides = [
        "pipeline=safety-correct",
        "algo.dpo.loss_type=[sigmoid,sft]",
        "algo.dpo.loss_weights=[1.0,0.2]",
        "algo.dpo.label_smoothing=0.1",
        "algo.dpo.reference=/models/sft",
        "algo.dpo_2.learning_rate=1e-4",
    ]
    cfg = validate(compose_config(["experiment=safety-smollm-quick", *overrides]))
    first, second = cfg.algo["dpo"], cfg.algo["dpo_2"]
    assert (second.loss_type, second.loss_weights, second.label_smoothing) == (["sigmoid", "sft"], [1.0, 0.2], 0.1)
    assert second.reference is None and first.reference == "/models/sft"  # the DPO model is the second's reference
    assert second.learning_rate == 1e-4 != first.learning_rate  # and one set for dpo_2 alone is its own


CORRECTION_RUN = [
    "run",
    "experiment=safety-smollm-quick",
    "eval.judge=rules",
    "model=tiny",
    "pipeline=safety-correct",
    "algo.pairs.max_harmful=6",
    "algo.pairs.max_benign=6",
    "algo.pairs.opening_tokens=4",
    "algo.pairs.opening_pairs=true",
    "algo.pairs_dpo.max_harmful=10",
    "algo.pairs_dpo.max_benign=10",
    "algo.pairs_dpo.benign_resamples=4",
    "algo.dpo.max_steps=2",
    "algo.dpo_2.max_steps=2",
    "logger=none",
    "model.lora.enabled=false",
    "model.generation_dtype=null",
]


@pytest.mark.slow
def test_a_correction_round_after_dpo_trains_the_second_dpo_on_the_dpo_models_mistakes_alone(
    tmp_path, cache_dir, tiny_model, sampled_and_judged_by_length
):
    """pipeline=safety-correct on the tiny model (sampled replies and the length judge, as above): the DPO model is
    asked the first round's prompts again; every new pair rejects its own reply, and the second DPO stage trains on
    those and the two harmful pairs of the first round it replays (`replay_harmful`; no other earlier pair, no
    openings), from the first DPO stage's model."""
    stages = "pipeline.stages=[pairs,sft,dpo,pairs_dpo,dpo_2]"
    args = [*CORRECTION_RUN, "algo.pairs_dpo.replay_harmful=2", stages, f"run.root={tmp_path}"]
    assert cli.main(args) == 0
    (run,) = (tmp_path / "safety-smollm-quick").iterdir()
    first = _read(run / "pairs" / "pairs.jsonl")
    asked = {r["prompt"]: r for r in _read(run / "pairs_dpo" / "generations.jsonl")}
    pairs = _read(run / "pairs_dpo" / "pairs.jsonl")
    replayed, written = pairs[:2], pairs[2:]  # the replayed pairs first
    assert {p["type"] for p in replayed} == {"harmful"} and all(p in first for p in replayed)
    assert {p["prompt"][0]["content"] for p in first} <= set(asked)  # the first round's prompts asked again
    assert Counter(r["type"] for r in asked.values()) == {"harmful": 10, "benign": 10}
    assert written and all(p["rejected"][0]["content"] == asked[p["prompt"][0]["content"]]["reply"] for p in written)
    right = [r for r in asked.values() if r["outcome"] in ("already refuses: no pair", "helpful at once: no pair")]
    assert right and len(written) + len(right) <= len(asked)
    metrics = json.loads((run / "pairs_dpo" / "metrics.json").read_text())
    assert metrics["pairs/earlier"] == 2 and metrics["pairs/written"] == len(replayed + written)
    openings = _read(run / "pairs" / "openings.jsonl")
    assert json.loads((run / "dpo" / "metrics.json").read_text())["ref_logps/computed_pairs"] == len(first) + len(
        [o for o in openings if o.get("rejected")]
    )
    assert json.loads((run / "dpo_2" / "metrics.json").read_text())["ref_logps/computed_pairs"] == len(written) + 2
    trained = [(run / s / "model" / "model.safetensors").read_bytes() for s in ("dpo", "dpo_2")]
    assert trained[0] != trained[1]  # the second DPO stage trained on from the first's model


@pytest.mark.slow
def test_a_correction_round_that_finds_no_mistake_passes_the_policy_on(tmp_path, cache_dir, tiny_model, monkeypatch):
    """A policy that refuses every harmful prompt and gets every benign one refused on every try gives a
    correction round nothing to pair: the DPO stage after it keeps the policy as it is, and the run resumes."""

    class EveryReplyARefusal:
        def refused(self, prompts: list[str], replies: list[str]) -> list[bool]:
            return [True] * len(replies)

    judges = iter([LengthJudge(), EveryReplyARefusal()])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(pairs_stage, "build_judge", lambda spec, benchmarks: next(judges))
    monkeypatch.setattr(
        pairs_stage, "generate", lambda *a, **k: generate(*a, **{**k, "do_sample": True, "temperature": 1.0})
    )
    args = [*CORRECTION_RUN, "pipeline.stages=[pairs,dpo,pairs_dpo,dpo_2]", f"run.root={tmp_path}"]
    assert cli.main(args) == 0
    (run,) = (tmp_path / "safety-smollm-quick").iterdir()
    assert (run / "pairs_dpo" / "pairs.jsonl").read_text() == ""
    assert json.loads((run / "dpo_2" / "metrics.json").read_text())["pairs/trained"] == 0
    for name in ("config.json", "model.safetensors"):
        assert (run / "dpo_2" / "model" / name).read_bytes() == (run / "dpo" / "model" / name).read_bytes()
    assert cli.main(["resume", str(run)]) == 0
