"""The online RL stages of `algo` (PPO, PPO-Lagrangian, GRPO / RLOO): they sample replies to the prompts of
`data.preference` and score them with a reward (and cost) model trained earlier in the pipeline, or a rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from omegaconf import DictConfig

from alignlab.config.checks import check, choice, positive
from alignlab.config.train import SCORER_KINDS, TrainConfig

KlEstimator = Literal["k1", "k3"]
ValueModel = Literal["head", "critic"]
CriticInit = Literal["reward", "policy"]

_SCORER_HELP = (
    "`stage:<name>` (a {model} stage of this run, before this one), a model folder or Hub id, or `contains:<text>` "
    "(1 when the reply contains the text, else 0: a rule for toy tasks and format rewards)."
)


@dataclass
class PPOAlgoConfig(TrainConfig):
    """PPO with a value model (stages/ppo.py, our own: TRL 1.16 has none). `max_steps` counts PPO iterations (one
    rollout batch of `batch_size` prompts each); `epochs` passes over the prompt set when max_steps is -1."""

    kind: str = field(default="ppo", metadata={"help": "The kind of stage (selects this schema): ppo."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    reward: str = field(
        default="stage:rm", metadata={"help": "The reward: " + _SCORER_HELP.format(model="reward-model")}
    )
    reward_clip: float | None = field(
        default=None, metadata={"help": "Clip rewards to [-c, c] before the KL penalty; None: no clipping."}
    )
    whiten_rewards: bool = field(
        default=False, metadata={"help": "Whiten the per-token rewards of a batch before GAE."}
    )
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the reward of a reply cut off by max_new_tokens."}
    )
    reference: str | None = field(
        default=None,
        metadata={
            "help": "Reference model path or Hub id; None: the policy this stage starts from (LoRA: adapter off)."
        },
    )
    max_new_tokens: int = field(default=48, metadata={"help": "Longest reply sampled."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int | None = field(default=None, metadata={"help": "Top-k sampling; None: off."})
    mini_batch_size: int = field(
        default=4, metadata={"help": "Rollouts per gradient step; grad_accum of them make one optimizer step."}
    )
    ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Clip range of the value update."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor, in [0, 1]."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda, in [0, 1]."})
    kl_coef: float = field(default=0.05, metadata={"help": "Initial coefficient of the per-token KL penalty."})
    kl_target: float | None = field(
        default=None,
        metadata={"help": "Set: an adaptive KL coefficient (Ziegler et al. 2019) towards this episode KL."},
    )
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon of the adaptive KL controller."})
    kl_estimator: str = field(
        default="k1",
        metadata={
            "help": "k1: log p - log q per token; k3: (r - 1) - log r, unbiased and non-negative.",
            "choices": KlEstimator,
        },
    )
    value_model: str = field(
        default="head",
        metadata={"help": "head: a value head on the policy's trunk; critic: a separate model.", "choices": ValueModel},
    )
    critic_init: str = field(
        default="reward",
        metadata={"help": "The critic is initialised from the reward model or the policy.", "choices": CriticInit},
    )
    value_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the critic or value head; None: learning_rate."}
    )
    generation_batch_size: int | None = field(
        default=None, metadata={"help": "Rollouts generated at once; None: batch_size."}
    )


@dataclass
class PPOLagAlgoConfig(PPOAlgoConfig):
    """Safe RLHF's PPO-Lagrangian: maximise reward - lambda * cost with lambda learned from the episode cost."""

    kind: str = field(default="ppo-lag", metadata={"help": "The kind of stage (selects this schema): ppo-lag."})
    cost: str = field(
        default="stage:cm", metadata={"help": "The cost, like `reward`: " + _SCORER_HELP.format(model="cost-model")}
    )
    cost_threshold: float = field(default=0.0, metadata={"help": "The constraint: mean episode cost <= threshold."})
    lambda_init: float = field(default=1.0, metadata={"help": "Initial lambda (positive: it is log-parameterised)."})
    lambda_lr: float = field(default=0.1, metadata={"help": "Learning rate of log(lambda), as in Safe RLHF."})
    lambda_max: float | None = field(default=None, metadata={"help": "Upper bound of lambda; None: unbounded."})
    lambda_update_delay: int = field(default=0, metadata={"help": "PPO iterations before lambda starts to move."})


@dataclass
class GRPOAlgoConfig(TrainConfig):
    """GRPO (stages/grpo.py -> trl.GRPOTrainer); kind `rloo` uses trl.RLOOTrainer with the same settings."""

    kind: str = field(default="grpo", metadata={"help": "The kind of stage (selects this schema): grpo or rloo."})
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate."})
    reward: str = field(
        default="stage:rm", metadata={"help": "The reward: " + _SCORER_HELP.format(model="reward-model")}
    )
    cost: str | None = field(
        default=None,
        metadata={
            "help": "An optional cost, like `reward` (e.g. stage:cm): the total reward is reward - cost_weight * cost."
        },
    )
    cost_weight: float = field(default=1.0, metadata={"help": "Weight of the cost's negative reward."})
    num_generations: int = field(default=4, metadata={"help": "Replies per prompt (the group), at least 2."})
    max_new_tokens: int = field(default=48, metadata={"help": "Longest reply sampled."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    beta: float = field(default=0.04, metadata={"help": "KL coefficient to the reference (GRPOConfig.beta)."})


def check_online(a: DictConfig, key: str, cfg: DictConfig) -> None:
    """Online RL stages: their prompts come from the preference data; their scorers must exist before they run."""
    check(
        cfg.data.preference is not None,
        "data.preference",
        f"the {a.kind} stage samples its prompts from data.preference.",
    )
    _check_scorers(a, key, cfg)
    positive(a, "max_new_tokens", key)
    positive(a, "temperature", key)
    if a.kind in ("grpo", "rloo"):
        _check_grpo(a, key)
    else:
        _check_ppo(a, key)


def _check_scorers(a: DictConfig, key: str, cfg: DictConfig) -> None:
    stages = list(cfg.pipeline.stages)
    here = stages.index(key.split(".", 1)[1])
    for name in ("reward", "cost"):
        spec = a.get(name)
        if spec is None:
            continue
        at = f"{key}.{name}"
        check(bool(str(spec).strip()), at, "give a stage:<name>, a model folder, or contains:<text>.")
        if str(spec).startswith("stage:"):
            producer = str(spec).split(":", 1)[1]
            expected = "cm" if name == "cost" else "rm"
            check(
                producer in stages[:here],
                at,
                f"'{spec}' must name a stage that runs before '{stages[here]}' (stages: {stages}).",
            )
            check(
                cfg.algo[producer].kind in SCORER_KINDS,
                at,
                f"'{producer}' is a {cfg.algo[producer].kind} stage, expected a {expected} stage.",
            )
        if str(spec).startswith("contains:"):
            check(len(str(spec)) > len("contains:"), at, "contains:<text> needs a text.")


def _check_grpo(a: DictConfig, key: str) -> None:
    check(a.num_generations >= 2, f"{key}.num_generations", "a group needs at least 2 replies per prompt.")
    check(a.beta >= 0, f"{key}.beta", f"must be >= 0, got {a.beta}.")
    if not {"generation_batch_size", "steps_per_generation"} & set(a.extra):  # those change TRL's rule
        check(
            (a.batch_size * a.grad_accum) % a.num_generations == 0,
            f"{key}.num_generations",
            f"batch_size x grad_accum ({a.batch_size} x {a.grad_accum}) counts replies and must be a "
            f"multiple of num_generations ({a.num_generations}).",
        )


def _check_ppo(a: DictConfig, key: str) -> None:
    positive(a, "mini_batch_size", key)
    check(
        a.batch_size % (a.mini_batch_size * a.grad_accum) == 0,
        f"{key}.mini_batch_size",
        f"batch_size ({a.batch_size}) must be a multiple of mini_batch_size x grad_accum "
        f"({a.mini_batch_size} x {a.grad_accum}).",
    )
    positive(a, "ppo_epochs", key)
    check(a.top_k is None or a.top_k >= 0, f"{key}.top_k", f"must be >= 0 (0 or null: off), got {a.top_k}.")
    check(a.cliprange > 0 and a.cliprange_value > 0, f"{key}.cliprange", "clip ranges must be positive.")
    check(0 <= a.gamma <= 1 and 0 <= a.lam <= 1, f"{key}.gamma", "gamma and lam must lie in [0, 1].")
    check(a.kl_coef >= 0, f"{key}.kl_coef", f"must be >= 0, got {a.kl_coef}.")
    if a.kl_target is not None:
        check(a.kl_target > 0 and a.kl_horizon > 0, f"{key}.kl_target", "kl_target and kl_horizon must be positive.")
    for name in ("kl_estimator", "value_model", "critic_init"):
        choice(a, name, key)
    if a.value_model == "critic" and a.critic_init == "reward":
        check(
            not str(a.reward).startswith("contains:"),
            f"{key}.critic_init",
            "a rule reward has no model to initialise the critic from: set critic_init=policy.",
        )
    if a.reward_clip is not None:
        check(a.reward_clip > 0, f"{key}.reward_clip", f"must be positive or null, got {a.reward_clip}.")
    if a.kind == "ppo-lag":
        check(
            a.lambda_init > 0,
            f"{key}.lambda_init",
            f"must be positive (lambda is log-parameterised), got {a.lambda_init}.",
        )
        positive(a, "lambda_lr", key)
        if a.lambda_max is not None:
            check(a.lambda_max >= a.lambda_init, f"{key}.lambda_max", "must be at least lambda_init.")
