#!/usr/bin/env bash
# The dpo-loss-beta study, exactly as run for results/ (README.md here says how it was scaled to 2 CPU cores).
# Run from the repository root after `make setup`: experiments/dpo-loss-beta/run.sh
# Runs land in runs/ (ROOT=... for elsewhere), sweeps in $ROOT/sweeps/; then re-tabulate with report.sh.
# A run that already finished is not run again (its stages are DONE), so an interrupted study resumes.
set -euo pipefail
ROOT=${ROOT:-runs}
ALIGNLAB=${ALIGNLAB:-.venv/bin/alignlab}
COMMON=(run.root="$ROOT" logger.group=dpo-loss-beta)  # every trained run of the study in one W&B group

# 1. The shared start: baseline evaluation, on-policy pairs and SFT of experiment=safety-smollm, once.
$ALIGNLAB run experiment=safety-smollm-sft run.root="$ROOT"
BASE=$(dirname "$(ls -td "$ROOT"/safety-smollm-sft/*/sft/DONE | head -n 1)")/..  # the newest finished one
BASE=$(cd "$BASE" && pwd)
FROM_SFT=(model.path="$BASE/sft/model" data.preference.path="$BASE/pairs/pairs.jsonl" "${COMMON[@]}")

# 2. The SFT model itself, evaluated like every member (the no-further-training row; KL 0 by definition).
$ALIGNLAB run experiment=safety-smollm-dpo-on-sft pipeline.name=sft-only pipeline.stages=[eval_after] "${FROM_SFT[@]}"

# 3. The DPO grid, 8 steps of 8 pairs each (64 of the pairs, a seeded draw per seed), one process on both cores
#    (3.5 min a member): each loss_type with 3 seeds at the default beta 0.1, then with 1 seed at beta 0.05 and 0.5.
#    `robust` assumes 10% of the labels flipped (label_smoothing 0.1): at its default 0 it is sigmoid exactly.
DPO=(experiment=safety-smollm-dpo-on-sft algo.dpo.max_steps=8)
for LOSS in "algo.dpo.loss_type=sigmoid,ipo,hinge" "algo.dpo.loss_type=robust algo.dpo.label_smoothing=0.1"; do
  # $LOSS unquoted on purpose: one or two overrides
  $ALIGNLAB run -m "${DPO[@]}" $LOSS algo.dpo.beta=0.1 seed=1,2,3 "${FROM_SFT[@]}"
  $ALIGNLAB run -m "${DPO[@]}" $LOSS algo.dpo.beta=0.05,0.5 seed=1 "${FROM_SFT[@]}"
done

# 4. Online RL rows from the same SFT model and pairs: reward model -> PPO, and + cost model -> PPO-Lagrangian,
#    one seed each, one pass over the prompts (experiment=safety-smollm-ppo makes two).
$ALIGNLAB run experiment=safety-smollm-ppo-on-sft algo.ppo.epochs=1 seed=1 "${FROM_SFT[@]}"
$ALIGNLAB run experiment=safety-smollm-ppo-lag-on-sft algo.ppo.epochs=1 seed=1 "${FROM_SFT[@]}"
