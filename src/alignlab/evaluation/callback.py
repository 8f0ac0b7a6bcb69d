"""Evaluation every N training steps (`algo.<stage>.eval_every`), logged to the run's W&B run on the stage's step
axis (`<stage>/safety/...`) and to `<stage>/eval_history.jsonl`, with the same code and names as the eval stage.

Every rank evaluates (same prompts, greedy, so the same work): under ZeRO-3 each forward pass gathers parameters
from all ranks, so a rank-0-only evaluation would hang the others. Only rank 0 writes.

The stage builds the evaluator (training/context.py, `training_evaluator`) and hands it in with where to log, so
this module knows nothing of stages.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from alignlab.evaluation.runner import Evaluator
from alignlab.tracking import Tracker


class EvalCallback(TrainerCallback):
    def __init__(
        self, evaluator: Evaluator, tokenizer: Any, every: int, tracker: Tracker, stage: str, history: Path
    ) -> None:
        self.evaluator, self.tokenizer, self.every = evaluator, tokenizer, every
        self.tracker, self.stage, self.history = tracker, stage, history

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return control
        started = time.time()
        was_training = model.training
        result = self.evaluator(model, self.tokenizer)
        model.train(was_training)
        metrics: dict[str, Any] = {**result.metrics, "eval_seconds": round(time.time() - started, 2)}
        if state.is_world_process_zero:
            self.tracker.log(self.stage, metrics, state.global_step)
            with open(self.history, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **metrics}) + "\n")
        return control
