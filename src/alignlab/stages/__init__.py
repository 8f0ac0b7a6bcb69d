"""Stage entry points, one module per algorithm; `STAGES` maps an `algo.<stage>.kind` to the function that runs it.

A stage module holds its entry point and what only that stage uses (its Trainer subclass, its own steps); what
stages share is a library below them: training/ (stage context, TRL Trainer runs, saving, our LM head, samplers,
reference cache, reward and cost models), rl/ (PPO's models, rollouts and updates), data/ and evaluation/. Only
this registry imports the stage modules, and only the pipeline (and tests) import the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alignlab.stages import calibrate, dpo, evaluate, grpo, kto, pairs, ppo, reward, sft
from alignlab.training.context import StageContext

STAGES: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "sft": sft.run,
    "dpo": dpo.run,
    "kto": kto.run,
    "rm": reward.run_rm,
    "cm": reward.run_cm,
    "ppo": ppo.run,
    "ppo-lag": ppo.run,
    "grpo": grpo.run,
    "rloo": grpo.run,
    "pairs": pairs.run,
    "calibrate": calibrate.run,
    "eval": evaluate.run,
}

# The TRL arguments of each TRL-trained kind, built for every stage before the first one runs (pipeline.prepare), so a
# setting TRL refuses stops the run at once, not after the stages before it have trained. PPO is alignlab's own loop:
# its settings are all checked in config.validate.
TRAINING_ARGS: dict[str, Callable[[StageContext], Any]] = {
    "sft": sft.training_args,
    "dpo": dpo.training_args,
    "kto": kto.training_args,
    "rm": reward.training_args,
    "cm": reward.training_args,
    "grpo": grpo.training_args,
    "rloo": grpo.training_args,
}
