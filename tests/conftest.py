"""Shared fixtures: an isolated cache (tiny models built once per session), offline Hub and W&B, helpers to write
data files."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["bench_fixtures"]  # the benchmark-shaped folder fixture, for unit and integration tests alike

# The repository's root: the tests live in tests/unit/<package>/ and tests/integration/, so they find it here.
REPO = Path(__file__).resolve().parents[1]
# The public benchmarks: $ALIGNLAB_BENCHMARKS as for `alignlab run`, else ../shared/benchmarks beside the clone.
BENCHMARKS = Path(os.environ.get("ALIGNLAB_BENCHMARKS") or REPO.parent / "shared/benchmarks")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("alignlab-cache")
    os.environ["ALIGNLAB_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(cache_dir) -> str:
    from omegaconf import OmegaConf

    from alignlab.config import TinyModelSpec
    from alignlab.models import build_tiny_model

    return str(build_tiny_model(OmegaConf.structured(TinyModelSpec), cache_dir))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from omegaconf import OmegaConf

    from alignlab.config import ModelConfig
    from alignlab.models import load_tokenizer

    return load_tokenizer(tiny_model, OmegaConf.structured(ModelConfig(name="tiny", source="tiny")))


def load_script(path: Path) -> ModuleType:
    """A script outside the package (an experiment's, a benchmark's) imported as a module, for its functions."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_folder(path: Path, tensors: dict, config: str = "{}") -> Path:
    """A saved model's folder as the stages write it: model.safetensors and a config.json (its text given)."""
    from safetensors.torch import save_file

    path.mkdir()
    save_file(tensors, path / "model.safetensors")
    (path / "config.json").write_text(config)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pair(prompt: str = "Hi?", chosen: str = "Hello.", rejected: str = "Go away.") -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
