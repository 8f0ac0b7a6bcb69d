"""PPO pieces against hand computations (rl/ppo_core.py, rl/rollout.py), PPO/PPO-Lagrangian config
checks, and (slow) toy tasks with a known rule reward on the tiny model."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from alignlab.config import compose_config, validate
from alignlab.errors import ConfigError
from alignlab.rl import ppo_core as core
from alignlab.rl.rollout import prompt_batch, response_mask

ONES = torch.ones(1, 3)


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.3]])
    gamma, lam = 0.9, 0.8
    # delta_t = r_t + gamma V_{t+1} - V_t (V_3 = 0); A_t = delta_t + gamma lam A_{t+1}
    d2 = 1.0 - 0.3
    d1 = 0.0 + 0.9 * 0.3 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.5
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    adv, ret = core.gae(rewards, values, ONES, gamma, lam)
    assert adv.tolist()[0] == pytest.approx([a0, a1, a2])
    assert ret.tolist()[0] == pytest.approx([a0 + 0.5, a1 + 0.4, a2 + 0.3])


def test_gae_ignores_padding_after_the_reply():
    rewards = torch.tensor([[0.0, 1.0, 5.0]])  # the 5.0 sits on padding
    values = torch.tensor([[0.2, 0.1, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = core.gae(rewards, values, mask, 1.0, 1.0)
    assert adv.tolist()[0] == pytest.approx([1.0 - 0.2, 1.0 - 0.1, 0.0])
    assert ret.tolist()[0] == pytest.approx([1.0, 1.0, 0.0])


def test_token_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    rewards, non_score = core.token_rewards(torch.tensor([2.0]), kl, 0.5, mask)
    assert non_score.tolist()[0] == pytest.approx([-0.05, -0.1, -0.15, 0.0])
    assert rewards.tolist()[0] == pytest.approx([-0.05, -0.1, 2.0 - 0.15, 0.0])


def test_kl_estimators():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-2.0]])
    assert core.kl_per_token(logp, ref, "k1").item() == pytest.approx(1.0)
    # k3 = (q/p - 1) - log(q/p) with log(q/p) = -1
    assert core.kl_per_token(logp, ref, "k3").item() == pytest.approx(math.exp(-1) - 1 + 1)
    assert core.kl_per_token(ref, logp, "k3").item() == pytest.approx(math.exp(1) - 1 - 1)


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    loss, stats = core.policy_loss(new, old, adv, ONES, cliprange=0.2)
    # per token max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2; max(-0.5, -0.8) = -0.5; max(2.2, 2.2) = 2.2
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)  # only the first token's clipped term won
    assert stats["approxkl"].item() == pytest.approx(
        0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3
    )


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1]])
    returns = torch.tensor([[2.0, 1.0]])
    loss, clipfrac = core.value_loss(new, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    # token 1: unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 3.24; token 2: 0.81 both -> 0.81
    assert loss.item() == pytest.approx(0.5 * (3.24 + 0.81) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_whitening_and_masked_statistics():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert core.masked_mean(x, mask).item() == pytest.approx(2.0)
    assert core.masked_var(x, mask).item() == pytest.approx(1.0)  # unbiased
    w = core.masked_whiten(x, mask)
    assert w.tolist()[0] == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4)
    assert core.masked_whiten(x, mask, shift_mean=False).tolist()[0][:3] == pytest.approx([1.0, 2.0, 3.0], abs=1e-4)


def test_adaptive_kl_controller_follows_ziegler():
    ctl = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, n_steps=100)  # error 1.0 clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    ctl.update(4.5, n_steps=100)  # error -0.25 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.002 * (1 - 0.002))
    ctl.update(6.6, n_steps=1000)  # error 0.1
    assert ctl.value == pytest.approx(0.1 * 1.002 * 0.998 * 1.01)
    fixed = core.FixedKLController(0.05)
    fixed.update(100.0, 10)
    assert fixed.value == 0.05


def test_lagrange_multiplier_rises_while_violated_and_falls_after():
    lag = core.LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.2)
    loss = lag.update(0.7)  # violated by 0.5: loss = -0.5 * lambda
    assert loss == pytest.approx(-0.5)
    assert lag.value == pytest.approx(math.exp(0.1), rel=1e-4)  # Adam's first step moves log(lambda) by lr
    lag.update(0.7)
    assert lag.value == pytest.approx(math.exp(0.2), rel=1e-3)
    for _ in range(30):
        lag.update(0.0)  # satisfied: lambda shrinks
    assert lag.value < 1.0
    capped = core.LagrangeMultiplier(init=1.0, lr=0.5, threshold=0.0, lambda_max=1.2)
    capped.update(1.0)
    assert capped.value == pytest.approx(1.2)


def test_lagrange_state_round_trips():
    lag = core.LagrangeMultiplier(init=2.0, lr=0.1, threshold=0.0)
    lag.update(1.0)
    other = core.LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.0)
    other.load_state_dict(copy.deepcopy(lag.state_dict()))  # as torch.save / torch.load would hand it over
    assert other.value == pytest.approx(lag.value)
    lag.update(1.0)
    other.update(1.0)
    assert other.value == pytest.approx(lag.value)


def test_lagrangian_advantage():
    adv = core.lagrangian_advantages(torch.tensor([2.0]), torch.tensor([1.0]), 3.0)
    assert adv.item() == pytest.approx((2.0 - 3.0) / 4.0)


def test_response_mask_keeps_the_end_of_turn_token():
    reply = torch.tensor([[5, 6, 2, 0, 0], [7, 8, 9, 10, 11]])
    mask, truncated = response_mask(reply, stops=[2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [False, True]


def test_prompt_batches_cover_each_pass_and_are_reproducible():
    prompts = list(range(10))
    first_pass = prompt_batch(prompts, 0, 5, seed=3) + prompt_batch(prompts, 1, 5, seed=3)
    assert sorted(first_pass) == prompts
    assert prompt_batch(prompts, 1, 5, seed=3) == prompt_batch(prompts, 1, 5, seed=3)
    assert prompt_batch(prompts, 2, 5, seed=3) != prompt_batch(prompts, 0, 5, seed=3)  # a new shuffle per pass


# ---------------------------------------------------------------------------------------------- config
def _cfg(*overrides: str):
    return validate(compose_config(["experiment=tiny", "logger=none", *overrides]))


def test_pipelines_compose_with_their_stage_kinds():
    cfg = _cfg("pipeline=sft-rm-cm-ppo-lag")
    assert [cfg.algo[s].kind for s in cfg.pipeline.stages] == ["sft", "rm", "cm", "ppo-lag"]
    assert cfg.algo.ppo.reward == "stage:rm" and cfg.algo.ppo.cost == "stage:cm"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["algo.ppo.reward=stage:nothing"], "algo.ppo.reward"),
        (["algo.ppo.reward=stage:sft"], "algo.ppo.reward"),
        (["algo.ppo.mini_batch_size=3"], "algo.ppo.mini_batch_size"),
        (["algo.ppo.kl_estimator=k9"], "algo.ppo.kl_estimator"),
        (["algo.ppo.value_model=shared"], "algo.ppo.value_model"),
        (["algo.ppo.reward=contains:x", "algo.ppo.value_model=critic"], "algo.ppo.critic_init"),
        (["+algo.ppo.extra.whiten=true"], "algo.ppo.extra"),
        (["pipeline.stages=[sft,ppo,rm]"], "algo.ppo.reward"),
        (["algo.ppo.top_k=-1"], "algo.ppo.top_k"),
    ],
)
def test_bad_ppo_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _cfg("pipeline=sft-rm-ppo", *overrides)


def test_bad_lagrangian_settings_name_the_key():
    with pytest.raises(ConfigError, match=r"algo\.ppo\.lambda_init"):
        _cfg("pipeline=sft-rm-cm-ppo-lag", "algo.ppo.lambda_init=0")
    with pytest.raises(ConfigError, match=r"algo\.ppo\.cost"):
        _cfg("pipeline=sft-rm-cm-ppo-lag", "algo.ppo.cost=stage:sft")


# ------------------------------------------------------------------------------------ toy tasks (slow)
# The tiny random model's sampled replies contain "is" about 10% of the time and "e" about 60%: a known rule
# reward to raise, and a known cost to hold under a threshold.
TOY = [
    "experiment=tiny",
    "logger=none",
    "pipeline=sft-rm-ppo",
    "pipeline.stages=[ppo]",
    "algo.ppo.max_steps=16",
    "algo.ppo.batch_size=16",
    "algo.ppo.mini_batch_size=8",
    "algo.ppo.learning_rate=1e-2",
    "algo.ppo.max_new_tokens=16",
    "algo.ppo.save_steps=100",
    "algo.ppo.reward=contains:is",
]
LAGRANGIAN = [
    "algo@algo.ppo=ppo-lag",
    "algo.ppo.cost=contains:e",
    "algo.ppo.cost_threshold=0.3",
    "algo.ppo.lambda_lr=0.2",
]


def _run(tmp_path, *overrides: str) -> tuple[dict, object]:
    from alignlab import pipeline

    cfg = validate(compose_config([*TOY, f"run.root={tmp_path}", *overrides]))
    return pipeline.run(cfg)["ppo"], pipeline.run_dir_of(cfg)


def _sampled_rate(model_dir, text: str) -> float:
    """Share of sampled replies to the tiny prompts that contain `text` (a fresh measurement, not the run's log)."""
    from omegaconf import OmegaConf

    from alignlab.config import ModelConfig
    from alignlab.data import unique_prompts
    from alignlab.generation import generate
    from alignlab.models import TINY_CORPUS, load_model, load_tokenizer

    mc = OmegaConf.structured(ModelConfig(name="tiny", source="local", path=str(model_dir)))
    tok, model = load_tokenizer(str(model_dir), mc), load_model(str(model_dir), mc)
    prompts = unique_prompts([json.loads(line) for line in TINY_CORPUS.read_text().splitlines()]) * 2
    replies = generate(model, tok, prompts, 16, 64, do_sample=True, temperature=1.0, seed=123)
    return sum(text in r["text"] for r in replies) / len(replies)


@pytest.mark.slow
def test_ppo_raises_a_rule_reward_within_a_cpu_minute(tmp_path, cache_dir):
    m, run_dir = _run(tmp_path)
    rate = _sampled_rate(run_dir / "ppo" / "model", "is")
    print(
        f"\nPPO, reward contains:is: {m['first/objective/scores']:.3f} -> {m['final/objective/scores']:.3f} "
        f"(first/last quarter of {m['global_step']} iterations), sampled afterwards {rate:.3f}"
    )
    assert m["first/objective/scores"] < 0.2
    assert m["final/objective/scores"] - m["first/objective/scores"] > 0.4
    history = json.loads((run_dir / "ppo" / "log_history.json").read_text())
    for name in (
        "objective/kl",
        "objective/rlhf_reward",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "loss/value_avg",
        "loss/policy_avg",
        "val/clipfrac_avg",
        "objective/entropy",
    ):
        assert name in history[-1]
    assert history[0]["objective/kl"] == pytest.approx(0.0, abs=1e-4)  # the reference is the starting policy
    assert rate > 0.4


@pytest.mark.slow
def test_ppo_lagrangian_holds_the_cost_under_its_threshold_where_ppo_does_not(tmp_path, cache_dir):
    _, plain_dir = _run(tmp_path / "plain")
    lag, lag_dir = _run(tmp_path / "lag", *LAGRANGIAN)
    assert lag["first/cost/mean"] > 0.3  # the constraint starts violated
    assert lag["final/cost/mean"] <= 0.3
    assert lag["final/objective/scores"] - lag["first/objective/scores"] > 0.3  # and the reward still rises
    history = json.loads((lag_dir / "ppo" / "log_history.json").read_text())
    assert max(h["lagrange/multiplier"] for h in history) > 1.0  # lambda rose while the cost was too high
    plain_rate, lag_rate = (_sampled_rate(d / "ppo" / "model", "e") for d in (plain_dir, lag_dir))
    print(
        f"\nPPO-Lagrangian, cost contains:e <= 0.3: cost {lag['first/cost/mean']:.3f} -> {lag['final/cost/mean']:.3f}, "
        f"reward {lag['first/objective/scores']:.3f} -> {lag['final/objective/scores']:.3f}; sampled cost afterwards: "
        f"PPO-Lagrangian {lag_rate:.3f}, plain PPO {plain_rate:.3f}"
    )
    assert plain_rate > 0.4
    assert lag_rate < 0.3


@pytest.mark.slow
def test_interrupted_ppo_resumes_to_the_same_result(tmp_path, cache_dir, monkeypatch):
    from alignlab.stages import ppo

    short = ["algo.ppo.max_steps=4", "algo.ppo.save_steps=2", "algo.ppo.batch_size=8", "algo.ppo.mini_batch_size=4"]
    whole, _ = _run(tmp_path, *short, "run.id=whole")
    real, calls = ppo.ppo_epochs, []

    def dies_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("preempted")
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo, "ppo_epochs", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, *short, "run.id=cut")
    monkeypatch.setattr(ppo, "ppo_epochs", real)
    resumed, _ = _run(tmp_path, *short, "run.id=cut")
    assert resumed["resumed_from"] == "checkpoint-2"
    for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_fp32_ppo_runs_after_a_bf16_accelerator_in_the_same_process(tmp_path, cache_dir):
    """A bf16 Trainer stage (or run) earlier in the process leaves its mixed precision in accelerate's process-wide
    state; an fp32 PPO after it once failed ('AcceleratorState has already been initialized')."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Earlier tests in this process may have left a state of their own (an fp32 one refuses bf16 here): start from
    # none, as a fresh `alignlab run` process does, then leave bf16 behind as a bf16 Trainer stage would.
    AcceleratorState._reset_state(reset_partial_state=True)
    Accelerator(mixed_precision="bf16", cpu=True)
    assert AcceleratorState().mixed_precision == "bf16"
    m, run_dir = _run(
        tmp_path,
        "algo.ppo.max_steps=1",
        "algo.ppo.batch_size=4",
        "algo.ppo.mini_batch_size=4",
        "algo.ppo.precision=fp32",
    )
    assert m["global_step"] == 1 and (run_dir / "ppo" / "DONE").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    [
        ["model.lora.enabled=true"],
        ["algo.ppo.value_model=critic", "algo.ppo.critic_init=policy", "algo.ppo.kl_target=1.0"],
        ["algo.ppo.grad_accum=2", "algo.ppo.mini_batch_size=2"],
    ],
)
def test_lora_reference_critic_and_accumulation(tmp_path, cache_dir, variant):
    _, run_dir = _run(tmp_path, "algo.ppo.max_steps=2", "algo.ppo.batch_size=8", "algo.ppo.mini_batch_size=4", *variant)
    history = json.loads((run_dir / "ppo" / "log_history.json").read_text())
    assert history[0]["objective/kl"] == pytest.approx(0.0, abs=1e-4)  # adapter off / fresh copy = start policy
    if "algo.ppo.kl_target=1.0" in variant:
        assert history[1]["objective/kl_coef"] != history[0]["objective/kl_coef"]
    assert history[-1]["lr"] == 0.0  # the linear schedule counted exactly the optimizer steps taken
    assert (run_dir / "ppo" / "model" / "config.json").is_file()
    assert not (run_dir / "ppo" / "model" / "adapter_config.json").exists()  # LoRA merged into a plain model


def test_safety_ppo_experiment_differs_from_the_dpo_default_only_in_the_method():
    ppo_cfg = validate(compose_config(["experiment=safety-smollm-ppo"]))
    dpo_cfg = validate(compose_config([]))
    assert list(ppo_cfg.pipeline.stages) == ["eval_before", "pairs", "sft", "rm", "ppo", "eval_after"]
    for same in ("model", "data", "eval"):
        assert ppo_cfg[same] == dpo_cfg[same]
    for stage in ("eval_before", "pairs", "sft", "eval_after"):
        assert ppo_cfg.algo[stage] == dpo_cfg.algo[stage]
    assert ppo_cfg.algo.ppo.reward == "stage:rm"


@pytest.mark.parametrize(
    ("precision", "dtype", "kl_floor"), [("bf16", torch.bfloat16, 0.05), ("fp32", torch.float32, 1e-4)]
)
def test_frozen_models_are_held_in_the_mixed_precision(
    tmp_path, cache_dir, tiny_model, tiny_tokenizer, precision, dtype, kl_floor
):
    """Reference and reward model are frozen: at bf16 they are held in bf16 (no fp32 copy for autocast to cast on
    every forward pass), at fp32 left as loaded; the policy keeps fp32 master weights either way. The first
    iteration's KL is the reference's distance from the starting policy: zero in fp32, bf16 rounding at bf16
    (about 0.01 to 0.02 a reply of 16 tokens here)."""
    from accelerate.state import AcceleratorState
    from stage_fixtures import context
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from alignlab.stages.ppo import PPORecipe

    rm_dir = tmp_path / "rm"
    rm_config = AutoConfig.from_pretrained(tiny_model, num_labels=1)
    AutoModelForSequenceClassification.from_config(rm_config).save_pretrained(rm_dir)
    tiny_tokenizer.save_pretrained(rm_dir)
    AcceleratorState._reset_state(reset_partial_state=True)
    overrides = [o for o in TOY if not o.startswith(("experiment=", "logger=", "algo.ppo.reward="))]
    ctx = context(tmp_path, "ppo", *overrides, f"algo.ppo.reward={rm_dir}", f"algo.ppo.precision={precision}")
    recipe = PPORecipe(ctx)
    recipe.setup()
    assert recipe.reference is not None  # full fine-tuning: a separate frozen copy
    assert next(recipe.reference.parameters()).dtype == dtype
    assert next(recipe.scorers[0].scorer.model.parameters()).dtype == dtype
    assert next(recipe.ac.parameters()).dtype == torch.float32
    metrics = recipe.train_step(0)
    assert abs(metrics["objective/kl"]) < kl_floor  # the reference is the starting policy


def test_rollouts_with_top_k_1_are_generates_greedy_replies(tmp_path, cache_dir):
    """Rollouts come from our decoding loop over the prompts' shared prefix; at top-k 1 its draws are greedy, so
    they are `generate`'s greedy replies to the same left-padded prompts, one of them cut on the left to fit."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from stage_fixtures import context

    from alignlab.generation import generation_tokenizer, stop_ids
    from alignlab.models import load_model
    from alignlab.rl.actor_critic import ActorCritic
    from alignlab.rl.rollout import _sample

    AcceleratorState._reset_state(reset_partial_state=True)
    overrides = [o for o in TOY if not o.startswith(("experiment=", "logger="))]
    ctx = context(tmp_path, "ppo", *overrides, "algo.ppo.top_k=1", "algo.ppo.precision=fp32", "data.max_length=64")
    policy = load_model(ctx.input_model, ctx.cfg.model)
    torch.manual_seed(0)
    with torch.no_grad():  # the tiny model's initial weights repeat one token; perturbed, its replies vary
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    questions = ["Hi", "What is 2 plus 3?", "Why?", "Tell me a long story about " + "a dragon and a knight " * 4]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    ids, attn, P, mask, _ = _sample(ActorCritic(policy, 1), Accelerator(cpu=True), ctx, conversations)

    tok = generation_tokenizer(ctx.tokenizer)
    tok.truncation_side = "left"
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    assert len(tok(texts[-1], add_special_tokens=False)["input_ids"]) > 64 - 16  # the long prompt is cut
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=64 - 16, add_special_tokens=False)
    assert torch.equal(ids[:, :P], enc["input_ids"]) and torch.equal(attn[:, :P], enc["attention_mask"])
    stops = stop_ids(ctx.tokenizer)
    with torch.no_grad():
        out = policy.generate(
            **enc, max_new_tokens=16, do_sample=False, eos_token_id=stops, pad_token_id=tok.pad_token_id, top_k=None
        )
    for row, reply, m in zip(out[:, P:].tolist(), ids[:, P:], mask):
        expected = row[: next((k + 1 for k, t in enumerate(row) if t in stops), len(row))]
        assert reply[m.bool()].tolist() == expected


@pytest.mark.parametrize("heads", [True, False])
def test_reply_logps_from_the_kept_positions_equal_those_of_the_full_logits(tiny_model, heads):
    """The scoring passes and the PPO epochs put only the reply's positions (and the prompt's last) through the LM
    head: the log-probabilities, entropies and values must be those of the whole sequence's forward pass."""
    from transformers import AutoModelForSequenceClassification

    from alignlab.models import load_model
    from alignlab.rl.actor_critic import ActorCritic
    from alignlab.rl.rollout import reply_logps

    cfg = validate(compose_config([*TOY, "model.lora.enabled=false"]))
    torch.manual_seed(0)
    policy = load_model(tiny_model, cfg.model)
    critics = None if heads else [AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)]
    ac = ActorCritic(policy, 1, critics).eval()
    P, T, temperature = 7, 5, 0.7
    ids = torch.randint(5, policy.config.vocab_size, (3, P + T))
    attn = torch.ones_like(ids)
    attn[0, :3] = 0  # a left-padded prompt
    with torch.no_grad():
        full, values = ac(ids, attn)
        kept, kept_values = ac(ids, attn, logits_to_keep=T + 1)
    expected = torch.log_softmax(full[:, P - 1 : -1].float() / temperature, -1)
    expected = expected.gather(-1, ids[:, P:, None]).squeeze(-1)
    assert kept.shape[1] == T + 1 and torch.allclose(reply_logps(kept, ids[:, P:], temperature), expected, atol=1e-6)
    assert torch.allclose(core.entropy_from_logits(kept[:, :-1]), core.entropy_from_logits(full[:, P - 1 : -1]))
    assert torch.equal(kept_values, values)
