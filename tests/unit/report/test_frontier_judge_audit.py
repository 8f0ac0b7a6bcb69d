"""experiments/safety-frontier/judge_audit.py: the judge's over-refusal set beside a reading of the same replies."""

from __future__ import annotations

import pytest
from conftest import REPO, load_script, write_jsonl

SCRIPT = REPO / "experiments" / "safety-frontier" / "judge_audit.py"


def test_the_audit_counts_the_judges_rate_the_readings_and_the_judges_precision_and_recall(tmp_path):
    # 10 replies: the judge calls 4 refusals, a reader 3 of those and one the judge missed
    verdicts = [(True, "full"), (True, "partial"), (True, "full"), (True, "none"), (False, "full")]
    verdicts += [(False, "none")] * 5
    rows = [{"run": "r1", "seed": 42, "judge_refused": j, "refusal": r} for j, r in verdicts]
    mod = load_script(SCRIPT)
    row = mod.table(mod.read(write_jsonl(tmp_path / "a.jsonl", rows))).splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["`r1`", "42", "10"]
    assert [c.split(" [")[0] for c in cells[3:]] == ["0.400", "0.400", "0.750", "0.750"]
    assert cells[5].endswith("[0.30, 0.95]")  # Wilson 95% of 3 / 4


def test_a_row_without_a_reading_is_named(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"run": "r1", "seed": 1, "judge_refused": True, "refusal": "maybe"}])
    with pytest.raises(SystemExit, match=r"a\.jsonl:1: needs judge_refused"):
        load_script(SCRIPT).read(path)


def test_the_committed_audit_reads_and_every_run_is_whole():
    runs = load_script(SCRIPT).read(SCRIPT.parent / "data" / "benign-refusal-audit.jsonl")
    assert runs and all(len(rows) == 112 for rows in runs.values())  # every bundled benign reply of each run
