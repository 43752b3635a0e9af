#!/usr/bin/env bash
# Copy the records (no weights, no caches) of runs/btf_cause in the worktree into this folder.
set -u
src=/work/wt_cls/runs/btf_cause
dst=$(cd "$(dirname "$0")" && pwd)/runs
cd "$src" || exit 1
find . \( -name metrics.jsonl -o -name run.json -o -name results.json -o -name results.md \
  -o -name summary.json -o -name dev.json -o -name config.json \) -not -path '*/model/*' \
  -not -path '*/base-model/*' -not -path '*/ckpt-*' | while read -r f; do
  mkdir -p "$dst/$(dirname "$f")" && cp "$f" "$dst/$f"
done
mkdir -p "$dst/logs" && cp ./*.log "$dst/logs/"
