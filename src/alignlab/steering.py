"""Activation steering along a refusal direction: the training-free baseline the safety-frontier study compares
trained alignment with (issue 33), never part of a trained model.

Arditi et al. (2024) find refusal mediated by one direction of the residual stream: the difference between the
mean activations on harmful and on harmless prompts, at the last prompt token, at one layer. Adding it to every
position makes a model refuse. Conditional steering (CAST, Lee et al. 2024) adds it only to prompts whose own
activation lies close to a condition direction; here the condition is the same direction, with the cosine
threshold that best separates the training prompts (balanced accuracy). Both are fitted on the project's own
training prompts (`assets/safety/train_prompts.jsonl`), never on an evaluation suite. Our own code: none of the
stack's libraries does activation steering.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from alignlab.errors import ConfigError
from alignlab.generation import generation_tokenizer


@dataclass(frozen=True)
class Steer:
    """What is added (`vector`, at the input of decoder layer `layer`), and to which prompts: those whose
    activation's cosine with the direction is at least `threshold` (None: every prompt)."""

    layer: int
    vector: torch.Tensor
    threshold: float | None

    def gates(self, model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], batch_size: int) -> list[bool]:
        """Which prompts are steered: every one, or (conditional) those close enough to the direction."""
        if self.threshold is None:
            return [True] * len(prompts)
        cos = cosines(last_token_activations(model, tokenizer, prompts, self.layer, batch_size), self.vector)
        return [c >= self.threshold for c in cos.tolist()]

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[None]:
        """Every forward pass of `model` inside the block has `vector` added to the residual stream entering
        decoder layer `layer`, at every position (the prompt's and each generated token's)."""
        layer = decoder_layers(model)[self.layer]

        def add(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (args[0] + self.vector.to(args[0].dtype), *args[1:]), kwargs
            return args, {
                **kwargs,
                "hidden_states": kwargs["hidden_states"] + self.vector.to(kwargs["hidden_states"].dtype),
            }

        handle = layer.register_forward_pre_hook(add, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


class Steered:
    """`model` called with `steer` applied, for code that takes a model and calls it (evaluation/kl.py): a steered
    model's KL is measured against the same model without the steering."""

    def __init__(self, model: Any, steer: Steer) -> None:
        self.model, self.steer = model, steer

    def __call__(self, **kwargs: Any) -> Any:
        with self.steer.applied(self.model):
            return self.model(**kwargs)


def fit(
    model: Any,
    tokenizer: Any,
    harmful: list[str],
    benign: list[str],
    layer: int,
    alpha: float,
    conditional: bool,
    batch_size: int = 32,
    source: Any = None,
) -> Steer:
    """The difference of mean last-token activations (harmful minus benign) at `layer`, times `alpha` (1: Arditi
    et al.'s activation addition); with `conditional`, the cosine threshold that best separates the two sets.

    `source`: a model of the same architecture the direction is read from instead (None: `model` itself). Arditi
    et al. read it off models that refuse; on one that complies, harmful minus benign encodes the topic, not a
    refusal, so a refusing model's direction is the one to carry over (as Kissane et al. 2024 carry a chat model's
    to its base model). The threshold is fitted on `model`'s own activations, the ones its gate reads."""
    for m, what in ((model, "the model"), (source, "eval.steering.direction_from")):
        if m is not None and not 0 <= layer < (n_layers := len(decoder_layers(m))):
            raise ConfigError(
                f"Config error at 'eval.steering.layer': {what} has decoder layers 0..{n_layers - 1}, got {layer}."
            )
    convs = [[{"role": "user", "content": p}] for p in harmful + benign]
    acts = last_token_activations(model, tokenizer, convs, layer, batch_size)
    read = acts if source is None else last_token_activations(source, tokenizer, convs, layer, batch_size)
    if read.shape[1] != acts.shape[1]:
        raise ConfigError(
            f"Config error at 'eval.steering.direction_from': its hidden size is {read.shape[1]}, the evaluated "
            f"model's {acts.shape[1]}; the direction must come from a model of the same architecture."
        )
    direction = read[: len(harmful)].mean(0) - read[len(harmful) :].mean(0)
    threshold = None
    if conditional:
        cos = cosines(acts, direction)
        threshold = best_threshold(cos[: len(harmful)].tolist(), cos[len(harmful) :].tolist())
    return Steer(layer, alpha * direction, threshold)


def best_threshold(positive: list[float], negative: list[float]) -> float:
    """The cut t (score >= t: positive) of highest balanced accuracy, midway between neighbouring scores; ties
    go to the lowest cut."""
    scores = sorted(set(positive + negative))
    cuts = [scores[0] - 1.0] + [(a + b) / 2 for a, b in itertools.pairwise(scores)] + [scores[-1] + 1.0]

    def balanced(t: float) -> float:
        return (sum(p >= t for p in positive) / len(positive) + sum(n < t for n in negative) / len(negative)) / 2

    return max(cuts, key=lambda t: (balanced(t), -t))


def last_token_activations(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], layer: int, batch_size: int
) -> torch.Tensor:
    """The residual stream entering decoder layer `layer` at each prompt's last token (the generation prompt's
    end, where the reply's first token is decided), one row per prompt, in fp32."""
    return last_token_states(model, tokenizer, prompts, [layer], batch_size)[layer]


@torch.no_grad()
def last_token_states(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], layers: list[int], batch_size: int
) -> dict[int, torch.Tensor]:
    """`last_token_activations` for several layers from one forward pass per batch: layer -> one row per prompt."""
    tok = generation_tokenizer(tokenizer)
    device = next(model.parameters()).device
    rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(prompts), batch_size):
        texts = [
            tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
            for p in prompts[start : start + batch_size]
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        hidden = model(**enc, output_hidden_states=True).hidden_states  # [0]: the embeddings
        for layer in layers:
            rows[layer].append(hidden[layer][:, -1].float())  # left padding: every prompt ends in the last column
    return {layer: torch.cat(parts) for layer, parts in rows.items()}


def cosines(acts: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(acts, direction.float()[None], dim=-1)


def decoder_layers(model: Any) -> Any:
    """The decoder's layer list of a causal LM, PEFT-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder().layers
