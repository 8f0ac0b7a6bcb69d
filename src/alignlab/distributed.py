"""The `distributed` config group in code: ranks, the generated DeepSpeed config, and what each rank holds.

A rank learns who it is from the environment torch.distributed.run (or launch.py, from Slurm's) sets: RANK,
WORLD_SIZE, LOCAL_RANK. Training stages hand `deepspeed_config` to TRL/transformers (`TrainingArguments.deepspeed`)
or to accelerate (`DeepSpeedPlugin`, PPO), which fill the "auto" values from the stage's own settings (batch size,
accumulation, clipping, precision): the JSON is derived from config, so it cannot drift from it.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Only rank 0 writes run files (markers, metrics, reports) and logs to W&B."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def planned_world_size(cfg: DictConfig) -> int:
    return int(cfg.launcher.nproc_per_node) * int(cfg.launcher.nnodes)


def stage_precision(cfg: DictConfig, algo: DictConfig) -> str:
    """`distributed.precision` when set (one setting for the whole run on a cluster), else the stage's own; `auto`
    is resolved for this rank's device (devices.py)."""
    from alignlab.devices import resolve_precision

    full = not cfg.model.lora.enabled
    return resolve_precision(
        str(cfg.distributed.precision or algo.precision), learning_rate=float(algo.learning_rate), full_finetune=full
    )


def stage_checkpointing(cfg: DictConfig, algo: DictConfig) -> bool | str:
    """`distributed.gradient_checkpointing` when set, else the stage's own: true, false or "auto" (resolved by the
    stage from its memory estimate, training/trainer.py)."""
    flag = cfg.distributed.gradient_checkpointing
    return algo.gradient_checkpointing if flag is None else bool(flag)


def backend(cfg: DictConfig) -> str:
    if cfg.distributed.backend != "auto":
        return str(cfg.distributed.backend)
    return "nccl" if torch.cuda.is_available() else "gloo"


@contextmanager
def whole_models() -> Iterator[None]:
    """Models loaded inside are whole on this rank. While a ZeRO-3 Trainer or plugin is registered, transformers'
    from_pretrained would shard each new model across ranks (deepspeed.zero.Init), a collective every rank must
    join: wrong for a model one rank builds alone (rank 0 saving) or that each rank scores with on its own."""
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    active = ref() if ref is not None else None
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if active is not None:
            hf_ds.set_hf_deepspeed_config(active)


def deepspeed_config(cfg: DictConfig) -> dict[str, Any] | None:
    """The DeepSpeed config of `distributed` (None unless strategy=deepspeed).

    "auto" values are filled by transformers (or by `fill_auto` for our own loops) from the stage's settings.
    ZeRO-3 gathers the 16-bit weights on save so that `model/` holds whole tensors, not shards.
    """
    d = cfg.distributed
    if d.strategy != "deepspeed":
        return None
    zero: dict[str, Any] = {"stage": int(d.zero_stage)}
    if d.zero_stage >= 1:
        zero.update(overlap_comm=torch.cuda.is_available(), contiguous_gradients=True)
    if d.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if d.zero_stage == 3:
        zero.update(
            stage3_gather_16bit_weights_on_model_save=True,
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            reduce_bucket_size="auto",
        )
        if d.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    generated = {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 10**9,  # our loggers report progress; DeepSpeed's own prints would interleave per rank
        "wall_clock_breakdown": False,
    }
    return _deep_merge(generated, OmegaConf.to_container(d.deepspeed, resolve=True))


def fill_auto(ds: dict[str, Any], micro_batch: int, grad_accum: int, clip: float, precision: str) -> dict[str, Any]:
    """Resolve "auto" for a loop that is not a transformers Trainer (PPO on accelerate), the way the Trainer does."""
    out = copy.deepcopy(ds)
    out["train_micro_batch_size_per_gpu"] = micro_batch
    out["gradient_accumulation_steps"] = grad_accum
    out["train_batch_size"] = micro_batch * grad_accum * world_size()
    out["gradient_clipping"] = clip
    out["bf16"] = {"enabled": precision == "bf16"}
    out["fp16"] = {"enabled": precision == "fp16"}
    for key, value in list(out["zero_optimization"].items()):
        if value == "auto":
            del out["zero_optimization"][key]  # DeepSpeed's defaults (sizes derived from hidden size need a model)
    return out


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def wait_for(marker: Path, what: str, poll_seconds: float = 2.0) -> None:
    """Ranks other than 0 wait for rank 0 to finish a stage only it runs (evaluation, pairs). A file, not a
    collective: those stages can take hours, longer than any collective timeout, and the run directory is on a
    filesystem every node sees. If rank 0 fails, the launcher (torch.distributed.run, srun --kill-on-bad-exit)
    stops this rank."""
    started = time.time()
    while not marker.is_file():
        time.sleep(poll_seconds)
        if time.time() - started > 60 and int(time.time() - started) % 600 < poll_seconds:
            print(f"[alignlab] rank {rank()}: waiting for rank 0 to finish {what}", flush=True)


def held_bytes(model: torch.nn.Module, optimizer: Any) -> dict[str, int]:
    """Bytes of parameters and optimizer state this rank holds: the memory ZeRO divides among ranks.

    Measured on the tensors, not the process: on the CPU every rank's RSS also holds the libraries, the data and
    the reference model. Three parts: `params` (ZeRO-3 keeps a parameter's shard in `ds_tensor`; its `data` is
    empty between uses), `master` (the fp32 master copy DeepSpeed's ZeRO and bf16 optimizers keep in flat groups,
    even when training in fp32) and `moments` (the optimizer's own state, e.g. Adam's two moments). Tensors are
    counted once by storage.
    """
    seen: set[int] = set()

    def size(t: Any) -> int:
        if not isinstance(t, torch.Tensor) or t.numel() == 0:
            return 0
        key = t.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return t.untyped_storage().nbytes()

    params = sum(size(p.ds_tensor if hasattr(p, "ds_tensor") else p.data) for p in model.parameters())
    master = moments = 0
    level = optimizer
    while level is not None:  # accelerate's wrapper -> DeepSpeed's ZeRO optimizer -> torch's optimizer
        for name in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
            master += sum(size(t) for t in getattr(level, name, None) or [])
        for per_param in dict(getattr(level, "state", None) or {}).values():
            moments += sum(size(v) for v in per_param.values())
        level = getattr(level, "optimizer", None)
    return {"params_bytes": params, "master_bytes": master, "moments_bytes": moments}
