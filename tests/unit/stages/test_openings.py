"""Reply openings (algo.pairs.opening_tokens): the pairs stage writes the opening each unasked training prompt
should get, the run's SFT rows carry them, and the SFT stage trains on them with no end-of-turn after them."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from trl import SFTConfig, SFTTrainer

from alignlab import cli, pipeline
from alignlab.config import compose_config, validate
from alignlab.data import onpolicy
from alignlab.errors import ConfigError
from alignlab.stages import pairs as pairs_stage
from alignlab.stages import sft

BASE = ["experiment=safety-smollm-quick", "model=tiny", "pipeline.stages=[pairs]", "logger=none", "eval.judge=rules"]
PROMPTS = "pkg://alignlab/assets/safety/train_prompts.jsonl"
REFUSALS = "pkg://alignlab/assets/safety/refusals.jsonl"


def test_openings_cover_every_unasked_prompt_with_a_refusal_or_the_models_own_opening(
    tmp_path, cache_dir, tiny_model, monkeypatch
):
    """The tiny model's greedy replies are empty: here the openings' generation answers each benign prompt with a
    helpful start, except one in five with a refusal, which the rule judge must leave out."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    generate = pairs_stage.generate

    def own_openings(model, tok, prompts, max_new_tokens, *args, **kwargs):
        if max_new_tokens != 3:  # the pairs' own replies
            return generate(model, tok, prompts, max_new_tokens, *args, **kwargs)
        starts = ["I can't help with that." if i % 5 == 0 else f"Sure, number {i} here." for i in range(len(prompts))]
        ids = [tok(s, add_special_tokens=False)["input_ids"] for s in starts]
        return [{"text": s, "token_ids": i, "truncated": True} for s, i in zip(starts, ids, strict=True)]

    monkeypatch.setattr(pairs_stage, "generate", own_openings)
    args = ["run", *BASE, "model.generation_dtype=null", "algo.pairs.max_harmful=4", "algo.pairs.max_benign=4"]
    assert cli.main([*args, f"run.root={tmp_path}", "algo.pairs.opening_tokens=3"]) == 0
    (run,) = (tmp_path / "safety-smollm-quick").iterdir()
    openings = onpolicy.read_jsonl(run / "pairs" / "openings.jsonl")
    asked = {r["prompt"] for r in onpolicy.read_jsonl(run / "pairs" / "generations.jsonl")}
    rows = onpolicy.read_prompts(PROMPTS)
    harmful = [r for r in rows if r.type == "harmful" and r.prompt not in asked]
    benign = [r for r in rows if r.type == "benign" and r.prompt not in asked]
    assert len(asked) == 8 and not asked & {o["prompt"][0]["content"] for o in openings}

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    refusals = onpolicy.read_refusals(REFUSALS)
    by_prompt = {o["prompt"][0]["content"]: o for o in openings}
    for row in harmful:  # the first three tokens of the refusal the pairs would choose
        expected = tok.decode(tok(onpolicy.refusal_for(row, refusals), add_special_tokens=False)["input_ids"][:3])
        assert by_prompt[row.prompt]["opening"] == expected and by_prompt[row.prompt]["type"] == "harmful"
    kept = [o for o in openings if o["type"] == "benign"]
    assert len(kept) == len(benign) - len(range(0, len(benign), 5))  # the refusing ones left out
    assert all(o["opening"].startswith("Sure") for o in kept)
    assert all(len(tok(o["opening"], add_special_tokens=False)["input_ids"]) <= 3 for o in kept)
    metrics = OmegaConf.to_container(OmegaConf.load(run / "pairs" / "metrics.json"))
    assert metrics["pairs/openings/harmful"] == len(harmful)
    assert metrics["pairs/openings/benign_refused_left_out"] == len(range(0, len(benign), 5))

    cfg = compose_config([*BASE, f"run.root={tmp_path}"])
    rows_for_sft = pipeline.stage_openings(cfg, run, "pairs")
    assert rows_for_sft == [{"prompt": o["prompt"], "opening": o["opening"]} for o in openings]


def test_sft_rows_tokenize_as_trl_does_and_openings_end_without_end_of_turn(tmp_path, tiny_model, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer
    conversation = {
        "prompt": [{"role": "user", "content": "How do I kill a Python process?"}],
        "completion": [{"role": "assistant", "content": "Run kill with its process id."}],
    }
    trl_rows = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model),
        args=SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], completion_only_loss=True, bf16=False),
        train_dataset=sft.train_dataset([conversation], tok),
        processing_class=tok,
    ).train_dataset
    opening = {"prompt": conversation["prompt"], "opening": "I can't help"}
    ours = sft.train_dataset([conversation, opening], tok)
    assert ours[0]["input_ids"] == trl_rows[0]["input_ids"]
    masked = [i if m else -100 for i, m in zip(ours[0]["input_ids"], ours[0]["completion_mask"], strict=True)]
    assert masked == trl_rows[0]["labels"]  # TRL folds its completion mask into the labels

    prompt_ids = tok(tok.apply_chat_template(opening["prompt"], add_generation_prompt=True, tokenize=False))
    n = len(prompt_ids["input_ids"])
    ids, mask = ours[1]["input_ids"], ours[1]["completion_mask"]
    assert ids[:n] == prompt_ids["input_ids"] and mask == [0] * n + [1] * (len(ids) - n)
    assert tok.decode(ids[n:]) == "I can't help"  # no end-of-turn token after it
    assert tok.decode(trl_rows[0]["input_ids"]).rstrip().endswith(tok.eos_token)  # where a completion has one


def test_opening_tokens_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"algo\.pairs\.opening_tokens"):
        validate(compose_config([*BASE, "algo.pairs.opening_tokens=-1"]))


def test_stage_openings_follow_the_rounds_and_skip_rounds_without_them(tmp_path: Path):
    cfg = compose_config(["experiment=safety-smollm-quick", "model=tiny", "pipeline=safety-2round"])
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs_sft").mkdir()
    row = {"prompt": [{"role": "user", "content": "Hi?"}], "opening": "Hello", "type": "benign"}
    onpolicy.write_jsonl(tmp_path / "pairs" / "openings.jsonl", [row])
    later = cfg.algo.pairs_sft.after
    assert later == "pairs"
    assert pipeline.stage_openings(cfg, tmp_path, "pairs_sft") == [{"prompt": row["prompt"], "opening": "Hello"}]
