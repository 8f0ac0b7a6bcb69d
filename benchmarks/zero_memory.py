"""Per-rank memory of parameters and optimizer state under each ZeRO stage, and the losses beside one process.

    python benchmarks/zero_memory.py                                  # tiny SFT -> DPO, 2 CPU ranks (gloo), ~3 min
    python benchmarks/zero_memory.py --ranks 8 experiment=safety-smollm distributed.precision=bf16   # on a GPU node

Each variant is a real `alignlab run` (its own run root under --out); the table reads the `memory/rank<r>/*` and
losses every training stage records in metrics.json / log_history.json. `params` is what the rank holds of the
model's parameters, `master` DeepSpeed's fp32 master copy, `moments` the optimizer's state (Adam: two per weight).
The single-process row uses the full batch; the ranked rows split it (per-rank batch = batch / ranks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "single": [],
    "ddp": ["distributed=ddp"],
    "zero0": ["distributed=zero1", "distributed.zero_stage=0"],
    "zero1": ["distributed=zero1"],
    "zero2": ["distributed=zero2"],
    "zero3": ["distributed=zero3"],
}
TINY = ["experiment=tiny", "logger=none", "algo.sft.max_steps=4", "algo.dpo.max_steps=4"]


def run(name: str, args: list[str], ranks: int, batch: int, root: Path) -> tuple[Path, float]:
    spread = (
        []
        if name == "single"
        else [
            f"launcher.nproc_per_node={ranks}",
            f"algo.sft.batch_size={batch // ranks}",
            f"algo.dpo.batch_size={batch // ranks}",
        ]
    )
    started = time.time()
    cmd = [sys.executable, "-m", "alignlab.cli", "run", *args, *VARIANTS[name], *spread, f"run.root={root / name}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
    (run_dir,) = [p.parent for p in (root / name).glob("*/*/config.yaml")]
    return run_dir, time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="global batch: per-rank batch x ranks")
    parser.add_argument("--stage", default="dpo", help="the training stage whose memory is shown")
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="alignlab overrides (default: the tiny experiment)")
    opts = parser.parse_args()
    args = opts.overrides or TINY
    root = opts.out or Path(tempfile.mkdtemp(prefix="zero-memory-"))
    print(f"alignlab run {' '.join(args)}  [+ each variant; {opts.ranks} ranks, global batch {opts.batch}]")
    print(
        f"{'variant':>8} {'params':>9} {'master':>9} {'moments':>9} {'total':>9} {'vs zero0':>8} "
        f"{'peak RSS':>9} {'final loss':>11} {'wall s':>7}   (MiB per rank, rank 0)"
    )
    rows = {}
    for name in VARIANTS:
        run_dir, wall = run(name, args, opts.ranks, opts.batch, root)
        m = json.loads((run_dir / opts.stage / "metrics.json").read_text())
        held = [m[f"memory/rank0/{p}_mib"] for p in ("params", "master", "moments")]
        rows[name] = sum(held)
        ratio = f"{rows[name] / rows['zero0']:.3f}" if "zero0" in rows else "-"
        print(
            f"{name:>8} {held[0]:9.3f} {held[1]:9.3f} {held[2]:9.3f} {sum(held):9.3f} {ratio:>8} "
            f"{m['memory/rank0/peak_rss_mib']:9.1f} {m['final_step_loss']:11.6f} {wall:7.1f}"
        )
    print(f"runs: {root}")


if __name__ == "__main__":
    main()
