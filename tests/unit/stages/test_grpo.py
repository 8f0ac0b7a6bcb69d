"""GRPO and RLOO stages (stages/grpo.py): config errors name the key, reward functions reach TRL in its form,
end-of-turn tokens survive a tokenizer whose pad token is its EOS (SmolLM2), and on the tiny model GRPO learns a
rule reward, RLOO saves a loadable model, and a pipeline trains against a reward-model folder."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from stage_fixtures import context as stage_context

from alignlab.config import compose_config, validate
from alignlab.data import unique_prompts
from alignlab.errors import ConfigError
from alignlab.models import load_model
from alignlab.pipeline import prepare
from alignlab.pipeline import run as run_pipeline
from alignlab.stages import grpo
from alignlab.training.context import StageContext
from alignlab.training.trainer import train

# The tiny random model samples a reply containing "7" about 7% of the time (16 tokens at temperature 1):
# rare enough to leave room to learn, common enough that most groups of 8 replies hold one.
TARGET = "7"
FAST_GRPO = (
    "algo.grpo.batch_size=16",
    "algo.grpo.num_generations=8",
    "algo.grpo.max_new_tokens=16",
    "algo.grpo.learning_rate=1e-2",
)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's matrices are too small to gain from threads, and on a shared CPU, OpenMP threads waiting
    for each other make a GRPO step up to 20x slower (measured: 120 s instead of 5 s for the rule-reward test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(tmp_path: Path, *overrides: str):
    return validate(
        compose_config(["experiment=tiny", "logger=none", f"run.root={tmp_path}", "pipeline=sft-rm-grpo", *overrides])
    )


def context(tmp_path: Path, *overrides: str) -> StageContext:
    """The context of a pipeline whose only stage is `grpo`, starting from the tiny model."""
    return stage_context(tmp_path, "grpo", "pipeline=sft-rm-grpo", "pipeline.stages=[grpo]", *overrides)


# ---------------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["algo.grpo.num_generations=1"], ["algo.grpo.num_generations", "at least 2"]),
        (["algo.grpo.cost=stage:cm"], ["algo.grpo.cost", "stage:cm", "runs before"]),
        (["pipeline.stages=[sft,grpo,rm]"], ["algo.grpo.reward", "stage:rm", "runs before"]),
        (["algo.grpo.reward=stage:sft"], ["algo.grpo.reward", "sft stage", "expected a rm stage"]),
        (["algo.grpo.reward=contains:"], ["algo.grpo.reward", "needs a text"]),
        (["algo.grpo.kind=rloo", "+algo.grpo.extra.scale_rewards=group"], ["algo.grpo.extra", "trl.RLOOConfig"]),
    ],
)
def test_bad_grpo_configs_name_the_key(tmp_path, overrides, names):
    with pytest.raises(ConfigError) as err:
        config(tmp_path, *overrides)
    for name in names:
        assert name in str(err.value), f"{name!r} not in {err.value}"


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["algo.grpo.batch_size=6", "algo.grpo.num_generations=4"], ["algo.grpo", "num_generations"]),
        (["+algo.grpo.extra.num_generations_eval=3"], ["algo.grpo.extra.num_generations_eval", "batch_size (8)"]),
    ],
)
def test_group_sizes_that_do_not_fit_the_batch_fail_before_training(tmp_path, cache_dir, overrides, names):
    with pytest.raises(ConfigError) as err:  # at validation or when the trainer is built, never mid-run
        grpo.build_trainer(context(tmp_path, "algo.grpo.reward=contains:a", *overrides))
    for name in names:
        assert name in str(err.value), f"{name!r} not in {err.value}"


# ---------------------------------------------------------------------------------------------- building blocks
def test_prompts_are_the_unique_conversations_of_the_pairs():
    a, b = [{"role": "user", "content": "A?"}], [{"role": "user", "content": "B?"}]
    rows = [{"prompt": a, "chosen": 1}, {"prompt": b, "chosen": 2}, {"prompt": a, "chosen": 3}]
    assert unique_prompts(rows) == [a, b]


def test_reward_and_cost_functions_take_trls_conversational_arguments(tmp_path, cache_dir):
    ctx = context(tmp_path, "algo.grpo.reward=contains:yes", "algo.grpo.cost=contains:bad", "algo.grpo.cost_weight=2")
    functions = grpo.reward_functions(ctx)
    assert [f.__name__ for f in functions] == ["reward", "cost"] and grpo.reward_weights(ctx.algo) == [1.0, -2.0]
    prompts = [[{"role": "user", "content": "Q?"}]] * 3
    completions = [[{"role": "assistant", "content": text}] for text in ("yes", "yes, bad", "no")]
    reward, cost = (f(prompts=prompts, completions=completions, completion_ids=[[1]] * 3) for f in functions)
    assert reward == [1.0, 1.0, 0.0] and cost == [0.0, 1.0, 0.0]


def test_trainer_gets_the_stage_settings(tmp_path, cache_dir):
    trainer = grpo.build_trainer(
        context(
            tmp_path,
            "algo.grpo.reward=contains:a",
            "algo.grpo.cost=contains:b",
            "algo.grpo.cost_weight=0.5",
            "algo.grpo.beta=0.2",
        )
    )
    assert isinstance(trainer, grpo.GRPOTrainer) and trainer.reward_func_names == ["reward", "cost"]
    assert trainer.reward_weights.tolist() == [1.0, -0.5] and trainer.beta == 0.2 and trainer.ref_model is not None
    assert trainer.num_generations == 4 and trainer.max_completion_length == 48
    assert len(trainer.train_dataset) == 56 and isinstance(trainer.train_dataset[0]["prompt"], list)
    rloo = grpo.build_trainer(context(tmp_path / "r", "algo.grpo.kind=rloo", "algo.grpo.reward=contains:a"))
    assert isinstance(rloo, grpo.RLOOTrainer)


def test_lora_policy_uses_the_disabled_adapter_as_reference(tmp_path, cache_dir):
    trainer = grpo.build_trainer(
        context(tmp_path, "algo.grpo.reward=contains:a", "model.lora.enabled=true", "model.lora.r=4")
    )
    assert trainer.ref_model is None
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in trainer.model.parameters()) / 5


def test_end_of_turn_is_kept_when_the_pad_token_is_eos(tmp_path, cache_dir):
    """SmolLM2's tokenizer pads with <|im_end|>, its end-of-turn token: the completion mask must still cover the
    reply's <|im_end|> (so the policy learns to stop), nothing after it, and the <|im_end|> inside prompts."""
    ctx = context(tmp_path, "algo.grpo.reward=contains:a", "algo.grpo.max_new_tokens=24")
    smollm_like = copy.deepcopy(ctx.tokenizer)
    smollm_like.pad_token = smollm_like.eos_token
    trainer = grpo.build_trainer(dataclasses.replace(ctx, tokenizer=smollm_like))
    eos = smollm_like.convert_tokens_to_ids("<|im_end|>")
    assert smollm_like.pad_token_id == eos and eos in trainer.eos_token_ids
    bias = torch.zeros(len(smollm_like))
    bias[eos] = 4.0  # the random model rarely ends a reply: make it end most of them
    trainer.model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)

    rows = [{"prompt": p} for p in unique_prompts(ctx.pairs)[:8]]
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions(rows)
    ended = 0
    for ids, mask in zip(batch["completion_ids"].tolist(), batch["completion_mask"].tolist(), strict=True):
        kept = ids[: sum(mask)]
        assert mask == sorted(mask, reverse=True), "the mask has a hole"
        assert eos not in kept[:-1], "the reply goes on after its end-of-turn token"
        ended += kept[-1] == eos
    assert ended >= 4, "too few replies ended to check the mask"
    for ids, mask in zip(batch["prompt_ids"].tolist(), batch["prompt_mask"].tolist(), strict=True):
        prompt = [t for t, m in zip(ids, mask, strict=True) if m]
        assert prompt.count(eos) >= 1 and smollm_like.decode(prompt).endswith("<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_grpo_learns_a_rule_reward(tmp_path, cache_dir):
    ctx = context(tmp_path, f"algo.grpo.reward=contains:{TARGET}", "algo.grpo.max_steps=24", *FAST_GRPO)
    trainer = grpo.build_trainer(ctx)
    before = grpo.final_metrics(trainer)["final/reward"]
    metrics = train(trainer, ctx)
    after = grpo.final_metrics(trainer)
    print(f"GRPO contains:{TARGET}: mean reward {before:.3f} -> {after['final/reward']:.3f}")
    assert before < 0.25 and after["final/reward"] > before + 0.4, (before, after)
    assert metrics["global_step"] == 24 and after["final/kl"] > 0
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert {"reward", "reward_std", "kl", "rewards/reward/mean"} <= set(logged[0])


@pytest.mark.slow
def test_rloo_stage_saves_a_loadable_model(tmp_path, cache_dir):
    cfg = config(
        tmp_path,
        "+algo@algo.rloo=rloo",
        "pipeline.stages=[rloo]",
        f"algo.rloo.reward=contains:{TARGET}",
        "algo.rloo.max_steps=4",
        "algo.rloo.batch_size=8",
        "algo.rloo.max_new_tokens=12",
        "algo.rloo.learning_rate=1e-2",
        "run.id=rloo",
    )
    results = run_pipeline(cfg)
    stage = tmp_path / "tiny" / "rloo" / "rloo"
    assert (stage / "DONE").is_file() and results["rloo"]["global_step"] == 4
    metrics = json.loads((stage / "metrics.json").read_text())
    assert 0 <= metrics["final/reward"] <= 1 and "final/rewards/reward/mean" in metrics
    policy = load_model(str(stage / "model"), cfg.model)
    base = load_model(prepare(cfg).base_model, cfg.model)
    assert not torch.equal(policy.lm_head.weight, base.lm_head.weight), "the saved model is the untrained one"


@pytest.mark.slow
def test_pipeline_with_a_reward_model_folder_and_a_cost(tmp_path, cache_dir, tiny_model, tiny_tokenizer):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    rm_dir = tmp_path / "rm"
    torch.manual_seed(0)
    rm_config = AutoConfig.from_pretrained(tiny_model, num_labels=1)
    AutoModelForSequenceClassification.from_config(rm_config).save_pretrained(rm_dir)
    tiny_tokenizer.save_pretrained(rm_dir)
    cfg = config(
        tmp_path,
        "pipeline.stages=[sft,grpo]",
        "algo.sft.max_steps=3",
        f"algo.grpo.reward={rm_dir}",
        f"algo.grpo.cost=contains:{TARGET}",
        "algo.grpo.max_steps=3",
        "run.id=rm",
        *FAST_GRPO,
    )
    results = run_pipeline(cfg)
    run = tmp_path / "tiny" / "rm"
    assert (run / "sft" / "DONE").is_file() and (run / "grpo" / "DONE").is_file()
    rewards = results["grpo"]["final/rewards/reward/mean"]
    assert rewards not in (0.0, 1.0), "the reward should be the reward model's score, not a rule"
    history = json.loads((run / "grpo" / "log_history.json").read_text())
    step = next(h for h in history if "reward" in h)
    total = step["rewards/reward/mean"] - step["rewards/cost/mean"]  # cost_weight 1, entering with a minus sign
    assert step["reward"] == pytest.approx(total, abs=1e-5)
    assert (run / "grpo" / "model" / "model.safetensors").is_file()
