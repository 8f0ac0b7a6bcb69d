#!/bin/bash
# Reproduces the cross-check of results.md: about 37 min of one CPU core on a loaded 2-core machine (plus, the first
# time, lm_eval's venv). Everything it writes goes under $LMEVAL_WORK (default: work/ in this folder, git-ignored);
# the benchmarks are read from $ALIGNLAB_BENCHMARKS (default ../shared/benchmarks beside the repository) and the
# model is the folder alignlab loads for conf/model/smollm2-135m-instruct.yaml ($SMOLLM2_MODEL overrides it).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
eval "$("${ALIGNLAB_PYTHON:-$REPO/.venv/bin/python}" "$HERE/crosscheck_paths.py")"
OUT=$LMEVAL_WORK/out
mkdir -p "$OUT"
echo "work: $LMEVAL_WORK; benchmarks: $ALIGNLAB_BENCHMARKS; model: $SMOLLM2_MODEL"

# 1. lm_eval's own venv (once): torch first (the CPU wheel), then lm_eval from PyPI, pinned as in the measured run
#    (lmeval_freeze.txt holds that venv's full pip freeze)
if [ ! -x "$LMEVAL_VENV/bin/lm_eval" ]; then
  "${LMEVAL_BASE_PYTHON:-python3}" -m venv "$LMEVAL_VENV"
  "$LMEVAL_VENV/bin/pip" install torch==2.13.0
  "$LMEVAL_VENV/bin/pip" install "lm_eval[hf]==0.4.13" transformers==5.23.0 accelerate==1.15.0 torch==2.13.0
  "$LMEVAL_VENV/bin/pip" freeze > "$LMEVAL_WORK/venv_freeze.txt"
fi
PY=$LMEVAL_VENV/bin/python

# 2. the fixed subsets and the task YAMLs (generated from the installed lm_eval package)
"$PY" "$HERE/prepare_data.py"
"$PY" "$HERE/make_tasks.py" > /dev/null

# 3. lm_eval (run_lmeval.sh: HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1, --device cpu, fp32)
"$HERE/run_lmeval.sh" crows_pairs_english_local crows > "$OUT/crows.log" 2>&1
"$HERE/run_lmeval.sh" bbq_local_p1 bbq_p1 > "$OUT/bbq_p1.log" 2>&1
"$HERE/run_lmeval.sh" bbq_local_p2 bbq_p2 > "$OUT/bbq_p2.log" 2>&1
"$HERE/run_lmeval.sh" bbq_alignlab_def bbq_alignlab_def --apply_chat_template > "$OUT/bbq_alignlab_def.log" 2>&1

# 4. alignlab's code, in alignlab's own venv
OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH="$REPO/src" "$ALIGNLAB_PYTHON" "$HERE/alignlab_score.py"

# 5. the comparison (lm_eval's venv; imports alignlab.evaluation.bias from <repo>/src for alignlab's metric code)
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME="$LMEVAL_WORK/hf_home" OMP_NUM_THREADS=1 PYTHONPATH="$REPO/src" \
  "$PY" "$HERE/compare.py" > "$OUT/compare.log"
echo "done: $OUT/comparison.json"
