"""training/soup.py: the mean of several trained models' weights (a soup stage's model and the safety study's
soups of seeds), and the context each member of a soup stage trains with."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO, model_folder
from safetensors.torch import load_file, save_file
from stage_fixtures import context

from alignlab.config import compose_config, validate
from alignlab.errors import RunStateError
from alignlab.training.soup import average, member_context


def test_the_soup_is_the_mean_of_its_models_in_their_dtypes(tmp_path):
    tensors = [{"w": torch.full((2, 3), v), "b": torch.full((3,), v, dtype=torch.bfloat16)} for v in (1.0, 2.0, 6.0)]
    models = [model_folder(tmp_path / f"m{i}", t, '{"x": 1}' if i == 0 else "{}") for i, t in enumerate(tensors)]
    average(models, tmp_path / "soup")
    got = load_file(tmp_path / "soup" / "model.safetensors")
    assert torch.equal(got["w"], torch.full((2, 3), 3.0))
    assert torch.equal(got["b"], torch.full((3,), 3.0, dtype=torch.bfloat16))
    assert (tmp_path / "soup" / "config.json").read_text() == '{"x": 1}'  # the first model's files


def test_sharded_models_are_averaged_file_by_file(tmp_path):
    models = []
    for i, v in enumerate((2.0, 4.0)):
        m = model_folder(tmp_path / f"m{i}", {"a": torch.full((2,), v)})
        (m / "model.safetensors").rename(m / "model-00001-of-00002.safetensors")
        save_file({"b": torch.full((1,), 10 * v)}, m / "model-00002-of-00002.safetensors")
        (m / "model.safetensors.index.json").write_text('{"weight_map": {}}')
        models.append(m)
    average(models, tmp_path / "soup")
    assert torch.equal(load_file(tmp_path / "soup" / "model-00001-of-00002.safetensors")["a"], torch.full((2,), 3.0))
    assert torch.equal(load_file(tmp_path / "soup" / "model-00002-of-00002.safetensors")["b"], torch.full((1,), 30.0))
    assert (tmp_path / "soup" / "model.safetensors.index.json").is_file()


@pytest.mark.parametrize(
    "other", [{"v": torch.zeros(2)}, {"w": torch.zeros(3)}, {"w": torch.zeros(2), "v": torch.zeros(1)}]
)
def test_models_with_different_tensors_are_refused_before_anything_is_written(tmp_path, other):
    models = [model_folder(tmp_path / "a", {"w": torch.zeros(2)}), model_folder(tmp_path / "b", other)]
    with pytest.raises(RunStateError, match=r"different tensors in model\.safetensors"):
        average(models, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_models_with_different_weight_files_are_refused(tmp_path):
    a = model_folder(tmp_path / "a", {"w": torch.zeros(2)})
    b = model_folder(tmp_path / "b", {"w": torch.zeros(2)})
    (b / "model.safetensors").rename(b / "model-00001-of-00001.safetensors")
    with pytest.raises(RunStateError, match="different weight files"):
        average([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_model_is_not_a_soup_and_the_script_says_so(tmp_path):
    a = model_folder(tmp_path / "a", {"w": torch.zeros(2)})
    with pytest.raises(RunStateError, match="two models or more"):
        average([a], tmp_path / "out")
    script = REPO / "experiments" / "safety-frontier" / "soup.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), str(a)], capture_output=True, text=True)
    assert proc.returncode == 1 and "a soup needs two models or more, got 1" in proc.stderr


def test_a_member_trains_in_its_own_folder_with_its_own_seed_and_the_run_config_is_untouched(tmp_path):
    ctx = context(tmp_path, "dpo", "algo.dpo.soup=3", "seed=7")
    member = member_context(ctx, 2)
    assert member.cfg.seed == 9 and ctx.cfg.seed == 7
    assert member.model_dir == tmp_path / "dpo" / "members" / "2" / "model"
    assert member.checkpoint_dir == tmp_path / "dpo" / "members" / "2" / "checkpoints"
    assert member.label == "dpo-member2" and member.algo.soup == 3  # the stage's settings, read as the stage's
    with pytest.raises(Exception, match="read-only"):
        member.cfg.seed = 1
    assert ctx.model_dir == tmp_path / "dpo" / "model" and ctx.label == "dpo"


def test_the_soup_preset_is_the_openings_preset_with_its_setting_and_three_dpo_members():
    cfg = validate(compose_config(["experiment=safety-smollm-soup"]))
    openings = validate(compose_config(["experiment=safety-smollm-openings"]))
    assert (cfg.algo.dpo.soup, cfg.algo.dpo.beta, cfg.model.lora.r, cfg.model.lora.alpha) == (3, 0.3, 64, 128)
    assert cfg.algo.pairs.helpful_chosen and not openings.algo.pairs.helpful_chosen
    assert cfg.algo.sft.soup == openings.algo.dpo.soup == 1  # only DPO is a soup
    assert cfg.algo.pairs.opening_pairs and cfg.pipeline.stages == openings.pipeline.stages
    assert cfg.eval.targets == openings.eval.targets
