#!/usr/bin/env bash
# Which part of BTF breaks CLS books Japanese (issue 64)? Two variants of the - VM row's teacher
# (BTF, then one linear head; stopped before self-training, evaluated on en and jp test), each
# changing one thing of BTF as configs/e5-small-cls.toml ships it:
#   en_only: BTF reads English text only (the Japanese text slot holds the English train
#            reviews' plain text, so both halves of BTF's mix are English);
#   warm:    the fresh MLM head is first trained alone (every encoder layer and the embeddings
#            frozen: btf.freeze_layers = "all", 2 epochs of 1,600 windows at lr 1e-3), then
#            BTF runs as shipped from that model.
# Run from a worktree (/work/wt_cls) prepared as lab/gpu_tables.sh's CLS table. Usage: go.sh SEED
# (one process, one core; run two seeds or variants side by side). Resumable: rerun skips
# finished stages (--resume).
set -u
cd /work/wt_cls
S=$1
X=(python -m xlt_engine.cli run --config configs/e5-small-cls.toml --no-progress
   --set data.max_train=1000000 --set data.max_unlabeled=1000000 --set 'targets=["jp"]'
   --set data.root=.gpu_tables_cls/data --set device=cpu --set seed="$S")
export PYTHONPATH=. OMP_NUM_THREADS=1
PATH=$PWD/.venv/bin:$PATH
R=runs/btf_cause
variant=${2:-both}
if [ "$variant" = en_only ] || [ "$variant" = both ]; then
  "${X[@]}" --resume --stage all --linear-head --no-selftrain --set model.path=models/e5-small-gpu-cls \
    --set "languages.jp.text=\"$PWD/$R/en.txt\"" --out "$R/en_only_s$S" > "$R/en_only_s$S.log" 2>&1
  rc=$?; echo "$(date -u +%H:%M:%S) en_only seed $S rc=$rc"
fi
if [ "$variant" = warm ] || [ "$variant" = both ]; then
  base=$R/head_s$S/en-jp/btf/base-model
  if [ ! -d "$base" ]; then  # a short stage: rerun whole (single-stage --resume needs a checkpoint)
    rm -rf "$R/head_s$S"
    "${X[@]}" --stage btf --set model.path=models/e5-small-gpu-cls \
      --set 'btf.freeze_layers="all"' --set btf.train.lr=1e-3 --set btf.train.epochs=2 \
      --out "$R/head_s$S" > "$R/head_s$S.log" 2>&1
    rc=$?; echo "$(date -u +%H:%M:%S) head seed $S rc=$rc"
  fi
  [ -d "$base" ] || exit 1
  "${X[@]}" --resume --stage all --linear-head --no-selftrain --set "model.path=\"$base\"" \
    --out "$R/warm_s$S" > "$R/warm_s$S.log" 2>&1
  rc=$?; echo "$(date -u +%H:%M:%S) warm seed $S rc=$rc"
fi
