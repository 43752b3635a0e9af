"""Self-training's data as rows of packed stores: the unit (sentence, text) of each row, the
items that keep a label (the hard step's data, written chunk by chunk), the soft and hard steps'
batches, and the "sequence" filter unit."""

from __future__ import annotations

import numpy as np
import torch

from xlt_engine.data.align import IGNORE
from xlt_engine.data.packed import StoreWriter, release
from xlt_engine.data.task import Encoded, TaskBatches, item_rows

CHUNK_ITEMS = 4096  # items per inference chunk: its logits are all a pass holds at once (a
# larger chunk leaves more of the C heap behind between trims; measured with 16K-token batches:
# +7 MB at 2,048 items, +30 at 8,192, +118 at 16,384)


RELEASE_EVERY = 1  # batches between drops of a packed store's pages (``packed.release``): a
# training batch reads random items, and the kernel maps far more than it reads (measured: 576
# random rows of a 175 MB memory-mapped file left 142 MB of it resident; MADV_RANDOM changed
# nothing), so the pages go after every batch (a few madvise calls)


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
