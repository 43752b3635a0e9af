"""Fault injection for the kill-and-resume tests, read in this one place: ``XLT_KILL_AT=
"[FOLDER:]STEP"`` makes ``train`` SIGKILL its own process right after optimizer step STEP, in a
run folder whose path ends with FOLDER (any folder when it is left out), e.g.
``round-2/soft:150``. Unset (always, outside the tests), nothing happens."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def fault_kill_step(run_dir: Path) -> int | None:
    """Fault injection for the kill-and-resume tests: ``XLT_KILL_AT="[FOLDER:]STEP"`` makes
    ``train`` SIGKILL its own process right after optimizer step STEP, in a run folder whose
    path ends with FOLDER (any folder when it is left out), e.g. ``round-2/soft:150``."""
    spec = os.environ.get("XLT_KILL_AT", "")
    if not spec:
        return None
    folder, _, step = spec.rpartition(":")
    if folder and not run_dir.as_posix().endswith(folder):
        return None
    try:
        return int(step)
    except ValueError:
        raise ValueError(f"XLT_KILL_AT={spec!r}: expected [FOLDER:]STEP") from None


def die_after(run_dir: Path):
    """A function of the step that SIGKILLs this process after the step ``XLT_KILL_AT`` names
    (a no-op when it names none for ``run_dir``)."""
    step = fault_kill_step(run_dir)

    def check(done: int) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGKILL)  # die without clean-up

    return check
