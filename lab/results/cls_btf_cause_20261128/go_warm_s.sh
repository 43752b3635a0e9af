#!/usr/bin/env bash
# The warm variant of go.sh for one more seed, only the stages it needs (go.sh's `--stage all
# --linear-head --no-selftrain` also fine-tuned and evaluated direct transfer, which seed 1 and
# the CLS table have already): head phase, btf, fine-tuning (one linear head), evaluation.
# Usage: go_warm_s.sh SEED. One process, one core.
set -u
cd /work/wt_cls
S=$1
X=(python -m xlt_engine.cli run --config configs/e5-small-cls.toml --no-progress
   --set data.max_train=1000000 --set data.max_unlabeled=1000000 --set 'targets=["jp"]'
   --set data.root=.gpu_tables_cls/data --set device=cpu --set seed="$S")
export PYTHONPATH=. OMP_NUM_THREADS=1
PATH=$PWD/.venv/bin:$PATH
R=runs/btf_cause
base=$R/head_s$S/en-jp/btf/base-model
if [ ! -d "$base" ]; then
  rm -rf "$R/head_s$S"
  "${X[@]}" --stage btf --set model.path=models/e5-small-gpu-cls --set 'btf.freeze_layers="all"' \
    --set btf.train.lr=1e-3 --set btf.train.epochs=2 --out "$R/head_s$S" > "$R/head_s$S.log" 2>&1
  rc=$?; echo "$(date -u +%H:%M:%S) head seed $S rc=$rc"
fi
[ -d "$base" ] || exit 1
W=("${X[@]}" --set "model.path=\"$base\"" --linear-head)
O=$R/warm_s$S
if [ ! -d "$O/en-jp/btf/base-model" ]; then
  "${W[@]}" --stage btf --out "$O" >> "$O.log" 2>&1
  rc=$?; echo "$(date -u +%H:%M:%S) warm btf seed $S rc=$rc"
fi
m=$O/en-jp/finetune-linear/model
if [ ! -d "$m" ]; then
  "${W[@]}" --stage finetune --out "$O" >> "$O.log" 2>&1
  rc=$?; echo "$(date -u +%H:%M:%S) warm finetune seed $S rc=$rc"
fi
"${W[@]}" --stage evaluate --set "evaluate.model=\"$m\"" --out "$O/eval" >> "$O.log" 2>&1
rc=$?; echo "$(date -u +%H:%M:%S) warm evaluate seed $S rc=$rc"
