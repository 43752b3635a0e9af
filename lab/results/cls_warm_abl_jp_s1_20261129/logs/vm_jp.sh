#!/bin/bash
# - VM on jp seed 1 beside the - AT job, in its folder: btf taken from it once it is done (its
# teacher fine-tuning folder has begun); own linear-head teacher and self-training.
cd /work/wt_cls || exit 1
until [ -f runs/tables_cpu_cls/runs/cls_warm_jp_s1_at/seed-1/en-jp/finetune/run.json ]; do sleep 20; done
date
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=. PYTHONUNBUFFERED=1 /work/main/.venv/bin/python -m lab.study --config configs/e5-small-cls.toml \
  --set data.max_train=1000000 --set data.max_unlabeled=1000000 --name gpu_tables_cls_warm_jp_s1_vm \
  --seeds 1 --rows "- VM" --out runs/tables_cpu_cls/runs/cls_warm_jp_s1_at \
  --results runs/tables_cpu_cls/reports \
  --how "lab/gpu_tables.sh job cls_warm_jp_s1_vm (CLS): target jp, seed 1, on cpu; beside cls_warm_jp_s1_at, in its folder (btf shared)" \
  --set 'targets=["jp"]' --set data.root=.gpu_tables_cls/data --set model.path=models/e5-small-gpu-cls --set device=cpu
echo "rc=$?"; date
