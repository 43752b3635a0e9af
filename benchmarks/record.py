"""What every benchmark result says about where it ran, and where it is appended.

``environment`` gives the common head of a result record (date, device, threads, versions, the
exact command); ``append`` adds a record as one JSON line to
``benchmarks/results/<name>_<device>_<yyyymmdd>.json`` (device ``cpu`` off CUDA).
"""

from __future__ import annotations

import datetime
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or "cpu"


def environment(device: torch.device, script: str, argv: list[str] | None) -> dict:
    """``script``: the benchmark's file name; ``argv``: its arguments (None: ``sys.argv``)."""
    return {
        "date": datetime.date.today().isoformat(),
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "transformers": version("transformers"),
        "python": platform.python_version(),
        "command": f"PYTHONPATH=. python benchmarks/{script} "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
    }


def append(name: str, device: torch.device, record: dict) -> Path:
    tag = device_name(device) if device.type == "cuda" else "cpu"
    tag = "".join(c if c.isalnum() else "-" for c in tag.lower()).strip("-")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}_{tag}_{datetime.date.today():%Y%m%d}.json"
    with out.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended to {out}")
    return out
