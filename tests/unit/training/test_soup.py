"""training/soup.py: the mean of several trained models' weights (a soup stage's model and the safety study's
soups of seeds), and the context each member of a soup stage trains with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, model_folder
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from stage_fixtures import context

from alignlab import cli
from alignlab.config import compose_config, validate
from alignlab.data import onpolicy
from alignlab.errors import ConfigError, RunStateError
from alignlab.generation import generate
from alignlab.training import soup
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


QUICK = ["experiment=safety-smollm-quick", "algo.pairs.hold_out=0.2"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.dpo.soup_select=stage:pairs"], r"algo\.dpo\.soup_select': selects among a soup's members"),
        (["algo.dpo.soup=3", "algo.dpo.soup_select=stage:sft"], r"'stage:sft' must name a pairs stage that runs"),
        (["algo.dpo.soup=3", "algo.dpo.soup_select=pairs"], r"'pairs' must name a pairs stage .* \(as stage:<name>\)"),
        (["algo.dpo.soup=3", "algo.dpo.soup_select=stage:pairs", "algo.pairs.hold_out=0"], r"hold_out > 0"),
    ],
)
def test_a_selection_needs_a_soup_and_prompts_a_pairs_stage_held_out(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config([*QUICK, *overrides]))
    validate(compose_config([*QUICK, "algo.dpo.soup=3", "algo.dpo.soup_select=stage:pairs"]))


def test_a_later_round_that_trains_on_the_held_out_prompts_is_refused():
    overrides = ["pipeline=safety-correct", "algo.dpo.soup=2", "algo.dpo.soup_select=stage:pairs"]
    with pytest.raises(ConfigError, match=r"algo\.pairs_dpo\.hold_out'.*reads the prompts 'pairs' holds out"):
        validate(compose_config([*QUICK, *overrides]))
    validate(compose_config([*QUICK, *overrides, "algo.pairs_dpo.hold_out=0.2"]))


def test_the_greedy_soup_adds_a_member_only_where_the_mean_with_it_reads_no_worse(tmp_path, monkeypatch):
    """Members in order of their held-out score, each added if the soup with it scores no lower: here the score
    peaks where the mean weight is 0.6, so of members at 0.4, 0.8 and 0.9 the first two are kept (their mean: 0.6,
    score 1.0) and the third, which would pull the mean to 0.7, is not."""
    folders = [model_folder(tmp_path / f"m{k}", {"w": torch.tensor([v])}) for k, v in enumerate((0.4, 0.8, 0.9))]

    def reading(ctx, folder, rows, judge, label):
        w = load_file(folder / "model.safetensors")["w"].item()
        return {"refusal_rate": 1.0, "over_refusal_rate": 0.0, "helpful_rate": 1.0, "score": 1 - abs(w - 0.6)}

    monkeypatch.setattr(soup, "held_out_reading", reading)
    monkeypatch.setattr(soup.onpolicy, "calibration_prompts", lambda *a: ["p"] * 7)
    monkeypatch.setattr(soup, "build_judge", lambda spec, benchmarks: None)
    ctx = SimpleNamespace(
        name="dpo",
        stage_dir=tmp_path / "dpo",
        algo=OmegaConf.create({"soup_select": "stage:pairs"}),
        cfg=OmegaConf.create(
            {"algo": {"pairs": {"judge": "probe"}}, "eval": {"judges": {"probe": {}}, "benchmarks_dir": "."}}
        ),
    )
    ctx.stage_dir.mkdir()
    kept, readings = soup.greedy_soup(ctx, folders)
    assert kept == [0, 1] and readings["kept"] == [0, 1] and readings["prompts"] == 7
    assert [t["members"] for t in readings["trials"]] == [[0, 1], [0, 1, 2]]
    assert [t["kept"] for t in readings["trials"]] == [True, False]
    assert readings["trials"][0]["score"] == pytest.approx(1.0) and readings["trials"][1]["score"] == pytest.approx(0.9)
    assert list(ctx.stage_dir.iterdir()) == []  # the trial soups are removed
    flat = soup._flat(readings)
    assert flat["select/soup/score"] == pytest.approx(1.0) and flat["select/member2/score"] == pytest.approx(0.7)


def test_a_held_out_reading_scores_refusal_and_helpfulness_as_the_evaluation_judges_them(tmp_path, tiny_model):
    """The tiny model's greedy replies, read by a judge without a helpful axis: helpful is the share of benign
    prompts not refused, and the score the mean of that and the refusal of the harmful ones."""
    ctx = context(tmp_path, "dpo")
    rows = [onpolicy.PromptRow(f"prompt {i}", t, "any") for i, t in enumerate(["harmful"] * 3 + ["benign"] * 5)]

    class EveryOtherRefused:
        axes = ("refusal",)

        def refused(self, prompts, replies):
            return [int(p.split()[1]) % 2 == 0 for p in prompts]

    got = soup.held_out_reading(ctx, Path(tiny_model), rows, EveryOtherRefused(), "the tiny model")
    assert got["refusal_rate"] == pytest.approx(2 / 3) and got["over_refusal_rate"] == pytest.approx(2 / 5)
    assert got["helpful_rate"] == pytest.approx(3 / 5) and got["score"] == pytest.approx((2 / 3 + 3 / 5) / 2)


@pytest.mark.slow
def test_a_run_with_a_selected_soup_keeps_the_greedy_soup_of_members_read_on_held_out_prompts(
    tmp_path, cache_dir, tiny_model, monkeypatch
):
    """pairs (20% of the prompts held out) -> SFT -> a DPO soup of three read on the held-out prompts, on the tiny
    model: model/ is the mean of the members selection.json keeps, the best-read member among them."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    noisy = lambda *a, **k: generate(*a, **{**k, "do_sample": True, "temperature": 1.0})  # noqa: E731
    monkeypatch.setattr("alignlab.stages.pairs.generate", noisy)  # the tiny model's greedy replies are empty
    monkeypatch.setattr(soup, "generate", noisy)
    args = [
        "run",
        *QUICK,
        "eval.judge=rules",
        "model=tiny",
        "model.lora.enabled=false",
        "model.generation_dtype=null",
        "pipeline.stages=[pairs,sft,dpo]",
        "algo.pairs.max_harmful=6",
        "algo.pairs.max_benign=6",
        "algo.sft.max_steps=2",
        "algo.dpo.max_steps=2",
        "algo.dpo.soup=3",
        "algo.dpo.soup_select=stage:pairs",
        "logger=none",
        f"run.root={tmp_path}",
    ]
    assert cli.main(args) == 0
    (run,) = (tmp_path / "safety-smollm-quick").iterdir()
    held = (run / "pairs" / onpolicy.HELD_OUT_FILE).read_text().splitlines()
    readings = json.loads((run / "dpo" / "selection.json").read_text())
    assert readings["prompts"] == len(held) > 0 and len(readings["members"]) == 3 and len(readings["trials"]) == 2
    scores = [m["score"] for m in readings["members"]]
    kept = readings["kept"]
    assert scores.index(max(scores)) in kept
    members = [load_file(run / "dpo" / "members" / str(k) / "model" / "model.safetensors") for k in kept]
    model = load_file(run / "dpo" / "model" / "model.safetensors")
    for name, tensor in model.items():
        mean = sum(m[name].float() for m in members) / len(members)
        assert torch.allclose(tensor.float(), mean, atol=1e-2, rtol=1e-2)
    metrics = json.loads((run / "dpo" / "metrics.json").read_text())
    assert metrics["soup/kept"] == len(kept) and "select/soup/score" in metrics
