"""Build the fixed local subsets that both lm_eval and alignlab score (under $LMEVAL_WORK/data, never committed).

CrowS-Pairs: 200 pairs, random.Random(0).sample over the 1508 rows of crows_pairs_anonymized.csv (row order kept
after sorting the sampled indices). BBQ: 300 items, random.Random(0).sample over the 11,956 rows of the 6 local
category files read in sorted file-name order. Written as JSON lines; each row keeps every original field plus an id
(`pair_id` = the CSV's index column; `item_id` = "<category>:<example_id>").

lm_eval's BBQ task scores 12 choices per item, each as a full separate sequence (no shared context): about 1 s per
request on a loaded 2-core machine, so lm_eval runs on half of the 300 items, those at even positions (0, 2, ...,
298) of bbq_300.jsonl: 150 items, split in two files of 75 so that each lm_eval run stays under about 15 minutes.

Run with any Python 3 (standard library only): python prepare_data.py
"""

from __future__ import annotations

import csv
import glob
import json
import random

from crosscheck_paths import BENCH, DATA


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    with open(BENCH / "crows_pairs" / "crows_pairs_anonymized.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    idx = sorted(random.Random(0).sample(range(len(rows)), 200))
    keep = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")
    write_jsonl(
        DATA / "crows_pairs_200.jsonl", [{"pair_id": int(rows[i][""]), **{k: rows[i][k] for k in keep}} for i in idx]
    )

    items = []
    for path in sorted(glob.glob(str(BENCH / "bbq" / "*.jsonl"))):
        items += read_jsonl(path)
    idx = sorted(random.Random(0).sample(range(len(items)), 300))
    bbq = [{"item_id": f"{items[i]['category']}:{items[i]['example_id']}", **items[i]} for i in idx]
    write_jsonl(DATA / "bbq_300.jsonl", bbq)
    print(f"crows {len(rows)} -> 200, bbq {len(items)} -> 300 (in {DATA})")

    half = bbq[::2]
    write_jsonl(DATA / "bbq_150_p1.jsonl", half[:75])
    write_jsonl(DATA / "bbq_150_p2.jsonl", half[75:])
    write_jsonl(DATA / "bbq_150.jsonl", half)
    print(f"bbq lm_eval subset: {len(half)} = {len(half[:75])} + {len(half[75:])}")


if __name__ == "__main__":
    main()
