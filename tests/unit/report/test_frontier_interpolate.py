"""experiments/safety-frontier/interpolate.py: the weight-interpolation knob the safety study measures."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, load_script, model_folder
from safetensors.torch import load_file

SCRIPT = REPO / "experiments" / "safety-frontier" / "interpolate.py"


def test_interpolation_gives_both_ends_and_the_point_between(tmp_path):
    start = model_folder(tmp_path / "a", {"w": torch.zeros(2, 3), "b": torch.ones(3, dtype=torch.bfloat16)})
    trained = model_folder(
        tmp_path / "b", {"w": torch.full((2, 3), 4.0), "b": torch.full((3,), 3.0, dtype=torch.bfloat16)}, '{"x": 1}'
    )
    for s, w, b in ((0.0, 0.0, 1.0), (1.0, 4.0, 3.0), (0.75, 3.0, 2.5)):
        out = tmp_path / f"s{s}"
        load_script(SCRIPT).interpolate(start, trained, s, out)
        got = load_file(out / "model.safetensors")
        assert torch.equal(got["w"], torch.full((2, 3), w)) and torch.equal(
            got["b"], torch.full((3,), b, dtype=torch.bfloat16)
        )
        assert (out / "config.json").read_text() == '{"x": 1}'  # the trained model's config and tokenizer files


def test_models_with_different_tensors_are_refused(tmp_path):
    start = model_folder(tmp_path / "a", {"w": torch.zeros(2)})
    trained = model_folder(tmp_path / "b", {"v": torch.zeros(2)})
    with pytest.raises(SystemExit, match="different tensors"):
        load_script(SCRIPT).interpolate(start, trained, 0.5, tmp_path / "out")
    assert not (tmp_path / "out").exists()
