"""What self-training reads and writes row by row, beside its steps (``selftrain``): the
round's file names, the row / unit arithmetic of the filter, the stores of relabeled items and
the soft step's batches, the check's counts and how they read, the compute-once-share-with-every-
rank pattern of a round's artefacts, and laying down a finished twin's round 1."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from safetensors.torch import save
from torch import nn

from xlt_engine.data.align import IGNORE
from xlt_engine.data.packed import StoreWriter, release
from xlt_engine.data.task import Encoded, TaskBatches, item_rows
from xlt_engine.engine.method.rules import PseudoRule, rule_names
from xlt_engine.engine.method.settings import SelftrainSettings
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.engine.train.metrics import by_name, label_counts
from xlt_engine.fileio import (
    append_jsonl,
    atomic_folder,
    atomic_write_bytes,
    link_or_copy,
    open_safetensors,
)
from xlt_engine.inputs import read_jsonl

T = TypeVar("T")


TEACHER_FILE = "teacher-probs.safetensors"
STUDENT_FILE = "student-probs.safetensors"  # a step's student on U_tgt (the check's pass)
FILTER_FILE = "filter.safetensors"
SOURCE_OK_FILE = "source-ok.safetensors"
CHUNK_ITEMS = 4096  # items per inference chunk: its logits are all a pass holds at once (a
# larger chunk leaves more of the C heap behind between trims; measured with 16K-token batches:
# +7 MB at 2,048 items, +30 at 8,192, +118 at 16,384)
RELEASE_EVERY = 1  # batches between drops of a packed store's pages (``packed.release``): a
# training batch reads random items, and the kernel maps far more than it reads (measured: 576
# random rows of a 175 MB memory-mapped file left 142 MB of it resident; MADV_RANDOM changed
# nothing), so the pages go after every batch (a few madvise calls)


class CollapseError(ValueError):
    """A round's pseudo labels collapsed and ``on_collapse = "error"`` stops the run."""


def encoder_digest(model: nn.Module) -> str:
    """sha256 over an encoder's parameters and buffers (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")  # no extra copy
    return h.hexdigest()


def row_units(enc: Encoded) -> np.ndarray:
    """The unit (sentence / text) of every row: for NER the sentence of the row's window."""
    counts = np.diff(enc.row_offsets)
    if enc.units is not None:
        units = np.asarray(enc.units, dtype=np.int64)
    elif enc.kind == "token":
        units = np.array([w.sentence for w in enc.aligned.windows], dtype=np.int64)
    else:
        units = np.arange(len(enc), dtype=np.int64)
    return np.repeat(units, counts)


def whole_units(ok: np.ndarray, units: np.ndarray) -> np.ndarray:
    """``ok`` per row -> True only where every row of the row's unit is ok."""
    bad_units = np.unique(units[~ok])
    return ok & ~np.isin(units, bad_units)


def labeled_items(
    enc: Encoded, targets: np.ndarray, lo: int = 0, hi: int | None = None
) -> dict[str, list]:
    """Items ``lo:hi`` of ``enc`` that have at least one of ``targets`` (one per row of those
    items, -1: none) >= 0, as lists of arrays (``StoreWriter.add``'s ``ids``, ``types``,
    ``positions``, ``targets``; the others -100)."""
    hi = len(enc) if hi is None else hi
    offsets = enc.row_offsets
    base = offsets[lo]
    items, tg = [], []
    for i in range(lo, hi):
        t = targets[offsets[i] - base : offsets[i + 1] - base]
        if (t >= 0).any():
            items.append(i)
            tg.append(np.where(t >= 0, t, IGNORE).astype(np.int64))
    return {
        "ids": [enc.input_ids[i] for i in items],
        "types": None if enc.token_type_ids is None else [enc.token_type_ids[i] for i in items],
        "positions": [enc.positions[i] for i in items],
        "targets": tg,
    }


def with_targets(enc: Encoded, targets: np.ndarray) -> Encoded:
    """``enc``'s items that have at least one target >= 0, with ``targets`` (one per row), in
    memory (``write_with_targets`` writes them to a store chunk by chunk)."""
    part = labeled_items(enc, targets)
    return Encoded(enc.kind, part["ids"], part["types"], part["positions"], part["targets"], None)


def write_with_targets(
    writer: StoreWriter, enc: Encoded, targets: np.ndarray, chunk: int = CHUNK_ITEMS
) -> int:
    """``with_targets`` into a store, ``chunk`` items at a time; ``targets`` may be a memory
    map (its pages and ``enc``'s are dropped after each chunk). Returns the items written."""
    if not enc.packed:
        raise ValueError("write_with_targets reads a packed store (data.packed.open_store)")
    offsets, written = enc.row_offsets, 0
    for lo in range(0, len(enc), chunk):
        hi = min(lo + chunk, len(enc))
        t = np.asarray(targets[offsets[lo] : offsets[hi]])
        # the items with a target, by gathers (no loop over the items)
        local = offsets[lo : hi + 1] - offsets[lo]
        labeled = np.concatenate([[0], np.cumsum(t >= 0)])
        items = np.flatnonzero(labeled[local[1:]] > labeled[local[:-1]])
        ids, lengths = enc.input_ids.take(lo + items)
        types = None if enc.token_type_ids is None else enc.token_type_ids.take(lo + items)[0]
        positions, rows = enc.positions.take(lo + items)
        kept = t[item_rows(local, items)]
        part = {"ids": ids, "lengths": lengths, "types": types, "positions": positions}
        part |= {"rows": rows, "targets": np.where(kept >= 0, kept, IGNORE)}
        n = len(part["lengths"])
        if n:
            writer.add(
                part | {"units": np.arange(n, dtype=np.int64), "lines": np.zeros(n, np.int64)}
            )
        written += n
        release(enc, *([targets] if isinstance(targets, np.memmap) else []))
    return written


class StoreBatches(TaskBatches):
    """``TaskBatches`` that drop the pages of their packed store every ``RELEASE_EVERY`` batches,
    so an epoch over a memory-mapped corpus leaves resident memory flat."""

    held: tuple = ()  # other memory maps to drop with the store's

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        if index % RELEASE_EVERY == 0:
            release(self.enc, *self.held)
        return super().batch(epoch, index)


class SoftBatches(StoreBatches):
    """``TaskBatches`` over U_tgt whose batches also carry the teacher's ``probs`` per row
    (``[rows, C]``, a tensor or a memory map)."""

    def __init__(self, enc: Encoded, probs, pad_id, batch_size, max_tokens, seed, pad_multiple):
        super().__init__(enc, pad_id, batch_size, max_tokens, seed, pad_multiple)
        self.probs = probs
        self.held = (probs,)
        self.offsets = enc.row_offsets

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        items = self._batches(epoch)[index]
        out = super().batch(epoch, index)
        rows = item_rows(self.offsets, items)
        out["probs"] = torch.as_tensor(np.asarray(self.probs[rows])).float()
        return out


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    data = save({k: v.cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
    atomic_write_bytes(path, data)


def class_alphas(labels: list[str], alpha: list[float]) -> str:
    """``O 0.995, B-LOC 0.7, ...``: each class's threshold, for the log (1: none admitted)."""
    return ", ".join(f"{c} {a:g}" for c, a in zip(labels, alpha, strict=True))


def remedies(cfg: SelftrainSettings) -> str:
    """The settings a collapsed round may be avoided with, other than the ones in use."""
    out = []
    rule = cfg.rule
    others = [n for n in rule_names() if n not in (rule.name, PseudoRule.name)]
    out.append(
        " or ".join(f'selftrain.rule.name = "{r}"' for r in others) + " (thresholds per class)"
    )
    out += rule.remedies()
    if rule.grid != "even" and not rule.reads_target:
        out.append('selftrain.rule.grid = "even" (no 0.995 / 0.999 tail)')
    if rule.threshold != "fixed":
        out.append('a fixed alpha (selftrain.rule.threshold = "fixed")')
    if cfg.source_filter == "confident":
        out.append('selftrain.source_filter = "correct" (the paper\'s)')
    return "; ".join(out)


def teacher_names(teachers: list[Path]) -> str | list[str]:
    """How the log names a round's teacher(s): one path, or the list."""
    return str(teachers[0]) if len(teachers) == 1 else [str(t) for t in teachers]


def distribution(labels: np.ndarray, names: list[str]) -> dict[str, int]:
    return by_name(label_counts(labels, len(names)), names)


def distribution_chunked(flat: np.ndarray, lo: int, hi: int, names: list[str]) -> dict[str, int]:
    """``distribution`` of ``flat[lo:hi]`` (a memory map), read a million rows at a time."""
    counts = np.zeros(len(names), dtype=np.int64)
    for a in range(lo, hi, 1 << 20):
        counts += label_counts(flat[a : min(a + (1 << 20), hi)], len(names))
    return by_name(counts, names)


def in_place(path: Path, work) -> None:
    """``work(arrays)`` on the tensors of the safetensors file ``path``, memory-mapped for
    writing; flushed after."""
    arrays = open_safetensors(path, "r+")
    work(arrays)
    for a in arrays.values():
        if isinstance(a, np.memmap):
            a.flush()


def drop_failed_units(enc: Encoded, pseudo: np.ndarray, chunk: int = CHUNK_ITEMS) -> None:
    """``filter_unit = "sequence"`` on a store: every row of a unit (sentence) with a row
    without a pseudo label loses its label (-1), in place, ``chunk`` items at a time."""
    units, offsets = enc.units, enc.row_offsets
    bad = np.zeros(int(units[-1]) + 1 if len(units) else 0, dtype=bool)
    spans = [(lo, min(lo + chunk, len(enc))) for lo in range(0, len(enc), chunk)]
    for lo, hi in spans:
        ok = np.asarray(pseudo[offsets[lo] : offsets[hi]]) >= 0
        item_ok = np.logical_and.reduceat(ok, offsets[lo:hi] - offsets[lo])
        bad[np.asarray(units[lo:hi])[~item_ok]] = True
        release(enc, pseudo)
    for lo, hi in spans:
        rows_bad = np.repeat(bad[np.asarray(units[lo:hi])], np.diff(offsets[lo : hi + 1]))
        seg = pseudo[offsets[lo] : offsets[hi]]
        seg[rows_bad] = -1
        release(enc, pseudo)


def fidelity_counts(
    teacher: np.ndarray,
    student: np.ndarray,
    names: list[str],
    background: int | None = None,
    chunk: int = 1 << 20,
) -> dict:
    """How well a student reproduces its teacher on the target rows: the classes of the
    teacher's argmax (of its probabilities ``teacher`` [rows, C]) and of the student's
    (``student``: [rows] labels, the argmax of its voters' mean probabilities, or its
    probabilities [rows, C]); the share of rows where the two agree (``teacher_agreement``),
    of the rows whose teacher class is not ``background`` (``entity_agreement``: the teacher's
    entity words; None for tasks without a background class) and per teacher class
    (``class_agreement``: None for a class the teacher never gives). ``chunk`` rows at a
    time. The all-rows share is dominated by the background class: a student that lost a
    whole entity class still agrees on ~97% of CoNLL's rows."""
    C = len(names)
    t_counts = np.zeros(C, dtype=np.int64)
    s_counts = np.zeros(C, dtype=np.int64)
    hits = np.zeros(C, dtype=np.int64)  # per teacher class: rows where the student agrees
    rows = len(student)
    for lo in range(0, rows, chunk):
        hi = min(lo + chunk, rows)
        t = np.asarray(teacher[lo:hi]).argmax(axis=-1)
        s = np.asarray(student[lo:hi])
        s = s.argmax(axis=-1) if s.ndim == 2 else s
        t_counts += label_counts(t, C)
        s_counts += label_counts(s, C)
        hits += label_counts(t[t == s], C)
    agree = int(hits.sum())
    entity = None
    if background is not None:
        n = rows - int(t_counts[background])
        entity = (agree - int(hits[background])) / n if n else None
    return {
        "teacher_distribution": by_name(t_counts, names),
        "student_distribution": by_name(s_counts, names),
        "teacher_agreement": agree / rows if rows else 0.0,
        "entity_agreement": entity,
        "class_agreement": {
            name: (int(hits[c]) / int(t_counts[c]) if t_counts[c] else None)
            for c, name in enumerate(names)
        },
    }


WALL_PARTS = {  # a record's step -> the part of the stage's wall it is
    "soft": "training steps",
    "hard": "training steps",
    "teacher": "forward-only passes",
    "check": "forward-only passes",
    "filter": "forward-only passes",
    "threshold": "threshold arithmetic",
}


def wall_breakdown(records: list[dict], total: float | None = None) -> dict:
    """Where a self-training run's time went, from its records: seconds per part
    (``WALL_PARTS``: the soft and hard steps' training, the passes that only run the model
    forward, i.e. teacher probabilities, checks, the threshold step's pass over the source rows
    and the filter, and the threshold's arithmetic: the rest of its step; a record from before
    its pass was timed apart counts whole as arithmetic),
    of which ``forward`` the passes' model forwards alone, ``shared`` what steps taken from a
    twin folder took there (in their parts too), and with ``total`` (this process's wall)
    ``other``: what no record covers (loading, writing, waiting)."""
    parts = dict.fromkeys(WALL_PARTS.values(), 0.0)
    forward = shared = 0.0
    for r in records:
        part = WALL_PARTS.get(r.get("step"))
        secs = r.get("seconds") or 0.0
        if part is None:
            continue
        ahead = r.get("forward_seconds") or 0.0
        if r.get("step") == "threshold":  # its pass over D_src is a forward-only pass
            parts["forward-only passes"] += ahead
            secs -= ahead
        parts[part] += secs
        forward += ahead
        if "shared_from" in r:
            shared += secs + (ahead if r.get("step") == "threshold" else 0.0)
    out = {k: round(v, 3) for k, v in parts.items()}
    out |= {"forward": round(forward, 3), "shared": round(shared, 3)}
    if total is not None:
        out["other"] = round(max(0.0, total - (sum(parts.values()) - shared)), 3)
    return out


def wall_shares(wall: dict, names=None) -> list[tuple[str, float, float]]:
    """``wall_breakdown``'s parts (and ``other``), or another stage's parts ``names``, as
    (part, seconds, share of their sum); a part that is missing or not a number (a damaged
    summary) is left out."""
    names = [*dict.fromkeys(WALL_PARTS.values()), "other"] if names is None else names
    parts = [(k, wall[k]) for k in names if type(wall.get(k)) in (int, float)]
    whole = sum(v for _, v in parts) or 1.0
    return [(k, v, v / whole) for k, v in parts]


def describe_wall(wall: dict) -> str:
    """``training steps 177.0 s (86%), forward-only passes 20.1 s (10%), ...``"""
    return ", ".join(f"{k} {v:.1f} s ({100 * share:.0f}%)" for k, v, share in wall_shares(wall))


def lost_classes(fidelity: dict, share: float = 0.01) -> list[str]:
    """The classes the teacher's argmax gives at least ``share`` of the target rows and the soft
    student's none (``fidelity_counts``' record): a soft step that did not fit its teacher
    (e.g. an all-O student), whose pseudo labels can hold none of them."""
    teacher, student = fidelity["teacher_distribution"], fidelity["student_distribution"]
    rows = sum(teacher.values())
    return [c for c, n in teacher.items() if rows and n >= share * rows and student.get(c, 0) == 0]


def target_counts(
    enc: Encoded, pseudo: np.ndarray, agreed: np.ndarray, names: list[str], chunk: int = CHUNK_ITEMS
) -> dict:
    """filter.json's target counts, read ``chunk`` items at a time: rows, pseudo-labeled rows,
    units with at least one, the pseudo labels' classes and the voters' agreement."""
    units, offsets = enc.units, enc.row_offsets
    n_units = int(units[-1]) + 1 if len(units) else 0
    labeled_units = np.zeros(n_units, dtype=bool)
    classes = np.zeros(len(names), dtype=np.int64)
    agree = 0
    for lo in range(0, len(enc), chunk):
        hi = min(lo + chunk, len(enc))
        p = np.asarray(pseudo[offsets[lo] : offsets[hi]])
        item_any = np.logical_or.reduceat(p >= 0, offsets[lo:hi] - offsets[lo])
        labeled_units[np.asarray(units[lo:hi])[item_any]] = True
        classes += label_counts(p, len(names))
        agree += int(np.asarray(agreed[offsets[lo] : offsets[hi]]).sum())
        release(enc, pseudo, agreed)
    rows = int(offsets[-1])
    return {
        "target_rows": rows,
        "pseudo_rows": int(classes.sum()),
        "target_units": int(np.unique(np.asarray(units)).size),
        "pseudo_units": int(labeled_units.sum()),
        "pseudo_distribution": by_name(classes, names),
        "voter_agreement": agree / rows if rows else 0.0,  # share of target rows whose voters agree
    }


def describe_check(record: dict) -> str:
    """A check record in one line: agreement with the teacher on all rows, on its entity
    rows and the classes it keeps least, and the dev scores."""
    parts = [f"follows its teacher on {100 * record['teacher_agreement']:.1f}% of the rows"]
    if record.get("entity_agreement") is not None:
        parts.append(f"{100 * record['entity_agreement']:.1f}% of its entity rows")
    per = {c: a for c, a in record.get("class_agreement", {}).items() if a is not None}
    if per:
        low = sorted(per, key=per.get)[:3]
        parts.append("least: " + ", ".join(f"{c} {100 * per[c]:.1f}%" for c in low))
    for lang, d in record.get("dev", {}).items():
        parts.append(f"dev {lang} {100 * d['score']:.2f}")
    return "; ".join(parts)


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
        _link_file(theirs / TEACHER_FILE, mine / TEACHER_FILE)
    if (1, "teacher") not in done:
        append_jsonl(log, {**records[(1, "teacher")], "shared_from": str(src)})
    if not (mine / "soft" / "model").is_dir():
        with atomic_folder(mine / "soft" / "model") as tmp:
            for f in sorted((theirs / "soft" / "model").iterdir()):
                link_or_copy(f, tmp / f.name)
    probs = theirs / "soft" / STUDENT_FILE  # the soft student's pass (the check's)
    if probs.is_file() and not (mine / "soft" / STUDENT_FILE).is_file():
        _link_file(probs, mine / "soft" / STUDENT_FILE)
    append_jsonl(log, {**records[(1, "soft")], "shared_from": str(src)})
    return f"round 1: teacher probabilities and soft student taken from {src}"


def _link_file(src: Path, dst: Path) -> None:
    """``src`` linked (or copied) to ``dst`` through a temporary name: never half there."""
    tmp = dst.parent / f".{dst.name}.tmp-link"
    tmp.unlink(missing_ok=True)
    link_or_copy(src, tmp)
    os.replace(tmp, dst)
