#!/usr/bin/env bash
# Issue 54, stage 2 (test data), pre-registered 2026-11-26 before stage 1 ended: + BTF (- ST),
# Ours (student_init base, pseudo_rule paper) and the best stage-1 arm (the highest mean over
# the Spanish and Dutch dev means; give its row name, e.g. 'init = teacher; rule = class_quota'),
# with the WHOLE target train file as unlabeled text (as TSL does: esp.train 8,323 sentences,
# ned.train 15,806), scored on the full test files (esp.testb 1,517, ned.testb 5,195). The
# other settings are stage 1's (lab/study_init_conll_e5small.sh), each step's student still
# scored on 600 English and target dev sentences by its check. German has no train file: its
# only unlabeled text is deu.testa (2,867 sentences), which stage 1 left out; it runs here with
# that text when asked (--set 'targets=["deu"]'), and the table says so. Resumable: the same
# command continues. One target and seed per process:
#   OMP_NUM_THREADS=1 bash lab/study_init_conll_e5small_stage2.sh 'init = teacher' --seeds 1 \
#     --name conll_init_stage2_e5small_esp_seed1_cpu --set 'targets=["esp"]'
set -euo pipefail
cd "$(dirname "$0")/.."
arm="${1:?give the row name of the best stage-1 arm first}"
shift
exec bash lab/study_init_conll_e5small.sh --name conll_init_stage2_e5small_cpu \
  --out runs/study-init-stage2 \
  --rows "- ST,Ours,$arm" \
  --how "Stage 2 of issue 54 (test data): stage 1's settings with the whole target train file as unlabeled text (esp.train 8,323 / ned.train 15,806 sentences; German: deu.testa, its only text), every row scored on the full test files (esp.testb 1,517 / ned.testb 5,195 / deu.testb 3,005 sentences), each step's student on 600 English and target dev sentences; arms + BTF, Ours (student_init base, paper) and the best stage-1 arm, $arm" \
  --set data.max_unlabeled=1000000 --set evaluate.split=test \
  "$@"
