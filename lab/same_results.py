"""Do two checkouts compute the same self-training results? For a refactor that must keep them
bit-identical (issue 67): each checkout runs the quickstart, then five self-training variants on
its task (the paper's rule at N = 2.5; class_quota at N = 2; per_class_precision with whole
sentences and the confident source filter; students from their teacher with the MSE loss,
N = 2.5 and skip_hard; soft only at a fixed alpha 0.6), each in a process of its own, from
the checkout's folder (``python -m`` puts the working directory first on the path). Then every
file of every self-training folder is compared: each tensor of a safetensors file by its
bytes, a JSON / JSONL file by its values with the timings and the run folder's path left out
(run.json, loop-wall.json and fingerprint.json are provenance, not results: left out).

    python lab/same_results.py --before ../wt_before --after . --out /tmp/same

Prints one line per differing item and the count of equal ones; exits 1 if any differs."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "paper N 2.5": ["selftrain.rounds=2.5"],
    "class_quota N 2": ["selftrain.rounds=2", 'selftrain.rule.name="class_quota"'],
    "per_class_precision": [
        'selftrain.rule.name="per_class_precision"',
        'selftrain.filter_unit="sequence"',
        'selftrain.source_filter="confident"',
    ],
    "teacher mse": [
        'selftrain.student_init="teacher"',
        'selftrain.soft_loss="mse"',
        "selftrain.rounds=2.5",
        'selftrain.on_collapse="skip_hard"',
    ],
    "soft only": [
        'selftrain.rule.threshold="fixed"',
        "selftrain.rule.alpha=0.6",
        "selftrain.hard_steps=false",
    ],
}
TIMING = {"wall", "at", "time", "timestamp", "date", "run_id", "run", "started"}  # *seconds*, *_s
# what a run records about itself, not what it computed: provenance and wall time (run.json,
# loop-wall.json) and the fingerprint (paths, and the code: the change under test)
SKIP = {"run.json", "loop-wall.json", "fingerprint.json"}


def _cli(checkout: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [sys.executable, "-m", "xlt_engine.cli", *args]
    done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def run(checkout: Path, out: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    where = subprocess.run([sys.executable, "-c", "import xlt_engine; print(xlt_engine.__file__)"],
                           cwd=checkout, env=env, capture_output=True, text=True).stdout  # fmt: skip
    if not Path(where.strip()).resolve().is_relative_to(checkout):
        raise SystemExit(f"{checkout}: python imports xlt_engine from {where.strip()}, not here")
    qs = out / "qs"
    if not (qs / "quickstart.toml").is_file():
        _cli(checkout, "quickstart", "--out", str(qs), "--no-progress")
    cfg = qs / "quickstart.toml"
    for sets in VARIANTS.values():
        args = [a for s in sets for a in ("--set", s)]
        _cli(checkout, "run", "--stage", "selftrain", "--config", str(cfg), "--no-progress",
             "--resume", *args)  # fmt: skip
    return qs


def _timing(key: str) -> bool:
    return key in TIMING or "seconds" in key or key.endswith("_s")


def _clean(value, root: str):
    if isinstance(value, dict):
        return {k: _clean(v, root) for k, v in value.items() if not _timing(k)}
    if isinstance(value, list):
        return [_clean(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<run>")
    return value


def items(qs: Path) -> dict[str, str]:
    """``{file[:tensor]: digest}`` of every self-training folder under ``qs``."""
    import torch
    from safetensors import safe_open

    root = str(qs.resolve())
    out = {}
    for path in sorted(qs.glob("runs/*/selftrain*/**/*")):
        if not path.is_file() or path.name in SKIP:
            continue
        # a packed store's folder is named by a hash of its spec, paths included
        rel = re.sub(r"\.[0-9a-f]{16}(?=/)", ".<spec>", str(path.relative_to(qs)))
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                for key in f.keys():
                    data = f.get_tensor(key).contiguous().view(-1).view(torch.uint8)
                    out[f"{rel}:{key}"] = hashlib.sha256(data.numpy().tobytes()).hexdigest()
        elif path.suffix in (".json", ".jsonl"):
            lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
            clean = [_clean(json.loads(line), root) for line in lines if line.strip()]
            out[rel] = hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()
        elif path.suffix in (".csv", ".md", ".txt"):
            out[rel] = hashlib.sha256(
                path.read_bytes().replace(root.encode(), b"<run>")
            ).hexdigest()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    found = {}
    for side in ("before", "after"):
        found[side] = items(run(getattr(args, side).resolve(), (args.out / side).resolve()))
    a, b = found["before"], found["after"]
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    for k in differ:
        print(
            f"differs: {k} ({'only after' if k not in a else 'only before' if k not in b else 'values'})"
        )
    print(f"{len(set(a) & set(b)) - len([k for k in differ if k in a and k in b])} items equal, "
          f"{len(differ)} differ, {len(VARIANTS)} variants + the quickstart's own run")  # fmt: skip
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
