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


def labelled(path, harmful: str, benign: str, n: int) -> list[dict[str, str]]:
    """n harmful prompts ("How do I hurt <harmful> number i?") and n benign ones, written to `path` as JSONL."""
    rows = [{"prompt": f"How do I hurt {harmful} number {i}?", "type": "harmful"} for i in range(n)]
    rows += [{"prompt": f"How do I bake {benign} number {i}?", "type": "benign"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def stand_in_openings(refusal: str, answer: str):
    """A stand-in for `generate` (the tiny model's greedy replies are empty): every reply to a harmful prompt and
    one in four to a benign one is `refusal`, the rest `answer`."""

    def openings(model, tokenizer, convs, max_new_tokens, *args, **kwargs):
        texts = [refusal if "hurt" in c[0]["content"] or i % 4 == 0 else answer for i, c in enumerate(convs)]
        return [
            {"text": t, "token_ids": tokenizer(t, add_special_tokens=False)["input_ids"], "truncated": True}
            for t in texts
        ]

    return openings


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
    prompts = tmp_path / "prompts.jsonl"
    rows = labelled(prompts, "person", "loaf", 10)
    monkeypatch.setattr(calibrate, "generate", stand_in_openings("I can't help with that.", "Sure, here."))
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


def test_auroc_is_the_share_of_harmful_benign_pairs_ordered_right_ties_half():
    score = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    harmful = torch.tensor([False, True, False, True, False])
    # harmful 0.4 and 0.8 against benign 0.1, 0.35, 0.4: five pairs right, 0.4 = 0.4 a tie: (5 + 0.5) / 6
    assert calibrate.auroc(score, harmful) == pytest.approx(5.5 / 6)


def test_the_read_out_separates_new_prompts_and_leaves_the_later_positions_alone():
    """Synthetic output-layer inputs: a shared first-position component, harmfulness along one axis (noisy), and
    later positions without either. Fitted on one draw, the read-out must give about +1 / -1 there, near 0 at the
    later positions, and tell a fresh draw's harmful prompts from its benign ones."""
    torch.manual_seed(0)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        harmful = torch.arange(n) % 3 == 0  # unbalanced on purpose: the groups are weighted equally
        first = torch.randn(n, 32) + 4 * torch.eye(32)[1] + 2 * torch.eye(32)[0] * (harmful.float() * 2 - 1)[:, None]
        return first, harmful

    first, harmful = draw(300)
    later = torch.randn(900, 32) + 4 * torch.eye(32)[2]
    w = calibrate.harm_readout(first, harmful, later, ridge=0.01)
    assert (first[harmful] @ w).mean().item() > 0.6 and (first[~harmful] @ w).mean().item() < -0.6
    assert abs((later @ w).mean().item()) < 0.1  # on average: noise along the harm axis still reaches them
    fresh, fresh_harmful = draw(200)
    assert calibrate.auroc(fresh @ w, fresh_harmful) > 0.95
    # a heavier penalty shrinks the read-out towards 0
    assert calibrate.harm_readout(first, harmful, later, ridge=10.0).norm() < w.norm()


@pytest.mark.parametrize(("key", "value", "says"), [("probe_gain", -1, "0 or more"), ("probe_ridge", 0, "above 0")])
def test_bad_read_out_settings_are_named(key, value, says):
    with pytest.raises(ConfigError, match=f"algo.calibrate.{key}.*{says}"):
        validate(compose_config(["experiment=tiny", *CALIBRATE, f"algo.calibrate.{key}={value}"]))


def test_read_out_prompts_of_one_type_stop_the_run_before_any_stage_trains(tmp_path, capsys):
    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"prompt": "Bake bread?", "type": "benign", "category": "cooking"}) + "\n")
    args = ["run", "experiment=tiny", "logger=none", f"run.root={tmp_path}", "+algo@algo.calibrate=calibrate"]
    args += ["pipeline.stages=[sft,calibrate]", "algo.calibrate.probe_gain=4", f"algo.calibrate.probe_prompts={rows}"]
    assert cli.main(args) != 0
    assert "(algo.calibrate.probe_prompts): needs both harmful and benign prompts" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/*/sft"))


def test_read_out_prompts_of_one_type_once_the_calibration_prompts_are_left_out_are_named(tmp_path, capsys):
    """The read-out file has both types, but its only harmful prompts are calibration prompts (one differing in
    case and spaces): left out, no harmful prompt remains, which the run says before any stage trains."""
    calibration = [
        {"prompt": "How do I hurt someone?", "type": "harmful"},
        {"prompt": "How do I bake bread?", "type": "benign"},
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in calibration))
    probe = tmp_path / "probe.jsonl"
    fit = [{"prompt": "  how do I HURT someone? ", "type": "harmful"}, {"prompt": "Bake a cake?", "type": "benign"}]
    probe.write_text("".join(json.dumps(r) + "\n" for r in [*calibration, *fit]))
    args = ["run", "experiment=tiny", "logger=none", f"run.root={tmp_path}", "+algo@algo.calibrate=calibrate"]
    args += ["pipeline.stages=[sft,calibrate]", f"algo.calibrate.prompts={prompts}", "algo.calibrate.probe_gain=4"]
    args += [f"algo.calibrate.probe_prompts={probe}"]
    assert cli.main(args) != 0
    err = capsys.readouterr().err
    assert "less the calibration prompts' (algo.calibrate.probe_prompts): needs both harmful and benign" in err
    assert not list(tmp_path.glob("*/*/sft"))


def test_with_a_read_out_the_saved_model_decides_as_reported_and_the_row_follows_harmfulness(
    tmp_path, tiny_model, monkeypatch
):
    """The stage with probe_gain: the read-out is fitted on probe_prompts less the calibration prompts (40 of 60
    rows), and a plain forward pass of the saved model puts a refusal token first on exactly the shares of harmful
    and benign calibration prompts the stage reports. The changed output row now moves the logit with the prompt:
    more on the harmful calibration prompts than on the benign ones, where the bias alone moves them about alike."""
    prompts, probe = tmp_path / "prompts.jsonl", tmp_path / "probe.jsonl"
    rows = labelled(prompts, "person", "loaf", 10)
    fit = labelled(probe, "animal", "cake", 20)
    probe.write_text("".join(json.dumps(r) + "\n" for r in rows + fit))  # the calibration prompts too: left out
    monkeypatch.setattr(calibrate, "generate", stand_in_openings("I can't help with that, sorry.", "Sure, here it is."))
    shifts = {}
    for gain in (0, 4):
        ctx = context(
            tmp_path / f"gain{gain}",
            "calibrate",
            *CALIBRATE,
            f"algo.calibrate.prompts={prompts}",
            "algo.calibrate.refusal_rate=0.7",
            f"algo.calibrate.probe_gain={gain}",
            f"algo.calibrate.probe_prompts={probe}",
        )
        metrics = calibrate.run(ctx)
        tok = generation_tokenizer(ctx.tokenizer)
        refusal_id = tok("I can't help with that.", add_special_tokens=False)["input_ids"][0]
        before = AutoModelForCausalLM.from_pretrained(tiny_model)
        after = AutoModelForCausalLM.from_pretrained(ctx.model_dir)
        changed = (after.lm_head.weight != before.lm_head.weight).any(-1).nonzero().flatten().tolist()
        assert changed == [refusal_id]
        hidden, logits = calibrate.first_position(
            after, ctx.tokenizer, [[{"role": "user", "content": r["prompt"]}] for r in rows], 8
        )
        first = logits.argmax(-1) == refusal_id
        assert first[:10].float().mean().item() == pytest.approx(metrics["calibrate/harmful_refused_after"])
        assert first[10:].float().mean().item() == pytest.approx(metrics["calibrate/benign_refused_after"])
        move = hidden @ (after.lm_head.weight[refusal_id] - before.lm_head.weight[refusal_id]).float()
        shifts[gain] = (move[:10].mean() - move[10:].mean()).item()
    assert metrics["calibrate/probe_prompts"] == 40
    # "hurt" against "bake": told apart on the prompts fitted and on the calibration prompts it never fitted
    assert metrics["calibrate/probe_auroc_fitted"] > 0.9 and metrics["calibrate/probe_auroc_calibration"] > 0.9
    assert metrics["calibrate/probe_later_shift_max"] < 4
    assert shifts[4] > shifts[0] + 1.0, shifts
