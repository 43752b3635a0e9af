"""Evaluation metrics: accuracy, and entity-level precision / recall / F1 with seqeval's semantics.

Entity chunks are read per sentence (an entity never crosses a sentence end):

- ``mode="default"`` follows conlleval (seqeval's default): a chunk starts at ``B-X``, at an
  ``I-X`` after ``O`` or after a chunk of another type, and ends where the next tag does not
  continue it. A lone ``I-X`` therefore starts an entity.
- ``mode="strict"`` is IOB2 exactly (seqeval's ``mode="strict", scheme=IOB2``): an entity is
  ``B-X`` followed by ``I-X`` tags; an ``I-X`` that does not continue an ``X`` entity belongs
  to none.

Scores are micro-averaged over entities (a predicted entity is correct when its type, start and
end all match a gold one), plus per-type scores with the gold count as support. With no gold
and no predicted entity at all, precision, recall and F1 are 0 and a warning says why (seqeval's
``zero_division`` behaviour), never a division error.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    f1: float
    support: int  # gold entities
    predicted: int
    correct: int


@dataclass(frozen=True)
class EntityScores(Score):
    per_type: dict[str, Score] = field(default_factory=dict)


def accuracy(gold: Sequence, pred: Sequence) -> float:
    """Share of positions where ``pred`` equals ``gold`` (flat sequences of equal length)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    if len(gold) == 0:
        raise ValueError("accuracy of no examples is undefined")
    return sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)


def _split(tag: str, where: str) -> tuple[str, str]:
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BI":
        return tag[0], tag[2:]
    raise ValueError(f"{where}: tag {tag!r} is not O, B-<type> or I-<type>")


def entities(tags: Sequence[str], mode: str = "default", where: str = "") -> set[tuple]:
    """``{(type, start, end_inclusive)}`` of one sentence's IOB tags."""
    out = set()
    prev_prefix, prev_type, begin = "O", "", 0
    parsed = [_split(t, f"{where}position {i}") for i, t in enumerate(tags)]
    if mode == "default":
        for i, (prefix, typ) in enumerate([*parsed, ("O", "")]):
            # conlleval: end the open chunk before deciding whether this tag starts one
            ends = prev_prefix != "O" and (prefix != "I" or typ != prev_type)
            if ends:
                out.add((prev_type, begin, i - 1))
            if prefix == "B" or (prefix == "I" and (prev_prefix == "O" or typ != prev_type)):
                begin = i
            prev_prefix, prev_type = prefix, typ
        return out
    if mode == "strict":
        i, n = 0, len(parsed)
        while i < n:
            prefix, typ = parsed[i]
            if prefix != "B":
                i += 1
                continue
            j = i + 1
            while j < n and parsed[j] == ("I", typ):
                j += 1
            out.add((typ, i, j - 1))
            i = j
        return out
    raise ValueError(f"mode must be 'default' or 'strict', got {mode!r}")


MISSED, SPURIOUS = "(missed)", "(spurious)"


def _in_order(spans: set[tuple]) -> list[tuple]:
    return sorted(spans, key=lambda s: (s[1], s[2], s[0]))


def entity_confusion(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], mode: str = "default"
) -> dict[str, dict[str, int]]:
    """Counts ``{gold type: {predicted type: n}}`` over entity spans: a gold entity whose exact
    span (sentence, start, end) was predicted counts under the predicted span's type (its own
    type: correct; another: confused); one whose span was not predicted under ``(missed)``; a
    predicted span that is no gold span counts in the row ``(spurious)``. A boundary error is
    one missed and one spurious entity."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    out: dict[str, dict[str, int]] = {}

    def add(row: str, col: str) -> None:
        out.setdefault(row, {})
        out[row][col] = out[row].get(col, 0) + 1

    for s, (g, p) in enumerate(zip(gold, pred, strict=True)):
        # in the sentence's order (a set's order follows the process's string hash seed: the
        # same evaluation in two processes wrote its rows in two orders)
        gold_spans = {(b, e): t for t, b, e in _in_order(entities(g, mode, f"gold sentence {s}, "))}
        pred_spans = {
            (b, e): t for t, b, e in _in_order(entities(p, mode, f"predicted sentence {s}, "))
        }
        for span, typ in gold_spans.items():
            add(typ, pred_spans.get(span, MISSED))
        for span, typ in pred_spans.items():
            if span not in gold_spans:
                add(SPURIOUS, typ)
    return out


def label_confusion(gold: Sequence[str], pred: Sequence[str]) -> dict[str, dict[str, int]]:
    """Counts ``{gold label: {predicted label: n}}`` (sequence classification)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    out: dict[str, dict[str, int]] = {}
    for g, p in zip(gold, pred, strict=True):
        out.setdefault(g, {})
        out[g][p] = out[g].get(p, 0) + 1
    return out


def _score(correct: int, predicted: int, support: int) -> tuple[float, float, float]:
    p = correct / predicted if predicted else 0.0
    r = correct / support if support else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def entity_f1(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], mode: str = "default"
) -> EntityScores:
    """Micro and per-type entity scores of ``pred`` against ``gold`` (lists of tag lists, one
    per sentence, of equal lengths)."""
    if mode not in ("default", "strict"):
        raise ValueError(f"mode must be 'default' or 'strict', got {mode!r}")
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    gold_set, pred_set = set(), set()
    for s, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {s}: {len(g)} gold tags but {len(p)} predicted")
        gold_set |= {(s, *e) for e in entities(g, mode, f"gold sentence {s}, ")}
        pred_set |= {(s, *e) for e in entities(p, mode, f"predicted sentence {s}, ")}
    hits = gold_set & pred_set
    if not gold_set and not pred_set:
        warnings.warn("no entities in the gold or predicted tags: F1 is 0", stacklevel=2)
    elif not gold_set:
        warnings.warn("no gold entities: recall and F1 are 0", stacklevel=2)
    elif not pred_set:
        warnings.warn("no predicted entities: precision and F1 are 0", stacklevel=2)
    per_type = {}
    for typ in sorted({e[1] for e in gold_set | pred_set}):
        c = sum(1 for e in hits if e[1] == typ)
        n_pred = sum(1 for e in pred_set if e[1] == typ)
        n_gold = sum(1 for e in gold_set if e[1] == typ)
        per_type[typ] = Score(*_score(c, n_pred, n_gold), n_gold, n_pred, c)
    p, r, f = _score(len(hits), len(pred_set), len(gold_set))
    return EntityScores(p, r, f, len(gold_set), len(pred_set), len(hits), per_type)


def label_counts(labels, num_classes: int) -> np.ndarray:
    """Rows per class of integer labels [N] (-1: no label, not counted): int64 [num_classes]."""
    labels = np.asarray(labels)
    return np.bincount(labels[labels >= 0], minlength=num_classes)


def by_name(counts, names: Sequence[str]) -> dict[str, int]:
    """Per-class counts as ``{name: count}``, in the classes' order (the records' histograms)."""
    return {name: int(c) for name, c in zip(names, counts, strict=True)}
