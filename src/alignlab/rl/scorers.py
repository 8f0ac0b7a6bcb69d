"""Reward and cost functions for online RL, shared by PPO, PPO-Lagrangian and GRPO/RLOO.

A spec names one of:
- `stage:<name>`: the model a reward-model (`rm`) or cost-model (`cm`) stage of this run saved;
- a model folder or Hub id of a one-output sequence-classification model;
- `contains:<text>`: 1.0 when the reply contains the text, else 0.0 (a rule reward: toy tasks, format rewards).
Every scorer maps (prompt messages, reply text) to one float, so a reward model sees the conversation in its own
chat template, whatever tokenizer the policy uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from alignlab.errors import ModelError


class Scorer(Protocol):
    name: str

    def __call__(self, prompts: list[list[dict[str, str]]], replies: list[str]) -> torch.Tensor: ...


class ContainsScorer:
    def __init__(self, text: str) -> None:
        self.text, self.name = text, f"contains:{text}"

    def __call__(self, prompts: list[list[dict[str, str]]], replies: list[str]) -> torch.Tensor:
        return torch.tensor([float(self.text in r) for r in replies])


class ModelScorer:
    """A reward or cost model's scalar output on each conversation."""

    def __init__(self, path: str, name: str, batch_size: int = 16, max_length: int = 512) -> None:
        from alignlab.distributed import whole_models
        from alignlab.evaluation.judges import SequenceScorer

        with whole_models():  # each rank scores its own rollouts; PPO may shard it later (prepare_deepspeed)
            self.scorer = SequenceScorer(path, batch_size, max_length)
        self.name = name

    def to(self, device: torch.device) -> ModelScorer:
        self.scorer.model.to(device)
        return self

    def __call__(self, prompts: list[list[dict[str, str]]], replies: list[str]) -> torch.Tensor:
        return torch.tensor(self.scorer.scores(prompts, replies))


def resolve_model_spec(spec: str, run_dir: Path) -> str | None:
    """The model folder or Hub id a spec names (None for rule scorers)."""
    if spec.startswith("contains:"):
        return None
    if spec.startswith("stage:"):
        stage = spec.split(":", 1)[1]
        folder = run_dir / stage / "model"
        if not (folder / "config.json").is_file():
            raise ModelError(f"Model error: '{spec}' names stage '{stage}', but '{folder}' holds no finished model.")
        return str(folder)
    return spec


def build_scorer(spec: str, run_dir: Path, batch_size: int = 16, max_length: int = 512) -> Scorer:
    path = resolve_model_spec(spec, run_dir)
    if path is None:
        return ContainsScorer(spec.split(":", 1)[1])
    return ModelScorer(path, spec, batch_size, max_length)
