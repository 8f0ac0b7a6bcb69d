"""Weights & Biases: one W&B run per pipeline run, offline by default, resumed under the same id.

We init W&B ourselves (rank 0 only) instead of letting transformers' WandbCallback do it, because that callback
starts one W&B run per Trainer (one per stage) and logs everything under `train/`. `StageLogger` logs each
stage's Trainer logs under `<stage>/<TRL metric name>` with its own step axis, so DPO's `rewards/chosen` appears
as `dpo/rewards/chosen` and a resumed stage continues its curve instead of colliding with W&B's global step.
Each evaluation stage's results are also logged under one key per metric, `evaluation/<metric>`, at its `phase`
(0 for the first evaluation of the pipeline, 1 for the next): a chart of `evaluation/safety/...` overlays before
and after. The console goes to W&B's Logs tab, system metrics are on, the run's job_type is the pipeline's name
and its tags name the experiment and the stage kinds, besides `logger.tags`.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

from alignlab.artifacts import atomic_write_text

# Keys that hold credentials (hub_token, api_key, ...), not tokenizer settings (eos_token, max_new_tokens).
SECRET_KEY = re.compile(
    r"(^token$|(hub|hf|access|auth|api|bearer|wandb|github|openai)_?token$|api[_-]?key|secret|passw(or)?d|credential)",
    re.IGNORECASE,
)
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY")
REDACTED = "***"


def redact(obj: Any) -> Any:
    """Drop secrets from a config snapshot: values under secret-looking keys, and any value equal to a secret
    environment variable (what `${oc.env:WANDB_API_KEY}` would have resolved to)."""
    secrets = {os.environ[k] for k in SECRET_ENV if os.environ.get(k)}
    if isinstance(obj, dict):
        return {k: REDACTED if SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str) and obj in secrets:
        return REDACTED
    return obj


PHASE = "evaluation"  # the key prefix of every evaluation's results, by phase (Tracker.stage_result)


def stage_key(stage: str, key: str) -> str:
    """`<stage>/<key>`, unless the key already starts with the stage's name (a stage named `eval` logging
    `eval/kl_to_ref` stays `eval/kl_to_ref`, not `eval/eval/kl_to_ref`)."""
    return key if key.startswith(f"{stage}/") else f"{stage}/{key}"


def run_tags(cfg: DictConfig) -> list[str]:
    """The stage kinds of the pipeline, in order, once each: `sft`, `dpo`, `eval`, ..."""
    return list(dict.fromkeys(str(cfg.algo[s].kind) for s in cfg.pipeline.stages))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class Tracker:
    """The pipeline's W&B run (or nothing, with logger.backend=none or on ranks other than 0)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, enabled: bool = True):
        self.run = None
        if not enabled or cfg.logger.backend != "wandb" or cfg.logger.mode == "disabled" or not is_main_process():
            return
        import wandb

        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        atomic_write_text(id_file, run_id + "\n")
        self.run = wandb.init(
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            group=cfg.logger.group,
            name=f"{cfg.name}/{run_dir.name}",
            id=run_id,
            resume="allow",
            mode=cfg.logger.mode,
            dir=str(run_dir),
            config=redact(OmegaConf.to_container(cfg, resolve=True)),
            job_type=str(cfg.pipeline.name),
            tags=list(dict.fromkeys([*cfg.logger.tags, str(cfg.name), *run_tags(cfg)])),
            settings=wandb.Settings(silent=True, console="wrap", x_disable_stats=False),
        )
        if cfg.logger.mode == "offline":
            # W&B's console warnings follow the process's first setup, not init's settings; offline they are about
            # what an offline run lacks ("URL not available in offline run", at every checkpoint's model card)
            wandb.termsetup(wandb.Settings(silent=True, show_warnings=False), None)

    def define_stage(self, stage: str) -> None:
        if self.run is not None:
            self.run.define_metric(f"{stage}/global_step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/global_step")

    def log(self, stage: str, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            numeric = {stage_key(stage, k): v for k, v in metrics.items() if isinstance(v, (int, float))}
            self.run.log({**numeric, f"{stage}/global_step": step})

    def stage_result(self, stage: str, metrics: dict[str, Any], phase: int | None = None) -> None:
        """A finished stage's metrics as one history row on its step axis: evaluation and pair stages have no
        Trainer logs, and a dashboard should chart `eval_after/safety/*` like any other curve. An evaluation
        (`phase`: its place among the pipeline's evaluations) is logged again under `evaluation/<metric>` at that
        phase, the same key before and after, so one chart overlays them."""
        self.define_stage(stage)
        self.log(stage, metrics, int(metrics.get("global_step", 0)))
        if self.run is not None and phase is not None:
            self.run.define_metric(f"{PHASE}/phase")
            self.run.define_metric(f"{PHASE}/*", step_metric=f"{PHASE}/phase")
            numeric = {f"{PHASE}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
            self.run.log({**numeric, f"{PHASE}/phase": phase})

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in metrics.items():
                self.run.summary[k] = v

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

    @property
    def run_path(self) -> str | None:
        return self.run.dir if self.run is not None else None

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


class StageLogger(TrainerCallback):
    """Forwards a Trainer's logs to the tracker under the stage's namespace (TRL's metric names kept)."""

    def __init__(self, tracker: Tracker, stage: str):
        self.tracker, self.stage = tracker, stage
        tracker.define_stage(stage)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.tracker.log(self.stage, logs, state.global_step)
        return control
