"""The bias mix (`data.bias`): template bias pairs (data/bias.py) mixed into a run's on-policy safety pairs.

What the run does with it, in order: `check_templates` when the pipeline prepares the run (a bad templates file
fails before any compute), `mixed_pairs` in the first pairs stage (`ratio` bias pairs per safety pair),
`fresh_questions` in a later round with `bias_prompts` (new scenes for the policy to answer), and `sft_pairs` when
SFT trains on the chosen replies of the written pairs (each kind's `sft_share` of the bias scenes).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from alignlab.data import bias, onpolicy
from alignlab.data.sources import fingerprint


def check_templates(mix: DictConfig) -> dict[str, str]:
    """Read the templates now and return their fingerprint (for the run's inputs.json): the pairs stage reads them
    later, and a resumed run must refuse changed templates like any changed data."""
    bias.load_templates(mix.templates)
    return {str(mix.templates): fingerprint(str(mix.templates))}


def mixed_pairs(mix: DictConfig, safety_pairs: int, seed: int) -> list[dict[str, Any]]:
    """`ratio` template bias pairs per safety pair, of the kinds in `kinds`' proportions."""
    templates = bias.load_templates(mix.templates)
    return bias.build_pairs(
        templates,
        round(mix.ratio * safety_pairs),
        seed=seed,
        kinds=dict(mix.kinds),
        agreeing_rejected=mix.agreeing_rejected,
        presentations=dict(mix.presentations),
    )


def fresh_questions(mix: DictConfig, n: int, asked: set[str], seed: int) -> list[dict[str, Any]]:
    """`n` template questions (ambiguous and disambiguated, in `kinds`' proportions; open-ended replies have no
    answer to read) that were not `asked` before, drawn with a seed of their own, so that they are new scenes."""
    kinds = {k: w for k, w in mix.kinds.items() if k in ("ambiguous", "disambiguated")}
    drawn = bias.build_pairs(
        bias.load_templates(mix.templates), 2 * n, seed=seed, kinds=kinds, agreeing_rejected=mix.agreeing_rejected
    )
    return [q for q in drawn if q["prompt"][0]["content"] not in asked][:n]


def sft_pairs(mix: DictConfig | None, pairs: list[dict[str, Any]], written: Path) -> list[dict[str, Any]]:
    """The pairs whose chosen replies SFT trains on when data.sft is unset: the safety pairs, and the bias pairs only
    with `sft`, each kind's `sft_share` of them (`_kept_scenes`). `written` is the pairs stage's pairs.jsonl, which
    says which pairs are bias pairs of which kind, dimension and scene."""
    if mix is None:
        return pairs
    share = {k: float(mix.sft_share.get(k, 1.0)) if mix.sft else 0.0 for k in bias.KINDS}
    if all(s == 1 for s in share.values()):
        return pairs
    bias_rows = [r for r in onpolicy.read_jsonl(written) if r.get("type") == "bias"]
    kept = _kept_scenes(bias_rows, share)
    skip = {(r["prompt"][-1]["content"], r["chosen"][-1]["content"]) for r, keep in zip(bias_rows, kept) if not keep}
    return [p for p in pairs if (p["prompt"][-1]["content"], p["chosen"][-1]["content"]) not in skip]


def _kept_scenes(rows: list[dict[str, Any]], share: dict[str, float]) -> list[bool]:
    """Whether each bias row goes to SFT: round(share x scenes) of each kind's scenes, apportioned over the
    dimensions by largest remainder and dealt evenly within each, so that every dimension keeps its share however
    small the kind, and a scene's questions (its rows of one kind, dimension and position) go in or out together.
    Rows of a kind and dimension are numbered per question direction, which the builder writes in step."""
    position: Counter[tuple[str, str, str | None]] = Counter()
    scene: list[tuple[tuple[str, str], int]] = []
    for r in rows:
        way = (r["kind"], r["category"], r.get("asked"))
        scene.append(((r["kind"], r["category"]), position[way]))
        position[way] += 1
    scenes: Counter[tuple[str, str]] = Counter()
    for (kind, category, _), n in position.items():
        scenes[kind, category] = max(scenes[kind, category], n)
    quota: dict[tuple[str, str], int] = {}
    for kind, s in share.items():
        dims = sorted(d for d in scenes if d[0] == kind)
        exact = {d: s * scenes[d] for d in dims}
        quota.update({d: math.floor(exact[d]) for d in dims})
        spare = math.floor(sum(exact.values()) + 0.5) - sum(quota[d] for d in dims)
        for d in sorted(dims, key=lambda d: quota[d] - exact[d])[:spare]:  # largest remainders first
            quota[d] += 1
    return [math.floor((j + 1) * quota[d] / scenes[d]) > math.floor(j * quota[d] / scenes[d]) for d, j in scene]
