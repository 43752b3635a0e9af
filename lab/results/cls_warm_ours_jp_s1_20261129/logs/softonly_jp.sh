#!/bin/bash
# After runs/direct.sh: soft only on jp seed 1 beside the Ours job, in its folder (btf, the
# teacher and round 1's soft step taken from Ours'), its own name and reports folder.
cd /work/wt_cls || exit 1
while pgrep -f "runs/direct.sh" > /dev/null; do sleep 30; done
# Ours' round-1 soft model (the Partial's marker), and its threshold under way
until [ -f runs/tables_cpu_cls/runs/cls_warm_jp_s1/seed-1/en-jp/selftrain-rounds2/round-1/filter.json ]; do sleep 30; done
date
OMP_NUM_THREADS=1 /work/main/.venv/bin/python -m lab.study --config configs/e5-small-cls.toml \
  --set data.max_train=1000000 --set data.max_unlabeled=1000000 --name gpu_tables_cls_warm_jp_s1_softonly \
  --seeds 1 --rows "soft only" --out runs/tables_cpu_cls/runs/cls_warm_jp_s1 \
  --results runs/tables_cpu_cls/reports_softonly \
  --how "lab/gpu_tables.sh job cls_warm_jp_s1 (CLS): target jp, seed 1, on cpu; soft only beside Ours, in its folder" \
  --set 'targets=["jp"]' --set data.root=.gpu_tables_cls/data --set model.path=models/e5-small-gpu-cls --set device=cpu
echo "rc=$?"; date
