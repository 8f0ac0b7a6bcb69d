"""`algo`: one entry per pipeline stage, typed by its `kind` (ALGO_SCHEMAS). Group files: conf/algo/<kind>.yaml,
placed at `algo.<stage>` by the pipeline files (e.g. `/algo@algo.dpo: dpo` in conf/pipeline/sft-dpo.yaml).

This module holds the offline training stages (SFT, DPO, reward and cost models), the stages that train nothing
(pairs, calibrate, eval), the registry and the per-stage checks; the online RL stages are in config/online.py, the
fields every training stage shares in config/train.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from omegaconf import DictConfig

from alignlab.config.checks import check, choice, flag_or_auto, one_of, positive, typed
from alignlab.config.online import GRPOAlgoConfig, PPOAlgoConfig, PPOLagAlgoConfig, check_online
from alignlab.config.train import (
    TRAINING_KINDS,
    FlagOrAuto,
    TrainAttention,
    TrainConfig,
    TRLTrainConfig,
    check_train,
)

# TRL 1.16 DPOTrainer loss types (trl/trainer/dpo_trainer.py `_compute_loss`); tests/unit/config/test_config.py
# checks this list against TRL's own DPOConfig help text so an upgrade that adds or removes one is noticed.
KtoLossType = Literal["kto", "apo_zero_unpaired"]
DpoLossType = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
]
FDivergence = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]
DPO_LOSS_TYPES = get_args(DpoLossType)
F_DIVERGENCES = get_args(FDivergence)
PAIR_TYPES = frozenset({"harmful", "benign"})  # the safety pairs' prompt types (`ches_drop_from`, `opening_sft`)


@dataclass
class SFTAlgoConfig(TRLTrainConfig):
    """Supervised fine-tuning on prompt/completion rows (stages/sft.py -> trl.SFTTrainer, its SFTConfig built by
    `trl_args` in training/trainer.py). Rows: `data.sft`, or the chosen replies of `data.preference`."""

    kind: str = field(default="sft", metadata={"help": "The kind of stage (selects this schema): sft."})
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate."})
    packing: bool = field(default=False, metadata={"help": "SFTConfig.packing: several rows per sequence."})
    completion_only_loss: bool = field(
        default=True, metadata={"help": "SFTConfig.completion_only_loss: the loss on the reply's tokens only."}
    )
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "Rows of like length in a batch (training/sampling.py), as DPO's; off by default: TRL's uniformly "
            "random batches, with which the experiments' published figures were measured."
        },
    )


@dataclass
class DPOAlgoConfig(TRLTrainConfig):
    """Direct preference optimisation on `data.preference` (stages/dpo.py -> trl.DPOTrainer).

    How a knob reaches TRL, e.g. `alignlab run algo.dpo.beta=0.3`: Hydra composes conf/config.yaml, whose pipeline
    file puts conf/algo/dpo.yaml (which extends this schema, `dpo_schema`) at `algo.dpo`, and applies the override;
    `validate` types `algo.dpo` as this class (by its `kind`) and freezes the config into the run's config.yaml.
    pipeline.py runs each stage through `stages.STAGES[<its kind>]`, for `dpo` the `run` of stages/dpo.py, whose
    `build_trainer` passes `beta=a.beta` and the other DPO fields below to `trl_args(DPOConfig, ctx, ...)`
    (training/trainer.py); that maps the shared TrainConfig fields (epochs -> num_train_epochs, batch_size ->
    per_device_train_batch_size, ...), applies `extra` last, and builds the `trl.DPOConfig` the DPOTrainer trains
    with. All paths are under src/alignlab/."""

    kind: str = field(default="dpo", metadata={"help": "The kind of stage (selects this schema): dpo."})
    learning_rate: float = field(default=5e-7, metadata={"help": "Peak learning rate."})
    beta: float = field(
        default=0.1,
        metadata={
            "help": "DPOConfig.beta: the strength of the implicit KL penalty to the reference (higher: the policy "
            "stays closer to it). `eval.dpo_beta` follows it unless set."
        },
    )
    loss_type: Any = field(
        default="sigmoid",
        metadata={
            "help": "DPOConfig.loss_type: one name, or a list of names whose losses are summed with `loss_weights` "
            "(e.g. [sigmoid, sft]: RPO, the chosen replies' NLL added).",
            "choices": DpoLossType,
            "type": "str | list[str]",
        },
    )
    loss_weights: list[float] | None = field(
        default=None, metadata={"help": "DPOConfig.loss_weights: one weight per loss type; None: all 1."}
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "DPOConfig.label_smoothing, in [0, 0.5]: the assumed probability that a pair's labels are "
            "flipped (robust, cDPO); exo_pair's epsilon. The robust loss needs it above 0: at 0 it is the sigmoid "
            "loss exactly."
        },
    )
    ld_alpha: float | None = field(
        default=None, metadata={"help": "DPOConfig.ld_alpha, in [0, 1]: LD-DPO's weight of the verbose part."}
    )
    f_divergence_type: str = field(
        default="reverse_kl",
        metadata={"help": "DPOConfig.f_divergence_type: the divergence of f-DPO.", "choices": FDivergence},
    )
    f_alpha_divergence_coef: float = field(
        default=0.5, metadata={"help": "DPOConfig.f_alpha_divergence_coef: alpha of the alpha divergence."}
    )
    use_weighting: bool = field(default=False, metadata={"help": "DPOConfig.use_weighting (WPO's pair weights)."})
    discopop_tau: float = field(default=0.05, metadata={"help": "DPOConfig.discopop_tau: the discopop loss's tau."})
    reference: str | None = field(
        default=None, metadata={"help": "Reference model path or Hub id; None: the policy this stage starts from."}
    )
    precompute_ref_log_probs: Any = field(
        default="auto",
        metadata={
            "help": "Compute the reference log-probabilities before training (auto: yes, unless TR-DPO syncs the "
            "reference); with ref_cache, kept in `<run.root>/.cache/ref_logps` for every later run with the same "
            "reference and pairs.",
            "choices": FlagOrAuto,
            "type": "bool | str",
        },
    )
    ref_cache: bool = field(
        default=True, metadata={"help": "Share precomputed reference log-probabilities across runs (see above)."}
    )
    share_prompt: Any = field(
        default="auto",
        metadata={
            "help": "One row per pair, prompt + chosen + rejected, the prompt computed once (training/lm_head.py); "
            "auto: with our LM head.",
            "choices": FlagOrAuto,
            "type": "bool | str",
        },
    )
    group_by_length: bool = field(
        default=True,
        metadata={
            "help": "transformers' LengthGroupedSampler: random megabatches of batches, sorted by length within (less "
            "padding: a SmolLM2 DPO step 26% faster, benchmarks/dpo_speed.py); false: uniformly random batches, as "
            "TRL's default."
        },
    )
    sync_ref_model: bool = field(
        default=False, metadata={"help": "DPOConfig.sync_ref_model: TR-DPO, the reference mixed towards the policy."}
    )
    ref_model_mixup_alpha: float = field(
        default=0.6, metadata={"help": "DPOConfig.ref_model_mixup_alpha: TR-DPO's mixing weight."}
    )
    ref_model_sync_steps: int = field(
        default=512, metadata={"help": "DPOConfig.ref_model_sync_steps: TR-DPO's steps between syncs."}
    )
    final_eval: bool = field(
        default=True, metadata={"help": "Reward accuracy and margins of the final policy on its training pairs."}
    )
    final_eval_max_pairs: int | None = field(
        default=None, metadata={"help": "Score a seeded sample of that many pairs; None: all of them."}
    )


@dataclass
class KTOAlgoConfig(TrainConfig):
    """Kahneman-Tversky optimisation (Ethayarajh et al. 2024) on the pairs, unpaired (stages/kto.py ->
    trl.KTOTrainer): each chosen reply is a desirable example and each rejected one an undesirable example of its
    prompt, so the two classes can be weighted apart (the safety pairs' refusals and compliances are not balanced
    per category). The reference is the policy this stage starts from (with LoRA, the adapter disabled)."""

    kind: str = field(default="kto", metadata={"help": "The kind of stage (selects this schema): kto."})
    learning_rate: float = field(default=5e-7, metadata={"help": "Peak learning rate."})
    attn_implementation: str = field(
        default="auto",
        metadata={
            "help": "Attention while training; auto: eager on a CPU, `model.attn_implementation` on GPUs (devices.py).",
            "choices": TrainAttention,
        },
    )
    beta: float = field(default=0.1, metadata={"help": "KTOConfig.beta: the strength of the KL term."})
    loss_type: str = field(
        default="kto",
        metadata={"help": "KTOConfig.loss_type: kto, or apo_zero_unpaired.", "choices": KtoLossType},
    )
    desirable_weight: float = field(
        default=1.0, metadata={"help": "KTOConfig.desirable_weight: the weight of the chosen (desirable) replies."}
    )
    undesirable_weight: float = field(
        default=1.0,
        metadata={"help": "KTOConfig.undesirable_weight: the weight of the rejected (undesirable) replies."},
    )
    final_eval: bool = field(
        default=True,
        metadata={
            "help": "KTO's metrics (rewards of the desirable and undesirable replies, KL) for the final policy on its "
            "training pairs."
        },
    )
    final_eval_max_pairs: int | None = field(
        default=None, metadata={"help": "Score a seeded sample of that many pairs; None: all of them."}
    )


@dataclass
class RewardAlgoConfig(TrainConfig):
    """Bradley-Terry reward model on preference pairs (stages/reward.py -> trl.RewardTrainer), initialised from
    the policy this stage starts from (the SFT model) and saved as a one-output sequence-classification model."""

    kind: str = field(default="rm", metadata={"help": "The kind of stage (selects this schema): rm."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    eval_fraction: float = field(
        default=0.1, metadata={"help": "Held-out share of the pairs for pairwise accuracy (a seeded split), in [0, 1)."}
    )
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={"help": "RewardConfig.center_rewards_coefficient: TRL's penalty keeping rewards near 0."},
    )


@dataclass
class CostAlgoConfig(RewardAlgoConfig):
    """Cost model on safety labels (stages/reward.py): pairwise loss (the less safe reply costs more) plus safe-rlhf's
    sign loss, so that unsafe replies score > 0 and safe ones < 0."""

    kind: str = field(default="cm", metadata={"help": "The kind of stage (selects this schema): cm."})
    sign_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the sign loss."})


@dataclass
class PairsStageConfig:
    """On-policy preference pairs from the current policy's own replies (stages/pairs.py)."""

    kind: str = field(default="pairs", metadata={"help": "The kind of stage (selects this schema): pairs."})
    prompts: str = field(
        default="pkg://alignlab/assets/safety/train_prompts.jsonl",
        metadata={"help": "Prompts file; rows: prompt, type (harmful | benign), category."},
    )
    refusals: str = field(
        default="pkg://alignlab/assets/safety/refusals.jsonl",
        metadata={"help": "Refusals file (the chosen replies to harmful prompts); rows: category (or any), text."},
    )
    hold_out: float = field(
        default=0.0,
        metadata={
            "help": "Share of the prompts file kept out of every pair and opening (picked by a hash of the prompt, "
            "so the same in every run and round), written to `<stage>/held_out.jsonl`: a validation split for "
            "`algo=calibrate` (its prompts: stage:<this stage>). In [0, 1)."
        },
    )
    max_harmful: int | None = field(default=None, metadata={"help": "Harmful prompts asked; None: all of them."})
    max_benign: int | None = field(default=None, metadata={"help": "Benign prompts asked; None: all of them."})
    stratify: bool = field(
        default=False,
        metadata={
            "help": "Draw the max_harmful / max_benign prompts in proportion to their categories (each at most one "
            "prompt from its share) instead of uniformly: which kinds of prompt get full pairs then no longer "
            "depends on the seed (uniformly, 80 of the 356 bundled harmful prompts held 1 fraud prompt at one seed "
            "and 12 at another)."
        },
    )
    specific_refusals: bool = field(
        default=False,
        metadata={
            "help": "The chosen refusal to a harmful prompt comes from its own category's refusals only (they name "
            "what is declined and why, and redirect to a matching safe resource), never from the generic ones "
            "(category any), which stay the rejected replies of benign pairs: a model trained to say stock refusal "
            "sentences is reported to say them to benign prompts too."
        },
    )
    specific_rejected: bool = field(
        default=False,
        metadata={
            "help": "A benign pair's rejected refusal is a category-specific one (from every harm category's, chosen "
            "by the prompt) rather than a generic one. With specific_refusals alone, the specific style is only ever "
            "chosen, never rejected, and the model learns to refuse everything in it (experiments/safety-frontier)."
        },
    )
    ches_drop: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of this round's safety pairs, those with the highest length-normalised CHES (chosen and "
            "rejected alike in the model's hidden states), dropped before training: such pairs make DPO lower the "
            "chosen reply's likelihood too (evaluation/ches.py). In [0, 1)."
        },
    )
    ches_drop_from: list[str] = field(
        default_factory=lambda: ["harmful", "benign"],
        metadata={
            "help": "The pair types (harmful, benign) `ches_drop` may drop, its fraction taken of those pairs: on "
            "this data the most alike pairs are mostly benign ones (a helpful reply and a refusal that share an "
            "opening), the counterweight against over-refusal, so [harmful] keeps them."
        },
    )
    opening_tokens: int = field(
        default=0,
        metadata={
            "help": "Teach the refusal decision on every training prompt this round did not make pairs of: a "
            "harmful prompt's target is the first opening_tokens tokens of a bundled refusal, a benign prompt's the "
            "first opening_tokens tokens of the model's own greedy reply (dropped where the judge calls it a "
            "refusal). The SFT stages train on these openings with no end-of-turn after them, so the model learns "
            "how to begin, not to stop there (<stage>/openings.jsonl). 0: off."
        },
    )
    opening_pairs: bool = field(
        default=False,
        metadata={
            "help": "With opening_tokens: each opening also gets one to reject (a harmful prompt's: the model's own "
            "greedy opening, where the judge does not call it a refusal; a benign prompt's: a bundled refusal's), and "
            "the DPO stages train on these opening pairs beside the full ones, so refusing a benign prompt is pushed "
            "down, not only its own opening up."
        },
    )
    opening_sft: list[str] = field(
        default_factory=lambda: ["harmful", "benign"],
        metadata={
            "help": "The prompt types (harmful, benign) whose openings the SFT stages train on; the others' only "
            "through DPO's opening pairs (so it needs opening_pairs unless both are listed). []: SFT trains on the "
            "full pairs alone, in a fraction of the time; [benign]: the refusal openings are taught only against "
            "the reply to avoid, never as plain likelihood (experiments/safety-frontier)."
        },
    )
    judge: str | None = field(
        default=None,
        metadata={
            "help": "The key of eval.judges that decides which replies are refusals; None: the judge of the "
            "evaluation's harmful suites (rules where there is none). A judge other than rules also counts the "
            "prompts whose outcome the rules would have decided differently (pairs/changed_vs_rules)."
        },
    )
    max_new_tokens: int = field(default=64, metadata={"help": "Longest reply generated."})
    batch_size: int = field(default=64, metadata={"help": "Prompts generated at once."})
    benign_resamples: int = field(
        default=2,
        metadata={
            "help": "A benign prompt the model refuses (with helpful_chosen: or whose reply does not attempt the "
            "task) is re-sampled (T=0.8) this often for a helpful reply."
        },
    )
    helpful_chosen: bool = field(
        default=False,
        metadata={
            "help": "A benign pair's chosen reply must be one the judge reads as attempting the task (its helpful "
            "axis), not merely one it does not call a refusal: about one in eight of SmolLM2-135M-Instruct's greedy "
            "replies to the bundled benign prompts loop or evade ('Boil an egg: Boil an egg: ...'), and a pair that "
            "prefers such a reply to a refusal teaches evasion. No helpful try: no pair. Needs a judge with a "
            "helpful axis (probe)."
        },
    )
    after: str | None = field(
        default=None,
        metadata={
            "help": "A later round: the name of an earlier pairs stage. This one asks the current policy (e.g. the "
            "SFT model) the next max_harmful / max_benign prompts no earlier round used, rejects its own refusals "
            "of benign ones (with helpful_chosen: its evasions too), adds no template bias pairs, and writes the "
            "earlier pairs plus its own; the training stages after it read these."
        },
    )
    reask_benign: bool = field(
        default=False,
        metadata={
            "help": "A later round also asks the current policy the earlier rounds' benign prompts again (greedy), and "
            "where it refuses one (with helpful_chosen: or its reply does not attempt the task) that pair's rejected "
            "reply becomes the policy's own: DPO then pushes down what the model it starts from says, evasive "
            "answers included, not only a bundled refusal (experiments/safety-frontier). Needs after."
        },
    )
    failures_only: bool = field(
        default=False,
        metadata={
            "help": "A correction round (iterative DPO; needs after, e.g. after the first DPO stage): asks the current "
            "policy every training prompt again, earlier rounds' included (up to max_harmful / max_benign), and makes "
            "pairs of its mistakes alone: a harmful prompt it does not refuse (a bundled refusal chosen, its reply "
            "rejected), a benign prompt it refuses (with helpful_chosen: or answers without attempting the task) "
            "where a re-sample helps (that chosen, its greedy reply rejected). It writes these pairs only, and the "
            "stages after it read no earlier round's pairs or openings: the DPO stage after it trains on the "
            "policy's own mistakes, the policy as its reference (pipeline=safety-correct)."
        },
    )
    replay_harmful: int = field(
        default=0,
        metadata={
            "help": "With failures_only: also keep this many of the earlier round's harmful pairs (a seeded draw; all "
            "where it has fewer) beside the policy's mistakes. A round of benign mistakes alone pushes the policy "
            "away from refusing and lowers refusal of harmful prompts with it (experiments/safety-frontier); "
            "replaying earlier data is how continual learning keeps what a new task would overwrite. 0: off."
        },
    )
    bias_prompts: int = field(
        default=0,
        metadata={
            "help": "A later round in a run with data.bias: also ask this many fresh template bias questions "
            "(ambiguous and disambiguated) and reject the policy's own wrong answers: a person named where nothing "
            "says who, or anything but the person the evidence names (data/bias.py, onpolicy_pairs)."
        },
    )


@dataclass
class CalibrateStageConfig:
    """How readily the policy refuses, set by a first-token bias fitted on labelled prompts and folded into the
    saved output layer, so plain greedy `generate` on the saved model makes the calibrated decision
    (stages/calibrate.py)."""

    kind: str = field(default="calibrate", metadata={"help": "The kind of stage (selects this schema): calibrate."})
    prompts: str = field(
        default="pkg://alignlab/assets/safety/train_prompts.jsonl",
        metadata={
            "help": "The labelled prompts the bias is fitted on; rows: prompt, type (harmful | benign), category. "
            "The default is the training prompts (the model fits them a little better than new ones); a "
            "validation file of the same format, or stage:<pairs stage> for the prompts that stage held out of "
            "training (its `hold_out`), gives an unbiased fit."
        },
    )
    refusal_rate: float = field(
        default=0.9,
        metadata={
            "help": "The share of the harmful calibration prompts whose reply must open with a refusal token; the "
            "bias is the smallest that reaches it, so it also sets how many benign prompts are refused. In (0, 1]."
        },
    )
    opening_tokens: int = field(
        default=8,
        metadata={
            "help": "Tokens of the policy's greedy opening the judge reads to tell which first tokens begin its "
            "refusals (a first token whose openings are mostly refusals is one)."
        },
    )
    later_tokens: int = field(
        default=64,
        metadata={
            "help": "With `model.refusal_token`: tokens of each greedy reply whose positions after the first are "
            "read; the token is pushed down at them, so it can open a reply and not turn one into a refusal "
            "mid-way."
        },
    )
    probe_gain: float = field(
        default=0.0,
        metadata={
            "help": "0: the refusal tokens' logits move by one bias at the first position. Above 0 they also move "
            "by probe_gain times a linear read-out of the prompt's harmfulness (+1 harmful, -1 benign on "
            "`probe_prompts`, 0 at the replies' later positions), so the decision follows what the representation "
            "tells apart and the bias sets its threshold. Logits per unit of read-out; 0 or more."
        },
    )
    probe_prompts: str = field(
        default="pkg://alignlab/assets/safety/train_prompts.jsonl",
        metadata={
            "help": "With probe_gain > 0: the labelled prompts the read-out is fitted on (rows as `prompts`); the "
            "calibration prompts are left out of it, so the bias is set on prompts whose labels the read-out never "
            "saw (their replies' later positions, unlabelled, are where it is fitted to 0)."
        },
    )
    probe_ridge: float = field(
        default=0.01,
        metadata={
            "help": "The read-out's ridge penalty, as a share of the mean eigenvalue of its inputs' Gram "
            "matrix: larger generalises more and separates the fitted prompts less. Above 0."
        },
    )
    judge: str | None = field(
        default=None,
        metadata={"help": "The key of eval.judges that reads the openings; None: as a pairs stage's."},
    )
    batch_size: int = field(default=32, metadata={"help": "Prompts read (and their openings generated) at once."})


@dataclass
class EvalStageConfig:
    """A safety evaluation of the current policy with the suites of the top-level `eval` config
    (stages/evaluate.py)."""

    kind: str = field(default="eval", metadata={"help": "The kind of stage (selects this schema): eval."})


ALGO_SCHEMAS: dict[str, type] = {
    "sft": SFTAlgoConfig,
    "dpo": DPOAlgoConfig,
    "kto": KTOAlgoConfig,
    "rm": RewardAlgoConfig,
    "cm": CostAlgoConfig,
    "ppo": PPOAlgoConfig,
    "ppo-lag": PPOLagAlgoConfig,
    "grpo": GRPOAlgoConfig,
    "rloo": GRPOAlgoConfig,
    "pairs": PairsStageConfig,
    "calibrate": CalibrateStageConfig,
    "eval": EvalStageConfig,
}


def type_algo(algo: DictConfig) -> None:
    """Type each `algo.<stage>` against the schema of its `kind`, in place."""
    for name, node in list(algo.items()):
        kind = node.get("kind") if isinstance(node, DictConfig) else None
        check(kind in ALGO_SCHEMAS, f"algo.{name}.kind", f"got {kind!r}, expected one of {', '.join(ALGO_SCHEMAS)}.")
        algo[name] = typed(node, ALGO_SCHEMAS[kind], f"algo.{name}")


def dpo_loss_types(a: DictConfig) -> list[str]:
    """`loss_type` accepts one name or a list (combined with `loss_weights`, as TRL does)."""
    value = a.loss_type
    return [value] if isinstance(value, str) else [str(v) for v in value]


def check_stage(a: DictConfig, key: str, cfg: DictConfig) -> None:
    """A stage's settings (`key` is algo.<stage>), a training stage's some against the rest of the config."""
    if a.kind == "pairs":
        check_pairs(a, key)
    if a.kind == "calibrate":
        check_calibrate(a, key)
    if a.kind not in TRAINING_KINDS:
        return
    check_train(a, key, cfg)
    _KIND_CHECKS[a.kind](a, key, cfg)


def check_calibrate(a: DictConfig, key: str) -> None:
    check(
        0 < a.refusal_rate <= 1,
        f"{key}.refusal_rate",
        f"a share of the harmful prompts, in (0, 1], got {a.refusal_rate}.",
    )
    check(a.opening_tokens >= 1, f"{key}.opening_tokens", f"a number of tokens (1 or more), got {a.opening_tokens}.")
    check(a.later_tokens >= 2, f"{key}.later_tokens", f"a number of tokens (2 or more), got {a.later_tokens}.")
    check(a.batch_size >= 1, f"{key}.batch_size", f"a number of prompts (1 or more), got {a.batch_size}.")
    check(a.probe_gain >= 0, f"{key}.probe_gain", f"logits per unit of read-out, 0 or more, got {a.probe_gain}.")
    check(a.probe_ridge > 0, f"{key}.probe_ridge", f"a penalty above 0, got {a.probe_ridge}.")


def check_pairs(a: DictConfig, key: str) -> None:
    for name in ("max_harmful", "max_benign"):
        if a[name] is not None:
            check(a[name] >= 0, f"{key}.{name}", f"must be a number of prompts (0 or more) or null, got {a[name]}.")
    check(0 <= a.ches_drop < 1, f"{key}.ches_drop", f"a fraction of the pairs, in [0, 1), got {a.ches_drop}.")
    check(0 <= a.hold_out < 1, f"{key}.hold_out", f"a share of the prompts, in [0, 1), got {a.hold_out}.")
    check(a.opening_tokens >= 0, f"{key}.opening_tokens", f"a number of tokens (0: off), got {a.opening_tokens}.")
    check(not a.opening_pairs or a.opening_tokens > 0, f"{key}.opening_pairs", "needs opening_tokens > 0.")
    check(
        not a.reask_benign or a.after is not None,
        f"{key}.reask_benign",
        "asks an earlier round's benign prompts again, so it needs after: <the earlier pairs stage>.",
    )
    check(
        not a.failures_only or a.after is not None,
        f"{key}.failures_only",
        "a correction round asks the policy the earlier rounds' prompts again, so it needs after: <an earlier pairs "
        "stage>.",
    )
    check(
        not a.failures_only or not (a.opening_tokens or a.reask_benign),
        f"{key}.failures_only",
        "a correction round asks every training prompt in full, so it has none left for opening_tokens, and "
        "reask_benign (the earlier benign prompts again) is part of it: set both off.",
    )
    check(a.replay_harmful >= 0, f"{key}.replay_harmful", f"a number of pairs (0: off), got {a.replay_harmful}.")
    check(
        not a.replay_harmful or a.failures_only,
        f"{key}.replay_harmful",
        "replays an earlier round's harmful pairs in a correction round, so it needs failures_only=true (a later "
        "round without it keeps every earlier pair already).",
    )
    sft_types = list(a.opening_sft)
    check(
        set(sft_types) <= PAIR_TYPES,
        f"{key}.opening_sft",
        f"a list of prompt types, harmful and/or benign (or []), got {sft_types}.",
    )
    check(
        set(sft_types) == PAIR_TYPES or a.opening_pairs or not a.opening_tokens,
        f"{key}.opening_sft",
        f"{sft_types} leaves the other type's openings to DPO's opening pairs, so it needs opening_pairs=true "
        "(without them no stage would train on those openings).",
    )
    kinds = list(a.ches_drop_from)
    check(
        bool(kinds) and set(kinds) <= PAIR_TYPES,
        f"{key}.ches_drop_from",
        f"a non-empty list of pair types, harmful and/or benign, got {kinds}.",
    )


def check_sft(a: DictConfig, key: str, cfg: DictConfig) -> None:
    check(
        cfg.data.sft is not None or cfg.data.preference is not None,
        "data",
        "the SFT stage needs data.sft or data.preference (whose chosen replies it trains on).",
    )


def check_reward(a: DictConfig, key: str, cfg: DictConfig) -> None:
    check(cfg.data.preference is not None, "data.preference", f"the {a.kind} stage needs preference pairs.")
    check(0 <= a.eval_fraction < 1, f"{key}.eval_fraction", f"must lie in [0, 1), got {a.eval_fraction}.")
    check(
        a.eval_every is None,
        f"{key}.eval_every",
        "a reward or cost model does not generate replies to evaluate; its held-out accuracy (eval_fraction) is "
        "reported when it finishes.",
    )


def check_dpo(a: DictConfig, key: str, cfg: DictConfig) -> None:
    check(cfg.data.preference is not None, "data.preference", "the DPO stage needs preference pairs.")
    losses = dpo_loss_types(a)
    check(bool(losses), f"{key}.loss_type", "name at least one loss type (a name or a list of names).")
    for loss in losses:
        one_of(loss, DPO_LOSS_TYPES, f"{key}.loss_type")
    if a.loss_weights is not None:
        check(
            len(a.loss_weights) == len(losses),
            f"{key}.loss_weights",
            f"{len(a.loss_weights)} weights for {len(losses)} loss types {losses}.",
        )
    positive(a, "beta", key)
    _check_final_eval(a, key)
    choice(a, "f_divergence_type", key)
    _check_label_smoothing(a, key, losses)
    if a.ld_alpha is not None:
        check(0 <= a.ld_alpha <= 1, f"{key}.ld_alpha", f"must lie in [0, 1], got {a.ld_alpha}.")
    if a.sync_ref_model:
        check(
            not cfg.model.lora.enabled,
            f"{key}.sync_ref_model",
            "TR-DPO reference syncing needs full fine-tuning (model.lora.enabled=false).",
        )
        check(
            a.precompute_ref_log_probs in (False, "auto"),
            f"{key}.sync_ref_model",
            "cannot be combined with precompute_ref_log_probs=true (a synced reference changes during training).",
        )
    flag_or_auto(a, "precompute_ref_log_probs", key)
    flag_or_auto(a, "share_prompt", key)


def check_kto(a: DictConfig, key: str, cfg: DictConfig) -> None:
    check(cfg.data.preference is not None, "data.preference", "the KTO stage needs preference pairs.")
    choice(a, "loss_type", key)
    for name in ("beta", "desirable_weight", "undesirable_weight"):
        positive(a, name, key)
    _check_final_eval(a, key)


def _check_final_eval(a: DictConfig, key: str) -> None:
    if a.final_eval_max_pairs is not None:
        check(a.final_eval_max_pairs > 0, f"{key}.final_eval_max_pairs", "must be positive or null.")


def _check_label_smoothing(a: DictConfig, key: str, losses: list[str]) -> None:
    ls, at = a.label_smoothing, f"{key}.label_smoothing"
    if "robust" in losses:  # found by experiments/dpo-loss-beta: at 0 its runs matched sigmoid's to the last digit
        check(
            0 < ls < 0.5,
            at,
            f"the robust loss needs a label-flip probability in (0, 0.5), got {ls}; at 0 it is the sigmoid loss "
            "exactly (e.g. algo.dpo.label_smoothing=0.1).",
        )
    if "exo_pair" in losses:
        check(ls > 0, at, "the exo_pair loss needs label_smoothing > 0.")
    check(0 <= ls <= 0.5, at, f"must lie in [0, 0.5], got {ls}.")


_KIND_CHECKS = {
    "sft": check_sft,
    "dpo": check_dpo,
    "kto": check_kto,
    "rm": check_reward,
    "cm": check_reward,
    "ppo": check_online,
    "ppo-lag": check_online,
    "grpo": check_online,
    "rloo": check_online,
}
