"""Bytes a self-training round writes, this checkout against an earlier commit, in one run.

Runs ``bench_round`` (this checkout's script) twice at mBERT-base shapes (random weights, the
real 119,547-token vocabulary, a few sentences of CoNLL English -> Spanish, one step each of
soft and hard): once on the xlt_engine of ``--before`` (a temporary git worktree; by default
b806244, the last commit before a stage stopped writing the loop's final checkpoint, AdamW
state included, and before the round's model became a link instead of a third copy) and once
on this checkout's. Prints the bytes each wrote (``/proc/self/io`` wchar: every write call of
the process) and the ratio, and appends both records to
``benchmarks/results/round_writes_<device>_<date>.json``.

    OMP_NUM_THREADS=1 python -m benchmarks.compare_round_writes --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.record import append, environment

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the shared data folder")
    p.add_argument("--before", default="b806244", help="the earlier commit")
    p.add_argument("--limit", type=int, default=16, help="sentences per file")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tiny", action="store_true", help="2 layers, hidden 64 (a smoke run)")
    p.add_argument("--no-save", action="store_true")
    return p.parse_args(argv)


def bench(engine_root: Path, args: argparse.Namespace, tmp: Path, name: str) -> dict:
    """``bench_round`` of this checkout with the ``xlt_engine`` package of ``engine_root``."""
    paths = tmp / f"path-{name}"
    paths.mkdir()
    (paths / "xlt_engine").symlink_to(engine_root / "xlt_engine")
    (paths / "benchmarks").symlink_to(ROOT / "benchmarks")
    out = tmp / f"{name}.json"
    cmd = [sys.executable, "-m", "benchmarks.bench_round", "--data", str(args.data.resolve()),
           "--device", "cpu", "--limit", str(args.limit), "--batch", str(args.batch),
           "--no-save", "--json", str(out), "--work", str(tmp / f"work-{name}")]  # fmt: skip
    if args.tiny:
        cmd.append("--tiny")
    env = {**os.environ, "PYTHONPATH": str(paths)}
    subprocess.run(cmd, check=True, env=env, cwd=tmp, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    records = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        old = tmp / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old),
                        args.before], check=True, capture_output=True)  # fmt: skip
        try:
            records.append(bench(old, args, tmp, "before"))
            records.append(bench(ROOT, args, tmp, "after"))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                           check=False, capture_output=True)  # fmt: skip
    env = environment(torch.device("cpu"), "compare_round_writes.py", argv)
    before, after = records
    ratio = after["written_mib"] / before["written_mib"]
    summary = {
        "what": "bytes one self-training round writes: an earlier commit against this one",
        **env,
        "before": {"git_sha": before["git_sha"], "written_mib": before["written_mib"]},
        "after": {"git_sha": after["git_sha"], "written_mib": after["written_mib"]},
        "ratio": round(ratio, 3),
        "shape": after["shape"],
        "records": records,
    }
    if not args.no_save:
        append("round_writes", torch.device("cpu"), summary)
    s = after["shape"]
    print(f"L={s['layers']} H={s['hidden']} V={s['vocab']} voters={s['voters']}, "
          f"{args.limit} sentences a side, one round")  # fmt: skip
    print(f"{'commit':<14}{'written MiB':>12}{'soft s':>8}{'hard s':>8}")
    for r in records:
        secs = {row["part"]: row["seconds"] for row in r["rows"]}
        print(f"{r['git_sha'][:12]:<14}{r['written_mib']:>12,.1f}{secs['soft']:>8.1f}"
              f"{secs['hard']:>8.1f}")  # fmt: skip
    print(f"after / before: {ratio:.3f}")
    return [summary]


if __name__ == "__main__":
    main()
