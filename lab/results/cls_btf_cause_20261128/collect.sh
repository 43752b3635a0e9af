#!/usr/bin/env bash
# Copy the records (no weights, no caches) of runs/btf_cause in the worktree into this folder.
# collect.sh [SRC DST]: another run folder's records into DST (lab/results/cls_warm_st_20261128).
set -u
src=${1:-/work/wt_cls/runs/btf_cause}
dst=${2:-$(cd "$(dirname "$0")" && pwd)/runs}
cd "$src" || exit 1
find . \( -name metrics.jsonl -o -name run.json -o -name results.json -o -name results.md \
  -o -name summary.json -o -name dev.json -o -name config.json \) -not -path '*/model/*' \
  -not -path '*/base-model/*' -not -path '*/ckpt-*' | while read -r f; do
  mkdir -p "$dst/$(dirname "$f")" && cp "$f" "$dst/$f"
done
mkdir -p "$dst/logs" && cp ./*.log "$dst/logs/"
