#!/usr/bin/env bash
# stop each job at the start of its self-training and evaluate its teacher apart
cd /work/wt_cls
d=runs/jp_diag/runs/seed-1/en-jp
ev() {  # folder-of-model out
  PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python -m xlt_engine.cli run --stage evaluate \
    --config configs/e5-small-cls.toml --set data.max_train=1000000 --set data.max_unlabeled=1000000 \
    --set 'targets=["jp"]' --set data.root=.gpu_tables_cls/data --set model.path=models/e5-small-gpu-cls \
    --set device=cpu --set seed=1 --set "evaluate.model=\"$1\"" --out "$2" --no-progress
}
one() {  # stage pid
  until [ -f "$d/$1/summary.json" ]; do sleep 20; done
  kill -TERM "$2"; echo "$(date -u +%H:%M:%S) $1 done, stopped pid $2"
  sleep 5
  ev "$d/$1/model" "runs/jp_diag/early/$1" > "runs/jp_diag/eval_$1.log" 2>&1
  echo "$(date -u +%H:%M:%S) eval $1 rc=$?"
}
kill -KILL 32676
one finetune-direct 32678 &
one finetune-linear 32680 &
wait
