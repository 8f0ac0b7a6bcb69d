"""experiments/safety-frontier/soup.py: the uniform model soup the safety study measures against the seed spread."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, load_script, model_folder
from safetensors.torch import load_file

SCRIPT = REPO / "experiments" / "safety-frontier" / "soup.py"


def test_the_soup_is_the_mean_of_its_models_in_their_dtypes(tmp_path):
    tensors = [{"w": torch.full((2, 3), v), "b": torch.full((3,), v, dtype=torch.bfloat16)} for v in (1.0, 2.0, 6.0)]
    models = [model_folder(tmp_path / f"m{i}", t, '{"x": 1}' if i == 0 else "{}") for i, t in enumerate(tensors)]
    load_script(SCRIPT).soup(models, tmp_path / "soup")
    got = load_file(tmp_path / "soup" / "model.safetensors")
    assert torch.equal(got["w"], torch.full((2, 3), 3.0))
    assert torch.equal(got["b"], torch.full((3,), 3.0, dtype=torch.bfloat16))
    assert (tmp_path / "soup" / "config.json").read_text() == '{"x": 1}'  # the first model's files


@pytest.mark.parametrize(
    "other", [{"v": torch.zeros(2)}, {"w": torch.zeros(3)}, {"w": torch.zeros(2), "v": torch.zeros(1)}]
)
def test_models_with_different_tensors_are_refused_before_anything_is_written(tmp_path, other):
    models = [model_folder(tmp_path / "a", {"w": torch.zeros(2)}), model_folder(tmp_path / "b", other)]
    with pytest.raises(SystemExit, match="different tensors"):
        load_script(SCRIPT).soup(models, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_model_is_not_a_soup(tmp_path):
    with pytest.raises(SystemExit, match="two models or more"):
        load_script(SCRIPT).soup([model_folder(tmp_path / "a", {"w": torch.zeros(2)})], tmp_path / "out")
