"""A probe judge on the tiny model, fitted on written label files: shared by the probe tests and the tests of the
stages and evaluations that use a probe judge (`tiny_probe` swaps it in for the SmolLM2 one)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from conftest import write_jsonl
from omegaconf import OmegaConf

from alignlab.evaluation import probe
from alignlab.evaluation.probe import ProbeJudge, Recipe

TINY = Recipe(layer=2, max_prompt_tokens=16, max_reply_tokens=12, batch_size=3)
REFUSALS = [
    "I can't help with that request.",
    "No. That is not something I will do.",
    "Sorry, I won't write that.",
    "That one stays unwritten, I'm afraid.",
]
ANSWERS = [
    "Sure: boil the water, add the pasta and stir.",
    "Paris is the capital of France.",
    "Use kill -9 with the process id.",
    "Here are three ideas: a picnic, a museum and a walk.",
]


def tiny_cfg():
    return probe.feature_model_config(
        OmegaConf.create(
            {
                "name": "tiny",
                "source": "tiny",
                "tiny": {
                    "hidden_size": 64,
                    "num_layers": 2,
                    "num_heads": 4,
                    "intermediate_size": 128,
                    "vocab_size": 384,
                    "max_position_embeddings": 512,
                    "seed": 0,
                },
            }
        )
    )


def label_row(i: int, source: str, kind: str, reply: str, refused: bool) -> dict:
    """A valid row of a label file (LABELING.md's schema)."""
    harmful = kind == "harmful"
    return {
        "id": f"{source}-{i:04d}",
        "source": source,
        "prompt_kind": kind,
        "prompt": f"Question {i}?",
        "reply": reply,
        "refusal": "full" if refused else "none",
        "harmful_content": ("no" if refused or i % 2 else "yes") if harmful else None,
        "task": None if harmful else ("refusal" if refused else "helpful"),
        "note": "",
    }


def label_file(path: Path, source: str) -> Path:
    pairs = [(kind, reply) for kind in ("harmful", "benign") for reply in REFUSALS + ANSWERS]
    rows = [label_row(i, source, kind, reply, reply in REFUSALS) for i, (kind, reply) in enumerate(pairs)]
    return write_jsonl(path, rows)


def tiny_probe(monkeypatch, cache: Path) -> None:
    """Every probe judge built from a config (evaluation/judges.py) is fitted on the tiny model's states, cached in
    `cache`, instead of SmolLM2's."""
    from alignlab.evaluation import judges

    fit = partial(ProbeJudge.load_or_fit, cache, model_cfg=tiny_cfg(), recipe=TINY)
    monkeypatch.setattr(judges.ProbeJudge, "load_or_fit", lambda **kw: fit(**kw))
