#!/bin/bash
# Soft only on jp seeds 2 and 3, each beside its Ours job, in its folder (btf, the teacher and
# round 1's soft step taken from Ours'), its own name and reports folder; one at a time.
cd /work/wt_cls || exit 1
for s in 2 3; do
  until [ -f runs/tables_cpu_cls/runs/cls_warm_jp_s$s/seed-$s/en-jp/selftrain-rounds2/round-1/filter.json ]; do sleep 30; done
  date
  OMP_NUM_THREADS=1 /work/main/.venv/bin/python -m lab.study --config configs/e5-small-cls.toml \
    --set data.max_train=1000000 --set data.max_unlabeled=1000000 --name gpu_tables_cls_warm_jp_s${s}_softonly \
    --seeds $s --rows "soft only" --out runs/tables_cpu_cls/runs/cls_warm_jp_s$s \
    --results runs/tables_cpu_cls/reports_softonly \
    --how "lab/gpu_tables.sh job cls_warm_jp_s$s (CLS): target jp, seed $s, on cpu; soft only beside Ours, in its folder" \
    --set 'targets=["jp"]' --set data.root=.gpu_tables_cls/data --set model.path=models/e5-small-gpu-cls --set device=cpu
  echo "seed $s rc=$?"; date
done
