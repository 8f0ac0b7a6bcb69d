"""Reply openings (algo.pairs.opening_tokens): the pairs stage writes the opening each unasked training prompt
should get, the run's SFT rows carry them, and the SFT stage trains on them with no end-of-turn after them."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset
from omegaconf import OmegaConf
from trl import SFTConfig, SFTTrainer

from alignlab import cli
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

    assert all(o["rejected"] is None for o in openings)  # no opening_pairs: nothing to reject


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


def test_read_openings_follows_the_rounds_and_skips_rounds_without_them(tmp_path: Path):
    cfg = compose_config(["experiment=safety-smollm-quick", "model=tiny", "pipeline=safety-2round"])
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs_sft").mkdir()
    row = {"prompt": [{"role": "user", "content": "Hi?"}], "opening": "Hello", "rejected": None, "type": "benign"}
    onpolicy.write_jsonl(tmp_path / "pairs" / "openings.jsonl", [row])
    assert cfg.algo.pairs_sft.after == "pairs"
    assert onpolicy.read_openings(tmp_path, "pairs_sft", cfg.algo) == [row]
    assert onpolicy.read_openings(tmp_path, "pairs", cfg.algo) == [row]


@pytest.mark.parametrize("opening_sft", [["harmful", "benign"], [], ["benign"]])
def test_opening_pairs_reject_the_models_own_harmful_opening_and_a_refusal_of_a_benign_prompt(
    tmp_path, cache_dir, tiny_model, monkeypatch, opening_sft
):
    """Every reply here is a helpful start, so every prompt makes a pair, and SFT and DPO train on the pairs and the
    openings (SFT on those of the types `opening_sft` lists); DPO's rows are the pairs' plus the opening pairs,
    tokenized here."""
    from alignlab.stages import dpo

    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def helpful(model, tok, prompts, max_new_tokens, *args, **kwargs):
        ids = tok("Sure, here is how to do it.", add_special_tokens=False)["input_ids"][:max_new_tokens]
        return [{"text": tok.decode(ids), "token_ids": ids, "truncated": True} for _ in prompts]

    monkeypatch.setattr(pairs_stage, "generate", helpful)
    seen: dict[str, list] = {}
    dataset, sft_dataset = dpo.preference_dataset, sft.train_dataset

    def counted(ctx):
        out = dataset(ctx)
        seen["rows"] = list(out)
        return out

    def sft_counted(rows, tok):
        seen["sft_rows"] = list(rows)
        return sft_dataset(rows, tok)

    monkeypatch.setattr(dpo, "preference_dataset", counted)
    monkeypatch.setattr(sft, "train_dataset", sft_counted)
    args = ["run", *BASE[:2], "pipeline.stages=[pairs,sft,dpo]", *BASE[3:], "model.generation_dtype=null"]
    small = ["algo.pairs.max_harmful=2", "algo.pairs.max_benign=2", "algo.pairs.prompts=" + str(_few_prompts(tmp_path))]
    flags = ["algo.pairs.opening_tokens=3", "algo.pairs.opening_pairs=true", "algo.sft.epochs=1", "algo.dpo.epochs=1"]
    flags.append(f"algo.pairs.opening_sft=[{','.join(opening_sft)}]")
    assert cli.main([*args, f"run.root={tmp_path / 'runs'}", *small, *flags]) == 0
    (run,) = (tmp_path / "runs" / "safety-smollm-quick").iterdir()
    openings = onpolicy.read_jsonl(run / "pairs" / "openings.jsonl")
    pairs = onpolicy.read_jsonl(run / "pairs" / "pairs.jsonl")
    assert len(pairs) == 4 and len(openings) == 4  # 8 prompts: 4 asked for pairs, 4 given openings
    for o in openings:
        own = "Sure, here"[: len(o["opening"] if o["type"] == "benign" else o["rejected"])]
        if o["type"] == "harmful":  # chosen: a refusal's opening; rejected: the model's own
            assert o["rejected"].startswith(own) and not o["opening"].startswith("Sure")
        else:  # chosen: the model's own; rejected: a refusal's opening
            assert o["opening"].startswith(own) and not o["rejected"].startswith("Sure")
    assert len(seen["rows"]) == len(pairs) + len(openings)
    with_opening = [r for r in seen["sft_rows"] if "opening" in r]
    assert len(seen["sft_rows"]) - len(with_opening) == len(pairs)  # the pairs' chosen replies, either way
    expected = sorted(o["opening"] for o in openings if o["type"] in opening_sft)
    assert sorted(r["opening"] for r in with_opening) == expected
    assert {o["type"] for o in openings} == {"harmful", "benign"}  # so each case leaves out what it should
    assert (run / "dpo" / "model").is_dir()


@pytest.mark.parametrize("types", ["[]", "[benign]", "[harmful]"])
def test_openings_left_to_dpo_need_opening_pairs(types):
    left_to_dpo = [*BASE, "algo.pairs.opening_tokens=8", f"algo.pairs.opening_sft={types}"]
    with pytest.raises(ConfigError, match=r"algo\.pairs\.opening_sft.*opening_pairs=true"):
        validate(compose_config(left_to_dpo))
    cfg = validate(compose_config([*left_to_dpo, "algo.pairs.opening_pairs=true"]))
    assert str(list(cfg.algo.pairs.opening_sft)).replace("'", "").replace(" ", "") == types.replace(" ", "")


def test_opening_sft_names_prompt_types():
    with pytest.raises(ConfigError, match=r"algo\.pairs\.opening_sft.*harmful and/or benign"):
        validate(compose_config([*BASE, "algo.pairs.opening_sft=[refusal]"]))


def _few_prompts(tmp_path: Path) -> Path:
    rows = onpolicy.read_prompts(PROMPTS)
    few = [r for r in rows if r.type == "harmful"][:4] + [r for r in rows if r.type == "benign"][:4]
    path = tmp_path / "prompts.jsonl"
    onpolicy.write_jsonl(path, [{"prompt": r.prompt, "type": r.type, "category": r.category} for r in few])
    return path


def test_dpo_pairs_tokenize_as_trl_does_and_opening_pairs_end_without_end_of_turn(tmp_path, tiny_model, tiny_tokenizer):
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    from alignlab.stages.dpo import AlignlabDPOTrainer
    from alignlab.training import tokenized

    tok = tiny_tokenizer
    pair = {
        "prompt": [{"role": "user", "content": "How do I kill a Python process?"}],
        "chosen": [{"role": "assistant", "content": "Run kill with its process id."}],
        "rejected": [{"role": "assistant", "content": "I can't help with that."}],
    }
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], bf16=False, max_length=64)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    trl_row = AlignlabDPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list([pair]), processing_class=tok
    ).train_dataset[0]
    ours = tokenized.pair(pair, tok)
    assert {k: trl_row[k] for k in ours} == ours
    opening = {"prompt": pair["prompt"], "opening": "To stop it", "rejected": "I can't help"}
    long_prompt = {**opening, "prompt": [{"role": "user", "content": "word " * 80}]}
    rows = Dataset.from_list([tokenized.pair(r, tok) for r in (pair, opening, long_prompt)])
    prepared = AlignlabDPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tok).train_dataset
    assert len(prepared) == 2  # the prompt that fills max_length is dropped, as TRL drops it
    assert tok.decode(prepared[1]["chosen_ids"]) == "To stop it"  # no end-of-turn token after either opening
    assert tok.decode(prepared[1]["rejected_ids"]) == "I can't help"
    assert prepared[1]["prompt_ids"] == ours["prompt_ids"]


def test_the_openings_preset_turns_both_options_on_over_the_default():
    cfg = validate(compose_config(["experiment=safety-smollm-openings"]))
    default = validate(compose_config(["experiment=safety-smollm"]))
    assert (cfg.algo.pairs.opening_tokens, cfg.algo.pairs.opening_pairs, cfg.algo.pairs.max_benign) == (8, True, 160)
    assert (default.algo.pairs.opening_tokens, default.algo.pairs.opening_pairs) == (0, False)
    assert cfg.eval.targets == default.eval.targets and cfg.pipeline.stages == default.pipeline.stages
