#!/usr/bin/env bash
# Where the rule study's self-training loses its points: each step's student of a finished
# seed and target of lab/study_rules_conll_e5small.sh (round 1's soft student, shared by
# every rule; each rule's round-1 hard student; the final model, round 2's soft student, is the
# study's own row), evaluated on the full test file with the study's settings. Arguments: the
# runs folder of the seed (e.g. runs/study-rules/seed-1), the target, the seed.
#   OMP_NUM_THREADS=1 bash lab/study_rules_steps.sh runs/study-rules/seed-1 esp 1
set -euo pipefail
cd "$(dirname "$0")/.."
runs=$1 target=$2 seed=$3
sets=(--set data.root=../shared/data --set "targets=[\"$target\"]" --set device=cpu
  --set data.max_train=2400 --set data.max_unlabeled=1200 --set data.max_dev=200
  --set "out=\"$runs\"" --set "seed=$seed")
pair="$runs/eng-$target"
for model in selftrain/round-1/soft selftrain/round-1/hard selftrain-per_class_precision/round-1/hard \
    selftrain-class_quota/round-1/hard; do
  "${PYTHON:-python}" -m xlt_engine.cli run --stage evaluate --config configs/e5-small-conll.toml \
    --no-progress "${sets[@]}" --set "evaluate.model=\"$pair/$model/model\""
done
