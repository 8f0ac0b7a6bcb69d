"""The user's own configs beside the package's (config/user.py, cli.py): --config FILE, --config-dir DIR,
--config-name NAME, and Hydra's --cfg hydra|all and --info, through the `alignlab` command."""

from __future__ import annotations

import yaml

from alignlab.cli import main


def test_a_config_file_anywhere_is_an_experiment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    mine = tmp_path / "somewhere" / "my-exp.yaml"
    mine.parent.mkdir()
    mine.write_text("defaults:\n  - tiny\nname: from-file\nalgo:\n  dpo:\n    beta: 0.33\n")  # no package header
    assert main(["run", "--cfg", "job", "--config", str(mine), "algo.dpo.loss_type=ipo"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["name"] == "from-file" and cfg["algo"]["dpo"]["beta"] == 0.33
    assert cfg["algo"]["dpo"]["loss_type"] == "ipo" and cfg["model"]["source"] == "tiny"  # from `tiny`, then overrides
    assert main(["run", "--cfg", "job", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "Config error at '--config" in capsys.readouterr().err


def test_a_config_folder_adds_options_and_info_shows_it(tmp_path, capsys):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - tiny\nseed: 5\n")
    assert main(["run", "--cfg", "job", "-cd", str(tmp_path), "experiment=mine"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["seed"] == 5
    assert main(["run", "--info", "--config-dir", str(tmp_path), "experiment=mine"]) == 0
    info = capsys.readouterr().out
    assert str(tmp_path) in info and "experiment: mine" in info and "model: tiny" in info
    assert main(["run", "--cfg", "job", "-cd", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_a_primary_config_of_ones_own(tmp_path, capsys):
    (tmp_path / "lab.yaml").write_text("defaults:\n  - config\n  - _self_\nseed: 11\n")
    assert main(["run", "--cfg", "job", "-cd", str(tmp_path), "-cn", "lab", "experiment=tiny"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["seed"] == 11 and cfg["name"] == "tiny"
    assert main(["run", "--cfg", "job", "--config-name", "lab"]) == 2
    assert "no lab.yaml in the --config-dir folders" in capsys.readouterr().err


def test_hydras_own_node_and_everything(capsys):
    assert main(["run", "--cfg", "hydra", "experiment=tiny"]) == 0
    hydra = yaml.safe_load(capsys.readouterr().out)
    assert "runtime" in hydra and "sweep" in hydra and "algo" not in hydra
    assert main(["run", "--cfg", "all", "experiment=tiny"]) == 0
    both = yaml.safe_load(capsys.readouterr().out)
    assert "hydra" in both and both["name"] == "tiny"
    assert main(["run", "-m", "--cfg", "job", "experiment=tiny"]) == 2
