"""Where a result came from: the source tree's git commit, package versions and the device.
Every record the engine writes (a run folder's ``run.json``, a benchmark result) takes its
provenance fields from here."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

import xlt_engine


def git_sha() -> str:
    """The commit of the source tree the package runs from ("+dirty" if modified), or
    "unknown" outside a git checkout."""
    root = Path(xlt_engine.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return "unknown"
    git = ["git", "-C", str(root)]
    try:
        sha = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def version(name: str) -> str | None:
    """An installed distribution's version (None when it is not installed)."""
    try:
        return metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def cpu_info() -> dict:
    """This machine's CPU: its model name and whether it multiplies bf16 natively
    (``native_bf16``: AVX512-BF16 or AMX-BF16 among its flags), read once from
    /proc/cpuinfo (Linux; elsewhere the platform's processor name and no native bf16).
    ``precision = "auto"`` reads ``native_bf16`` (``optim.resolve_precision``), so a run's
    record says which precision its CPU steps ran in."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "native_bf16": bool(flags & {"avx512_bf16", "amx_bf16"})}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def environment(device: torch.device) -> dict:
    """The common head of a result record: date, device, threads, versions, git commit."""
    return {
        "date": datetime.date.today().isoformat(),
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "cpu": cpu_info(),
        "xlt_engine": xlt_engine.__version__,
        "git_sha": git_sha(),
        "torch": torch.__version__,
        "triton": version("triton"),
        "transformers": version("transformers"),
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
    }


def result_file(folder: str | Path, what: str, device: torch.device, suffix: str = ".json") -> Path:
    """Where a benchmark result goes: ``<folder>/<what>_<gpu>_<yyyymmdd><suffix>`` (``cpu``
    in place of the GPU name off CUDA), the naming of every file under benchmarks/results."""
    tag = device_name(device) if device.type == "cuda" else "cpu"
    tag = "-".join(
        part for part in "".join(c if c.isalnum() else "-" for c in tag.lower()).split("-") if part
    )
    return Path(folder) / f"{what}_{tag}_{datetime.date.today():%Y%m%d}{suffix}"
