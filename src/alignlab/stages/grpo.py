"""GRPO and RLOO stages: trl.GRPOTrainer / trl.RLOOTrainer on the prompts of the preference data.

Both sample `num_generations` replies per prompt from the current policy, score them, and push up the replies that
beat their group (GRPO: the group's mean and std; RLOO: the mean of the other replies). Prompts stay conversational,
so TRL applies the same chat template as SFT and DPO. Rewards come from `alignlab.rl.scorers` (a reward-model stage
of this run, a model folder, or a `contains:<text>` rule), as for PPO; an optional cost enters with a negative weight.

`batch_size` counts replies, not prompts (TRL's per_device_train_batch_size): one optimizer step sees
batch_size x grad_accum / num_generations prompts. The reference for the KL term is the policy this stage starts
from (with LoRA: the same model with the adapter off).

Pad and end-of-turn tokens. SmolLM2 ships `<|im_end|>` as both pad and EOS token. TRL 1.16 copes: it left-pads
prompts itself with attention masks built from the prompt lengths (not from the pad id), cuts each completion after
its first EOS *inclusive*, and re-pads completions with masks built from their lengths. So the end-of-turn token is
trained on and the `<|im_end|>` tokens inside prompts stay visible, with no second tokenizer
(tests/unit/stages/test_grpo.py checks this on a tokenizer whose pad is its EOS). What TRL does not know is which
tokens end a turn when the tokenizer's EOS is not the chat template's end-of-turn marker; we add those to the model's
generation config, which TRL reads both to stop generation and to build the completion mask.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from omegaconf import DictConfig
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from alignlab.data import unique_prompts
from alignlab.errors import ConfigError
from alignlab.generation import stop_ids
from alignlab.models import load_model, lora_config
from alignlab.rl.scorers import ModelScorer, Scorer, build_scorer
from alignlab.training.context import StageContext
from alignlab.training.saving import save_final
from alignlab.training.trainer import train, trl_args

TRAINERS: dict[str, tuple[type, type]] = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}
Messages = list[dict[str, str]]


class RewardFunction:
    """A scorer in TRL's reward-function form: TRL passes conversational prompts and completions (lists of
    messages, plus keyword arguments we do not need); scorers take prompts and reply texts. TRL logs each function
    under its `__name__` (`rewards/<name>/mean`)."""

    def __init__(self, name: str, scorer: Scorer) -> None:
        self.__name__, self.scorer = name, scorer

    def __call__(self, prompts: list[Messages], completions: list[Messages], **_: Any) -> list[float]:
        replies = [completion[-1]["content"] for completion in completions]
        return self.scorer(prompts, replies).tolist()


def reward_functions(ctx: StageContext) -> list[RewardFunction]:
    """The reward function, plus the cost function when `cost` is set (weighted by `reward_weights`).

    The cost function returns the cost itself, weighted by -cost_weight: TRL's total reward is then
    reward - cost_weight * cost, and its `rewards/cost/mean` curve is the mean cost, not its negation."""
    a = ctx.algo

    def scorer(spec: str) -> Scorer:
        return build_scorer(
            spec, run_dir=ctx.stage_dir.parent, batch_size=a.batch_size, max_length=ctx.cfg.data.max_length
        )

    functions = [RewardFunction("reward", scorer(a.reward))]
    if a.cost is not None:
        functions.append(RewardFunction("cost", scorer(a.cost)))
    return functions


def reward_weights(a: DictConfig) -> list[float]:
    """TRL's weight of each function of `reward_functions`: the reward, and the cost at -cost_weight."""
    return [1.0] if a.cost is None else [1.0, -a.cost_weight]


def training_args(ctx: StageContext) -> Any:
    """GRPOConfig or RLOOConfig."""
    a = ctx.algo
    config_cls, _ = TRAINERS[a.kind]
    args = trl_args(
        config_cls,
        ctx,
        num_generations=a.num_generations,
        # The final check (`final_metrics`) samples one reply per prompt, so any eval batch holds whole groups;
        # `extra.num_generations_eval` asks for more (checked below).
        num_generations_eval=1,
        max_completion_length=a.max_new_tokens,
        temperature=a.temperature,
        beta=a.beta,
        reward_weights=reward_weights(a),
    )
    if args.per_device_eval_batch_size % args.num_generations_eval:  # TRL checks it only with eval_strategy set
        raise ConfigError(
            f"Config error at 'algo.{ctx.name}.extra.num_generations_eval': {args.num_generations_eval} replies per "
            f"prompt for the final reward must divide batch_size ({args.per_device_eval_batch_size})."
        )
    return args


def build_trainer(ctx: StageContext) -> GRPOTrainer | RLOOTrainer:
    a = ctx.algo
    _, trainer_cls = TRAINERS[a.kind]
    functions = reward_functions(ctx)
    args = training_args(ctx)
    policy = load_model(ctx.input_model, ctx.cfg.model)
    policy.generation_config.eos_token_id = stop_ids(ctx.tokenizer)  # end generation and completions at end of turn
    prompts = Dataset.from_list([{"prompt": p} for p in unique_prompts(ctx.pairs)])
    trainer = trainer_cls(
        model=policy,
        reward_funcs=functions,
        args=args,
        train_dataset=prompts,
        eval_dataset=prompts,
        processing_class=ctx.tokenizer,
        peft_config=lora_config(ctx.cfg.model, policy, tokenizer=ctx.tokenizer),
    )
    for function in functions:  # a reward model scores where the policy runs
        if isinstance(function.scorer, ModelScorer):
            function.scorer.to(trainer.accelerator.device)
    return trainer


def final_metrics(trainer: GRPOTrainer | RLOOTrainer) -> dict[str, Any]:
    """Reward of the policy's sampled replies to every training prompt, with TRL's names under `final/`
    (`final/reward`, `final/rewards/reward/mean`, `final/kl`, `final/completions/mean_length`, ...).

    TRL's own evaluation loop does it: the same chat template, generation settings and reward weights as training."""
    return {"final/" + k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}


def run(ctx: StageContext) -> dict[str, Any]:
    trainer = build_trainer(ctx)
    metrics = train(trainer, ctx)
    metrics.update(final_metrics(trainer))
    save_final(trainer, ctx)
    return metrics
