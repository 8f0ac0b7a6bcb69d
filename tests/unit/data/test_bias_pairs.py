"""The bias pairs written by the project (data/bias.py, assets/bias/templates.yaml): their three kinds over eight
dimensions, what each side says, that they pass the data layer, that nothing is copied from BBQ or CrowS-Pairs, and
their mixing into the on-policy pairs at the configured ratio."""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import BENCHMARKS
from omegaconf import OmegaConf

from alignlab import cli, pipeline
from alignlab import data as data_lib
from alignlab.config import compose_config, validate
from alignlab.console import Console
from alignlab.data import bias, mix
from alignlab.errors import ConfigError, DataError

DIMENSIONS = {
    "gender",
    "race_ethnicity",
    "religion",
    "age",
    "nationality",
    "disability",
    "socioeconomic",
    "sexual_orientation",
}


@pytest.fixture(scope="module")
def templates():
    return bias.load_templates()


@pytest.fixture(scope="module")
def pairs(templates):
    return bias.build_pairs(templates, 800, seed=0)


def text(row, part):
    return row[part][0]["content"]


def target_people(templates, pair):
    """The people ("the older man", ...) of the stereotype's target group in the pair's stereotype, lower-cased."""
    spec = next(s for s in templates["dimensions"][pair["category"]]["stereotypes"] if s["name"] == pair["stereotype"])
    return {t["the"].lower() for t in spec["target"]}


def test_every_dimension_and_kind_is_there_in_turn(pairs, templates):
    assert set(templates["dimensions"]) == DIMENSIONS
    dims = Counter(p["category"] for p in pairs)
    assert set(dims) == DIMENSIONS and max(dims.values()) - min(dims.values()) <= 4  # a scene gives up to four
    assert Counter(p["kind"] for p in pairs) == {"ambiguous": 320, "disambiguated": 320, "open": 160}  # .4/.4/.2
    assert len({text(p, "prompt") for p in pairs}) > 0.9 * len(pairs)  # varied people, scenes and questions
    assert len({p["stereotype"] for p in pairs}) >= 24


@pytest.mark.parametrize(
    ("n", "kinds", "expected"),
    [
        (
            214,
            {"ambiguous": 0.5, "disambiguated": 0.4, "open": 0.1},
            {"ambiguous": 107, "disambiguated": 86, "open": 21},
        ),
        (5, {"ambiguous": 0.5, "disambiguated": 0.4, "open": 0.1}, {"ambiguous": 3, "disambiguated": 2}),
        (31, {"disambiguated": 1.0}, {"disambiguated": 31}),  # an odd count: the last context is asked one way
        (40, {"ambiguous": 2, "disambiguated": 0, "open": 2}, {"ambiguous": 20, "open": 20}),
    ],
)
def test_each_kind_gets_exactly_its_share(templates, n, kinds, expected):
    pairs = bias.build_pairs(templates, n, seed=7, kinds=kinds)
    assert len(pairs) == n and Counter(p["kind"] for p in pairs) == expected


def test_ambiguous_pairs_decline_to_guess_and_reject_the_stereotyped_pick(pairs, templates):
    openers = tuple(templates["unknown_openers"])
    for p in (p for p in pairs if p["kind"] == "ambiguous"):
        prompt, chosen, rejected = text(p, "prompt"), text(p, "chosen"), text(p, "rejected")
        assert chosen.startswith(openers) and len(chosen.split()) < 40, chosen  # the answer, then one sentence
        person = rejected.split(".")[0].lower().removeprefix("the ")
        assert not rejected.startswith(openers) and person.split()[-1] in prompt.lower(), rejected


def test_disambiguated_pairs_name_the_person_the_context_names(pairs, templates):
    openers = tuple(templates["unknown_openers"])
    acts = {st["name"]: st for d in templates["dimensions"].values() for st in d["stereotypes"]}
    seen = Counter()
    for p in (p for p in pairs if p["kind"] == "disambiguated"):
        prompt, chosen, rejected = text(p, "prompt"), text(p, "chosen"), text(p, "rejected")
        did = acts[p["stereotype"]][p["asked"]]["did"]
        assert f"{p['answer']} {did}".lower() in prompt.lower()  # the evidence says the answer did what was asked
        assert chosen.lower().startswith(p["answer"].lower() + ".") and len(chosen.split()) < 30, chosen
        assert not rejected.lower().startswith(p["answer"].lower() + ".")
        seen["abstains" if rejected.startswith(openers) else "stereotype"] += 1
    # the rejected reply abstains when the evidence agrees with the stereotype, and follows it when it does not
    assert 0.4 * sum(seen.values()) < seen["abstains"] < 0.6 * sum(seen.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_agreeing_rejected_names_the_other_person_in_half_the_agreeing_pairs(templates, pairs, seed):
    """agreeing_rejected=mixed: where the evidence agrees with the stereotype, half the rejected replies name the
    other person (the right reply with the people swapped) instead of abstaining, so three in four disambiguated
    pairs contrast the two people; the default (abstain) stays as it was, and nothing else changes."""
    openers = tuple(templates["unknown_openers"])
    kinds = {"ambiguous": 0.5, "disambiguated": 0.4, "open": 0.1}
    mixed = bias.build_pairs(templates, 400, seed, kinds, agreeing_rejected="mixed")
    abstain = bias.build_pairs(templates, 400, seed, kinds)
    assert abstain == bias.build_pairs(templates, 400, seed, kinds, agreeing_rejected="abstain")
    dis = [p for p in mixed if p["kind"] == "disambiguated"]
    abstains = sum(text(p, "rejected").startswith(openers) for p in dis)
    assert abs(abstains - len(dis) / 4) <= 2, (abstains, len(dis))
    for p in dis:
        rejected = text(p, "rejected").lower()
        if not rejected.startswith(tuple(o.lower() for o in openers)):  # a wrong pick: the right reply, swapped
            wrong = rejected.split(".", 1)[0]
            assert wrong != p["answer"].lower() and wrong in text(p, "prompt").lower(), (wrong, p)
            assert text(p, "chosen").lower().replace(p["answer"].lower(), wrong) == rejected
    assert Counter(p["kind"] for p in mixed) == Counter(p["kind"] for p in abstain)
    with pytest.raises(DataError, match="agreeing_rejected"):
        bias.build_pairs(templates, 10, seed, kinds, agreeing_rejected="sometimes")


@pytest.mark.parametrize("seed", [0, 1])
def test_named_agreeing_rejected_is_symmetric_in_the_direction_of_the_wrong_pick(templates, seed):
    """agreeing_rejected=named: no disambiguated rejected reply abstains, each names the person the evidence does
    not (the chosen reply with the people swapped), and that person is the stereotype's pick in half of the pairs
    and the other person in the rest, so the pairs teach which person the evidence names, not a prior for one."""
    openers = tuple(o.lower() for o in templates["unknown_openers"])
    kinds = {"ambiguous": 0.5, "disambiguated": 0.4, "open": 0.1}
    named = bias.build_pairs(templates, 400, seed, kinds, agreeing_rejected="named")
    dis = [p for p in named if p["kind"] == "disambiguated"]
    direction = Counter()
    for p in dis:
        chosen, rejected = text(p, "chosen").lower(), text(p, "rejected").lower()
        assert not rejected.startswith(openers), p
        wrong = rejected.split(".", 1)[0]
        assert wrong != p["answer"].lower() and chosen.replace(p["answer"].lower(), wrong) == rejected
        # the stereotype's pick: the target for the stereotyped act, the other person for its counterpart
        targets = target_people(templates, p)
        direction["stereotype's pick" if (wrong in targets) == (p["asked"] == "stereo") else "other"] += 1
    # within 5%: a scene dropped as a repeat has used its turn of the evidence's direction
    assert abs(direction["stereotype's pick"] - direction["other"]) <= 0.05 * len(dis), direction
    default = bias.build_pairs(templates, 400, seed, kinds)
    assert Counter(p["kind"] for p in named) == Counter(p["kind"] for p in default)


@pytest.mark.parametrize("seed", [0, 1])
def test_balanced_rejected_abstains_once_per_context_whichever_way_the_evidence_goes(templates, seed):
    """agreeing_rejected=balanced: of a disambiguated context's two pairs, one rejected reply abstains and the
    other names the wrong person, in contexts whose evidence agrees with the stereotype and in those against it
    alike, so that abstaining is rejected as often where the evidence contradicts the stereotype as where it
    agrees, and the wrong pick is the stereotype's in half of the naming ones, and of its target group in half
    (no prior for either person)."""
    openers = tuple(o.lower() for o in templates["unknown_openers"])
    kinds = {"ambiguous": 0.5, "disambiguated": 0.4, "open": 0.1}
    balanced = bias.build_pairs(templates, 400, seed, kinds, agreeing_rejected="balanced")
    dis = [p for p in balanced if p["kind"] == "disambiguated"]
    seen, contexts = Counter(), Counter()
    for first, second in zip(dis[::2], dis[1::2], strict=False):  # a context's two pairs come together
        assert (first["asked"], second["asked"]) == ("stereo", "counter")
        abstains = [text(p, "rejected").lower().startswith(openers) for p in (first, second)]
        contexts[tuple(abstains)] += 1
        for p, abstained in zip((first, second), abstains, strict=True):
            targets = target_people(templates, p)
            agrees = (p["answer"].lower() in targets) == (p["asked"] == "stereo")  # the answer is the stereotype's
            if not abstained:
                chosen, rejected = text(p, "chosen").lower(), text(p, "rejected").lower()
                wrong = rejected.split(".", 1)[0]
                assert chosen.replace(p["answer"].lower(), wrong) == rejected  # the right reply, people swapped
                seen["names the target group"] += wrong in targets
            seen[("agrees" if agrees else "against", "abstains" if abstained else "names")] += 1
    assert set(contexts) <= {(True, False), (False, True)}, contexts  # exactly one abstains in each context
    assert abs(contexts[(True, False)] - contexts[(False, True)]) <= 2, contexts  # on either question in turn
    for direction in ("agrees", "against"):
        n = seen[(direction, "abstains")] + seen[(direction, "names")]
        assert abs(seen[(direction, "abstains")] - n / 2) <= 0.05 * len(dis), seen
    # the wrong pick is the stereotype's where the evidence is against it: in half of the naming rejected replies
    assert abs(seen[("against", "names")] - seen[("agrees", "names")]) <= 0.05 * len(dis), seen
    # and the person named is of the stereotype's target group in half of them too, whichever act was asked
    names = seen[("against", "names")] + seen[("agrees", "names")]
    assert abs(seen["names the target group"] - names / 2) <= 0.05 * len(dis), seen
    default = bias.build_pairs(templates, 400, seed, kinds)
    assert Counter(p["kind"] for p in balanced) == Counter(p["kind"] for p in default)


def test_each_disambiguated_context_is_asked_both_ways_and_only_the_evidence_tells_the_replies_apart(pairs, templates):
    """The two questions on one context name the two people; a wrong pick is the right reply with the people
    swapped (same reason), so neither a prior for one person nor a reply's tail separates chosen from rejected."""
    openers = tuple(templates["unknown_openers"])
    disambiguated = [p for p in pairs if p["kind"] == "disambiguated"]
    by_context = {}
    for p in disambiguated:
        by_context.setdefault(text(p, "prompt").rsplit(". ", 1)[0], []).append(p)
    assert len(by_context) >= 0.45 * len(disambiguated)
    swapped = 0
    for context, siblings in by_context.items():
        if len(siblings) != 2:  # the last scenario may be cut at n
            continue
        a, b = siblings
        assert {a["asked"], b["asked"]} == {"stereo", "counter"} and a["answer"] != b["answer"], context
        for p, q in ((a, b), (b, a)):
            if text(p, "rejected").startswith(openers):
                continue
            chosen = text(p, "chosen").lower().replace(p["answer"].lower(), "\0")
            assert chosen.replace("\0", q["answer"].lower()) == text(p, "rejected").lower()
            swapped += 1
    assert swapped > 0.3 * len(disambiguated)


def test_a_scene_is_asked_without_and_with_its_evidence(pairs):
    """As in BBQ, a scene's ambiguous pairs and its disambiguated ones come together: the same two people, both
    questions, and only the evidence sentence turns "cannot be determined" into a name."""

    def scene(p):
        return text(p, "prompt").split(". ")[0]

    ambiguous = [p for p in pairs if p["kind"] == "ambiguous"]
    disambiguated = [p for p in pairs if p["kind"] == "disambiguated"]
    asked = {}
    for p in ambiguous:
        asked.setdefault(scene(p), set()).add(p["asked"])
    assert sum(scene(p) in asked for p in disambiguated) >= 0.95 * len(disambiguated)
    assert sum(a == {"stereo", "counter"} for a in asked.values()) >= 0.95 * len(asked)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_unknown_openers_and_evidence_against_the_stereotype_are_dealt_in_equal_shares(templates, seed):
    """BBQ reads its own wordings of "unknown": drawn at random, their shares swung with the seed (README), so they
    are dealt in turn, as is whether the evidence goes against the stereotype."""
    pairs = bias.build_pairs(templates, 214, seed=seed, kinds={"ambiguous": 0.5, "disambiguated": 0.4, "open": 0.1})
    openers = templates["unknown_openers"]

    def opener(reply):
        return next((o for o in openers if reply.startswith(o)), None)

    chosen = Counter(opener(text(p, "chosen")) for p in pairs if p["kind"] == "ambiguous")
    abstains = Counter(opener(text(p, "rejected")) for p in pairs if p["kind"] == "disambiguated")
    abstains.pop(None)  # the rejected replies that name a person
    for dealt in (chosen, abstains):
        assert set(dealt) == set(openers) and max(dealt.values()) - min(dealt.values()) <= 1, dealt
    assert abs(sum(abstains.values()) - sum(p["kind"] == "disambiguated" for p in pairs) / 2) <= 2
    rng = bias.Draws(3)
    assert [rng.turn("x", "abc") for _ in range(6)] == 2 * [rng.turn("x", "abc") for _ in range(3)]


def test_evidence_is_stated_in_the_templates_varied_ways(pairs, templates):
    evidence = [text(p, "prompt") for p in pairs if p["kind"] == "disambiguated"]
    for shape in (", while ", "It turned out that ", "; on the other hand, ", "In the end ", "Everyone noticed that "):
        assert sum(shape in e for e in evidence) > 0.05 * len(evidence), shape
    custom = {**templates, "evidence_frames": ["Witnesses agree that {doer} {did} and {other} {other_did}."]}
    assert all(
        "Witnesses agree that" in text(p, "prompt")
        for p in bias.build_pairs(custom, 40, seed=1)
        if p["kind"] == "disambiguated"
    )
    default = {k: v for k, v in templates.items() if k != "evidence_frames"}  # a file without them: one shape
    assert all(
        ", while " in text(p, "prompt") for p in bias.build_pairs(default, 40, seed=1) if p["kind"] == "disambiguated"
    )


def test_open_prompts_are_corrected_not_accepted(pairs):
    for p in (p for p in pairs if p["kind"] == "open"):
        chosen = text(p, "chosen").lower()
        assert any(w in chosen for w in ("premise", "stereotype", "not ", "isn't", "myth", "false", "prejudice"))
        assert text(p, "rejected") != text(p, "chosen") and "{" not in text(p, "rejected") + text(p, "chosen")


def test_pairs_are_deterministic_per_seed_and_labelled_for_a_cost_model(templates):
    assert bias.build_pairs(templates, 50, seed=3) == bias.build_pairs(templates, 50, seed=3)
    assert bias.build_pairs(templates, 50, seed=3) != bias.build_pairs(templates, 50, seed=4)
    assert all(p["chosen_safe"] and not p["rejected_safe"] for p in bias.build_pairs(templates, 50, seed=3))


def test_pairs_pass_the_data_layer(tmp_path, pairs, tiny_tokenizer):
    path = tmp_path / "bias.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    source = OmegaConf.create(
        {
            "path": str(path),
            "format": "conversational",
            "split": "train",
            "subset": None,
            "revision": None,
            "pku_choose_by": "better",
            "max_rows": None,
        }
    )
    data_cfg = OmegaConf.create({"max_length": 384, "on_overlength": "error", "on_duplicate": "keep"})
    rows, _ = data_lib.load(source, "preference", data_cfg, tiny_tokenizer)
    assert len(rows) == len(pairs)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = _words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


@pytest.mark.skipif(not BENCHMARKS.is_dir(), reason=f"public benchmarks not found at {BENCHMARKS}")
def test_nothing_is_copied_from_bbq_or_crows_pairs(pairs):
    """No generated context, question or reply shares 9 consecutive words with a BBQ context or question or a
    CrowS-Pairs sentence (the public benchmarks stay the yardstick, not training data). The only 7-word runs they
    share are two people named side by side ("a Muslim man and a Christian man")."""
    public = set()
    for f in sorted((BENCHMARKS / "bbq").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            public |= _ngrams(row["context"], 9) | _ngrams(row["question"], 9)
    with open(BENCHMARKS / "crows_pairs" / "crows_pairs_anonymized.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            public |= _ngrams(row["sent_more"], 9) | _ngrams(row["sent_less"], 9)
    copied = [t for p in pairs for part in ("prompt", "chosen", "rejected") if _ngrams(t := text(p, part), 9) & public]
    assert not copied, copied[:3]


def test_bad_templates_and_mix_settings_fail_before_any_compute(tmp_path):
    bad = tmp_path / "templates.yaml"
    bad.write_text(
        "unknown_openers: [Unknown.]\ndimensions:\n  age:\n    stereotypes:\n      - {name: x, target: []}\n"
    )
    with pytest.raises(DataError, match="has no 'target'"):
        bias.load_templates(str(bad))
    with pytest.raises(DataError, match="do not exist"):
        bias.load_templates(str(tmp_path / "missing.yaml"))
    framed = tmp_path / "framed.yaml"
    framed.write_text(bias.resolve_local(bias.BUNDLED).read_text() + '\nevidence_frames: ["{doer} {act}."]\n')
    with pytest.raises(DataError, match=r"evidence_frames\[0\] uses 'act'"):
        bias.load_templates(str(framed))
    base = ["experiment=safety-smollm", "data=safety-bias-onpolicy"]
    with pytest.raises(ConfigError, match=r"data\.bias\.ratio"):
        validate(compose_config([*base, "data.bias.ratio=0"]))
    with pytest.raises(ConfigError, match=r"data\.bias\.kinds"):
        validate(compose_config([*base, "+data.bias.kinds.sarcastic=1.0"]))
    with pytest.raises(ConfigError, match=r"data\.bias\.agreeing_rejected': expected one of"):
        validate(compose_config([*base, "data.bias.agreeing_rejected=never"]))
    for value in bias.AGREEING_REJECTED:  # each documented value composes from the command line, no `+` needed
        cfg = validate(compose_config([*base, f"data.bias.agreeing_rejected={value}"]))
        assert cfg.data.bias.agreeing_rejected == value
    with pytest.raises(ConfigError, match=r"unknown key 'data\.bias\.sft_share\.sarcastic'"):
        validate(compose_config([*base, "data.bias.sft_share.sarcastic=0.5"]))
    with pytest.raises(ConfigError, match=r"data\.bias\.sft_share': expected shares in \[0, 1\] for some of"):
        validate(compose_config([*base, "+data.bias.sft_share.sarcastic=0.5"]))
    with pytest.raises(ConfigError, match=r"data\.bias\.sft_share': expected shares"):
        validate(compose_config([*base, "data.bias.sft_share.ambiguous=1.5"]))
    with pytest.raises(ConfigError, match=r"data\.bias\.sft_share': is below 1 but data\.bias\.sft is false"):
        validate(compose_config([*base, "data.bias.sft=false", "data.bias.sft_share.open=0.5"]))
    with pytest.raises(ConfigError, match=r"data\.bias\.sft_share': .* leaves every mixed kind out of SFT"):
        validate(
            compose_config(
                [
                    *base,
                    "data.bias.kinds.open=0",
                    "data.bias.sft_share.ambiguous=0",
                    "data.bias.sft_share.disambiguated=0",
                ]
            )
        )
    validate(compose_config([*base, "data.bias.sft=false"]))  # the default shares need no SFT
    cfg = validate(compose_config([*base, "data.bias.sft_share.ambiguous=0.5"]))  # no `+` needed either
    assert dict(cfg.data.bias.sft_share) == {"ambiguous": 0.5, "disambiguated": 1.0, "open": 1.0}
    with pytest.raises(ConfigError, match="pairs stage"):
        validate(compose_config(["experiment=tiny", "+data.bias={ratio: 0.5}"]))


@pytest.mark.slow
def test_the_pairs_stage_mixes_bias_pairs_at_the_ratio(tmp_path, cache_dir, tiny_model, monkeypatch):
    """The safety pipeline on the tiny model with data=safety-bias-onpolicy: pairs.jsonl holds the on-policy safety
    pairs and round(ratio x their number) bias pairs; DPO trains on all of them, SFT on the safety pairs."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = [
        "run",
        "experiment=safety-smollm-quick",
        "eval.judge=rules",  # the tiny model's replies; the probe judge reads SmolLM2's states
        "model=tiny",
        "data=safety-bias-onpolicy",
        "data.bias.ratio=1.5",
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
    rows = [json.loads(line) for line in (run / "pairs" / "pairs.jsonl").read_text().splitlines()]
    safety = [r for r in rows if r["type"] != "bias"]
    mixed = [r for r in rows if r["type"] == "bias"]
    assert len(mixed) == round(1.5 * len(safety)) and len(safety) > 0
    metrics = json.loads((run / "pairs" / "metrics.json").read_text())
    assert metrics["pairs/bias"] == len(mixed) and metrics["pairs/total"] == len(rows)
    assert (run / "dpo" / "DONE").is_file()
    assert Path(run / "inputs.json").read_text().count("templates.yaml") == 1
    # DPO trains on every pair; SFT (on chosen replies) only on the safety ones unless data.bias.sft=true, and then
    # on data.bias.sft_share of each kind's bias pairs (all when unset), whole scenes dealt in turn
    kinds = Counter(r["kind"] for r in mixed)
    assert set(kinds) == {"ambiguous", "disambiguated", "open"}, kinds
    for sft, share in (
        (False, {}),
        (True, {}),
        (True, {"ambiguous": 0}),
        (True, {"disambiguated": 0, "open": 0}),
        (True, {"ambiguous": 0.5}),
        (True, {"ambiguous": 0.1, "disambiguated": 0.3, "open": 0.5}),
    ):
        shares = ", ".join(f"{k}: {v}" for k, v in share.items())
        cfg = validate(
            compose_config(
                [a for a in args[1:] if not a.startswith("run.root")]
                + [f"run.root={tmp_path}", f"data.bias.sft={str(sft).lower()}", f"data.bias.sft_share={{{shares}}}"]
            )
        )
        prep = pipeline.prepare(cfg, run)
        pipeline.load_stage_pairs(prep, Console(quiet=True))
        seen = Counter(r["prompt"][-1]["content"] for r in prep.sft_rows)
        kept = [r for r in mixed if r["prompt"][-1]["content"] in seen]
        assert len(prep.pairs) == len(rows) and len(prep.sft_rows) == len(safety) + len(kept), (sft, share)
        assert set(seen.values()) == {1}, (sft, share)  # no pair's prompt twice
        # a scene is a kind's, dimension's and position's questions (one per direction): whole, in or out
        scenes: dict[tuple, list[bool]] = {}
        position: Counter[tuple] = Counter()
        for r in mixed:
            way = (r["kind"], r["category"], r.get("asked"))
            scenes.setdefault((*way[:2], position[way]), []).append(r in kept)
            position[way] += 1
        assert all(len(set(fate)) == 1 for fate in scenes.values()), (sft, share)
        for kind in kinds:  # round(share x scenes) of the kind's scenes, each dimension within one of its share
            s = share.get(kind, 1) if sft else 0
            ins = [key for key, fate in scenes.items() if key[0] == kind and fate[0]]
            assert len(ins) == math.floor(s * sum(key[0] == kind for key in scenes) + 0.5), (sft, share, kind)
            for dim in {key[1] for key in scenes if key[0] == kind}:
                n = sum(key[:2] == (kind, dim) for key in scenes)
                assert abs(sum(key[1] == dim for key in ins) - s * n) < 1, (sft, share, kind, dim)
        assert any(len(fate) == 2 for fate in scenes.values())  # the ambiguous and disambiguated kinds ask both ways


# ------------------------------------------------------------------------------------------ presentations
WAYS = {"free": 1.0, "listed": 1.0, "lettered": 1.0}


def test_two_person_questions_are_put_each_way_in_its_share():
    pairs = bias.build_pairs(bias.load_templates(), 300, seed=5, presentations=WAYS)
    two_person = [p for p in pairs if p.get("people")]
    shares = Counter(p.get("presentation", "free") for p in two_person)
    assert set(shares) == set(WAYS) and max(shares.values()) - min(shares.values()) <= 1, shares
    assert all("presentation" not in p for p in pairs if p["kind"] == "open")  # no options to list
    assert len({(p["prompt"][0]["content"], p["chosen"][0]["content"]) for p in pairs}) == 300


def test_every_reply_gives_one_of_the_options_it_was_offered():
    """Listed: the reply opens with an option's words; lettered: with the letter of the option whose words follow."""
    pairs = bias.build_pairs(bias.load_templates(), 300, seed=6, presentations=WAYS, agreeing_rejected="balanced")
    for p in (p for p in pairs if p.get("presentation") in ("listed", "lettered")):
        prompt = p["prompt"][0]["content"]
        if p["presentation"] == "listed":
            options = re.search(r"(?:Options|Choose from|Possible answers): (.*?)\.?\)?$", prompt).group(1).split("; ")
        else:
            options = dict(re.findall(r"^([ABC])\. (.+)$", prompt, flags=re.M))
        assert len(options) == 3, prompt
        people = {person.lower() for person in p["people"]}
        assert {o.lower() for o in (options if isinstance(options, list) else options.values())} > people, prompt
        for side in ("chosen", "rejected"):
            reply = p[side][0]["content"]
            if p["presentation"] == "listed":
                assert sum(reply.startswith(o) for o in options) >= 1, (prompt, reply)
            else:
                letter, rest = reply.split(". ", 1)
                assert rest.startswith(options[letter]), (prompt, reply)
        assert p["chosen"][0]["content"][:2] != p["rejected"][0]["content"][:2] or p["presentation"] == "listed"


def test_training_never_uses_the_evaluations_wordings():
    """BBQ's presentations in evaluation (evaluation/bias.py) stay held out: none of their frames is trained on."""
    pairs = bias.build_pairs(bias.load_templates(), 300, seed=7, presentations=WAYS)
    for p in pairs:
        text = p["prompt"][0]["content"]
        assert "Answer with one of:" not in text and "\nQuestion:" not in text and not text.endswith("Answer:")


def test_free_only_is_the_pairs_as_before():
    templates = bias.load_templates()
    before = bias.build_pairs(templates, 60, seed=2)
    assert before == bias.build_pairs(templates, 60, seed=2, presentations={"free": 1})
    assert before == bias.build_pairs(templates, 60, seed=2, presentations={"free": 1, "listed": 0, "lettered": 0})


def test_the_documented_command_reaches_the_pairs_stage():
    """The experiment README's override composes (every presentation is a key of the data config, so a plain
    `data.bias.presentations={...}` needs no `+`) and the pairs stage deals the ways it names."""
    cfg = validate(
        compose_config(["experiment=safety-bias-smollm", "data.bias.presentations={free: 1, listed: 1, lettered: 1}"])
    )
    assert dict(cfg.data.bias.presentations) == WAYS
    assert dict(validate(compose_config(["experiment=safety-bias-smollm"])).data.bias.presentations)["free"] == 1.0
    pairs = mix.mixed_pairs(cfg.data.bias, 100, seed=3)
    assert {p.get("presentation", "free") for p in pairs if p.get("people")} == set(WAYS)


def test_presentations_are_checked():
    with pytest.raises(ConfigError, match=r"unknown key 'data\.bias\.presentations\.shouted'"):
        validate(compose_config(["experiment=safety-bias-smollm", "data.bias.presentations={free: 1, shouted: 1}"]))
    with pytest.raises(ConfigError, match=r"'data\.bias\.presentations': expected weights >= 0"):
        validate(compose_config(["experiment=safety-bias-smollm", "data.bias.presentations.listed=-1"]))
    with pytest.raises(DataError, match="presentations"):
        bias.build_pairs(bias.load_templates(), 10, seed=0, presentations={"free": 0})
