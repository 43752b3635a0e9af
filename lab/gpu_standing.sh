#!/usr/bin/env bash
# Issue 58's standing GPU check in ONE device call (the budget is 15 device minutes a loan, a
# cold start takes one or two, and a machine idle for 30 s is given back, so a second call is
# not to be counted on):
#
#   1. the wheels the machine lacks (click, pytest, hypothesis, ...) from the carried .whl/;
#   2. the paper-scale self-training study (lab/study_rules_gpu.sh run, --budget STUDY_S), and
#      beside it the CUDA tests (benchmarks/gpu_check.sh --only tests): the tests judge
#      correctness only, so sharing the GPU with the study costs them nothing but wall time;
#   3. on the then quiet GPU, the kernel timings: the ops new since the last loan first
#      (kl, mse), then the rest while TOTAL_S allows (bench kernels writes its files only at the
#      end of a run, so each run is sized to finish).
#
#   bash benchmarks/fetch_wheels.sh && bash lab/study_rules_gpu.sh prepare     # here, once
#   run(carry=[".gpu_e5", ".gpu_data", ".whl"], timeout_s=590,
#       command="bash lab/gpu_standing.sh")                                     # the device
#   (STUDY_S, TOTAL_S: the study's and the whole call's seconds; STUDY_ARGS: more lab/study.py
#   arguments, shell words, e.g. STUDY_ARGS="--rows 'Ours,- ST' --set selftrain.soft_loss=kl";
#   STUDY=stage2 [ARM=...]: issue 54's stage 2 in place of the paper-scale study, after
#   TARGETS="esp ned" bash lab/study_rules_gpu.sh prepare here: see that script)
#
# Everything is written to a work folder and packed at the end into $OUT/standing.tgz (the device
# tool returns at most 8 files, two folders down: on 2026-11-26 the loose files of one call were
# mostly left behind): study/ (the study's report, log and every stage's summary), tests/ and
# kernels-*/ (gpu_check.sh's folders), steps.txt (each part's rc and seconds); steps.txt is also
# copied beside the archive. Unpack here with `tar xzf standing.tgz -C DIR`.
set -uo pipefail
cd "$(dirname "$0")/.."
dest="${OUT:?OUT: the folder results go to}"
out="${WORK_DIR:-/tmp/gpu_standing}"
pack() { tar czf "$dest/standing.tgz" -C "$out" . && cp "$out/steps.txt" "$dest/" 2>/dev/null; }
trap pack EXIT
trap 'exit 143' TERM INT
study_s="${STUDY_S:-420}" total_s="${TOTAL_S:-570}"
t0=$SECONDS
mkdir -p "$out" || exit 2
log() { printf '%-22s rc=%-4s %4ss (at %ss)\n' "$1" "$2" "$3" "$((SECONDS - t0))" | tee -a "$out/steps.txt"; }

python3 -m pip install -q --no-index --find-links .whl pytest hypothesis click tokenizers safetensors numpy \
  > "$out/wheels.log" 2>&1
log wheels $? $((SECONDS - t0))

s=$SECONDS
bash benchmarks/gpu_check.sh --only tests --out "$out/tests" > "$out/tests.log" 2>&1 &
tests_pid=$!
eval "extra=(${STUDY_ARGS:-})"  # shell words: quotes group, as on a command line
OUT="$out/study" bash lab/study_rules_gpu.sh run --budget "$study_s" "${extra[@]}"
log study $? $((SECONDS - s))
wait "$tests_pid"
log tests $? $((SECONDS - s))
tail -n 8 "$out/tests/logs/tests.log" 2>/dev/null

# kernels: one run per group, while the time left covers the group's usual length
kernels() {  # NAME SECONDS_NEEDED ARGS...
  local name="$1" need="$2"; shift 2
  local left=$((total_s - (SECONDS - t0)))
  if [ "$left" -lt "$need" ]; then log "kernels-$name" skip 0; return; fi
  local s=$SECONDS
  mkdir -p "$out/kernels-$name"
  timeout --kill-after=5 "$left" python3 -m benchmarks.bench_kernels --provider triton --provider torch \
    --provider hf "$@" --out "$out/kernels-$name" > "$out/kernels-$name/bench.log" 2>&1
  log "kernels-$name" $? $((SECONDS - s))
}
export PYTHONPATH=. TRITON_DEFAULT_FP_FUSION=1
kernels new 60 --op kl --op mse
kernels mlm 90 --op mlm
kernels rest 60 --op voters --op threshold --op supcon
echo "done at $((SECONDS - t0)) s"
