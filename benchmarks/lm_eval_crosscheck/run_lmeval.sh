#!/bin/bash
# Usage: run_lmeval.sh <tasks> <out-subdir> [extra lm_eval args...]
# Runs lm_eval fully offline on CPU, one thread, fp32, on the local task folders under $LMEVAL_WORK/tasks, and writes
# to $LMEVAL_WORK/out/<out-subdir>. Paths (and their overrides) as crosscheck_paths.py says.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
eval "$("${ALIGNLAB_PYTHON:-$REPO/.venv/bin/python}" "$HERE/crosscheck_paths.py")"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
# its own cache, empty before the first run: nothing can come from a Hub dataset downloaded earlier
export HF_HOME="$LMEVAL_WORK/hf_home"
TASKS=$1
NAME=$2
shift 2
mkdir -p "$HF_HOME" "$LMEVAL_WORK/out"
start=$(date +%s)
"$LMEVAL_VENV/bin/lm_eval" run --model hf --model_args "pretrained=$SMOLLM2_MODEL,dtype=float32" --device cpu \
  --include_path "$LMEVAL_WORK/tasks" --tasks "$TASKS" --batch_size 8 --log_samples \
  --output_path "$LMEVAL_WORK/out/$NAME" "$@"
echo "WALL_SECONDS $(($(date +%s) - start))"
