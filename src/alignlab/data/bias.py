"""Bias preference pairs from the project's templates (assets/bias/templates.yaml), over eight social dimensions.

Three kinds, so that the model learns to use evidence rather than to abstain everywhere:
- ambiguous: two people in a scene, nothing says which one did it; asked both ways (about the stereotyped act and
  about its counterpart: two pairs). `chosen` says it cannot be told, and why; `rejected` picks the person the
  stereotype points at (for the counter-stereotypical act, the other one).
- disambiguated: the same scene plus evidence of who did it (half the time against the stereotype), in one of the
  templates' `evidence_frames`, asked both ways too. `chosen` names the person the evidence names; `rejected`
  abstains where the evidence agrees with the stereotype, and names the stereotype's (wrong) pick, with the right
  reply's reason, where it does not.
- open: a question that presumes the stereotype. `chosen` corrects the premise and helps; `rejected` accepts it.

The user turn is "<context> <question>", and a reply opens with the answer itself ("The retired man.", "Cannot be
determined. ..."), the shape in which likelihood-scored benchmarks such as BBQ read a model's answer, and stops
within a sentence: a first version with a fixed two-sentence explanation taught SmolLM2 to answer every benign request
with "Nothing in the description says which of them ..." (KL 92 nats to the start), and a second, with short
reasons that still spoke of "the description", leaked those into its replies too. Every pair
carries safety labels for a cost model: the stereotyped (or premise-accepting) reply is the unsafe one.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any

import yaml

from alignlab.data.sources import resolve_local
from alignlab.errors import DataError

KINDS = ("ambiguous", "disambiguated", "open")
PRESENTATIONS = ("free", "listed", "lettered")  # how a two-person question is put (`present`)
AGREEING_REJECTED = ("abstain", "mixed", "named", "balanced")  # see `disambiguated`
BUNDLED = "pkg://alignlab/assets/bias/templates.yaml"


@dataclass
class Scenario:
    """One filled template: the dimension and stereotype it came from, its two people, and the scene that puts
    them together (`first` named first), which its ambiguous and disambiguated pairs share."""

    dimension: str
    noun: str
    stereotype: dict[str, Any]
    target: dict[str, str]
    other: dict[str, str]
    first: dict[str, str]
    second: dict[str, str]
    scene: str


def load_templates(path: str = BUNDLED) -> dict[str, Any]:
    local = resolve_local(path)
    if local is None or not local.is_file():
        raise DataError(f"Data error: bias templates '{path}' do not exist.")
    try:
        templates = yaml.safe_load(local.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"Data error in '{local}': not valid YAML ({exc}).") from None
    problems = []
    if not templates.get("unknown_openers"):
        problems.append("no unknown_openers")
    for dim, spec in (templates.get("dimensions") or {}).items():
        for i, s in enumerate(spec.get("stereotypes") or []):
            for key in ("target", "other", "scenes", "stereo", "counter", "premise", "correction", "accepts"):
                if not s.get(key):
                    problems.append(f"dimensions.{dim}.stereotypes[{i}] has no '{key}'")
    if not templates.get("dimensions"):
        problems.append("no dimensions")
    for i, frame in enumerate(templates.get("evidence_frames") or []):
        try:
            str(frame).format(doer="", other="", Other="", did="", other_did="")
        except (KeyError, IndexError, ValueError) as exc:
            problems.append(f"evidence_frames[{i}] uses {exc} (it may use doer, other, Other, did, other_did)")
    if problems:
        raise DataError(f"Data error in '{local}': {'; '.join(problems[:5])}.")
    return templates


class Draws(random.Random):
    """A seeded random.Random that can also deal options in turn (`turn`), for the choices whose balance BBQ reads.

    Drawn at random, the 12 unknown openers' shares of about 107 ambiguous pairs changed with every draw, and with
    them how BBQ's own wordings of "unknown" scored ("Not known" right in 9 of 16 items after one draw, 4 of 16
    after another): with the experiment's settings unchanged, a new draw of the pairs moved ambiguous accuracy
    from 0.78 to 0.60 (README). Dealt in turn from a shuffled order, every opener gets the same share.
    """

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self._dealt: dict[str, tuple[list[Any], int]] = {}

    def turn(self, name: str, options: list[Any] | tuple[Any, ...]) -> Any:
        order, n = self._dealt.get(name) or (self.sample(list(options), len(options)), 0)
        self._dealt[name] = (order, n + 1)
        return order[n % len(order)]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _message(role: str, text: str) -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


def _guess(person: dict[str, str], rng: random.Random) -> str:
    """A reply that answers by stereotype: the person, sometimes with their group as the reason."""
    reason = rng.choice(["", " That's typical of {g}.", " It's always {g}.", " You'd expect that from {g}."])
    return f"{_cap(person['the'])}.{reason.format(g=person['group'])}"


# Short reasons after an answer: a reply that opens with the answer and stops soon, so that what the pairs teach is
# the answer, not a stock paragraph the model would then attach to every question.
UNKNOWN_REASONS = (
    "",
    " It isn't said who {did}.",
    " Either of them could have.",
    " Both {the_a} and {the_b} were there, and we aren't told which one {did}.",
    " Going by their {noun} would be a stereotype.",
    " We only know they were both there.",
)
EVIDENCE_FRAME = "{doer} {did}, while {other} {other_did}."  # when the templates give no `evidence_frames`
EVIDENCE_REASONS = ("", " {cap_the} {did}.", " That's who {did}.", " We're told {the} {did}.")
ABSTAIN_REASONS = ("", " It could have been either of them.", " Either one might have.")


def _named(person: dict[str, str], reason: str, did: str) -> str:
    """A reply that names `person`, then one of EVIDENCE_REASONS about them."""
    return f"{_cap(person['the'])}." + reason.format(the=person["the"], cap_the=_cap(person["the"]), did=did)


def ambiguous(s: Scenario, rng: Draws, templates: dict[str, Any]) -> list[dict[str, Any]]:
    """The scene alone, asked both ways (two pairs): nothing says who did either act."""
    pairs = []
    for asked in ("stereo", "counter"):
        act = s.stereotype[asked]
        question = rng.choice(act["ask"])
        reason = rng.choice(UNKNOWN_REASONS).format(
            did=act["did"], the_a=s.first["the"], the_b=s.second["the"], noun=s.noun
        )
        chosen = rng.turn("unknown", templates["unknown_openers"]) + reason
        # the stereotype's pick: the target for the stereotyped act, the other person for its counterpart
        rejected = _guess(s.target if asked == "stereo" else s.other, rng)
        pairs.append(
            {
                "prompt": _message("user", f"{s.scene} {question}"),
                "chosen": _message("assistant", chosen),
                "rejected": _message("assistant", rejected),
                "asked": asked,
                "answer": None,
                "people": [s.first["the"], s.second["the"]],
            }
        )
    return pairs


def disambiguated(
    s: Scenario, rng: Draws, templates: dict[str, Any], agreeing_rejected: str = "abstain"
) -> list[dict[str, Any]]:
    """One context with its evidence, asked both ways: about the stereotyped act and about its counterpart.

    The two pairs share the context and swap (or, with the stereotype, keep) the people, and a wrong pick carries
    the same reason as the right one, so that only the evidence tells chosen from rejected: no prior for one person
    and no tail ("That's typical of ...") lowers the loss. Where the evidence agrees with the stereotype, the
    rejected reply abstains (`agreeing_rejected="abstain"`), or, dealt in turn, abstains in half of those pairs and
    names the other person in the rest ("mixed": three in four rejected replies then contrast the two people), or
    always names the other person ("named"). "named" is symmetric: every rejected reply names a person, and
    the stereotype's pick is the wrong one in as many pairs as the other person is, so the pairs add no prior for
    either; "abstain" names only the stereotype's pick (the anti-stereotyped person is chosen in half of the pairs
    and never rejected), "mixed" half as often. But "abstain" and "mixed" reject abstaining only where the evidence
    agrees with the stereotype, and "named" nowhere, so nothing holds the model back from abstaining where the
    evidence contradicts it. "balanced" is symmetric in both: in every context, whichever way its evidence goes,
    one of its two rejected replies abstains and the other names the wrong person.
    """
    against = rng.turn("against", (False, True))  # the evidence goes against the stereotype half the time
    doer, other = (s.other, s.target) if against else (s.target, s.other)  # who did the stereotyped act
    st, co = s.stereotype["stereo"], s.stereotype["counter"]
    frame = rng.choice(templates.get("evidence_frames") or [EVIDENCE_FRAME])
    people = {"doer": doer["the"], "other": other["the"], "Other": _cap(other["the"])}
    evidence = _cap(frame.format(**people, did=st["did"], other_did=co["did"]))
    # "balanced": the context's pair whose rejected reply abstains, dealt in turn apart for each direction of the
    # evidence, so that each direction gets as many abstaining as naming rejected replies, and the wrong pick is
    # the stereotyped person in half of them (one deal for both would lock the two cycles together)
    abstains_on = rng.turn(f"balanced-{against}", ("stereo", "counter")) if agreeing_rejected == "balanced" else None
    pairs = []
    for asked, act, answer, wrong in (("stereo", st, doer, other), ("counter", co, other, doer)):
        question = rng.choice(act["ask"])
        reason = rng.choice(EVIDENCE_REASONS)
        # Against the stereotype, the rejected reply names the stereotype's pick although the evidence contradicts
        # it; with it, the rejected reply abstains although the context answers. Abstaining in three of four (an
        # earlier mix) put the unknown openers into almost as many rejected replies as chosen ones; after DPO some
        # were all but gone (after "Cannot", " be" at -17 nats) and BBQ's ambiguous items phrased that way were lost.
        if agreeing_rejected == "balanced":
            names_wrong = asked != abstains_on
        else:  # "mixed" deals a turn only where the evidence agrees (short-circuits)
            mixed = agreeing_rejected == "mixed"
            names_wrong = (
                against
                or agreeing_rejected == "named"
                or (mixed and rng.turn("agreeing", ("abstain", "wrong")) == "wrong")
            )
        if names_wrong:
            rejected = _named(wrong, reason, act["did"])
        else:
            rejected = rng.turn("abstain", templates["unknown_openers"]) + rng.choice(ABSTAIN_REASONS)
        pairs.append(
            {
                "prompt": _message("user", f"{s.scene} {evidence} {question}"),
                "chosen": _message("assistant", _named(answer, reason, act["did"])),
                "rejected": _message("assistant", rejected),
                "asked": asked,
                "answer": answer["the"],
                "people": [s.first["the"], s.second["the"]],
            }
        )
    return pairs


def open_ended(s: Scenario, rng: Draws, templates: dict[str, Any]) -> list[dict[str, Any]]:
    group = s.target["group"]
    question = rng.choice(s.stereotype["premise"]).format(group=group)
    prompt = rng.choice(templates.get("open_frames") or ["{q}"]).format(q=question)
    chosen = _cap(s.stereotype["correction"].format(group=group))
    rejected = _cap(s.stereotype["accepts"].format(group=group))
    return [
        {
            "prompt": _message("user", prompt),
            "chosen": _message("assistant", chosen),
            "rejected": _message("assistant", rejected),
            "asked": None,
            "answer": None,
        }
    ]


BUILDERS = {"ambiguous": ambiguous, "disambiguated": disambiguated, "open": open_ended}

# The project's own wordings for the options, so that evaluation's presentations (BBQ's "Answer with one of: ...",
# lm-evaluation-harness's "Question: ... A. ... Answer:") stay held out: what must transfer is the behaviour, not a
# prompt seen in training.
LISTED_FRAMES = ("{text} Options: {options}.", "{text} Choose from: {options}.", "{text} (Possible answers: {options})")
LETTERED_FRAMES = (
    "{text}\n{options}",
    "{text} Pick one.\n{options}",
    "{text}\n{options}\nReply with the letter.",
)
OPTION_LETTERS = ("A", "B", "C")


def present(pair: dict[str, Any], presentation: str, rng: Draws, openers: list[str]) -> dict[str, Any]:
    """`pair` (a two-person question) put another way, so that training teaches the answer, not one prompt shape.

    - free: the question alone (as built);
    - listed: the three options after it, in a shuffled order: the two people and an "unknown" wording;
    - lettered: the options lettered A-C, one per line, and each reply opens with its option's letter
      ("B. Cannot be determined. ..."), as a reply to a lettered question does.
    The "unknown" option is worded as the pair's abstaining reply opens (else an opener dealt in turn), so a reply
    always repeats one option's words."""
    if presentation == "free" or not pair.get("people"):
        return pair
    text = pair["prompt"][0]["content"]
    replies = {key: pair[key][0]["content"] for key in ("chosen", "rejected")}
    said = next((o for o in openers for r in replies.values() if r.startswith(o)), None)
    unknown = said or rng.turn("option-unknown", openers)
    options = [_cap(p) for p in pair["people"]] + [unknown.rstrip(".")]
    rng.shuffle(options)
    if presentation == "listed":
        prompt = rng.choice(LISTED_FRAMES).format(text=text, options="; ".join(options))
    else:
        lines = "\n".join(f"{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options))
        prompt = rng.choice(LETTERED_FRAMES).format(text=text, options=lines)
        for key, reply in replies.items():  # every reply opens with one option's words (longest first: "Lucas Jr")
            given = max((o for o in options if reply.startswith(o)), key=len)
            replies[key] = f"{OPTION_LETTERS[options.index(given)]}. {reply}"
    return {
        **pair,
        "prompt": _message("user", prompt),
        "chosen": _message("assistant", replies["chosen"]),
        "rejected": _message("assistant", replies["rejected"]),
        "presentation": presentation,
    }


def _dealt_presentation(weights: dict[str, float], dealt: Counter) -> str:
    """The presentation furthest below its share so far: each gets its weight's share of the pairs, exactly."""
    live = {p: w for p, w in sorted(weights.items()) if w > 0}
    return min(live, key=lambda p: dealt[p] / live[p])


def build_pairs(
    templates: dict[str, Any],
    n: int,
    seed: int,
    kinds: dict[str, float] | None = None,
    agreeing_rejected: str = "abstain",
    presentations: dict[str, float] | None = None,
) -> list[dict]:
    """`n` distinct pairs, each dimension in turn while it has the fewest (so each gets its share), and each kind
    exactly its share of `kinds` (rounded): a random mix of 214 pairs had missed .5/.4/.1 by six pairs a kind.

    A scene gives its ambiguous pairs and its disambiguated ones together (while both kinds are short of their
    share), as BBQ's contexts come in both conditions: the same two people, and the evidence sentence alone decides
    between "cannot be determined" and a name.
    """
    kinds = kinds or {"ambiguous": 0.4, "disambiguated": 0.4, "open": 0.2}
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise DataError(f"Data error: unknown bias pair kinds {unknown}; expected some of {list(KINDS)}.")
    presentations = presentations or {"free": 1.0}
    if set(presentations) - set(PRESENTATIONS) or not any(w > 0 for w in presentations.values()):
        raise DataError(
            f"Data error: bias presentations {presentations} should weigh some of {list(PRESENTATIONS)} above 0."
        )
    if agreeing_rejected not in AGREEING_REJECTED:
        raise DataError(
            f"Data error: agreeing_rejected should be one of {list(AGREEING_REJECTED)}, got {agreeing_rejected!r}."
        )
    rng = Draws(seed)
    builders = {**BUILDERS, "disambiguated": partial(disambiguated, agreeing_rejected=agreeing_rejected)}
    per_dim = dict.fromkeys(sorted(templates["dimensions"]), 0)
    total = sum(kinds.values())
    quota = {k: round(n * w / total) for k, w in sorted(kinds.items()) if w > 0}
    quota[max(quota, key=quota.get)] += n - sum(quota.values())  # rounding: the largest kind takes the rest
    have = dict.fromkeys(quota, 0)
    pairs, seen, tries, dealt = [], set(), 0, Counter()
    while len(pairs) < n and tries < 50 * n + 100:
        tries += 1
        dim = min(per_dim, key=per_dim.__getitem__)
        kind = min(quota, key=lambda k: (have[k] / quota[k] if quota[k] else 1.0, rng.random()))
        spec = templates["dimensions"][dim]
        stereotype = rng.choice(spec["stereotypes"])
        target, other = rng.choice(stereotype["target"]), rng.choice(stereotype["other"])
        first, second = (target, other) if rng.random() < 0.5 else (other, target)
        scene = _cap(rng.choice(stereotype["scenes"]).format(a=first["a"], b=second["a"]))
        s = Scenario(dim, spec.get("noun", dim), stereotype, target, other, first, second, scene)
        short = [k for k in ("ambiguous", "disambiguated") if have.get(k, 0) < quota.get(k, 0)]
        together = [kind] if kind == "open" else short
        drawn = [(k, p) for k in together for p in builders[k](s, rng, templates)[: quota[k] - have[k]]]
        trial, presented = dealt.copy(), []
        for k, p in drawn:  # two-person questions only: an open question has no options
            way = _dealt_presentation(presentations, trial) if p.get("people") else "free"
            trial[way] += bool(p.get("people"))
            presented.append((k, present(p, way, rng, templates["unknown_openers"])))
        drawn = presented
        keys = {(p["prompt"][0]["content"], p["chosen"][0]["content"]) for _, p in drawn}
        if keys & seen:
            continue
        seen |= keys
        dealt = trial
        per_dim[dim] += len(drawn)
        for k, p in drawn:
            have[k] += 1
            pairs.append(
                {
                    **p,
                    "type": "bias",
                    "category": dim,
                    "kind": k,
                    "stereotype": stereotype["name"],
                    "chosen_safe": True,
                    "rejected_safe": False,
                }
            )
    return pairs


# Words that open or carry an abstention in a model's own reply: the templates' unknown openers say it in these
# words, and so do the usual paraphrases ("It's impossible to say", "No way to know").
ABSTAIN_WORDS = re.compile(
    r"\b(cannot|can't|can not|not enough|undetermined|unknown|not known|not answerable|"
    r"impossible|not possible|no way|unclear|either (of them|one))\b"
)


def answer_of(reply: str, people: list[str]) -> str:
    """Which answer a model's own reply to a two-person question gives: one of `people` ("the older woman"), "unknown"
    when its first sentence abstains, or "unclear" (both people, neither, or an empty reply).

    The replies this reads come from a model trained on the templates' answer shape ("The older woman.", "Cannot be
    determined."), so the first sentence carries the answer; a person counts when their phrase, without its article,
    appears there as whole words, and the longer phrase wins where one contains the other ("man" in "young man")."""
    first = re.split(r"(?<=[.!?])\s", reply.strip(), maxsplit=1)[0].lower()
    if ABSTAIN_WORDS.search(first):
        return "unknown"
    phrases = {person: person.lower().removeprefix("the ").strip() for person in people}
    named = [p for p, phrase in phrases.items() if re.search(rf"\b{re.escape(phrase)}\b", first)]
    named = [p for p in named if not any(phrases[p] != phrases[q] and phrases[p] in phrases[q] for q in named)]
    return named[0] if len(named) == 1 else "unclear"


def onpolicy_pairs(questions: list[dict[str, Any]], replies: list[str]) -> tuple[list[dict], list[dict], Counter]:
    """Pairs that reject a model's own wrong answers to template bias questions (`questions`: ambiguous and
    disambiguated pairs of `build_pairs`, `replies[i]` the model's reply to question i), with the template's chosen
    reply: in an ambiguous context a reply that names a person, in a disambiguated one any reply but the person the
    evidence names (an abstention, the other person, or no clear answer). An ambiguous reply that names no one clearly
    gives no pair: it may be an abstention in other words.

    Template pairs reject a stock reply; these reject what the model itself says after SFT, in its own words, which
    is where DPO's log-ratios move the most (the DPO paper samples its pairs from the SFT model). Returns the pairs,
    one record per question (its reply, the answer read from it, the outcome) and counts per kind and outcome."""
    pairs, records, counts = [], [], Counter()
    for q, reply in zip(questions, replies, strict=True):
        got = answer_of(reply, q["people"])
        if q["kind"] == "ambiguous":
            outcome = "abstains" if got == "unknown" else "unclear" if got == "unclear" else "names_a_person"
            wrong = outcome == "names_a_person"
        elif q["kind"] == "disambiguated":
            read = {q["answer"]: "right_person", "unknown": "abstains", "unclear": "unclear"}
            outcome = read.get(got, "wrong_person")
            wrong = outcome != "right_person"
        else:
            raise DataError(f"Data error: on-policy bias questions are ambiguous or disambiguated, got {q['kind']!r}.")
        counts[f"bias_{q['kind']}/{outcome}"] += 1
        records.append(
            {
                "prompt": q["prompt"][0]["content"],
                "type": "bias",
                "category": q["category"],
                "kind": q["kind"],
                "reply": reply,
                "refused": got == "unknown",
                "answer": got,
                "outcome": f"pair: chosen > own reply ({outcome})" if wrong else f"{outcome}: no pair",
            }
        )
        if wrong:
            pairs.append({**q, "rejected": _message("assistant", reply), "own_reply": True})
    return pairs, records, counts
