"""Structured configs (Hydra ConfigStore schemas), composition and validation: the single source of truth for
every key of a run's config.

Hydra composes the YAML groups under `conf/` once, in the launching process; every group file extends a
schema registered here, so a misspelled key or a wrong type fails at composition with the key's full path.
`validate` then checks what types cannot express (allowed values, ranges, cross-field rules) and returns a
read-only config. Ranks, resumed runs and Slurm jobs read the frozen `config.yaml`, never re-compose.

One module per group, each with its schemas (every field's `help` metadata documents it), its allowed values
(`Literal` aliases in the fields' `choices` metadata) and its checks:

    model.py        model (ModelConfig, LoRA, the tiny and wheel models)
    data.py         data (sources, the bias mix)
    train.py        the fields every training stage shares (TrainConfig)
    algo.py         algo.<stage>: SFT, DPO, reward and cost models, pairs, calibrate, eval; ALGO_SCHEMAS by kind
    online.py       algo.<stage>: PPO, PPO-Lagrangian, GRPO / RLOO
    eval.py         eval (suites, judges, targets)
    distributed.py  distributed, launcher, slurm
    root.py         the root AlignlabConfig, pipeline, run, logger; register_schemas; cross-group checks
    compose.py      compose_config and Hydra error translation ("did you mean")
    validation.py   validate, the driver of the checks
    checks.py       the helpers the checks share (one error format: Config error at '<key>': ...)
    reference.py    docs/configuration.md, generated from the schemas (python -m alignlab.config.reference)
"""

from __future__ import annotations

from alignlab.config.algo import (
    ALGO_SCHEMAS,
    DPO_LOSS_TYPES,
    F_DIVERGENCES,
    CostAlgoConfig,
    DPOAlgoConfig,
    EvalStageConfig,
    KTOAlgoConfig,
    PairsStageConfig,
    RewardAlgoConfig,
    SFTAlgoConfig,
    dpo_loss_types,
)
from alignlab.config.compose import CONF_DIR, compose_config
from alignlab.config.data import DATA_FORMATS, BiasMixConfig, DataConfig, SourceConfig
from alignlab.config.distributed import DistributedConfig, LauncherConfig, SlurmConfig
from alignlab.config.eval import (
    SUITE_KINDS,
    VERDICTS,
    EvalConfig,
    JudgeConfig,
    SteeringConfig,
    SuiteConfig,
    TargetConfig,
)
from alignlab.config.model import ATTENTION, DTYPES, LoraSpec, ModelConfig, TinyModelSpec, WheelSpec
from alignlab.config.online import GRPOAlgoConfig, PPOAlgoConfig, PPOLagAlgoConfig
from alignlab.config.root import AlignlabConfig, LoggerConfig, PipelineConfig, RunConfig, register_schemas
from alignlab.config.train import POLICY_KINDS, PRECISIONS, SCORER_KINDS, TRAINING_KINDS, TrainConfig, TRLTrainConfig
from alignlab.config.validation import validate

register_schemas()

__all__ = [
    "ALGO_SCHEMAS",
    "ATTENTION",
    "CONF_DIR",
    "DATA_FORMATS",
    "DPO_LOSS_TYPES",
    "DTYPES",
    "F_DIVERGENCES",
    "POLICY_KINDS",
    "PRECISIONS",
    "SCORER_KINDS",
    "SUITE_KINDS",
    "TRAINING_KINDS",
    "VERDICTS",
    "AlignlabConfig",
    "BiasMixConfig",
    "CostAlgoConfig",
    "DPOAlgoConfig",
    "DataConfig",
    "DistributedConfig",
    "EvalConfig",
    "EvalStageConfig",
    "GRPOAlgoConfig",
    "JudgeConfig",
    "KTOAlgoConfig",
    "LauncherConfig",
    "LoggerConfig",
    "LoraSpec",
    "ModelConfig",
    "PPOAlgoConfig",
    "PPOLagAlgoConfig",
    "PairsStageConfig",
    "PipelineConfig",
    "RewardAlgoConfig",
    "RunConfig",
    "SFTAlgoConfig",
    "SlurmConfig",
    "SourceConfig",
    "SteeringConfig",
    "SuiteConfig",
    "TRLTrainConfig",
    "TargetConfig",
    "TinyModelSpec",
    "TrainConfig",
    "WheelSpec",
    "compose_config",
    "dpo_loss_types",
    "register_schemas",
    "validate",
]
