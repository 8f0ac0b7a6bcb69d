"""One rank of a multi-rank run: what `python -m alignlab.rank <run dir>` runs in each process that launch.py
starts (torch.distributed.run locally, srun in a Slurm job). It reads only the run's frozen config, joins the
process group and runs this rank's share of the pipeline (pipeline.execute). The pipeline never imports this
module: it lies above it, as a second entry point beside the `alignlab` command."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

from alignlab import distributed, pipeline, preemption
from alignlab.artifacts import atomic_write_json
from alignlab.errors import Preempted, UserError
from alignlab.launch import PREEMPTED_FILE, env_from_slurm, init_process_group


def main(run_dir: Path) -> int:
    """Run the rank; a signal's checkpoint-and-stop is recorded for the launching process (launch.spawn)."""
    warnings.filterwarnings("ignore", category=FutureWarning)  # as in cli.main: the pinned stack is tested
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        cfg = pipeline.load_frozen(run_dir)
        env_from_slurm(cfg)
        init_process_group(cfg)
        with preemption.handled():
            pipeline.execute(pipeline.prepare(cfg, run_dir))
    except Preempted as exc:
        if distributed.is_main():
            atomic_write_json(run_dir / PREEMPTED_FILE, {"message": str(exc), "time": time.time()})
        print(f"alignlab (rank {distributed.rank()}): {exc}", file=sys.stderr)
        return exc.exit_code
    except UserError as exc:
        print(f"alignlab (rank {distributed.rank()}): {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
