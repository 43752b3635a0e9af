#!/usr/bin/env bash
# Japanese seed 1: the - VM row's teacher (btf + one linear head) and the - BTF row's teacher
# (no btf, the voters), each stopped when self-training starts and evaluated apart.
cd /work/wt_cls
d=runs/jp_diag/runs/seed-1/en-jp
study() {  # ROW NAME
  PYTHONPATH=. OMP_NUM_THREADS=1 exec .venv/bin/python -m lab.study --config configs/e5-small-cls.toml \
    --set data.max_train=1000000 --set data.max_unlabeled=1000000 --name "$2" --seeds 1 --rows "$1" \
    --out runs/jp_diag/runs --results runs/jp_diag/reports --set 'targets=["jp"]' \
    --set data.root=.gpu_tables_cls/data --set model.path=models/e5-small-gpu-cls --set device=cpu
}
ev() {  # MODEL OUT
  PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python -m xlt_engine.cli run --stage evaluate \
    --config configs/e5-small-cls.toml --set data.max_train=1000000 --set data.max_unlabeled=1000000 \
    --set 'targets=["jp"]' --set data.root=.gpu_tables_cls/data --set model.path=models/e5-small-gpu-cls \
    --set device=cpu --set seed=1 --set "evaluate.model=\"$1\"" --out "$2" --no-progress
}
one() {  # ROW NAME STAGE
  study "$1" "$2" > "runs/jp_diag/$2.log" 2>&1 &
  local pid=$!
  until [ -f "$d/$3/summary.json" ]; do sleep 15; kill -0 $pid 2>/dev/null || break; done
  kill -TERM $pid; wait $pid; echo "$(date -u +%H:%M:%S) $3 rc=$? (stopped at self-training)"
  ev "$d/$3/model" "runs/jp_diag/early/$3" > "runs/jp_diag/eval_$3.log" 2>&1
  echo "$(date -u +%H:%M:%S) eval $3 rc=$?"
}
one "- BTF" gpu_tables_cls_jp_s1_btf finetune-direct &
one "- VM" gpu_tables_cls_jp_s1_vm finetune-linear &
wait
