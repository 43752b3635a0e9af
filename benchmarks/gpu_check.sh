#!/usr/bin/env bash
# The GPU check, in one call on a bare CUDA machine (python3 with torch, triton, transformers):
# CUDA tests first, then the kernel table, then the encoder, BTF-step and round benchmarks, then
# a compact table. Each step has its own time limit; logs and result files go to the output
# folder, so whatever finished before a time-out is kept. Run from the repository root:
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--data DIR] [--with compile,liger,cce] [--wheels DIR]
#   bash benchmarks/gpu_check.sh --dry-run --out /tmp/check      # every step, on CPU, tiny sizes
#
#   --out DIR     results folder (default: $OUT when set, else benchmarks/results/gpu_check)
#   --data DIR    a folder with mbert/vocab.txt, conll2003_en/eng.train, conll2002/esp.train
#                 (benchmarks/make_sample.py makes one); default: a generated one of mBERT's size
#   --with LIST   opt-in kernel baselines: compile (torch.compile, slow to build), liger
#                 (Liger-Kernel's fused linear cross-entropy at four chunk settings), cce (Cut
#                 Cross-Entropy); the last two need their wheels (--wheels)
#   --wheels DIR  pip-install the test-only packages (pytest, hypothesis, ...) and the kernel
#                 baselines from these wheels (benchmarks/fetch_wheels.sh downloads them)
#   --dry-run     CPU only, tiny sizes: checks that every step runs and lands its files
#   (one device call runs at most 10 minutes, and the steps' limits add up to more: run it as
#   two calls, --only tests,kernels,encoder_amp,encoder_bf16 then --only btf_step,round; with
#   --with, --only kernels as a call of its own)
#   --only LIST   run only these steps (e.g. btf_step,round to measure again after a fix; the
#                 steps: tests kernels encoder btf_step round, and on a GPU encoder_amp and
#                 encoder_bf16 in place of encoder, selftrain: the self-training tests
#                 marked "device", which run on the default device, so here on the GPU, and
#                 soft_rows: where the soft losses' time goes, and their row kernels' tiles
#                 (benchmarks/tune_soft_rows.py, its log in logs/soft_rows.log))
set -uo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-benchmarks/results/gpu_check}"
data="" with="" wheels="" dry=0 only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --with) with="$2"; shift 2 ;;
    --wheels) wheels="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --only) only="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
for w in ${with//,/ }; do
  case "$w" in compile|liger|cce) ;; *) echo "gpu_check.sh: --with takes compile, liger and cce, got '$w'" >&2; exit 2 ;; esac
done
if [ $dry -eq 1 ]; then known="tests kernels encoder btf_step round"
else known="tests kernels encoder_amp encoder_bf16 btf_step round selftrain soft_rows"; fi
for o in ${only//,/ }; do
  case " $known " in *" $o "*) ;; *) echo "gpu_check.sh: --only takes steps of: $known; got '$o'" >&2; exit 2 ;; esac
done
mkdir -p "$out/logs" || exit 2
out="$(cd "$out" && pwd)"
: > "$out/steps.txt"
export PYTHONPATH=. PYTHONUNBUFFERED=1 XLT_BENCH_RESULTS="$out" TRITON_DEFAULT_FP_FUSION=1

# step NAME SECONDS COMMAND...: run with a time limit, log to logs/NAME.log, show its tail (a
# step --only leaves out is neither run nor listed in steps.txt)
step() {
  local name="$1" limit="$2"; shift 2
  if [ -n "$only" ] && [ "$name" != wheels ] && [ "$name" != baselines ] && [[ ",$only," != *",$name,"* ]]; then return; fi
  local t0=$SECONDS rc
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$out/logs/$name.log" 2>&1
  rc=$?
  tail -n 15 "$out/logs/$name.log"
  [ $rc -eq 124 ] && echo "   timed out after ${limit}s"
  printf '%-16s rc=%-4s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" >> "$out/steps.txt"
}

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null || echo "no git"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"

if [ -n "$wheels" ]; then
  step wheels 120 python3 -m pip install --no-index --find-links "$wheels" pytest hypothesis click tokenizers safetensors numpy
  baselines=""  # the kernel baselines whose wheels are there (no dependencies beyond torch, triton)
  ls "$wheels"/liger_kernel-*.whl > /dev/null 2>&1 && baselines="$baselines liger-kernel"
  ls "$wheels"/cut_cross_entropy-*.whl > /dev/null 2>&1 && baselines="$baselines cut-cross-entropy"
  [ -n "$baselines" ] && step baselines 60 python3 -m pip install --no-index --no-deps --find-links "$wheels" $baselines
fi
python3 - > "$out/logs/imports.log" 2>&1 <<'EOF'
import importlib.util
need = ["torch", "triton", "transformers", "pytest", "hypothesis", "click", "tokenizers", "safetensors", "numpy"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
print("missing:", ", ".join(missing) if missing else "none")
baselines = {m: importlib.util.find_spec(m) is not None for m in ("liger_kernel", "cut_cross_entropy")}
print("kernel baselines:", ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in baselines.items()))
EOF
cat "$out/logs/imports.log"

if [ -z "$data" ]; then
  data="$(mktemp -d)/sample"
  python3 -m benchmarks.make_sample --out "$data" --sentences $([ $dry -eq 1 ] && echo 60 || echo 2000) > "$out/logs/sample.log" 2>&1 \
    || { cat "$out/logs/sample.log"; exit 1; }
fi

providers="--provider triton --provider torch --provider hf"
for w in ${with//,/ }; do providers="$providers --provider $w"; done

if [ $dry -eq 1 ]; then
  tiny_encoder="--device cpu --layers 1 --hidden 64 --heads 2 --intermediate 128 --vocab 1000 --batch 2 --seq 16 --warmup 1 --iters 1"
  step tests 300 python3 -m pytest -q -m cuda tests/kernels -p no:cacheprovider
  step kernels 300 python3 -m benchmarks.bench_kernels --device cpu --reps 1 --provider torch --out "$out"
  step encoder 120 python3 -m benchmarks.bench_encoder $tiny_encoder --precision fp32
  step btf_step 120 python3 -m benchmarks.bench_btf_step --data "$data" --device cpu --tiny --warmup 1 --iters 1
  step round 300 python3 -m benchmarks.bench_round --data "$data" --device cpu --tiny --limit 30 --batch 8 --max-len 32
else
  step tests 150 python3 -m pytest -q -m cuda tests -p no:cacheprovider
  step kernels $((180 + 60 * $(echo $with | tr ',' ' ' | wc -w))) python3 -m benchmarks.bench_kernels $providers --out "$out"
  step encoder_amp 60 python3 -m benchmarks.bench_encoder --precision autocast-bf16
  step encoder_bf16 60 python3 -m benchmarks.bench_encoder --precision bf16
  step btf_step 240 python3 -m benchmarks.bench_btf_step --data "$data"  # + bf16-pure, compile, graphs
  step round 75 python3 -m benchmarks.bench_round --data "$data"
  step selftrain 240 python3 -m pytest -q -m device tests/engine/method/test_selftrain.py -p no:cacheprovider
  step soft_rows 200 python3 -m benchmarks.tune_soft_rows --quick
fi

python3 -m benchmarks.summarize "$out" | tee "$out/summary.txt"
! grep -qv " rc=0 " "$out/steps.txt"
