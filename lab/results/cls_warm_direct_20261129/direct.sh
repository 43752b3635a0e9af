#!/bin/bash
# Direct transfer at seeds 1-3 on jp, de, fr. Its fine-tuning reads only English: one a seed,
# the other targets' jobs take it as the engine's pair twin (hard links, run.json shared_from),
# then evaluate. Resumable: a job with a report is skipped.
cd /work/wt_cls || exit 1
W=runs/tables_cpu_cls_direct
for s in 1 2 3; do
  first=""
  for t in jp de fr; do
    job=cls_warm_${t}_s$s
    if ls $W/reports/study_gpu_tables_${job}_2026*.json > /dev/null 2>&1; then
      first=${first:-$t}; continue
    fi
    if [ -n "$first" ]; then
      src=$W/runs/cls_warm_${first}_s$s/seed-$s/en-$first/finetune-direct-linear
      dst=$W/runs/$job/seed-$s/en-$first
      mkdir -p "$dst"
      [ -d "$dst/finetune-direct-linear" ] || cp -al "$src" "$dst/"
    fi
    TABLE=cls WORK_DIR=$W PARALLEL=1 JOBS=$job ROWS="direct transfer" \
      PYTHON=/work/main/.venv/bin/python bash lab/gpu_tables.sh cpu
    first=${first:-$t}
  done
done
