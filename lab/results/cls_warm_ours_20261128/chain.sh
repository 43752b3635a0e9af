#!/usr/bin/env bash
# Pre-registered warm rows (../cls_btf_cause_20261128/README.md), seed 3: once the - ST job of
# TARGET SEED (process PID, optional) has ended, the same lab.study job again with Ours and soft
# only added: btf, fine-tuning and the - ST evaluation are reused from its runs folder, then
# self-training (hours a core on this CPU; it spans sessions). Rerun without PID to resume: a
# stopped step restarts from its last checkpoint. Usage: chain.sh TARGET SEED [PID]
set -u
t=$1 s=$2 pid=${3:-}
if [ -n "$pid" ]; then while kill -0 "$pid" 2>/dev/null; do sleep 30; done; fi
reports=/work/wt_cls/runs/warm/reports
for f in "$reports"/study_cls_warm_"${t}_s$s"_*.json "$reports"/study_cls_warm_"${t}_s$s"_*.md; do
  # the - ST job's own report, kept before the longer job writes its report under the same name
  [ -f "$f" ] && [ ! -f "$reports/st-only/$(basename "$f")" ] && mkdir -p "$reports/st-only" && cp "$f" "$reports/st-only/"
done
exec bash /work/main/lab/results/cls_warm_st_20261128/go.sh "$t" "$s" '- ST,Ours,soft only'
