#!/usr/bin/env bash
# Tables and plots of the dpo-loss-beta study (README.md here), in two steps:
# 1. after run.sh: copy the records of the study's runs (config.yaml, summary.json, log histories; no models) to
#    experiments/dpo-loss-beta/runs/, which is committed;
# 2. tabulate that archive into results/. tests/test_studies.py re-runs the command that results/README.md records
#    and checks that it makes the committed table.md, table.tex and runs.csv.
# `report.sh --from-archive` does step 2 alone (no run folders needed: a fresh clone can check the tables).
set -euo pipefail
ROOT=${ROOT:-runs}
ALIGNLAB=${ALIGNLAB:-.venv/bin/alignlab}
HERE=experiments/dpo-loss-beta
METRICS=(safety/harmful_compliance_rate/bundled_harmful safety/harmful_compliance_rate/harmbench
         safety/over_refusal_rate/bundled_benign safety/over_refusal_rate/xstest_safe
         bias/crows_pairs_stereotype_pct eval/kl_to_ref eval/dpo_reward_accuracy/prefs)
LABEL=(pipeline.name algo.dpo.loss_type algo.dpo.beta)

if [ "${1:-}" != "--from-archive" ]; then
  mapfile -t SWEEPS < <(ls -td "$ROOT"/sweeps/safety-smollm-dpo-on-sft/*/ | head -n 4)  # run.sh step 3's four
  SFT_ONLY=$(dirname "$(grep -l "^  name: sft-only$" "$ROOT"/safety-smollm-dpo-on-sft/*/config.yaml | head -n 1)")
  PPO=$(ls -td "$ROOT"/safety-smollm-ppo-on-sft/*/ | head -n 1)
  PPO_LAG=$(ls -td "$ROOT"/safety-smollm-ppo-lag-on-sft/*/ | head -n 1)
  BASE=$(dirname "$(ls -td "$ROOT"/safety-smollm-sft/*/sft/DONE | head -n 1)")/..
  rm -rf "$HERE/runs"
  mkdir -p "$HERE/results"
  cp "$BASE/report.md" "$HERE/results/base-report.md"  # the shared start: the instruct model's evaluation
  $ALIGNLAB report "${SWEEPS[@]}" "$SFT_ONLY" "$PPO" "$PPO_LAG" --archive "$HERE/runs" --out "$ROOT/reports/dpo-loss-beta" \
    --metrics "${METRICS[@]}" --label "${LABEL[@]}"
fi
$ALIGNLAB report "$HERE/runs" --out "$HERE/results" --metrics "${METRICS[@]}" --label "${LABEL[@]}"
