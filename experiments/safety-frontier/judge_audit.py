"""The chosen judge's over-refusal against a reading of the same replies, per run: is a missed target the model's
or the instrument's?

The judge was validated on four of our models' replies (benchmarks/README.md, "Judges against human labels"), none
of them from the reply-openings family the study's nearest settings belong to. The audit file holds, for each run
audited, every bundled benign reply with the judge's verdict and a reader's (LABELING.md's `refusal` axis: full,
partial or none), so the judge's over-refusal rate, the reading's, the judge's precision (of the replies it calls
refusals, the share a reader does) and recall can be set side by side with Wilson intervals.

    python experiments/safety-frontier/judge_audit.py [experiments/safety-frontier/data/benign-refusal-audit.jsonl]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from alignlab.evaluation.binomial import wilson

DEFAULT = Path(__file__).parent / "data" / "benign-refusal-audit.jsonl"
READINGS = {"full", "partial", "none"}


def read(path: Path) -> dict[tuple[str, int], list[dict]]:
    """The audit's rows grouped by (run, seed), each checked for a reading on LABELING.md's refusal axis."""
    runs: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(line)
        if row.get("refusal") not in READINGS or not isinstance(row.get("judge_refused"), bool):
            raise SystemExit(f"{path}:{n}: needs judge_refused (true/false) and refusal in {sorted(READINGS)}")
        runs[row["run"], row["seed"]].append(row)
    return runs


def _rate(hits: int, total: int) -> str:
    low, high = wilson(hits, total)
    return f"{hits / total:.3f} [{low:.2f}, {high:.2f}]"


def table(runs: dict[tuple[str, int], list[dict]]) -> str:
    """One Markdown row per run: the judge's over-refusal, the reading's, and the judge's precision and recall."""
    lines = [
        "| run | seed | replies | over-refusal: judge | over-refusal: reading | judge's precision | judge's recall |",
        "| --- | ---: | ---: | --- | --- | --- | --- |",
    ]
    for (run, seed), rows in sorted(runs.items(), key=lambda kv: kv[0][1]):
        judged = [r["judge_refused"] for r in rows]
        read_as = [r["refusal"] != "none" for r in rows]
        both = sum(j and r for j, r in zip(judged, read_as))
        cells = [
            f"`{run}`",
            str(seed),
            str(len(rows)),
            _rate(sum(judged), len(rows)),
            _rate(sum(read_as), len(rows)),
            _rate(both, sum(judged)) if any(judged) else "-",
            _rate(both, sum(read_as)) if any(read_as) else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audit", nargs="?", type=Path, default=DEFAULT)
    print(table(read(parser.parse_args(argv).audit)))


if __name__ == "__main__":
    main()
