"""A self-training round's files: their names, the per-row safetensors written in place, the
compute-once-share-with-every-rank pattern of a round's artefacts, and a finished twin's round 1
laid down as this run's own."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from safetensors.torch import save

from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.fileio import (
    append_jsonl,
    atomic_folder,
    atomic_write_bytes,
    fsync_dir,
    link_or_copy,
    open_safetensors,
)
from xlt_engine.inputs import read_jsonl

T = TypeVar("T")


TEACHER_FILE = "teacher-probs.safetensors"


STUDENT_FILE = "student-probs.safetensors"  # a step's student on U_tgt (the check's pass)


FILTER_FILE = "filter.safetensors"


SOURCE_OK_FILE = "source-ok.safetensors"


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    data = save({k: v.cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
    atomic_write_bytes(path, data)


def in_place(path: Path, work) -> None:
    """``work(arrays)`` on the tensors of the safetensors file ``path``, memory-mapped for
    writing; flushed after."""
    arrays = open_safetensors(path, "r+")
    work(arrays)
    for a in arrays.values():
        if isinstance(a, np.memmap):
            a.flush()


def shared(
    path: Path, compute: Callable[[], T], write: Callable[[T], None], read: Callable[[], T]
) -> T:
    """Compute once, write atomically, share with every rank, read back: the pattern of every
    artefact of a round. When ``path`` exists (an earlier run got this far) it is only read;
    else every rank computes (inference is split over the ranks and gathered), rank 0 writes
    (``write`` marks the step done by writing ``path`` last), every rank waits and reads."""
    if not distributed.rank0_view(path.is_file()):
        value = compute()
        if rank_world()[0] == 0:
            write(value)
        distributed.barrier()
    return read()


def lay_down_round1(src: Path, out: Path) -> str | None:
    """Round 1's teacher probabilities and soft student of the self-training folder ``src``
    (a finished run whose round 1 this run's would equal: the experiment finds it) linked
    into ``out``, each with its step's record (``shared_from`` added, the seconds those steps
    took there kept), where ``out`` has not made its own: a resumed run then finds them as its
    own. Files first, then the record, so a kill between them only repeats the record. Returns
    what it did (None: nothing to take, or taken already)."""
    mine, theirs = out / "round-1", src / "round-1"
    log = out / "selftrain.jsonl"
    done = {(r.get("round"), r.get("step")) for r in (read_jsonl(log) if log.is_file() else [])}
    own = (mine / "soft" / "latest").exists() or any((mine / "soft").glob("ckpt-*"))
    if (1, "soft") in done or own:  # taken already, or a soft step of its own under way
        return None
    records = {(r.get("round"), r.get("step")): r for r in read_jsonl(src / "selftrain.jsonl")}
    missing = [
        str(p) for p in (theirs / TEACHER_FILE, theirs / "soft" / "model") if not p.exists()
    ] + [f"its round 1 {w} record" for w in ("teacher", "soft") if (1, w) not in records]
    if missing:
        return f"round 1: not taken from {src}: no {', '.join(missing)}"
    (mine / "soft").mkdir(parents=True, exist_ok=True)
    if not (mine / TEACHER_FILE).is_file():
        link_file(theirs / TEACHER_FILE, mine / TEACHER_FILE)
    if (1, "teacher") not in done:
        append_jsonl(log, {**records[(1, "teacher")], "shared_from": str(src)})
    if not (mine / "soft" / "model").is_dir():
        with atomic_folder(mine / "soft" / "model") as tmp:
            for f in sorted((theirs / "soft" / "model").iterdir()):
                link_or_copy(f, tmp / f.name)
    probs = theirs / "soft" / STUDENT_FILE  # the soft student's pass (the check's)
    if probs.is_file() and not (mine / "soft" / STUDENT_FILE).is_file():
        link_file(probs, mine / "soft" / STUDENT_FILE)
    append_jsonl(log, {**records[(1, "soft")], "shared_from": str(src)})
    return f"round 1: teacher probabilities and soft student taken from {src}"


def link_file(src: Path, dst: Path) -> None:
    """``src`` linked (or copied) to ``dst`` through a temporary name: never half there."""
    tmp = dst.parent / f".{dst.name}.tmp-link"
    tmp.unlink(missing_ok=True)
    link_or_copy(src, tmp)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)
