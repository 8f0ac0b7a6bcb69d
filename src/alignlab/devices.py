"""What the training device can do, and the settings chosen from it where a stage's config says `auto`: precision,
activation (gradient) checkpointing, and the attention kernel used while training.

- precision `auto`: bf16 autocast over fp32 master weights where the device multiplies bf16 natively (CUDA with
  bf16; a CPU with AVX512-BF16 or AMX, where bf16 matrix products ran 3.7x faster than fp32 here: 781 against 212
  GFLOP/s), fp16 on older GPUs, else fp32; but fp32 for full fine-tuning at learning rates too small for bf16 to
  resolve (BF16_MIN_FULL_FINETUNE_LR).
- generation dtype `auto`: bfloat16 for generation and scoring where the device has bf16 units, else the weights'
  own dtype: on a CPU without them (AVX2 only) bf16 is emulated, and the default's 126 bundled harmful prompts took
  over ten minutes in bf16 where fp32 needs about one.
- gradient checkpointing `auto`: on only where the stage's estimated peak memory without it would not fit in what
  the device has free; recomputing activations costs a third more compute for memory a small model does not need.
- the CPU allocator: glibc returns every freed block over 32 MiB (its largest mmap threshold) to the kernel and
  faults it in again at the next step (activations, logits, gradients); `keep_freed_memory` keeps such blocks in
  the heap, which made a SmolLM2 DPO step 18% faster here (2.84 s to 2.30 s, median of 6 steps);
  `release_freed_memory` hands them back between stages, and `PeakMemory` records each stage's own peak.
- attention `auto` (training only): eager attention on a CPU, where SDPA's CPU backward took 0.68 s of a 3.9 s
  SmolLM2 DPO step and eager's 0.1 s (benchmarks/dpo_speed.py); the model's own (`model.attn_implementation`) on
  GPUs. Generation keeps the model's own: SDPA generates faster on a CPU (10.3 s against 13.0 s for 48 prompts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

GIB = 1024**3


def training_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 matrix products run in hardware (not emulated) on this device."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(
            torch.backends.mkldnn.is_available() and (cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
        )
    return False


# Below this learning rate, full fine-tuning under 16-bit autocast stops computing what fp32 computes: a step of lr
# changes most weights by less than half a bf16 spacing (2^-8 of their size), so the 16-bit copy the forward uses
# either ignores it or rounds it up to a whole spacing. Measured on SmolLM2-135M (benchmarks/dpo_speed.py): a
# gradient-sign step of 1e-6 changed a batch's log-likelihood by 14.5 in fp32 and by 180 under bf16 autocast (its
# weights, dequantized from GGUF, sit close to bf16 rounding midpoints: 4.8% flip under a 1e-6 nudge, 0.65% of
# Gaussian ones); at 1e-4 the two agreed (436 against 409). LoRA is exempt: its B matrix starts at zero, so its bf16
# copy resolves updates relative to its own small size.
BF16_MIN_FULL_FINETUNE_LR = 1e-4


def resolve_precision(
    requested: str, device: torch.device | None = None, learning_rate: float | None = None, full_finetune: bool = False
) -> str:
    """`auto`: bf16 where the device has bf16 units (fp16 on older GPUs), except full fine-tuning at a learning
    rate under BF16_MIN_FULL_FINETUNE_LR, which stays fp32; any other value is kept."""
    if requested != "auto":
        return requested
    device = device or training_device()
    if full_finetune and learning_rate is not None and learning_rate < BF16_MIN_FULL_FINETUNE_LR:
        return "fp32"
    if bf16_native(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def resolve_generation_dtype(requested: str | None, weights_dtype: str, device: torch.device | None = None) -> str:
    """The dtype a model that only generates or scores is loaded in: `auto` picks bfloat16 where the device has bf16
    units, else `weights_dtype` (also what None means); any other value is kept."""
    if requested is None:
        return weights_dtype
    if requested != "auto":
        return requested
    return "bfloat16" if bf16_native(device or training_device()) else weights_dtype


def resolve_attention(requested: str, model_default: str, device: torch.device | None = None) -> str:
    if requested != "auto":
        return requested
    return "eager" if (device or training_device()).type == "cpu" else model_default


def _glibc() -> Any:
    """glibc's C library, for its allocator's settings; None off Linux or on another C library (musl)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> None:
    """On Linux with glibc: serve large tensors from the heap and keep freed ones there (mallopt M_MMAP_THRESHOLD
    and M_TRIM_THRESHOLD), so a training step reuses the memory of the last one instead of page-faulting it in again.
    Peak memory is unchanged; the pipeline hands the freed memory back between stages (`release_freed_memory`).
    Elsewhere, and when ALIGNLAB_KEEP_FREED_MEMORY=0, nothing is done."""
    libc = _glibc()
    if libc is None or os.environ.get("ALIGNLAB_KEEP_FREED_MEMORY") == "0":
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)  # blocks under 1 GiB from the heap (glibc's default: 128 KiB to 32 MiB)
    libc.mallopt(m_trim_threshold, 1 << 31)  # and keep up to 2 GiB of freed heap for the next allocation


def release_freed_memory() -> None:
    """Between stages: collect Python's reference cycles (a Trainer, its accelerator and its callbacks hold one
    another, and with them the stage's model and optimizer) and hand the heap's free pages back to the kernel
    (glibc's malloc_trim). `keep_freed_memory` keeps freed blocks for the next training step, but the next stage
    allocates other shapes, so what the last stage freed would stay resident beside what the next one needs."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if (libc := _glibc()) is not None:
        libc.malloc_trim(0)


class PeakMemory:
    """The memory of one stage in this process: resident memory when it starts (what earlier stages left behind)
    and at its peak (the kernel's high-water mark, reset through /proc/self/clear_refs when the stage starts), and on
    CUDA the allocator's peak. `metrics()` leaves out a peak that cannot be read as the stage's own (no reset
    outside Linux), so that a stage never reports an earlier one's."""

    def __init__(self) -> None:
        import psutil

        self.start = psutil.Process().memory_info().rss  # what the stage inherits from the stages before it
        self.own_peak = _reset_peak_rss()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def metrics(self) -> dict[str, float]:
        out = {"memory/start_rss_mib": round(self.start / 2**20, 1)}
        if self.own_peak:
            out["memory/peak_rss_mib"] = round(peak_rss_bytes() / 2**20, 1)
        if torch.cuda.is_available():
            out["memory/peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out


def peak_rss_bytes() -> int:
    """This process's peak resident memory since it started or since the last reset (PeakMemory). On Linux, VmHWM:
    getrusage's ru_maxrss also counts the process this one was exec'ed from (a launcher's, pytest's), a floor under
    every later reading; elsewhere ru_maxrss (KiB on Linux and BSD, bytes on macOS)."""
    import resource
    import sys

    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (proc(5))
        return True
    except OSError:  # not Linux, or not allowed
        return False


@dataclass
class MemoryEstimate:
    """Bytes a training stage holds per rank at its peak, with and without activation checkpointing."""

    states: int  # weights, gradients, optimizer moments, autocast copies, a reference copy
    activations: int  # saved for the backward pass without checkpointing
    checkpointed_activations: int  # with checkpointing: layer inputs plus one layer recomputed
    logits: int  # fp32 logits of every position, their log-softmax and gradient (checkpointing does not shrink them)
    available: int

    def needs_checkpointing(self, headroom: float = 0.9) -> bool:
        return self.states + self.activations + self.logits > headroom * self.available

    def describe(self, on: bool) -> str:
        without = (self.states + self.activations + self.logits) / GIB
        return (
            f"gradient checkpointing {'on' if on else 'off'}: about {without:.1f} GiB without it, "
            f"{self.available / GIB:.1f} GiB available"
        )


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def parameter_count(config: Any) -> int:
    """Weights of a decoder-only transformer from its config: embeddings (and an untied head), attention, MLP."""
    c = config.get_text_config()
    h, n_layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or h // heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    inter = getattr(c, "intermediate_size", None) or 4 * h
    attention = 2 * h * heads * head_dim + 2 * h * kv * head_dim
    mlp = 3 * h * inter
    embeddings = vocab * h * (1 if getattr(c, "tie_word_embeddings", False) else 2)
    return embeddings + n_layers * (attention + mlp)


def estimate_training_memory(
    config: Any,
    rows: int,
    tokens_per_row: int,
    precision: str,
    full_finetune: bool,
    reference_copy: bool,
    zero_stage: int = 0,
    world: int = 1,
    device: torch.device | None = None,
) -> MemoryEstimate:
    """A per-rank estimate after Korthikanti et al. (2022): about 34 bytes of 16-bit activations per token, layer and
    hidden unit, plus the attention probabilities (heads x length^2 per row and layer), plus fp32 logits of every
    position and their gradient. ZeRO divides what it shards by the world size."""
    c = config.get_text_config()
    p = parameter_count(config)
    act_bytes = 2 if precision in ("bf16", "fp16") else 4
    weights = 4 * p / (world if zero_stage == 3 else 1)
    copies = 2 * p if act_bytes == 2 else 0  # autocast's 16-bit weight copies, kept for the backward pass
    grads = 4 * p / (world if zero_stage >= 2 else 1) if full_finetune else 0
    moments = 8 * p / (world if zero_stage >= 1 else 1) if full_finetune else 0
    reference = 4 * p if reference_copy else 0
    tokens = rows * tokens_per_row
    layers = c.num_hidden_layers
    per_layer = tokens * c.hidden_size * 17 * act_bytes + rows * c.num_attention_heads * tokens_per_row**2 * act_bytes
    logits = 3 * tokens * c.vocab_size * 4
    return MemoryEstimate(
        states=int(weights + copies + grads + moments + reference),
        activations=int(layers * per_layer),
        checkpointed_activations=int(layers * tokens * c.hidden_size * act_bytes + per_layer),
        logits=int(logits),
        available=available_bytes(device or training_device()),
    )
