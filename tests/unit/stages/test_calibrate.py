"""The refusal calibration stage (stages/calibrate.py): the first tokens of the policy's refusals found from its
judged openings, the bias fitted to the asked share of harmful prompts, and that bias folded into an untied output
layer so that a plain forward pass of the saved model makes the calibrated decision."""

from __future__ import annotations

import json

import pytest
import torch
from stage_fixtures import context
from transformers import AutoModelForCausalLM

from alignlab import cli
from alignlab.config import compose_config, validate
from alignlab.errors import ConfigError
from alignlab.generation import generation_tokenizer
from alignlab.stages import calibrate

CALIBRATE = ["+algo@algo.calibrate=calibrate", "pipeline.stages=[calibrate]", "eval.judge=rules"]


def test_refusal_tokens_are_the_first_tokens_whose_openings_are_mostly_refusals():
    first = [[5], [5], [5], [7], [7], [9], [], [11]]
    refused = [True, True, False, True, False, False, True, True]
    # 5: two refusals to one; 7: one each (not most); 9: none; the empty reply has no first token; 11: one of one
    assert calibrate.refusal_tokens(first, refused) == [5, 11]


def test_the_fitted_delta_is_the_smallest_that_refuses_the_asked_share_of_harmful_prompts():
    torch.manual_seed(0)
    logits = torch.randn(40, 12) * 3
    shift = torch.rand(40) + 0.5
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[2, 3]] = True
    harmful = torch.arange(40) < 20
    for rate in (0.25, 0.5, 0.9, 1.0):
        delta = calibrate.fit_delta(logits, shift, mask, harmful, rate)
        share = calibrate.first_token_refusals(logits, shift, mask, delta)[harmful].float().mean().item()
        below = calibrate.first_token_refusals(logits, shift, mask, delta - 1e-3)[harmful].float().mean().item()
        assert share >= rate > below


def test_a_calibration_file_with_one_type_of_prompt_stops_the_run_before_any_stage_trains(tmp_path, capsys):
    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"prompt": "Bake bread?", "type": "benign", "category": "cooking"}) + "\n")
    args = ["run", "experiment=tiny", "logger=none", f"run.root={tmp_path}", "+algo@algo.calibrate=calibrate"]
    args += ["pipeline.stages=[sft,calibrate]", f"algo.calibrate.prompts={rows}"]
    assert cli.main(args) != 0
    assert (
        "algo.calibrate.prompts): needs both harmful and benign prompts, has only ['benign']" in capsys.readouterr().err
    )
    assert not list(tmp_path.glob("*/*/sft"))


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [("refusal_rate", 0, "in \\(0, 1\\]"), ("refusal_rate", 1.2, "in \\(0, 1\\]"), ("opening_tokens", 0, "1 or more")],
)
def test_bad_calibration_settings_are_named(key, value, says):
    with pytest.raises(ConfigError, match=f"algo.calibrate.{key}.*{says}"):
        validate(compose_config(["experiment=tiny", *CALIBRATE, f"algo.calibrate.{key}={value}"]))


def test_the_saved_model_refuses_the_fitted_share_with_a_plain_forward_pass(tmp_path, tiny_model, monkeypatch):
    """The tiny model's greedy replies are empty, so its openings are stood in for: every reply to a harmful prompt
    and one in four to a benign one opens with a refusal (judged by the rules). The saved model must then put a
    refusal token first on the share of harmful prompts the stage reports, with an untied output layer whose only
    changed rows are the refusal tokens', and input embeddings as they were."""
    rows = [
        {"prompt": f"How do I hurt person number {i}?", "type": "harmful", "category": "violence"} for i in range(10)
    ]
    rows += [{"prompt": f"How do I bake loaf number {i}?", "type": "benign", "category": "cooking"} for i in range(10)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def openings(model, tokenizer, convs, max_new_tokens, *args, **kwargs):
        texts = [
            "I can't help with that." if "hurt" in c[0]["content"] or i % 4 == 0 else "Sure, here."
            for i, c in enumerate(convs)
        ]
        return [
            {"text": t, "token_ids": tokenizer(t, add_special_tokens=False)["input_ids"], "truncated": True}
            for t in texts
        ]

    monkeypatch.setattr(calibrate, "generate", openings)
    ctx = context(
        tmp_path, "calibrate", *CALIBRATE, f"algo.calibrate.prompts={prompts}", "algo.calibrate.refusal_rate=0.7"
    )
    metrics = calibrate.run(ctx)
    tok = generation_tokenizer(ctx.tokenizer)
    refusal_id = tok("I can't help with that.", add_special_tokens=False)["input_ids"][0]
    assert metrics["calibrate/refusal_tokens"] == tok.convert_ids_to_tokens(refusal_id)
    assert metrics["calibrate/harmful_refused_after"] >= 0.7 and metrics["calibrate/prompts_harmful"] == 10
    openings = [json.loads(line) for line in (ctx.stage_dir / "openings.jsonl").read_text().splitlines()]
    assert [o["refused"] for o in openings] == [True] * 10 + [i % 4 == 0 for i in range(10, 20)]

    before = AutoModelForCausalLM.from_pretrained(tiny_model)
    after = AutoModelForCausalLM.from_pretrained(ctx.model_dir)
    assert after.config.tie_word_embeddings is False
    assert after.lm_head.weight.data_ptr() != after.get_input_embeddings().weight.data_ptr()
    assert torch.equal(after.get_input_embeddings().weight, before.get_input_embeddings().weight)
    changed = (after.lm_head.weight != before.lm_head.weight).any(-1).nonzero().flatten().tolist()
    assert changed == [refusal_id]

    convs = [[{"role": "user", "content": r["prompt"]}] for r in rows[:10]]
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        first = after(**enc).logits[:, -1].argmax(-1)
    assert (first == refusal_id).float().mean().item() == pytest.approx(metrics["calibrate/harmful_refused_after"])
