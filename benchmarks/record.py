"""What every benchmark result says about where it ran, and where it is appended.

``environment`` gives the common head of a result record (date, device, threads, versions, the
exact command); ``append`` adds a record as one JSON line to
``benchmarks/results/<name>_<device>_<yyyymmdd>.json`` (device ``cpu`` off CUDA), or under the
folder in ``XLT_BENCH_RESULTS`` when set (``gpu_check.sh`` points it at its output folder).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import torch

from xlt_engine import provenance

RESULTS = Path(__file__).resolve().parent / "results"


def environment(device: torch.device, script: str, argv: list[str] | None) -> dict:
    """``script``: the benchmark's file name; ``argv``: its arguments (None: ``sys.argv``)."""
    command = f"python -m benchmarks.{script.removesuffix('.py')} "
    return {
        **provenance.environment(device),
        "command": command + shlex.join(argv if argv is not None else sys.argv[1:]),
    }


def append(name: str, device: torch.device, record: dict) -> Path:
    """Add ``record`` as one JSON line to ``provenance.result_file(RESULTS, name, device)``."""
    folder = Path(os.environ.get("XLT_BENCH_RESULTS") or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    out = provenance.result_file(folder, name, device)
    with out.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended to {out}")
    return out
