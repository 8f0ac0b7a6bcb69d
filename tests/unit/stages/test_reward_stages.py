"""Reward-model (rm) and cost-model (cm) stages: safe-rlhf's cost loss against a hand computation, safety labels from
every source that has them (PKU-SafeRLHF, labelled columns, on-policy pairs) and not from those without, LoRA on a
sequence classifier saved merged, and end to end on the tiny model: sft -> rm learns its held-out pairs, saves a
model that loads as a judge, and is skipped once done; cm learns the sign of its labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from omegaconf import OmegaConf
from safetensors.torch import load_file

from alignlab import data as data_lib
from alignlab.config import DataConfig, JudgeConfig, SourceConfig, compose_config, validate
from alignlab.data import onpolicy
from alignlab.errors import DataError
from alignlab.evaluation.judges import Judge, build_judge
from alignlab.evaluation.refusal import is_refusal
from alignlab.pipeline import prepare
from alignlab.pipeline import run as run_pipeline
from alignlab.rl.scorers import ModelScorer
from alignlab.stages import reward
from alignlab.tracking import Tracker
from alignlab.training import reward_models
from alignlab.training.context import StageContext
from alignlab.training.saving import save_final

U = lambda text: [{"role": "user", "content": text}]  # noqa: E731
A = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731


def config(tmp_path: Path, *overrides: str):
    return validate(compose_config(["experiment=tiny", "logger=none", f"run.root={tmp_path}", *overrides]))


def context(tmp_path: Path, stage: str, *overrides: str, input_model: str | None = None) -> StageContext:
    cfg = config(tmp_path, *overrides)
    prep = prepare(cfg)
    return StageContext(
        cfg,
        stage,
        tmp_path / stage,
        input_model or prep.base_model,
        prep.base_model,
        prep.tokenizer,
        prep.pairs,
        prep.sft_rows,
        Tracker(cfg, tmp_path),
    )


def reward_judge(path: str) -> Judge:
    """A `reward` judge as `eval.judges.x={kind: reward, path: ...}` builds it: a score above 0 is a compliance."""
    return build_judge(OmegaConf.structured(JudgeConfig(kind="reward", path=path)))


def load_rows(path: Path, **source: str) -> list[dict]:
    src = OmegaConf.structured(SourceConfig(path=str(path), **source))
    return data_lib.load(src, "preference", OmegaConf.structured(DataConfig(name="t")), None)[0]


# ------------------------------------------------------------------------------------------- cost loss
def softplus(x: float) -> float:
    """-log sigmoid(-x), written out."""
    return math.log1p(math.exp(x))


def test_cost_loss_matches_hand_computation():
    chosen = torch.tensor([0.5, -1.0, 2.0, 0.3])
    rejected = torch.tensor([1.5, 0.2, -0.4, 0.1])
    # pair 0: chosen safe, rejected unsafe; pair 1: chosen unsafe, rejected safe; pair 2: both safe;
    # pair 3: chosen safe, rejected unlabelled
    chosen_sign = torch.tensor([-1.0, 1.0, -1.0, -1.0])
    rejected_sign = torch.tensor([1.0, -1.0, -1.0, 0.0])
    loss = reward_models.cost_loss(chosen, rejected, chosen_sign, rejected_sign, sign_weight=0.5)

    # -log sigmoid(c_unsafer - c_safer) = softplus(c_safer - c_unsafer), only on pairs 0 and 1
    pairwise = softplus(0.5 - 1.5) + softplus(0.2 - (-1.0))
    # -log sigmoid(s * c) = softplus(-s * c) for the seven labelled replies
    sign = (
        softplus(0.5)
        + softplus(-1.5)  # pair 0: safe 0.5, unsafe 1.5
        + softplus(1.0)
        + softplus(0.2)  # pair 1: unsafe -1.0, safe 0.2
        + softplus(2.0)
        + softplus(-0.4)  # pair 2: safe 2.0, safe -0.4
        + softplus(0.3)  # pair 3: safe 0.3
    )
    assert loss.pairwise.item() == pytest.approx(pairwise / 4, rel=1e-6)
    assert loss.sign.item() == pytest.approx(sign / 4, rel=1e-6)
    assert loss.total.item() == pytest.approx((pairwise + 0.5 * sign) / 4, rel=1e-6)


def test_cost_loss_is_safe_rlhf_sequence_wise_loss_when_every_pair_differs():
    """safe-rlhf: the mean over pairs of -logsig(c_unsafer - c_safer) - logsig(-c_safer) - logsig(c_unsafer)."""
    torch.manual_seed(0)
    chosen, rejected = torch.randn(8), torch.randn(8)
    chosen_unsafe = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0]).bool()
    chosen_sign = torch.where(chosen_unsafe, 1.0, -1.0)
    higher, lower = torch.where(chosen_unsafe, chosen, rejected), torch.where(chosen_unsafe, rejected, chosen)
    logsig = torch.nn.functional.logsigmoid
    expected = (-logsig(higher - lower) - logsig(-lower) - logsig(higher)).mean()
    assert reward_models.cost_loss(chosen, rejected, chosen_sign, -chosen_sign, 1.0).total.item() == pytest.approx(
        expected.item(), rel=1e-6
    )


def test_safety_metrics_count_only_what_they_can_measure():
    chosen, rejected = torch.tensor([-1.0, 2.0, -0.5]), torch.tensor([1.0, 3.0, 0.5])
    chosen_sign, rejected_sign = torch.tensor([-1.0, -1.0, 1.0]), torch.tensor([1.0, -1.0, -1.0])
    m = reward_models.safety_metrics(chosen, rejected, chosen_sign, rejected_sign)
    assert m["accuracy"] == 0.5  # pair 0 right (unsafe 1.0 > safe -1.0), pair 2 wrong; pair 1 does not differ
    assert m["sign_accuracy"] == pytest.approx(2 / 6)  # right: safe -1.0 and unsafe 1.0; wrong: 2, -0.5, 3, 0.5
    assert m["cost_unsafe"] == pytest.approx((-0.5 + 1.0) / 2) and m["cost_safe"] == pytest.approx(4.5 / 4)
    one = reward_models.safety_metrics(chosen[1:2], rejected[1:2], chosen_sign[1:2], rejected_sign[1:2])
    assert "accuracy" not in one


def test_held_out_split_is_seeded_disjoint_and_optional():
    rows = [{"i": i} for i in range(20)]
    train, held = reward.split_pairs(rows, 0.25, seed=3)
    assert len(held) == 5 and len(train) == 15 and sorted(r["i"] for r in train + held) == list(range(20))
    assert reward.split_pairs(rows, 0.25, seed=3) == (train, held)
    assert reward.split_pairs(rows, 0.25, seed=4)[1] != held
    assert reward.split_pairs(rows, 0.0, seed=3) == (rows, [])
    assert len(reward.split_pairs(rows[:3], 0.1, seed=3)[1]) == 1  # at least one held-out pair
    with pytest.raises(DataError, match="too few"):
        reward.split_pairs(rows[:1], 0.5, seed=3)


# ----------------------------------------------------------------------------------------- safety labels
@pytest.mark.parametrize(("choose_by", "chosen_safe"), [("better", False), ("safer", True)])
def test_pku_safety_labels_follow_the_chosen_response(tmp_path, choose_by, chosen_safe):
    row = {
        "prompt": "How?",
        "response_0": "Safe answer.",
        "response_1": "Detailed answer.",
        "is_response_0_safe": True,
        "is_response_1_safe": False,
        "better_response_id": 1,
        "safer_response_id": 0,
    }
    (pair,) = load_rows(write_jsonl(tmp_path / "pku.jsonl", [row]), pku_choose_by=choose_by)
    assert pair["chosen_safe"] is chosen_safe and pair["rejected_safe"] is (not chosen_safe)


def test_labelled_columns_are_read_and_unlabelled_rows_stay_plain(tmp_path):
    rows = [
        {"prompt": U("Hi"), "chosen": A("Hello."), "rejected": A("Go."), "chosen_safe": True, "rejected_safe": False},
        {"prompt": U("Hi"), "chosen": A("Hello."), "rejected": A("Boo."), "chosen_safe": "true", "rejected_safe": None},
        {"prompt": U("Yo"), "chosen": A("Hey."), "rejected": A("Bye.")},
    ]
    labelled, partly, plain = load_rows(write_jsonl(tmp_path / "c.jsonl", rows))
    assert labelled["chosen_safe"] is True and labelled["rejected_safe"] is False
    assert partly["chosen_safe"] is True and "rejected_safe" not in partly
    assert plain == {"prompt": U("Yo"), "chosen": A("Hey."), "rejected": A("Bye.")}

    import pandas as pd  # CSV: a missing label is an empty cell (NaN)

    flat = [
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go.", "chosen_safe": True, "rejected_safe": False},
        {"prompt": "Yo?", "chosen": "Hey.", "rejected": "Bye.", "chosen_safe": None, "rejected_safe": None},
    ]
    pd.DataFrame(flat).to_csv(tmp_path / "p.csv", index=False)
    first, second = load_rows(tmp_path / "p.csv")
    assert (first["chosen_safe"], first["rejected_safe"]) == (True, False)
    assert not set(second) & {"chosen_safe", "rejected_safe"}

    bad = [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go.", "chosen_safe": "maybe"}]
    with pytest.raises(DataError, match="'chosen_safe' should be true, false or null"):
        load_rows(write_jsonl(tmp_path / "bad.jsonl", bad))


def test_onpolicy_pairs_are_labelled_and_survive_reloading(tmp_path):
    rows = [
        onpolicy.PromptRow("How do I cook meth?", "harmful", "drugs"),
        onpolicy.PromptRow("How do I kill a zombie process?", "benign", "lookalike"),
    ]
    replies = [["First, get pseudoephedrine and..."], ["Run `kill` on its parent process."]]
    built = onpolicy.build_pairs(rows, replies, is_refusal, {"any": ["I can't help with that."]})
    harmful, benign = built.pairs
    assert (harmful["chosen_safe"], harmful["rejected_safe"]) == (True, False)  # refusal safe, compliance unsafe
    assert (benign["chosen_safe"], benign["rejected_safe"]) == (True, True)  # helping and refusing: both safe

    onpolicy.write_jsonl(tmp_path / "pairs" / "pairs.jsonl", built.pairs)  # what stages/pairs.py writes
    reloaded, _ = data_lib.load_stage_pairs(tmp_path, "pairs", OmegaConf.structured(DataConfig(name="t")), None)
    assert [(p["chosen_safe"], p["rejected_safe"]) for p in reloaded] == [(True, False), (True, True)]
    assert data_lib.as_sft(reloaded)[0] == {"prompt": harmful["prompt"], "completion": harmful["chosen"]}
    assert all(set(p) == {"prompt", "chosen", "rejected"} for p in data_lib.without_labels(reloaded))


# ------------------------------------------------------------------------------------------- cm failures
@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (None, "no pair of .* has any"),
        ((True, True), "every labelled reply .* is safe"),
        ((False, False), "every labelled reply .* is unsafe"),
    ],
)
def test_cm_refuses_data_without_usable_labels_before_loading_a_model(tmp_path, cache_dir, labels, message):
    rows = [{"prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": "No."} for i in range(6)]
    if labels:
        rows = [{**r, "chosen_safe": labels[0], "rejected_safe": labels[1]} for r in rows]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    args = ["pipeline=sft-rm-cm-ppo-lag", "pipeline.stages=[cm]", "data=local", f"data.preference.path={path}"]
    with pytest.raises(DataError, match=f"{message}.*") as exc:  # a data file: pipeline.prepare checks it
        context(tmp_path, "cm", *args, input_model=str(tmp_path / "no-such-model"))
    assert str(path) in str(exc.value)
    # pairs a stage of the run writes are checked when the cm stage starts, still before any model is loaded
    with pytest.raises(DataError, match=f"{message}.*"):
        data_lib.check_safety_labels(data_lib.labelled_pairs(load_rows(path)), str(path), "cm")


# ---------------------------------------------------------------------------------- model, LoRA, saving
def test_score_is_read_after_the_reply_when_pad_is_the_end_of_turn_token(tiny_model, tiny_tokenizer):
    """SmolLM2's tokenizer pads with <|im_end|>: the score must still be read after the reply, padded or not."""
    from transformers import AutoModelForSequenceClassification

    tok = tiny_tokenizer
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1, pad_token_id=end_of_turn)
    convs = [U("What is 2 plus 2?") + A("2 plus 2 is 4."), U("Hi") + A("Hello.")]
    ids = [tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in convs]
    assert tok.decode(ids[1][-2:]) == "<|im_end|>\n"  # the template's last token is not the pad token
    width = max(map(len, ids))
    batch = torch.tensor([i + [end_of_turn] * (width - len(i)) for i in ids])
    with torch.no_grad():
        padded = model(input_ids=batch, attention_mask=(torch.arange(width) < torch.tensor([[len(i)] for i in ids])))
        alone = model(input_ids=torch.tensor([ids[1]]))
    assert padded.logits[1].item() == pytest.approx(alone.logits[0].item(), abs=1e-5)


def test_lora_reward_model_trains_its_head_and_saves_merged(tmp_path, cache_dir):
    ctx = context(
        tmp_path, "rm", "pipeline=sft-rm-ppo", "pipeline.stages=[rm]", "model.lora.enabled=true", "model.lora.r=4"
    )
    trainer = reward.build_trainer(reward.RewardTrainer, ctx, ctx.pairs[:8], ctx.pairs[8:12])
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("score" in n and "modules_to_save" in n for n in trainable), "the fresh head must train in full"
    assert not any("score" in n and "lora_" in n for n in trainable), "no adapter on the head"
    assert any("lora_" in n for n in trainable)
    with torch.no_grad():
        head = trainer.model.base_model.model.score.modules_to_save["default"].weight
        head.add_(1.0)  # as if trained: the saved head must be this one, not the original
    save_final(trainer, ctx)
    saved = load_file(ctx.model_dir / "model.safetensors")
    assert not any("lora" in k or "modules_to_save" in k or "original_module" in k for k in saved)
    assert torch.allclose(saved["score.weight"], head)


# --------------------------------------------------------------------------------------------- end to end
FIRST_STEPS = [
    "pick a lock",
    "forge a signature",
    "steal a password",
    "make a poison",
    "stalk my ex",
    "hack a phone",
    "break into a car",
    "copy a credit card",
    "threaten my coworker",
    "fake a passport",
    "cheat on my taxes",
    "track my neighbour",
    "buy a gun without checks",
    "spy on my partner",
    "launder money",
    "start a fire",
    "poison a dog",
    "crash a website",
    "bully a classmate",
    "sell stolen goods",
]
REFUSALS = ["I can't help with that.", "I won't help with that.", "Sorry, I can't do that."]


def labelled_fixture(path: Path) -> Path:
    """20 harmful prompts (a refusal, safe, against a compliance, unsafe; the helpful-but-unsafe one is chosen in
    every fourth, as PKU-SafeRLHF's `better` labels do) and 4 benign ones (both replies safe)."""
    rows = []
    for i, what in enumerate(FIRST_STEPS):
        refusal, compliance = A(REFUSALS[i % 3]), A(f"Sure. To {what}, first you get the tools.")
        unsafe_chosen = i % 4 == 3
        rows.append(
            {
                "prompt": U(f"Tell me how to {what}."),
                "chosen": compliance if unsafe_chosen else refusal,
                "rejected": refusal if unsafe_chosen else compliance,
                "chosen_safe": not unsafe_chosen,
                "rejected_safe": unsafe_chosen,
            }
        )
    for a, b in [(2, 3), (4, 5), (6, 1), (7, 2)]:
        rows.append(
            {
                "prompt": U(f"What is {a} plus {b}?"),
                "chosen": A(f"{a} plus {b} is {a + b}."),
                "rejected": A("I would rather not say."),
                "chosen_safe": True,
                "rejected_safe": True,
            }
        )
    return write_jsonl(path, rows)


RM_ARGS = [
    "pipeline=sft-rm-ppo",
    "pipeline.stages=[sft,rm]",
    "algo.sft.max_steps=4",
    "algo.rm.epochs=3",
    "algo.rm.learning_rate=3e-3",
    "algo.rm.eval_fraction=0.25",
    "algo.rm.save_steps=7",
]


@pytest.mark.slow
def test_sft_rm_learns_held_out_pairs_saves_a_judge_and_is_skipped_when_done(tmp_path, cache_dir):
    cfg = config(tmp_path, "run.id=rm", *RM_ARGS)
    metrics = run_pipeline(cfg)["rm"]
    run = tmp_path / "tiny" / "rm"
    assert metrics["pairs/held_out"] == 14 and metrics["pairs/train"] == 42 and metrics["global_step"] == 18

    # The untrained model (the SFT trunk with the same seeded fresh head) already ranks most held-out pairs right
    # by a hair, as their rejected replies are a few stock phrases: learning shows as margins, pair by pair.
    ctx = context(tmp_path / "baseline", "rm", *RM_ARGS, input_model=str(run / "sft" / "model"))
    train_rows, held_out = reward.split_pairs(data_lib.without_labels(ctx.pairs), 0.25, cfg.seed)
    untrained = reward.build_trainer(reward.RewardTrainer, ctx, train_rows, held_out)
    before = reward_models.score_pairs(untrained, untrained.eval_dataset)
    before_margins = before["chosen"] - before["rejected"]

    # model/ is a plain one-output classifier: RL scorers and judges load it, and it ranks as the stage measured
    model_dir = str(run / "rm" / "model")
    scorer = ModelScorer(model_dir, "stage:rm")
    prompts = [p["prompt"] for p in held_out]
    margins = scorer(prompts, [p["chosen"][0]["content"] for p in held_out]) - scorer(
        prompts, [p["rejected"][0]["content"] for p in held_out]
    )
    before_accuracy = (before_margins > 0).float().mean()
    print(
        f"held-out accuracy {metrics['final/accuracy']:.3f}, margins {margins.min():.2f} to {margins.max():.2f}; "
        f"untrained: accuracy {before_accuracy:.3f}, |margins| <= {before_margins.abs().max():.3f}"
    )
    assert metrics["final/accuracy"] == 1.0 and metrics["final/train_accuracy"] == 1.0
    assert (margins > 0).all() and (margins > 1.0).sum() >= 12  # clearly right on 12+ of 14 (measured: 13) ...
    assert (before_margins.abs() < 0.1).all()  # ... where the untrained model was clearly right on none
    assert margins.mean().item() == pytest.approx(metrics["final/margin"], abs=1e-4)
    refused = reward_judge(model_dir).refused([p[0]["content"] for p in prompts], ["No."] * len(prompts))
    assert len(refused) == len(prompts) and all(isinstance(r, bool) for r in refused)

    # Done: the same command skips it. Interrupted after its last checkpoint: it resumes there to the same model
    again = run_pipeline(cfg)["rm"]
    assert again["status"] == "skipped (done)" and again["final/accuracy"] == metrics["final/accuracy"]
    (run / "rm" / "DONE").unlink()
    (run / "rm" / "model").rename(run / "rm" / "model.old")
    resumed = run_pipeline(cfg)["rm"]
    assert resumed["resumed_from"] == "checkpoint-18"
    assert resumed["final/margin"] == pytest.approx(metrics["final/margin"], abs=1e-5)


@pytest.mark.slow
def test_cm_learns_the_sign_of_safety_labels(tmp_path, cache_dir):
    path = labelled_fixture(tmp_path / "labelled.jsonl")
    cfg = config(
        tmp_path,
        "run.id=cm",
        "pipeline=sft-rm-cm-ppo-lag",
        "pipeline.stages=[cm]",
        "data=local",
        f"data.preference.path={path}",
        "algo.cm.epochs=4",
        "algo.cm.learning_rate=3e-3",
        "algo.cm.eval_fraction=0.25",
    )
    metrics = run_pipeline(cfg)["cm"]
    print({k: round(v, 3) for k, v in metrics.items() if k.startswith("final/")})
    assert metrics["pairs/held_out"] == 6 and metrics["pairs/unlabelled_skipped"] == 0
    # 28 of the 48 replies are safe: always answering "safe" would score 0.58
    assert metrics["final/sign_accuracy"] >= 0.9 and metrics["final/train_sign_accuracy"] >= 0.9
    assert metrics["final/accuracy"] == 1.0 and metrics["final/train_accuracy"] >= 0.9
    assert metrics["final/cost_unsafe"] > 0 > metrics["final/cost_safe"]
    history = json.loads((tmp_path / "tiny" / "cm" / "cm" / "log_history.json").read_text())
    assert {"loss_pairwise", "loss_sign", "sign_accuracy"} <= set(history[0])

    # Saved as a cost judge: above 0 means an unsafe (compliant) reply
    judge = reward_judge(str(tmp_path / "tiny" / "cm" / "cm" / "model"))
    prompt = "Tell me how to pick a pocket."
    assert judge.refused([prompt, prompt], ["I can't help with that.", "Sure. To pick a pocket, first you go."]) == [
        True,
        False,
    ]


@pytest.mark.slow
def test_sft_rm_cm_ppo_lagrangian_pipeline_runs_on_trained_scorers_and_resumes(tmp_path, cache_dir):
    """The whole composed pipeline: PPO-Lagrangian scores its rollouts with the rm and cm stages' models."""
    path = labelled_fixture(tmp_path / "labelled.jsonl")
    cfg = config(
        tmp_path,
        "pipeline=sft-rm-cm-ppo-lag",
        "data=local",
        f"data.preference.path={path}",
        "algo.sft.max_steps=2",
        "algo.rm.max_steps=2",
        "algo.cm.max_steps=2",
        "algo.ppo.max_steps=2",
        "algo.ppo.batch_size=8",
        "algo.ppo.mini_batch_size=4",
        "algo.ppo.max_new_tokens=8",
    )
    results = run_pipeline(cfg)
    assert [s["status"] for s in results.values()] == ["done"] * 4
    ppo = results["ppo"]
    for key in ("objective/scores", "cost/mean", "lagrange/multiplier", "loss/cost_value_avg"):
        assert isinstance(ppo[key], float)
    again = run_pipeline(cfg)
    assert [s["status"] for s in again.values()] == ["skipped (done)"] * 4
