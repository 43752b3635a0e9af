"""What a round's records count and how they read: the classes of a set of labels, how closely a
student follows its teacher (``fidelity_counts``) and the classes it lost, the filter's target
counts, a check in one line, the class thresholds and the teachers as the log names them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xlt_engine.data.packed import release
from xlt_engine.data.task import Encoded
from xlt_engine.engine.method.selftrain.store import CHUNK_ITEMS
from xlt_engine.engine.train.metrics import by_name, label_counts


def distribution(labels: np.ndarray, names: list[str]) -> dict[str, int]:
    return by_name(label_counts(labels, len(names)), names)


def distribution_chunked(flat: np.ndarray, lo: int, hi: int, names: list[str]) -> dict[str, int]:
    """``distribution`` of ``flat[lo:hi]`` (a memory map), read a million rows at a time."""
    counts = np.zeros(len(names), dtype=np.int64)
    for a in range(lo, hi, 1 << 20):
        counts += label_counts(flat[a : min(a + (1 << 20), hi)], len(names))
    return by_name(counts, names)


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


def class_alphas(labels: list[str], alpha: list[float]) -> str:
    """``O 0.995, B-LOC 0.7, ...``: each class's threshold, for the log (1: none admitted)."""
    return ", ".join(f"{c} {a:g}" for c, a in zip(labels, alpha, strict=True))


def teacher_names(teachers: list[Path]) -> str | list[str]:
    """How the log names a round's teacher(s): one path, or the list."""
    return str(teachers[0]) if len(teachers) == 1 else [str(t) for t in teachers]
