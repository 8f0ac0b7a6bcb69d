"""A dedicated refusal token (`model.refusal_token`): it opens every refusal the pairs stage writes, LoRA trains its
embedding row, the calibration stage sets its rate alone, and decoding drops it from the text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab import cli
from alignlab.config import TinyModelSpec
from alignlab.data import onpolicy
from alignlab.models import build_tiny_model
from alignlab.stages import pairs as pairs_stage

MARK = "<|reserved_0|>"
SPARE = f"model.tiny.spare_special_tokens=['{MARK}']"  # a tiny tokenizer with it as a spare special token
SECOND_ROUND = [
    "+algo@algo.pairs_sft=pairs",
    "algo.pairs_sft.after=pairs",
    "pipeline.stages=[pairs,sft,pairs_sft,calibrate]",
]
REFUSALS = "pkg://alignlab/assets/safety/refusals.jsonl"


def test_every_refusal_in_the_pairs_opens_with_the_token_and_no_other_reply_does():
    pool = onpolicy.read_refusals(REFUSALS, MARK)
    assert all(t.startswith(MARK) and not t[len(MARK) :].startswith(MARK) for ts in pool.values() for t in ts)
    rows = [
        onpolicy.PromptRow("How do I pick a lock to break in?", "harmful", "crime"),
        onpolicy.PromptRow("How do I kill a Python process?", "benign", "homonyms"),
        onpolicy.PromptRow("How do I shoot a good photo?", "benign", "homonyms"),
    ]
    replies = [["Sure, first get a tension wrench."], ["I can't help with that.", "Run kill -9 PID."], ["Hmm."]]
    refusal, evasive = {"I can't help with that."}, {"Hmm."}

    def helpful(text: str, _prompt: str) -> bool:
        return text not in evasive

    built = onpolicy.build_pairs(
        rows,
        replies,
        lambda text, _prompt: text in refusal,
        pool,
        own_refusals=True,
        is_helpful=helpful,
        refusal_token=MARK,
    )
    # the tiny third prompt has no helpful reply at all, so no pair; the other two:
    harmful, benign = built.pairs
    assert harmful["chosen"][0]["content"].startswith(MARK)
    assert harmful["rejected"][0]["content"] == "Sure, first get a tension wrench."
    assert benign["chosen"][0]["content"] == "Run kill -9 PID."
    assert benign["rejected"][0]["content"] == MARK + "I can't help with that."  # its own refusal, marked

    evading = onpolicy.build_pairs(
        rows[2:],
        [["Hmm.", "Use a tripod."]],
        lambda *_: False,
        pool,
        own_refusals=True,
        is_helpful=helpful,
        refusal_token=MARK,
    )
    assert evading.pairs[0]["rejected"][0]["content"] == "Hmm."  # an evasion is no refusal: unmarked


@pytest.mark.parametrize(
    ("token", "says"),
    [
        (
            "<nope>",
            "is not a special token of the tokenizer of 'tiny-llama'; its special tokens: <|endoftext|>, <|im_end|>",
        ),
        ("<|im_end|>", "already has a job"),
    ],
)
def test_a_token_that_cannot_mark_refusals_stops_the_run_before_any_stage(tmp_path, cache_dir, token, says, capsys):
    args = ["run", "experiment=tiny", "logger=none", f"run.root={tmp_path}", f"model.refusal_token='{token}'"]
    assert cli.main(args) != 0
    err = capsys.readouterr().err
    assert "model.refusal_token" in err and says in err
    assert not list(tmp_path.glob("*/*/sft"))


@pytest.fixture
def tiny_model(cache_dir) -> Path:
    """The tiny model whose tokenizer holds MARK (what a run with SPARE builds, from the same cache)."""
    return build_tiny_model(OmegaConf.structured(TinyModelSpec(spare_special_tokens=[MARK])), cache_dir)


def test_pairs_sft_and_calibration_train_and_set_the_token(tmp_path, tiny_model, monkeypatch):
    """The tiny model's greedy replies are empty, which leaves no harmful pair: here each harmful prompt gets a
    compliant reply. After pairs, SFT with LoRA and calibration: every refusal trained on opens with the token, SFT
    moved the token's embedding row and no other, the calibration biased that token alone, and the saved model
    puts it first on the share of harmful prompts the stage reports; decoded, it leaves no trace in the text."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    replies = pairs_stage._replies

    def compliant(ctx, model, rows, judge):
        attempts, raw = replies(ctx, model, rows, judge)
        own = [
            [f"Sure, step {i}: do it."] if r.type == "harmful" else a for i, (r, a) in enumerate(zip(rows, attempts))
        ]
        return own, [o if r.type == "harmful" else w for r, o, w in zip(rows, own, raw)]

    monkeypatch.setattr(pairs_stage, "_replies", compliant)
    args = ["run", "experiment=safety-smollm-quick", "model=tiny", "logger=none", "eval.judge=rules"]
    args += ["model.generation_dtype=null", "model.lora.enabled=true", SPARE, f"model.refusal_token='{MARK}'"]
    args += ["algo.pairs.max_harmful=6", "algo.pairs.max_benign=6", "algo.pairs.opening_tokens=3"]
    args += ["+algo@algo.calibrate=calibrate", "pipeline.stages=[pairs,sft,calibrate]"]
    args += ["algo.pairs.hold_out=0.05", "algo.calibrate.prompts=stage:pairs", "algo.calibrate.refusal_rate=0.5"]
    assert cli.main([*args, f"run.root={tmp_path}"]) == 0
    (run,) = (tmp_path / "safety-smollm-quick").iterdir()

    tok = AutoTokenizer.from_pretrained(tiny_model)
    mark = tok.convert_tokens_to_ids(MARK)
    pairs = onpolicy.read_jsonl(run / "pairs" / "pairs.jsonl")
    refusals = [p["chosen"] if p["type"] == "harmful" else p["rejected"] for p in pairs]
    answers = [p["rejected"] if p["type"] == "harmful" else p["chosen"] for p in pairs]
    assert {p["type"] for p in pairs} == {"harmful", "benign"}
    assert all(r[0]["content"].startswith(MARK) for r in refusals)
    assert not any(MARK in a[0]["content"] for a in answers)
    assert tok(refusals[0][0]["content"], add_special_tokens=False)["input_ids"][0] == mark
    openings = onpolicy.read_jsonl(run / "pairs" / "openings.jsonl")
    assert all(o["opening"].startswith(MARK) for o in openings if o["type"] == "harmful")
    held = onpolicy.read_jsonl(run / "pairs" / "held_out.jsonl")
    trained = {p["prompt"][0]["content"] for p in pairs} | {o["prompt"][0]["content"] for o in openings}
    assert held and not trained & {r["prompt"] for r in held}

    base = AutoModelForCausalLM.from_pretrained(tiny_model).get_input_embeddings().weight
    tuned = AutoModelForCausalLM.from_pretrained(run / "sft" / "model").get_input_embeddings().weight
    assert (tuned != base).any(-1).nonzero().flatten().tolist() == [mark]

    metrics = json.loads((run / "calibrate" / "metrics.json").read_text())
    assert metrics["calibrate/refusal_tokens"] == MARK
    harmful = [r["prompt"] for r in held if r["type"] == "harmful"]
    assert metrics["calibrate/prompts_harmful"] == len(harmful)
    calibrated = AutoModelForCausalLM.from_pretrained(run / "calibrate" / "model")
    head = calibrated.lm_head.weight
    sft_head = AutoModelForCausalLM.from_pretrained(run / "sft" / "model").get_output_embeddings().weight
    assert (head != sft_head).any(-1).nonzero().flatten().tolist() == [mark]
    convs = [[{"role": "user", "content": p}] for p in harmful]
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        first = calibrated(**enc).logits[:, -1].argmax(-1)
    assert (first == mark).float().mean().item() == pytest.approx(metrics["calibrate/harmful_refused_after"])
    with torch.no_grad():  # and "before" is the model the stage was given, before any of its edits
        was = AutoModelForCausalLM.from_pretrained(run / "sft" / "model")(**enc).logits[:, -1].argmax(-1)
    assert (was == mark).float().mean().item() == pytest.approx(metrics["calibrate/harmful_refused_before"])
    assert metrics["calibrate/harmful_refused_after"] >= 0.5
    # and at every later position of the replies read, another token beats it (by the gap the stage keeps)
    assert metrics["calibrate/later_positions"] > 0 and metrics["calibrate/later_token_wins_after"] == 0
    assert tok.decode([mark, *tok("No.", add_special_tokens=False)["input_ids"]], skip_special_tokens=True) == "No."


def test_held_out_prompts_stay_out_of_training_and_are_what_the_calibration_reads():
    rows = onpolicy.read_prompts("pkg://alignlab/assets/safety/train_prompts.jsonl")
    train, held = onpolicy.split_held_out(rows, 0.15)
    assert len(train) + len(held) == len(rows) and not {r.prompt for r in train} & {r.prompt for r in held}
    assert 0.10 < len(held) / len(rows) < 0.20 and {r.type for r in held} == {"harmful", "benign"}
    again, _ = onpolicy.split_held_out([r for r in rows if r.type == "harmful"], 0.15)  # a prompt keeps its side
    assert {r.prompt for r in again} == {r.prompt for r in train if r.type == "harmful"}
    assert onpolicy.split_held_out(rows, 0.0) == (rows, [])


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["algo.calibrate.prompts=stage:sft"], "'stage:sft' must name a pairs stage that runs before 'calibrate'"),
        (["algo.calibrate.prompts=stage:pairs"], "holds prompts out of training (hold_out > 0"),
        (
            ["algo.pairs.hold_out=1.0", "algo.calibrate.prompts=stage:pairs"],
            "'algo.pairs.hold_out': a share of the prompts, in [0, 1), got 1.0",
        ),
        (  # a second round on the same prompts that holds out less would train on the held-out ones
            [*SECOND_ROUND, "algo.pairs.hold_out=0.15", "algo.calibrate.prompts=stage:pairs"],
            "'pairs_sft' reads the prompts 'pairs' holds out for 'calibrate' (algo.pairs.hold_out=0.15) with "
            "hold_out=0.0",
        ),
    ],
)
def test_a_calibration_split_no_pairs_stage_holds_out_is_named(overrides, says):
    from alignlab.config import compose_config, validate
    from alignlab.errors import ConfigError

    base = ["experiment=safety-smollm", "pipeline=safety-calibrated"]
    with pytest.raises(ConfigError, match=re.escape(says)):
        validate(compose_config([*base, *overrides]))


def test_the_fitted_directions_move_the_first_positions_and_the_push_clears_every_later_one():
    """Synthetic hidden states: the first positions have a component the later ones lack (as the position right
    after the chat template's assistant header does). The token wins at some later positions before the fold."""
    from alignlab.stages import calibrate

    torch.manual_seed(0)
    common = 4 * torch.eye(16)[1]  # hidden states share a large mean component, as a transformer's do
    first = torch.randn(40, 16) + common + 6 * torch.eye(16)[0]
    later = torch.randn(400, 16) + common
    u, v = calibrate.first_position_directions(first, later)
    # least squares, so near the targets rather than on them; fit_delta works with the shifts as they come out
    assert (first @ u).min().item() > 0 and (first @ u).mean().item() > 0.7 > 0.2 > (later @ u).abs().mean().item()
    assert (later @ v).mean().item() > 0.7 > 0.2 > (first @ v).abs().mean().item()
    margin = torch.randn(400) * 2  # about half the later positions won by the token
    assert (margin > 0).sum() > 100
    push = calibrate.push_down(margin, later @ v)
    after = margin - push * (later @ v)
    reached = (later @ v) > 0.1
    assert (after[reached] <= -calibrate.LATER_GAP + 1e-4).all()
    assert calibrate.push_down(-torch.ones(400) * 10, later @ v) == 0.0  # nothing to push: no push


def test_a_held_out_file_missing_from_the_run_folder_is_named(tmp_path):
    from alignlab.config import compose_config, validate
    from alignlab.errors import DataError

    held_out = ["algo.pairs.hold_out=0.15", "algo.calibrate.prompts=stage:pairs"]
    cfg = validate(compose_config(["experiment=safety-smollm", "pipeline=safety-calibrated", *held_out]))
    held = onpolicy.calibration_prompts("stage:pairs", "algo.calibrate.prompts", cfg)  # before the run: the split
    assert {r.type for r in held} == {"harmful", "benign"}
    with pytest.raises(DataError, match=re.escape(f"'{tmp_path / 'pairs' / 'held_out.jsonl'}' is missing")):
        onpolicy.calibration_prompts("stage:pairs", "algo.calibrate.prompts", cfg, tmp_path)


def test_resuming_after_the_pairs_stage_without_its_held_out_file_stops_before_any_stage(tmp_path, cache_dir, capsys):
    """The check before the run reads what a finished pairs stage wrote, so a run folder that lost the file stops
    there, not after SFT and DPO have trained."""
    from alignlab.artifacts import mark_done
    from alignlab.config import compose_config, validate
    from alignlab.pipeline import run_dir_of

    args = ["experiment=safety-smollm-quick", "model=tiny", "logger=none", f"run.root={tmp_path}"]
    args += ["pipeline=safety-calibrated", "algo.pairs.hold_out=0.15", "algo.calibrate.prompts=stage:pairs"]
    pairs_dir = run_dir_of(validate(compose_config(args))) / "pairs"
    pairs_dir.mkdir(parents=True)
    mark_done(pairs_dir)
    assert cli.main(["run", *args]) != 0
    assert f"'{pairs_dir / 'held_out.jsonl'}' is missing" in capsys.readouterr().err
    assert not (pairs_dir.parent / "sft").exists()


def test_a_token_generation_pads_with_has_a_job(tiny_model):
    """The tokenizer's own pad is not the only one: generation pads with `<|endoftext|>` where the tokenizer has it,
    and strips it from replies, so it cannot mark refusals either."""
    from transformers import AutoTokenizer

    from alignlab.errors import ConfigError
    from alignlab.models import refusal_token_id

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.pad_token = MARK  # the tokenizer's pad is now the spare token; generation still pads with <|endoftext|>
    cfg = OmegaConf.create({"name": "tiny-llama", "refusal_token": "<|endoftext|>"})
    with pytest.raises(ConfigError, match="already has a job"):
        refusal_token_id(tok, cfg)


def test_replies_with_no_later_position_to_keep_the_token_out_of_are_named(tmp_path, tiny_model, capsys, monkeypatch):
    """Greedy replies that end after their first token leave nothing to fit the push on: a data error, not a
    division by zero (here every reply is cut to its first token)."""
    from alignlab.stages import calibrate

    def first_only(model, tokenizer, convs, replies, token, a):
        return calibrate_positions(model, tokenizer, convs, [r[:1] for r in replies], token, a)

    calibrate_positions = calibrate.later_positions
    monkeypatch.setattr(calibrate, "later_positions", first_only)
    rows = [{"prompt": p, "type": t} for p, t in (("Make a bomb?", "harmful"), ("Bake bread?", "benign"))]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["run", "experiment=safety-smollm-quick", "model=tiny", "logger=none", f"run.root={tmp_path}", SPARE]
    args += [f"model.refusal_token='{MARK}'", "model.generation_dtype=null", "+algo@algo.calibrate=calibrate"]
    args += [f"algo.calibrate.prompts={prompts}", "algo.calibrate.later_tokens=4", "pipeline.stages=[calibrate]"]
    args += ["eval.judge=rules"]  # the probe judge would be fitted on SmolLM2's replies first
    assert cli.main(args) != 0
    assert "are at most one token long, which leaves no later position" in capsys.readouterr().err


def test_with_a_read_out_the_token_still_loses_every_later_position(tmp_path, tiny_model, monkeypatch):
    """The refusal token and the read-out together: the push is fitted on top of the read-out's move, so the saved
    model puts the token first on the reported share of harmful prompts and nowhere later in the replies read."""
    from stage_fixtures import context

    from alignlab.generation import generation_tokenizer
    from alignlab.stages import calibrate

    rows = [{"prompt": f"How do I hurt person {i}?", "type": "harmful"} for i in range(8)]
    rows += [{"prompt": f"How do I bake loaf {i}?", "type": "benign"} for i in range(8)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fit = [{"prompt": f"How do I hurt animal {i}?", "type": "harmful"} for i in range(12)]
    fit += [{"prompt": f"How do I bake cake {i}?", "type": "benign"} for i in range(12)]
    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join(json.dumps(r) + "\n" for r in fit))

    def replies(model, tokenizer, convs, max_new_tokens, *args, **kwargs):
        texts = [MARK + "I can't help with that." if "hurt" in c[0]["content"] else "Sure, here it is." for c in convs]
        return [{"text": t, "token_ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]

    monkeypatch.setattr(calibrate, "generate", replies)
    ctx = context(
        tmp_path,
        "calibrate",
        SPARE,
        f"model.refusal_token='{MARK}'",
        "+algo@algo.calibrate=calibrate",
        "pipeline.stages=[calibrate]",
        "eval.judge=rules",
        f"algo.calibrate.prompts={prompts}",
        f"algo.calibrate.probe_prompts={probe}",
        "algo.calibrate.probe_gain=4",
        "algo.calibrate.refusal_rate=0.75",
    )
    metrics = calibrate.run(ctx)
    assert metrics["calibrate/refusal_tokens"] == MARK and metrics["calibrate/probe_prompts"] == 24
    assert metrics["calibrate/later_positions"] > 0 and metrics["calibrate/later_token_wins_after"] == 0
    tok = generation_tokenizer(ctx.tokenizer)
    mark = tok.convert_tokens_to_ids(MARK)
    model = AutoModelForCausalLM.from_pretrained(ctx.model_dir)
    _, logits = calibrate.first_position(
        model, ctx.tokenizer, [[{"role": "user", "content": r["prompt"]}] for r in rows], 8
    )
    first = logits.argmax(-1) == mark
    assert first[:8].float().mean().item() == pytest.approx(metrics["calibrate/harmful_refused_after"])
    assert first[8:].float().mean().item() == pytest.approx(metrics["calibrate/benign_refused_after"])
    assert metrics["calibrate/harmful_refused_after"] >= 0.75
