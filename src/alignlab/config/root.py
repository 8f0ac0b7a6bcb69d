"""The root config (`AlignlabConfig`, the `alignlab_schema` conf/config.yaml extends), `pipeline`, `run` and
`logger`, the registration of the schemas in Hydra's ConfigStore, and the checks that span several groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from alignlab.config.algo import (
    CalibrateStageConfig,
    CostAlgoConfig,
    DPOAlgoConfig,
    EvalStageConfig,
    KTOAlgoConfig,
    PairsStageConfig,
    RewardAlgoConfig,
    SFTAlgoConfig,
    check_stage,
)
from alignlab.config.checks import check, choice
from alignlab.config.data import DataConfig
from alignlab.config.distributed import DistributedConfig, LauncherConfig, SlurmConfig
from alignlab.config.eval import EvalConfig
from alignlab.config.model import ModelConfig
from alignlab.config.online import GRPOAlgoConfig, PPOAlgoConfig, PPOLagAlgoConfig
from alignlab.config.train import TRAINING_KINDS

LoggerBackend = Literal["wandb", "none"]
LoggerMode = Literal["offline", "online", "disabled"]


@dataclass
class PipelineConfig:
    """The stages a run executes, in order (pipeline.py); each names its settings under `algo`. Group files:
    conf/pipeline/, which also place each stage's algo file (`/algo@algo.<stage>: <kind>`)."""

    name: str = field(default=MISSING, metadata={"help": "A name for the pipeline."})
    stages: list[str] = field(default=MISSING, metadata={"help": "Keys of `algo`, run in this order."})


@dataclass
class LoggerConfig:
    """Experiment tracking (tracking.py). Group files: conf/logger/."""

    backend: str = field(
        default="wandb", metadata={"help": "wandb: Weights & Biases; none: no tracker.", "choices": LoggerBackend}
    )
    project: str = field(default="alignlab", metadata={"help": "W&B project."})
    entity: str | None = field(default=None, metadata={"help": "W&B entity (user or team); None: the default one."})
    mode: str = field(
        default="offline",
        metadata={"help": "W&B mode: offline needs no account or network.", "choices": LoggerMode},
    )
    group: str | None = field(default=None, metadata={"help": "W&B run group."})
    tags: list[str] = field(default_factory=list, metadata={"help": "W&B run tags."})


@dataclass
class RunConfig:
    """Where a run lives: `<root>/<name>/<id>` (pipeline.py)."""

    root: str = field(default="runs", metadata={"help": "Folder of all runs."})
    id: str | None = field(
        default=None,
        metadata={"help": "None: a hash of the config, so that the same command resumes the same run."},
    )


@dataclass
class AlignlabConfig:
    """The whole config of a run (conf/config.yaml). Composed once in the launching process and validated
    (`validate`); ranks, resumed runs and Slurm jobs read the frozen config.yaml of the run."""

    name: str = field(default="default", metadata={"help": "The experiment's name: `runs/<name>/<id>`, reports."})
    seed: int = field(default=42, metadata={"help": "Seed of training, data order and sampling."})
    offline: bool | None = field(
        default=None,
        metadata={
            "help": "true: set HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, so nothing waits for the Hub (only cached Hub "
            "ids load); false: unset them, Hub ids download; None: as the environment says (HF_HUB_OFFLINE)."
        },
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Converted and tiny models; None: $ALIGNLAB_CACHE or ~/.cache/alignlab."},
    )
    run: RunConfig = field(default_factory=RunConfig, metadata={"help": "Where the run lives."})
    model: ModelConfig = field(default=MISSING, metadata={"help": "The starting policy (group `model`)."})
    data: DataConfig = field(default=MISSING, metadata={"help": "The training data (group `data`)."})
    pipeline: PipelineConfig = field(default=MISSING, metadata={"help": "The stages (group `pipeline`)."})
    algo: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Stage name -> its settings, typed by `kind` (group `algo`).", "schema": "by kind"},
    )
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation (group `eval`)."})
    logger: LoggerConfig = field(default_factory=LoggerConfig, metadata={"help": "Tracking (group `logger`)."})
    distributed: DistributedConfig = field(
        default_factory=DistributedConfig, metadata={"help": "Multi-rank training (group `distributed`)."}
    )
    launcher: LauncherConfig = field(default_factory=LauncherConfig, metadata={"help": "Ranks to spawn."})
    slurm: SlurmConfig = field(default_factory=SlurmConfig, metadata={"help": "Slurm job settings."})


def register_schemas() -> None:
    """Store the schemas the YAML files extend (`defaults: [dpo_schema, _self_]`) in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="alignlab_schema", node=AlignlabConfig)
    for name, node in (
        ("sft", SFTAlgoConfig),
        ("dpo", DPOAlgoConfig),
        ("kto", KTOAlgoConfig),
        ("rm", RewardAlgoConfig),
        ("cm", CostAlgoConfig),
        ("ppo", PPOAlgoConfig),
        ("ppo_lag", PPOLagAlgoConfig),
        ("grpo", GRPOAlgoConfig),
        ("pairs", PairsStageConfig),
        ("calibrate", CalibrateStageConfig),
        ("eval", EvalStageConfig),
    ):
        cs.store(group="algo", name=f"{name}_schema", node=node)


def check_pipeline(cfg: DictConfig, stages: list[str]) -> None:
    """The stage list, each stage's settings, and the references between stages."""
    check(len(stages) > 0, "pipeline.stages", "the pipeline has no stages.")
    check(len(set(stages)) == len(stages), "pipeline.stages", f"a stage is listed twice: {stages}.")
    for stage in stages:
        check(
            stage in cfg.algo,
            "pipeline.stages",
            f"stage '{stage}' has no settings under 'algo' (have: {', '.join(cfg.algo) or 'none'}).",
        )
        check_stage(cfg.algo[stage], f"algo.{stage}", cfg)
    kinds = [cfg.algo[s].kind for s in stages]
    for i, stage in enumerate(stages):
        earlier = cfg.algo[stage].after if kinds[i] == "pairs" else None
        if earlier is not None:
            check(
                earlier in stages[:i] and cfg.algo[earlier].kind == "pairs",
                f"algo.{stage}.after",
                f"'{earlier}' must name a pairs stage that runs before '{stage}' (stages: {stages}).",
            )
        if kinds[i] == "pairs" and cfg.algo[stage].bias_prompts:
            _check_bias_prompts(cfg, stage)
        if kinds[i] == "pairs":
            name = pairs_judge(cfg, stage)
            check(
                name in cfg.eval.judges,
                f"algo.{stage}.judge",
                f"no judge '{name}' under eval.judges (have: {', '.join(cfg.eval.judges)}).",
            )
            check(
                not cfg.algo[stage].helpful_chosen or cfg.eval.judges[name].kind == "probe",
                f"algo.{stage}.helpful_chosen",
                f"needs a judge that reads whether a reply attempts the task (kind probe); the pairs judge '{name}' "
                f"is of kind {cfg.eval.judges[name].kind}. Set algo.{stage}.judge to a probe judge.",
            )
        if kinds[i] == "calibrate" and str(cfg.algo[stage].prompts).startswith("stage:"):
            _check_held_out_split(cfg, stages, i, "prompts")
        if kinds[i] in TRAINING_KINDS and cfg.algo[stage].soup_select is not None:
            _check_held_out_split(cfg, stages, i, "soup_select")
    producer = _from_stage(cfg.data.preference)
    for i, stage in enumerate(stages):
        if kinds[i] in TRAINING_KINDS and producer:
            check(
                producer in stages[:i],
                "data.preference.path",
                f"'stage:{producer}' must name a stage that runs before '{stage}' (stages: {stages}).",
            )


def _check_held_out_split(cfg: DictConfig, stages: list[str], i: int, field: str) -> None:
    """`algo.<stages[i]>.<field>=stage:<pairs>` (a calibration's prompts, a soup's selection): a pairs stage before
    it that holds prompts out, and no other round before it that trains on them."""
    stage, spec = stages[i], str(cfg.algo[stages[i]][field])
    held = spec.split(":", 1)[1] if spec.startswith("stage:") else None
    check(
        held in stages[:i] and cfg.algo[held].kind == "pairs" and cfg.algo[held].hold_out > 0,
        f"algo.{stage}.{field}",
        f"'{spec}' must name a pairs stage that runs before '{stage}' (as stage:<name>) and holds prompts out of "
        f"training (hold_out > 0; stages: {stages}).",
    )
    rounds = [s for s in stages[:i] if cfg.algo[s].kind == "pairs" and s != held]
    for other in rounds:  # a split is held out only if no other round trains on its prompts
        o = cfg.algo[other]
        check(
            o.prompts != cfg.algo[held].prompts or o.hold_out >= cfg.algo[held].hold_out,
            f"algo.{other}.hold_out",
            f"'{other}' reads the prompts '{held}' holds out for '{stage}' (algo.{held}.hold_out="
            f"{cfg.algo[held].hold_out}) with hold_out={o.hold_out}; set at least the same share (the split "
            "is by hash, so a larger share holds out the same prompts and more) so it trains on none of them.",
        )


def pairs_judge(cfg: DictConfig, stage: str) -> str:
    """The eval.judges key a pairs stage judges refusals with: its own `judge`, else the judge of the evaluation's
    first harmful refusal suite, else rules."""
    if cfg.algo[stage].judge is not None:
        return cfg.algo[stage].judge
    harmful = [s.judge for s in cfg.eval.suites.values() if s.kind == "refusal" and s.expect == "refuse"]
    return harmful[0] if harmful else "rules"


def _check_bias_prompts(cfg: DictConfig, stage: str) -> None:
    a, key = cfg.algo[stage], f"algo.{stage}.bias_prompts"
    check(a.bias_prompts > 0, key, f"must be a positive number of questions (or 0 for none), got {a.bias_prompts}.")
    check(
        a.after is not None,
        key,
        "asks the policy bias questions in a later round; set after: <earlier pairs stage> too (the first round "
        "mixes in template pairs instead).",
    )
    check(
        cfg.data.get("bias") is not None,
        key,
        "needs data.bias (its templates give the questions), e.g. data=safety-bias-onpolicy.",
    )
    kinds = cfg.data.bias.kinds
    check(
        any(kinds.get(k, 0) > 0 for k in ("ambiguous", "disambiguated")),
        key,
        f"asks ambiguous and disambiguated questions, but data.bias.kinds gives both no weight: {dict(kinds)}.",
    )


def _from_stage(source: DictConfig | None) -> str | None:
    """`stage:<name>` as a data path means the pairs that stage of this run writes."""
    if source is None or not str(source.path).startswith("stage:"):
        return None
    return str(source.path).split(":", 1)[1]


def check_logger(cfg: DictConfig) -> None:
    choice(cfg.logger, "backend", "logger")
    choice(cfg.logger, "mode", "logger")
