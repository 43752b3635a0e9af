#!/usr/bin/env bash
# Japanese seeds 2 and 3: the - VM row's teacher (btf + one linear head), stopped when its
# model is written (before self-training) and evaluated apart. One process a seed.
cd /work/wt_cls
study() {  # SEED
  PYTHONPATH=. OMP_NUM_THREADS=1 exec .venv/bin/python -m lab.study --config configs/e5-small-cls.toml \
    --set data.max_train=1000000 --set data.max_unlabeled=1000000 --name "gpu_tables_cls_jp_s$1_vm" \
    --seeds "$1" --rows "- VM" --out runs/jp_diag/runs --results runs/jp_diag/reports \
    --set 'targets=["jp"]' --set data.root=.gpu_tables_cls/data --set model.path=models/e5-small-gpu-cls \
    --set device=cpu
}
ev() {  # SEED MODEL OUT
  PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python -m xlt_engine.cli run --stage evaluate \
    --config configs/e5-small-cls.toml --set data.max_train=1000000 --set data.max_unlabeled=1000000 \
    --set 'targets=["jp"]' --set data.root=.gpu_tables_cls/data --set model.path=models/e5-small-gpu-cls \
    --set device=cpu --set seed="$1" --set "evaluate.model=\"$2\"" --out "$3" --no-progress
}
one() {  # SEED
  local m="runs/jp_diag/runs/seed-$1/en-jp/finetune-linear/model"
  study "$1" > "runs/jp_diag/gpu_tables_cls_jp_s$1_vm.log" 2>&1 &
  local pid=$!
  until [ -d "$m" ]; do sleep 10; kill -0 $pid 2>/dev/null || break; done
  kill -TERM $pid; wait $pid; echo "$(date -u +%H:%M:%S) seed $1 finetune-linear rc=$? (stopped at self-training)"
  ev "$1" "$m" "runs/jp_diag/early/s$1/finetune-linear" > "runs/jp_diag/eval_s$1_finetune-linear.log" 2>&1
  echo "$(date -u +%H:%M:%S) eval seed $1 rc=$?"
}
one 2 &
one 3 &
wait
