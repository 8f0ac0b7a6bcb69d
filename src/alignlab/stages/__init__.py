"""One module per algorithm; `STAGES` maps an `algo.<stage>.kind` to the function that runs it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alignlab.stages import dpo, evaluate, pairs, sft
from alignlab.stages.common import StageContext

STAGES: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "sft": sft.run,
    "dpo": dpo.run,
    "pairs": pairs.run,
    "eval": evaluate.run,
}
