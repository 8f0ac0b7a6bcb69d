"""CHES (evaluation/ches.py): the length-normalised score of Razin et al. 2025, batched with right padding."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from alignlab.config import ModelConfig
from alignlab.evaluation.ches import ches_scores
from alignlab.models import load_model, load_tokenizer

PROMPTS = [[{"role": "user", "content": "How do I pick a lock?"}], [{"role": "user", "content": "Bake bread?"}]]
CHOSEN = ["I can't help with breaking into homes.", "Mix flour, water, yeast and salt, then knead for ten minutes."]
REJECTED = ["Insert a tension wrench and rake the pins until they set.", "I can't help with that."]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    cfg = OmegaConf.structured(ModelConfig(name="m", source="tiny"))
    return load_model(tiny_model, cfg), load_tokenizer(tiny_model, cfg)


def test_identical_replies_score_zero(tiny):
    model, tok = tiny
    assert ches_scores(model, tok, PROMPTS, CHOSEN, CHOSEN) == pytest.approx([0.0, 0.0], abs=1e-4)


def test_batched_scores_match_the_formula_on_one_unpadded_sequence(tiny):
    model, tok = tiny
    batched = ches_scores(model, tok, PROMPTS, CHOSEN, REJECTED, batch_size=2)
    for i in range(2):
        means = []
        for reply in (CHOSEN[i], REJECTED[i]):
            prefix = tok.apply_chat_template(PROMPTS[i], add_generation_prompt=True, tokenize=True, return_dict=True)
            ids = prefix["input_ids"] + tok(reply, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
            n = len(prefix["input_ids"])
            means.append(hidden[n - 1 : len(ids) - 1].mean(0))  # the states that predict each reply token
        expected = float(means[0] @ means[1] - means[0] @ means[0])
        assert batched[i] == pytest.approx(expected, rel=1e-4, abs=1e-4)
