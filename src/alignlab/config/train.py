"""What every training stage shares (`TrainConfig`, the base of each `algo.<stage>` schema) and its checks.

The shared fields are mapped onto TRL's config classes by `trl_args` in training/trainer.py (PPO, alignlab's own
trainer, reads them in stages/ppo.py); `extra` passes any other field of the TRL class through as is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from omegaconf import MISSING, DictConfig

from alignlab.config.checks import check, choice, flag_or_auto, one_of, positive
from alignlab.config.model import Attention

Precision = Literal["fp32", "bf16", "fp16", "auto"]
FlagOrAuto = Literal[True, False, "auto"]
LmHead = Literal["auto", "trl", "compact"]
TrainAttention = Literal["auto", Attention]
PRECISIONS = tuple(p for p in get_args(Precision) if p != "auto")

TRAINING_KINDS = ("sft", "dpo", "kto", "rm", "cm", "ppo", "ppo-lag", "grpo", "rloo")
# stages whose model/ is the next stage's policy
POLICY_KINDS = ("sft", "dpo", "kto", "ppo", "ppo-lag", "grpo", "rloo", "calibrate")
SCORER_KINDS = ("rm", "cm")  # stages whose model/ is a reward or cost model


@dataclass
class TrainConfig:
    """Settings shared by every training stage; `trl_args` in training/trainer.py maps them onto TRL's config classes
    (the TrainingArguments name is given where it differs)."""

    kind: str = field(default=MISSING, metadata={"help": "The algorithm; selects the schema and the stage module."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the data (num_train_epochs)."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; overrides epochs when > 0."})
    batch_size: int = field(
        default=8, metadata={"help": "Rows per device and micro-batch (per_device_train_batch_size)."}
    )
    grad_accum: int = field(
        default=1, metadata={"help": "Micro-batches per optimizer step (gradient_accumulation_steps)."}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    lr_scheduler: str = field(default="linear", metadata={"help": "transformers scheduler name (lr_scheduler_type)."})
    warmup_ratio: float = field(
        default=0.0, metadata={"help": "Share of the steps spent warming up, in [0, 1) (passed as warmup_steps)."}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    optim: str = field(
        default="adamw_torch_fused",
        metadata={
            "help": "TrainingArguments.optim. The fused AdamW is one kernel over all tensors: on a CPU, 0.1 s a "
            "SmolLM2 step against 1.0 s for adamw_torch's loop over them (benchmarks/dpo_speed.py)."
        },
    )
    precision: str = field(
        default="fp32",
        metadata={
            "help": "Training precision (bf16 / fp16 mixed precision); auto: bf16 autocast where the device has bf16 "
            "units (devices.py). `distributed.precision`, when set, overrides it.",
            "choices": Precision,
        },
    )
    gradient_checkpointing: Any = field(
        default="auto",
        metadata={
            "help": "Recompute activations in the backward pass; auto: on where the estimated peak memory would not "
            "fit (training/trainer.py). `distributed.gradient_checkpointing`, when set, overrides it.",
            "choices": FlagOrAuto,
            "type": "bool | str",
        },
    )
    logging_steps: int = field(default=1, metadata={"help": "Log metrics every N optimizer steps."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N optimizer steps (resume point)."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Checkpoints kept (older ones deleted); None: all of them."}
    )
    eval_every: int | None = field(
        default=None, metadata={"help": "Run the eval suites every N optimizer steps (evaluation/callback.py)."}
    )
    eval_suites: list[str] | None = field(
        default=None, metadata={"help": "The suites of eval.suites to run then; None: all of them."}
    )
    soup: int = field(
        default=1,
        metadata={
            "help": "Train the stage this many times from the same model on the same data (seeds seed, seed + 1, "
            "...; files under <stage>/members/<k>/) and keep the mean of their weights as its model (a uniform "
            "model soup, training/soup.py); 1: train once."
        },
    )
    soup_select: str | None = field(
        default=None,
        metadata={
            "help": "With soup > 1, `stage:<pairs stage>`: read each member on the prompts that pairs stage holds "
            "out of training (its hold_out; greedy replies at eval.max_new_tokens, judged by its judge) and keep "
            "a greedy soup (Wortsman et al. 2022): members in order of their score, the mean of refusal of the "
            "harmful prompts and helpfulness of the benign ones (without a helpful axis: not refused), each added "
            "if the mean with it scores no lower. Readings in <stage>/selection.json. None: the mean of all."
        },
    )
    extra: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Any other field of the stage's TRL config class (or transformers.TrainingArguments), passed "
            "through as is, after the fields above; add one with `+algo.<stage>.extra.<name>=VALUE`."
        },
    )


@dataclass
class TRLTrainConfig(TrainConfig):
    """Stages on TRL's SFT and DPO trainers: the LM head and the attention kernel they train with."""

    lm_head: str = field(
        default="auto",
        metadata={
            "help": "The LM head and loss: ours (compact, training/lm_head.py) or TRL's fused one (trl); auto: ours "
            "where TRL's has no Triton kernel (a CPU), TRL's elsewhere.",
            "choices": LmHead,
        },
    )
    attn_implementation: str = field(
        default="auto",
        metadata={
            "help": "Attention while training; auto: eager on a CPU, `model.attn_implementation` on GPUs (devices.py).",
            "choices": TrainAttention,
        },
    )


def check_train(a: DictConfig, key: str, cfg: DictConfig) -> None:
    """The fields every training stage has."""
    choice(a, "precision", key)
    flag_or_auto(a, "gradient_checkpointing", key)
    if a.kind in ("sft", "dpo"):
        choice(a, "lm_head", key)
    if a.kind in ("sft", "dpo", "kto"):
        choice(a, "attn_implementation", key)
    for name in ("batch_size", "grad_accum", "learning_rate"):
        positive(a, name, key)
    check(a.epochs > 0 or a.max_steps > 0, f"{key}.epochs", "set epochs > 0 or max_steps > 0.")
    positive(a, "save_steps", key)
    positive(a, "logging_steps", key)
    _check_trainer_names(a, key)
    check(0 <= a.warmup_ratio < 1, f"{key}.warmup_ratio", f"must lie in [0, 1), got {a.warmup_ratio}.")
    check_extra(a, key)
    check(a.soup >= 1, f"{key}.soup", f"must be 1 (train once) or more (a soup of that many), got {a.soup}.")
    if a.soup_select is not None:
        check(a.soup > 1, f"{key}.soup_select", f"selects among a soup's members: set soup > 1 (it is {a.soup}).")
    if a.eval_every is not None:
        check(a.eval_every > 0, f"{key}.eval_every", f"must be positive or null, got {a.eval_every}.")
        unknown = sorted(set(a.eval_suites or []) - set(cfg.eval.suites))
        check(not unknown, f"{key}.eval_suites", f"{unknown} are not in eval.suites ({', '.join(cfg.eval.suites)}).")


# TRL / TrainingArguments fields that alignlab sets itself (training/trainer.py, trl_args): through `extra` they
# would send checkpoints where resume never looks, or silently override a knob of the stage's own. Value: the
# `algo.<stage>` field to set instead, or None where the run decides it.
OWNED_BY_ALIGNLAB: dict[str, str | None] = {
    "output_dir": None,
    "logging_dir": None,
    "overwrite_output_dir": None,
    "resume_from_checkpoint": None,
    "save_strategy": None,
    "save_only_model": None,
    "report_to": None,
    "use_cpu": None,
    "deepspeed": None,
    "ddp_backend": None,
    "data_seed": None,
    "seed": None,
    "num_train_epochs": "epochs",
    "max_steps": "max_steps",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "learning_rate": "learning_rate",
    "lr_scheduler_type": "lr_scheduler",
    "save_steps": "save_steps",
    "save_total_limit": "save_total_limit",
    "logging_steps": "logging_steps",
    "optim": "optim",
}


def _check_trainer_names(a: DictConfig, key: str) -> None:
    """The scheduler and optimizer names transformers accepts, checked now rather than when the stage starts
    (after the stages before it have trained). alignlab's own PPO loop builds the same two by name."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    one_of(a.lr_scheduler, tuple(s.value for s in SchedulerType), f"{key}.lr_scheduler")
    if a.kind in ("ppo", "ppo-lag"):
        one_of(a.optim, ("adamw_torch", "adamw_torch_fused"), f"{key}.optim")
    else:
        one_of(a.optim, tuple(o.value for o in OptimizerNames), f"{key}.optim")


def check_extra(a: DictConfig, key: str) -> None:
    """`extra` passes fields straight to TRL's config class: check the names now, not after the run started."""
    from trl import DPOConfig, GRPOConfig, KTOConfig, RewardConfig, RLOOConfig, SFTConfig

    if a.kind in ("ppo", "ppo-lag"):
        check(not a.extra, f"{key}.extra", "PPO is alignlab's own trainer (stages/ppo.py): set its fields directly.")
        return
    config_cls = {
        "sft": SFTConfig,
        "dpo": DPOConfig,
        "kto": KTOConfig,
        "rm": RewardConfig,
        "cm": RewardConfig,
        "grpo": GRPOConfig,
        "rloo": RLOOConfig,
    }[a.kind]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(a.extra) - known)
    check(
        not unknown,
        f"{key}.extra",
        f"{', '.join(unknown)} {'is not a field' if len(unknown) == 1 else 'are not fields'} "
        f"of trl.{config_cls.__name__}.",
    )
    for name in a.extra:
        if name in OWNED_BY_ALIGNLAB:
            own = OWNED_BY_ALIGNLAB[name]
            instead = f"set {key}.{own} instead" if own else "alignlab sets it from the run's folder and settings"
            check(False, f"{key}.extra.{name}", f"{name} is not passed through: {instead}.")
