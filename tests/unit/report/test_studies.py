"""Every published study in experiments/ re-tabulates to its committed tables: the `alignlab report` command that
its results/README.md records, run on the run records the study commits (experiments/<study>/runs), makes the
same table.md, table.tex and runs.csv, and draws the same plots (compared as files that exist and open)."""

from __future__ import annotations

import re
import shlex

import pytest
from conftest import REPO
from matplotlib.image import imread

from alignlab import cli

STUDIES = sorted(d.name for d in (REPO / "experiments").iterdir() if (d / "runs").is_dir())
TABLES = ("table.md", "table.tex", "runs.csv")
PLOTS = ("frontier.png", "harm_vs_over_refusal.png", "training_curves.png")


def test_the_published_ablation_is_there():
    assert "dpo-loss-beta" in STUDIES


@pytest.mark.parametrize("study", STUDIES)
def test_a_study_re_tabulates_to_its_committed_tables(study, tmp_path, monkeypatch, capsys):
    results = REPO / "experiments" / study / "results"
    made_by = re.search(r"^Made by `([^`]+)`", (results / "README.md").read_text(), re.M)
    assert made_by, f"{results / 'README.md'} does not record its command"
    argv = shlex.split(made_by.group(1))
    assert argv[:2] == ["alignlab", "report"] and f"experiments/{study}/runs" in argv
    argv[argv.index("--out") + 1] = str(tmp_path)
    monkeypatch.chdir(REPO)  # the recorded command ran from the repository root; runs.csv names runs from there
    assert cli.main(argv[1:]) in (0, None), capsys.readouterr().err
    for name in TABLES:
        assert (tmp_path / name).read_text() == (results / name).read_text(), f"{study}: {name} differs"
    for name in PLOTS:
        assert (results / name).is_file() == (tmp_path / name).is_file(), name
        if (results / name).is_file():
            assert imread(results / name).shape[2] in (3, 4)
