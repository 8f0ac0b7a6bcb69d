"""Reference-pass time of a DPO beta sweep, with the run-tree reference cache and without it.

Runs `alignlab run -m pipeline=dpo ... algo.dpo.beta=0.05,0.1,0.5` twice on SmolLM2-135M-Instruct and the default
experiment's on-policy pairs (made once by benchmarks/dpo_speed.py's helper), each sweep in a fresh run root: once
with `algo.dpo.ref_cache=true` (the default) and once with it off, and prints each member's reference-pass seconds
(the cache's key hashing included) and how many pairs it scored, and the sweep's total against one run's.

    .venv/bin/python benchmarks/sweep_reference.py            # 3 members, 2 DPO steps each (the steps do not matter)
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from dpo_speed import REPO, default_pairs, scratch, smollm2


def sweep(root: Path, policy: Path, pairs: Path, betas: str, cache: bool) -> list[dict]:
    cmd = [
        str(REPO / ".venv/bin/alignlab"),
        "run",
        "-m",
        "experiment=tiny",
        "logger=none",
        "model.source=local",
        f"model.path={policy}",
        "pipeline=dpo",
        "data=local",
        f"data.preference.path={pairs}",
        "model.lora.enabled=true",
        "algo.dpo.max_steps=2",
        "algo.dpo.final_eval=false",
        "algo.dpo.precision=auto",
        f"algo.dpo.ref_cache={str(cache).lower()}",
        f"algo.dpo.beta={betas}",
        f"run.root={root}",
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    (manifest,) = root.glob("sweeps/*/*/manifest.json")
    members = json.loads(manifest.read_text())["members"]
    out = []
    for m in members:
        metrics = json.loads((Path(m["run_dir"]) / "dpo" / "metrics.json").read_text())
        out.append(
            {
                "overrides": m["overrides"],
                **{
                    k: metrics.get(k)
                    for k in ("ref_logps/seconds", "ref_logps/computed_pairs", "ref_logps/cached_pairs")
                },
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--betas", default="0.05,0.1,0.5")
    args = p.parse_args()
    work = scratch("sweep-reference-")
    policy, pairs = smollm2(), default_pairs(work)
    print("| sweep | member | reference pass (s) | pairs scored | pairs from the cache |")
    print("| --- | --- | ---: | ---: | ---: |")
    totals = {}
    for cache in (True, False):
        rows = sweep(work / f"cache-{cache}", policy, pairs, args.betas, cache)
        label = "cache on" if cache else "cache off"
        shared = set.intersection(*(set(r["overrides"]) for r in rows))
        for r in rows:
            r["overrides"] = [o for o in r["overrides"] if o not in shared]  # what tells the members apart
            seconds = r["ref_logps/seconds"]
            scored = r["ref_logps/computed_pairs"]
            print(
                f"| {label} | {' '.join(r['overrides'])} | {seconds if seconds is not None else '-'} "
                f"| {scored if scored is not None else 'all'} | {r['ref_logps/cached_pairs'] or 0} |"
            )
        totals[label] = rows
    on = [r["ref_logps/seconds"] for r in totals["cache on"]]
    print(
        f"\ncache on: the sweep's reference passes took {sum(on):.1f} s, {sum(on) / on[0]:.2f}x its first "
        f"member's ({on[0]:.1f} s); with the cache off every member scores every pair."
    )


if __name__ == "__main__":
    main()
