#!/usr/bin/env bash
# Issue 54, stage 1 (dev data): where the self-training student starts, crossed with the
# pseudo-label rule, on CPU with multilingual-e5-small, CoNLL English -> Spanish and Dutch.
# Rows (pre-registered, 2026-11-26, before any result): + BTF (- ST), Ours (student_init base,
# pseudo_rule paper), rule = class_quota (base), init = teacher (paper), init = teacher; rule =
# class_quota. Settings: those of the rule study (lab/study_rules_conll_e5small.sh, fixed before
# it), with 600 dev sentences per dev file (drawn by the seed) and every row scored on the dev
# files (evaluate.split = dev); each step's student is scored on English and target dev by its
# check record. German is left out of stage 1: it has no train file, its unlabeled text is
# deu.testa, which is also its only dev file. Finished stages are reused, so the same command
# resumes. One target per process (both cores):
#   OMP_NUM_THREADS=1 bash lab/study_init_conll_e5small.sh --seeds 1 \
#     --name conll_init_stage1_e5small_esp_seed1_cpu --set 'targets=["esp"]'
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash lab/study_rules_conll_e5small.sh --name conll_init_stage1_e5small_cpu \
  --out runs/study-init \
  --rows '- ST,Ours,rule = class_quota,init = teacher,init = teacher; rule = class_quota' \
  --how "Stage 1 of issue 54 (dev data): CoNLL English (eng.train) -> Spanish, Dutch: 2,400 source sentences, 1,200 unlabeled target sentences (esp.train, ned.train: tags unread), 600 English and 600 target dev sentences (eng.testa, esp.testa / ned.testa), each drawn by the seed; every row scored on those dev sentences; inputs cut to 64 tokens; btf 1,600 windows (batch 32, lr 1e-4, a fresh MLM head), finetune 2 epochs (batch 16, lr 3e-4), self-training N = 1.5 with 3 epochs per soft step (lr 1e-4) and 1 per hard step (lr 3e-5), batch 16; head_lr_scale 10 in finetune and both self-training steps, soft_loss kl; the paper's freezing (embeddings and bottom 3 layers), 3 voters; source_filter correct; curvature threshold; class_quota 0.5; student_init base (the Base Model) or teacher (the round's teacher's encoder, fresh voters); all fixed before the study" \
  --set 'targets=["esp","ned"]' --set data.max_dev=600 --set evaluate.split=dev \
  "$@"
