"""``xlt-engine ablate --jobs N``: a study's seeds side by side, as separate processes.

Two seeds of an ablation share no stage (each seed's runs are in ``<out>/seed-<s>``), so they can
run at once. Each seed runs as ``xlt-engine ablate ... --seeds S --no-table`` in its own process
(its stages, its per-seed tables, no table over the seeds), at most ``N`` at a time; on a CUDA
machine each process sees one GPU (``CUDA_VISIBLE_DEVICES``, the GPUs taken in turn), on a CPU the
cores are divided between them (``OMP_NUM_THREADS``: two one-thread processes did 1.44x the work
of one two-thread process on our 2-core machines). Each line a process prints comes out prefixed
with its seed. When every seed has finished, the caller runs the study once more in its own
process: every stage is then found finished and reused, and the table over the seeds is written
as a serial run writes it, with the same scores. A seed that fails is named with its exit status;
the others run to the end, and the same command continues (finished stages are reused).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable


def seed_env(i: int, jobs: int, gpus: int, env: dict[str, str]) -> dict[str, str]:
    """The environment of the ``i``-th seed's process: one GPU of ``gpus`` in turn, or on a CPU
    the cores divided among ``jobs`` processes (at least one thread each)."""
    env = dict(env)
    if gpus > 0:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        ids = (
            [d for d in visible.split(",") if d.strip()]
            if visible
            else [str(g) for g in range(gpus)]
        )
        env["CUDA_VISIBLE_DEVICES"] = ids[i % len(ids)]
    else:
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    return env


def ablate_args(config_path, overrides, fixed_threshold: float, rows, out, resume: bool) -> list:
    """The ``xlt-engine ablate`` arguments of one seed's process (``run_seeds`` adds ``--seeds S
    --no-table``): the caller's config, overrides, -AT alpha, rows, folder and ``--resume``."""
    args = ["ablate", "--config", str(config_path), "--no-progress"]
    args += [a for o in overrides for a in ("--set", o)]
    args += ["--fixed-threshold", repr(fixed_threshold)]
    args += ["--rows", rows] if rows is not None else []
    args += ["--out", str(out)] if out is not None else []
    return args + (["--resume"] if resume else [])


def _gpus(cfg) -> int:
    """The GPUs the seeds' processes are spread over: none for a config on the CPU."""
    import torch

    return torch.cuda.device_count() if cfg.device != "cpu" and torch.cuda.is_available() else 0


def _forward(stream, prefix: str, echo: Callable[[str], None]) -> None:
    for line in stream:
        echo(f"{prefix}{line.rstrip()}")
    stream.close()


def run_seeds(
    args: list[str], seeds: list[int], jobs: int, echo: Callable[[str], None], cfg=None
) -> dict[int, int]:
    """Run ``xlt-engine <args> --seeds S --no-table`` for every seed, ``jobs`` at a time, over
    ``cfg``'s GPUs (none without a config); returns each seed's exit status (0: finished)."""
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    gpus = _gpus(cfg) if cfg is not None else 0
    pending = list(enumerate(seeds))
    running: list[tuple[int, subprocess.Popen, threading.Thread]] = []
    status: dict[int, int] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(i: int, seed: int) -> None:
        cmd = [sys.executable, "-m", "xlt_engine.cli", *args, "--seeds", str(seed), "--no-table"]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=seed_env(i, jobs, gpus, env),
        )
        reader = threading.Thread(target=_forward, args=(proc.stdout, f"[seed {seed}] ", echo))
        reader.start()
        running.append((seed, proc, reader))

    try:
        while pending or running:
            while pending and len(running) < jobs:
                start(*pending.pop(0))
            done = [r for r in running if r[1].poll() is not None]
            if not done:
                time.sleep(0.1)
            for seed, proc, reader in done:  # a free slot goes to the next seed at once
                running.remove((seed, proc, reader))
                reader.join()
                status[seed] = proc.returncode
    finally:  # an interrupt: the seeds' processes stop too (each checkpoints on SIGTERM)
        for _, proc, reader in running:
            proc.terminate()
            proc.wait()
            reader.join()
    return status
