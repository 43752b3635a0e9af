#!/usr/bin/env bash
# Pre-registered warm rows (lab/results/cls_btf_cause_20261128/README.md): - ST with
# btf.head_warmup_epochs=2, CLS preset as gpu_tables.sh runs it. Usage: go.sh TARGET SEED ROWS
set -u
cd /work/wt_cls
t=$1 s=$2 rows=$3
export PYTHONPATH=. PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/python -m lab.study --config configs/e5-small-cls.toml --set data.max_train=1000000 \
  --set data.max_unlabeled=1000000 --set btf.head_warmup_epochs=2 \
  --name "cls_warm_${t}_s$s" --seeds "$s" --rows "$rows" --out "runs/warm/cls_warm_${t}_s$s" \
  --results runs/warm/reports \
  --how "runs/warm/go.sh $t $s '$rows' (worktree at 46a48cd): CLS preset, btf.head_warmup_epochs=2, target $t, seed $s, on cpu" \
  --set "targets=[\"$t\"]" --set data.root=.gpu_tables_cls/data --set model.path=models/e5-small-gpu-cls \
  --set device=cpu
