"""Bias preference pairs from the project's templates (assets/bias/templates.yaml), over eight social dimensions.

Three kinds, so that the model learns to use evidence rather than to abstain everywhere:
- ambiguous: two people, nothing says which one did it. `chosen` says it cannot be told, and why; `rejected` picks
  the person the stereotype points at (for a question about the counter-stereotypical act, the other one).
- disambiguated: the context says who did it (half the time against the stereotype), in one of the templates'
  `evidence_frames`. `chosen` names that person from the evidence; `rejected` abstains where the evidence agrees
  with the stereotype, and follows the stereotype where it does not.
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
from dataclasses import dataclass
from typing import Any

import yaml

from alignlab.data.sources import resolve_local
from alignlab.errors import DataError

KINDS = ("ambiguous", "disambiguated", "open")
BUNDLED = "pkg://alignlab/assets/bias/templates.yaml"


@dataclass
class Scenario:
    """One filled template: the dimension and stereotype it came from, and its two people."""

    dimension: str
    noun: str
    stereotype: dict[str, Any]
    target: dict[str, str]
    other: dict[str, str]


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


def ambiguous(s: Scenario, rng: random.Random, templates: dict[str, Any]) -> dict[str, Any]:
    first, second = (s.target, s.other) if rng.random() < 0.5 else (s.other, s.target)
    context = _cap(rng.choice(s.stereotype["scenes"]).format(a=first["a"], b=second["a"]))
    negative = rng.random() < 0.5  # a question about the stereotyped act, or about its counterpart
    act = s.stereotype["stereo" if negative else "counter"]
    question = rng.choice(act["ask"])
    reason = rng.choice(UNKNOWN_REASONS).format(did=act["did"], the_a=first["the"], the_b=second["the"], noun=s.noun)
    chosen = rng.choice(templates["unknown_openers"]) + reason
    # the stereotype's pick: the target for the stereotyped act, the other person for its counterpart
    rejected = _guess(s.target if negative else s.other, rng)
    return {"prompt": _message("user", f"{context} {question}"), "chosen": _message("assistant", chosen),
            "rejected": _message("assistant", rejected), "asked": "stereo" if negative else "counter",
            "answer": None}  # fmt: skip


def disambiguated(s: Scenario, rng: random.Random, templates: dict[str, Any]) -> dict[str, Any]:
    first, second = (s.target, s.other) if rng.random() < 0.5 else (s.other, s.target)
    scene = _cap(rng.choice(s.stereotype["scenes"]).format(a=first["a"], b=second["a"]))
    against = rng.random() < 0.5  # the evidence goes against the stereotype half the time
    doer, other = (s.other, s.target) if against else (s.target, s.other)  # who did the stereotyped act
    st, co = s.stereotype["stereo"], s.stereotype["counter"]
    frame = rng.choice(templates.get("evidence_frames") or [EVIDENCE_FRAME])
    people = {"doer": doer["the"], "other": other["the"], "Other": _cap(other["the"])}
    evidence = _cap(frame.format(**people, did=st["did"], other_did=co["did"]))
    negative = rng.random() < 0.5
    act, answer, wrong = (st, doer, other) if negative else (co, other, doer)
    question = rng.choice(act["ask"])
    reason = rng.choice(EVIDENCE_REASONS).format(the=answer["the"], cap_the=_cap(answer["the"]), did=act["did"])
    chosen = f"{_cap(answer['the'])}.{reason}"
    # Against the stereotype, the rejected reply follows it although the evidence contradicts it; with it, the
    # rejected reply abstains although the context answers. Abstaining in three of four (an earlier mix) put the
    # unknown openers into almost as many rejected replies as chosen ones; after DPO some were all but gone (after
    # "Cannot", " be" at -17 nats) and BBQ's ambiguous items phrased that way were lost (README).
    abstain = templates["unknown_openers"]
    rejected = _guess(wrong, rng) if against else rng.choice(abstain) + rng.choice(ABSTAIN_REASONS)
    return {"prompt": _message("user", f"{scene} {evidence} {question}"), "chosen": _message("assistant", chosen),
            "rejected": _message("assistant", rejected), "asked": "stereo" if negative else "counter",
            "answer": answer["the"]}  # fmt: skip


def open_ended(s: Scenario, rng: random.Random, templates: dict[str, Any]) -> dict[str, Any]:
    group = s.target["group"]
    question = rng.choice(s.stereotype["premise"]).format(group=group)
    prompt = rng.choice(templates.get("open_frames") or ["{q}"]).format(q=question)
    chosen = _cap(s.stereotype["correction"].format(group=group))
    rejected = _cap(s.stereotype["accepts"].format(group=group))
    return {"prompt": _message("user", prompt), "chosen": _message("assistant", chosen),
            "rejected": _message("assistant", rejected), "asked": None, "answer": None}  # fmt: skip


BUILDERS = {"ambiguous": ambiguous, "disambiguated": disambiguated, "open": open_ended}


def build_pairs(templates: dict[str, Any], n: int, seed: int, kinds: dict[str, float] | None = None) -> list[dict]:
    """`n` distinct pairs, dimensions in turn (so each gets its share), kinds drawn with the weights `kinds`."""
    kinds = kinds or {"ambiguous": 0.4, "disambiguated": 0.4, "open": 0.2}
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise DataError(f"Data error: unknown bias pair kinds {unknown}; expected some of {list(KINDS)}.")
    rng = random.Random(seed)
    dims = sorted(templates["dimensions"])
    names, weights = zip(*sorted(kinds.items()))
    pairs, seen, tries = [], set(), 0
    while len(pairs) < n and tries < 50 * n + 100:
        tries += 1
        dim = dims[len(pairs) % len(dims)]
        spec = templates["dimensions"][dim]
        stereotype = rng.choice(spec["stereotypes"])
        s = Scenario(dim, spec.get("noun", dim), stereotype, rng.choice(stereotype["target"]),
                     rng.choice(stereotype["other"]))  # fmt: skip
        kind = rng.choices(names, weights)[0]
        pair = BUILDERS[kind](s, rng, templates)
        key = (pair["prompt"][0]["content"], pair["chosen"][0]["content"])
        if key in seen:
            continue
        seen.add(key)
        pairs.append({**pair, "type": "bias", "category": dim, "kind": kind, "stereotype": stereotype["name"],
                      "chosen_safe": True, "rejected_safe": False})  # fmt: skip
    return pairs
