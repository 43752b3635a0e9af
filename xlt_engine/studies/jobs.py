"""``xlt-engine ablate --jobs N`` and ``--plan``: a study's rows and seeds side by side, as
separate processes.

The work is cut into one job per row and seed (``studies.ablate.row_jobs``): each job is
``xlt-engine ablate ... --seeds S --rows ROW --no-table`` (its stages, the per-seed tables it
reads, no table over the seeds), and a job starts when the jobs that make a stage folder it
reads have finished (btf and the teacher's fine-tuning are made once, by the ``- ST`` job, and
every self-training row waits for it). At most ``N`` run at a time; on a CUDA machine each
process sees one GPU (``CUDA_VISIBLE_DEVICES``: its slot's), on a CPU the cores are divided
between them (``OMP_NUM_THREADS``: two one-thread processes did 1.44x the work of one two-thread
process on our 2-core machines). Each line a process prints comes out prefixed with its seed and
row. When every job has finished, the caller runs the study once more in its own process: every
stage is then found finished and reused, and the tables are written as a serial run writes them,
with the same scores. A job that fails is named with its exit status, the jobs after it do not
start, the others run to the end, and the same command continues (finished stages are reused).
``--plan`` prints the same jobs as commands with their dependencies, for a scheduler one already
runs.

The jobs die with the process that started them: SIGINT or SIGTERM to it terminates them (each
writes a checkpoint first), and on Linux a SIGKILL to it (or an out-of-memory kill) kills them
too (``follow_parent``), so no orphan keeps writing into the folders that ``--resume`` then
continues. Elsewhere an orphan stops at its next line of output, whose pipe is closed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

PARENT = "XLT_ENGINE_JOB_PARENT"  # a job's environment: the pid of the process that started it


def follow_parent() -> None:
    """In a job's process (``PARENT`` set; the CLI calls this first): on Linux, be killed
    (SIGKILL) when the process that started it dies, and at once if it already has. A kill
    -9 of ``ablate --jobs`` then leaves what a kill -9 of a serial run leaves: atomic files
    and loop checkpoints, which ``--resume`` continues. ``PARENT`` is removed from the
    environment, so the job's own subprocesses do not follow it. Elsewhere a no-op."""
    parent = os.environ.pop(PARENT, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
            return  # best effort: the closed pipe still stops it at its next line
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # it died before prctl: no signal will come
        os.kill(os.getpid(), signal.SIGKILL)


def job_env(slot: int, jobs: int, gpus: int, env: dict[str, str]) -> dict[str, str]:
    """The environment of the process in ``slot`` (0 .. ``jobs`` - 1): one GPU of ``gpus`` in
    turn, or on a CPU the cores divided among ``jobs`` processes (at least one thread each)."""
    env = dict(env)
    if gpus > 0:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        ids = (
            [d for d in visible.split(",") if d.strip()]
            if visible
            else [str(g) for g in range(gpus)]
        )
        env["CUDA_VISIBLE_DEVICES"] = ids[slot % len(ids)]
    else:
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    return env


def ablate_args(config_path, overrides, fixed_threshold: float, out, resume: bool) -> list:
    """The ``xlt-engine ablate`` arguments every job shares (``job_args`` adds its seed and
    row): the caller's config, overrides, -AT alpha, folder and ``--resume``."""
    args = ["ablate", "--config", str(config_path), "--no-progress"]
    args += [a for o in overrides for a in ("--set", o)]
    args += ["--fixed-threshold", repr(fixed_threshold)]
    args += ["--out", str(out)] if out is not None else []
    return args + (["--resume"] if resume else [])


def _gpus(cfg) -> int:
    """The GPUs the jobs' processes are spread over: none for a config on the CPU."""
    import torch

    return torch.cuda.device_count() if cfg.device != "cpu" and torch.cuda.is_available() else 0


def _forward(stream, prefix: str, echo: Callable[[str], None]) -> None:
    for line in stream:
        echo(f"{prefix}{line.rstrip()}")
    stream.close()


def job_args(args: list[str], job) -> list[str]:
    """The ``xlt-engine`` arguments of one job: the study's, then its seed and row."""
    return [*args, "--seeds", str(job.seed), "--rows", ",".join(job.rows), "--no-table"]


def job_name(job, whole: bool = False) -> str:
    """``seed S`` (a whole seed's job) or ``seed S ROW``, as its lines' prefix says."""
    name = f"seed {job.seed}" if whole else f"seed {job.seed} {', '.join(job.rows)}"
    return name + (" (for the rows after it)" if job.helper else "")


def run_jobs(
    args: list[str], jobs: list, n: int, echo: Callable[[str], None], cfg=None, whole=False
) -> dict[int, int | None]:
    """Run every job (``row_jobs``: ``xlt-engine <args> --seeds S --rows ROW --no-table``),
    ``n`` at a time, each when the jobs it comes after have finished, over ``cfg``'s GPUs (none
    without a config), their lines prefixed ``[seed S]`` (``whole``: each job a whole seed) or
    ``[seed S ROW]``; returns each job's exit status by index (0: finished; None: not started,
    because a job it comes after failed)."""
    if n < 1:
        raise ValueError(f"--jobs must be >= 1, got {n}")
    gpus = _gpus(cfg) if cfg is not None else 0
    pending = list(range(len(jobs)))
    running: dict[int, tuple[subprocess.Popen, threading.Thread, int]] = {}  # job: proc, slot
    status: dict[int, int | None] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT: str(os.getpid())}

    def start(i: int, slot: int) -> None:
        cmd = [sys.executable, "-m", "xlt_engine.cli", *job_args(args, jobs[i])]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=job_env(slot, n, gpus, env),
        )
        prefix = f"[{job_name(jobs[i], whole)}] "
        reader = threading.Thread(target=_forward, args=(proc.stdout, prefix, echo))
        reader.start()
        running[i] = (proc, reader, slot)

    try:
        while pending or running:
            for i in list(pending):  # a job it comes after failed: it never starts
                if any(a in status and status[a] != 0 for a in jobs[i].after):
                    pending.remove(i)
                    status[i] = None
            ready = [i for i in pending if all(status.get(a) == 0 for a in jobs[i].after)]
            free = [s for s in range(n) if s not in {r[2] for r in running.values()}]
            for i, slot in zip(ready, free, strict=False):  # in the list's order: seed-major
                pending.remove(i)
                start(i, slot)
            done = [i for i, r in running.items() if r[0].poll() is not None]
            if not done:
                time.sleep(0.1)
            for i in done:  # a free slot goes to the next ready job at once
                proc, reader, _ = running.pop(i)
                reader.join()
                status[i] = proc.returncode
    finally:  # an interrupt: the jobs' processes stop too (each checkpoints on SIGTERM)
        for proc, reader, _ in running.values():
            proc.terminate()
            proc.wait()
            reader.join()
    return status


def run_or_say(args: list[str], jobs: list, n: int, echo, cfg, whole: bool) -> None:
    """``run_jobs``, then a line that the tables follow; a ``ValueError`` naming every job
    that failed or never started (the CLI's one error line) when not all finished."""
    status = run_jobs(args, jobs, n, echo, cfg, whole)
    failed = [(jobs[i], rc) for i, rc in status.items() if rc != 0]
    if failed:
        said = "; ".join(
            f"{job_name(j, whole)}: "
            + ("not started (a job it comes after failed)" if rc is None else f"exit {rc}")
            for j, rc in failed
        )
        raise ValueError(
            f"--jobs {n}: {said}; the others finished, and the same command continues "
            "(finished stages are reused)"
        )
    echo(f"--jobs {n}: {len(jobs)} jobs finished; the tables over them:")


def plan_lines(
    command: list[str], args: list[str], jobs: list, seeds: list[int], rows: str | None
) -> list[str]:
    """``ablate --plan``: one line per job, ``<id>\t<after: ids, or ->\t<command>`` (shell
    words), then the table's line, after every job: the study once more, which reuses every
    stage and writes the tables."""
    import shlex

    lines = ["# job\tafter\tcommand (run each after the jobs it names have finished)"]
    for i, job in enumerate(jobs, 1):
        after = ",".join(str(a + 1) for a in job.after) or "-"
        lines.append(f"{i}\t{after}\t{shlex.join([*command, *job_args(args, job)])}")
    every = ",".join(str(i) for i in range(1, len(jobs) + 1)) or "-"
    table = [*command, *args, "--seeds", ",".join(map(str, seeds))]
    table += ["--rows", rows] if rows is not None else []
    lines.append(f"table\t{every}\t{shlex.join(table)}")
    return lines
