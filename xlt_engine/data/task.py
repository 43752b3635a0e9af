"""Task data for the finetune / selftrain / evaluate / predict stages: read a file in any
supported format, encode it for a ``TaskModel`` and batch it.

One representation serves both task kinds. Every encoded item is an input sequence plus the
positions whose hidden states are classified and one target per position: for token
classification (CoNLL) an item is a window of a sentence and its positions are the first
sub-tokens of its words; for sequence classification an item is a text (or pair) and its single
position is [CLS]. A batch carries those positions as flat indices into B*T, so only they reach
the voters, and the voter logits come back as ``[M, rows, C]`` with rows in input order (for
NER: every word of every sentence, in order).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from xlt_engine.data import cls10, conll, marc, text, xnli  # noqa: F401  (their formats register)
from xlt_engine.data.align import IGNORE, AlignedWords, align_words, encode_texts
from xlt_engine.data.batching import (
    PAD_MULTIPLE,
    length_batches,
    length_limit,
    pad_batch,
    padded_length,
    shard,
    spans,
)
from xlt_engine.data.formats import Format, TaskData, format_names, get_format, label_set
from xlt_engine.data.tokenizer import WordPieceTokenizer

__all__ = ["Format", "TaskData", "format_names", "label_set"]  # defined in formats


def task_kind(format: str) -> str:
    """``token`` or ``sequence``: what the registered format ``format`` holds."""
    return get_format(format).kind


def concat_encoded(parts: Sequence[Encoded]) -> Encoded:
    """One ``Encoded`` of several, items in order (``aligned`` is not kept: a row's words are
    its own part's)."""
    if any(p.token_type_ids is not None for p in parts):
        types = [
            t for p in parts for t in (p.token_type_ids or [np.zeros_like(x) for x in p.input_ids])
        ]
    else:
        types = None
    return Encoded(
        parts[0].kind,
        [x for p in parts for x in p.input_ids],
        types,
        [x for p in parts for x in p.positions],
        [x for p in parts for x in p.targets],
        None,
        sum(p.truncated for p in parts),
    )


def read_task_file(
    path: str | Path,
    format: str,
    unlabeled: bool = False,
    limit: int | None = None,
    seed: int = 0,
    encoding: str | None = None,
) -> TaskData:
    """Read ``path`` in ``format``; ``unlabeled``: the labels (if any) are not kept;
    ``limit``: at most that many examples, sampled from ``seed`` (``subsample``); ``encoding``:
    a CoNLL file's (None: UTF-8, or latin-1 by a clear margin; see ``read_conll``)."""
    return subsample(_read_task_file(Path(path), format, unlabeled, encoding), limit, seed)


def _read_task_file(path: Path, format: str, unlabeled: bool, encoding: str | None) -> TaskData:
    return get_format(format).read(path, unlabeled, encoding)


def check_known_labels(data: TaskData, labels: Sequence[str]) -> None:
    """Every label of ``data`` must be one the model knows."""
    if data.labels is None:
        return
    unknown = sorted(set(data.label_set()) - set(labels))
    if unknown:
        raise ValueError(
            f"{data.path}: labels {unknown} are not among the model's labels {list(labels)}"
        )


def sample_indices(n: int, limit: int, seed: int) -> list[int]:
    """``limit`` of ``range(n)``, drawn without replacement from ``seed``, in order."""
    keep = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    return [int(i) for i in keep]


def subsample_items(items: list, limit: int | None, seed: int) -> list:
    if limit is None or len(items) <= limit:
        return items
    return [items[i] for i in sample_indices(len(items), limit, seed)]


def subsample(data: TaskData, limit: int | None, seed: int) -> TaskData:
    """At most ``limit`` examples of ``data``, drawn without replacement from ``seed``, kept in
    file order."""
    if limit is None or len(data) <= limit:
        return data
    pick = sample_indices(len(data), limit, seed)
    return replace(
        data,
        inputs=[data.inputs[i] for i in pick],
        pairs=None if data.pairs is None else [data.pairs[i] for i in pick],
        labels=None if data.labels is None else [data.labels[i] for i in pick],
        lines=[data.lines[i] for i in pick],
        conll=None,
    )


class Ragged(Sequence):
    """A sequence of 1-D arrays stored back to back: item i is ``flat[offsets[i]:offsets[i + 1]]``.
    ``flat`` may be a memory map, so millions of items cost no Python objects. A slice is a
    view (offsets not rebased); an item is a view of ``flat``."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("a Ragged slice must be contiguous")
            return Ragged(self.flat, self.offsets[start : max(stop, start) + 1])
        i = operator.index(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"item {i} out of range for {n} items")
        i %= n
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(np.asarray(self.offsets, dtype=np.int64))

    def concatenated(self) -> np.ndarray:
        """Every item's values, back to back (a copy, in memory)."""
        return np.array(self.flat[self.offsets[0] : self.offsets[-1]])

    def take(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items ``items`` back to back (one gather, in memory) and their lengths: no Python
        object per item, so a batch of a memory-mapped corpus costs a few array operations."""
        items = np.asarray(items, dtype=np.int64)
        offsets = np.asarray(self.offsets)
        starts = offsets[items]
        lengths = (offsets[items + 1] - starts).astype(np.int64)
        return np.asarray(self.flat)[spans(starts, lengths)], lengths


def item_rows(offsets: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The rows of ``items``, back to back, given the row ``offsets`` (``Encoded.row_offsets``)."""
    items = np.asarray(items, dtype=np.int64)
    return spans(offsets[items], offsets[items + 1] - offsets[items])


@dataclass
class Encoded:
    """Model inputs: per item ids, token types (or None), positions and targets. Each field is a
    list of arrays, or a ``Ragged`` (a packed store on disk, ``data.packed``)."""

    kind: str
    input_ids: list[np.ndarray] | Ragged
    token_type_ids: list[np.ndarray] | Ragged | None
    positions: list[np.ndarray] | Ragged  # int64 positions classified in each item
    targets: list[np.ndarray] | Ragged  # int64 per position (-100: no label)
    aligned: AlignedWords | None  # token: to map rows back to words
    truncated: int = 0
    units: np.ndarray | None = None  # int64 [items]: the unit (sentence, text) of each item,
    # when not read from ``aligned`` (packed stores)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        if isinstance(self.input_ids, Ragged):
            return self.input_ids.lengths
        return np.array([len(x) for x in self.input_ids], dtype=np.int64)

    @property
    def row_offsets(self) -> np.ndarray:
        """Start of each item's rows in the concatenated rows; last entry: the total."""
        if isinstance(self.positions, Ragged):
            offsets = np.asarray(self.positions.offsets, dtype=np.int64)
            return offsets - offsets[0]
        return np.concatenate([[0], np.cumsum([len(p) for p in self.positions])]).astype(np.int64)

    @property
    def packed(self) -> bool:
        """Every field is ``Ragged`` (a packed store or a slice of one)."""
        fields = (self.input_ids, self.positions, self.targets)
        return all(isinstance(f, Ragged) for f in fields) and (
            self.token_type_ids is None or isinstance(self.token_type_ids, Ragged)
        )

    def flat_targets(self) -> np.ndarray:
        """Every row's target, int64, in row order (a copy)."""
        if isinstance(self.targets, Ragged):
            return self.targets.concatenated().astype(np.int64)
        return np.concatenate([np.zeros(0, np.int64), *self.targets]).astype(np.int64)


def encode(data: TaskData, tok: WordPieceTokenizer, labels: Sequence[str], max_len: int) -> Encoded:
    """Encode ``data`` with label ids from ``labels`` (the model's label order)."""
    index = {name: i for i, name in enumerate(labels)}
    check_known_labels(data, labels)
    if data.kind == "token":
        ids = None
        if data.labels is not None:
            ids = [[index[t] for t in tags] for tags in data.labels]
        aligned = align_words(tok, data.inputs, ids, max_len)
        ws = aligned.windows
        return Encoded(
            "token",
            [w.input_ids for w in ws],
            None,
            [w.word_positions.astype(np.int64) for w in ws],
            [w.labels[w.word_positions] for w in ws],
            aligned,
        )
    enc = encode_texts(tok, data.inputs, data.pairs, max_len)
    types = enc.token_type_ids if data.pairs is not None else None
    zero = np.zeros(1, dtype=np.int64)
    if data.labels is None:
        targets = [np.full(1, IGNORE, dtype=np.int64) for _ in data.inputs]
    else:
        targets = [np.array([index[lab]], dtype=np.int64) for lab in data.labels]
    return Encoded(
        "sequence", enc.input_ids, types, [zero] * len(targets), targets, None, enc.truncated
    )


def make_batch(
    enc: Encoded,
    items: np.ndarray,
    pad_id: int,
    pad_multiple: int = PAD_MULTIPLE,
    limit: int | None = None,
) -> dict[str, torch.Tensor]:
    """Padded inputs of ``items`` (``T``: ``padded_length(longest, pad_multiple, limit)``)
    plus ``positions`` (flat indices into B*T) and ``targets``."""
    if enc.packed:
        return _packed_batch(enc, items, pad_id, pad_multiple, limit)
    seqs = [enc.input_ids[i] for i in items]
    types = [enc.token_type_ids[i] for i in items] if enc.token_type_ids is not None else None
    batch = pad_batch(seqs, pad_id, pad_multiple, token_type_ids=types, limit=limit)
    T = batch["input_ids"].shape[1]
    flat = [b * T + np.asarray(enc.positions[i], dtype=np.int64) for b, i in enumerate(items)]
    batch["positions"] = torch.from_numpy(np.concatenate(flat))
    targets = np.concatenate([enc.targets[i] for i in items]).astype(np.int64, copy=False)
    batch["targets"] = torch.from_numpy(targets)
    return batch


def _packed_batch(
    enc: Encoded, items: np.ndarray, pad_id: int, pad_multiple: int, limit: int | None
) -> dict[str, torch.Tensor]:
    """``make_batch`` of a packed ``Encoded`` (every field ``Ragged``): the same tensors from
    a few gathers, with no loop over the items."""
    ids, lengths = enc.input_ids.take(items)
    B = len(lengths)
    if not B:
        raise ValueError("pad_batch got no sequences")
    T = padded_length(int(lengths.max()), pad_multiple, limit)
    row = np.repeat(np.arange(B, dtype=np.int64), lengths)
    col = np.arange(len(ids), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    input_ids = np.full((B, T), pad_id, dtype=np.int64)
    input_ids[row, col] = ids
    mask = np.zeros((B, T), dtype=np.int64)
    mask[row, col] = 1
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if enc.token_type_ids is not None:
        types = np.zeros((B, T), dtype=np.int64)
        types[row, col] = enc.token_type_ids.take(items)[0]
        batch["token_type_ids"] = torch.from_numpy(types)
    positions, counts = enc.positions.take(items)
    batch["positions"] = torch.from_numpy(
        positions.astype(np.int64) + np.repeat(np.arange(B, dtype=np.int64) * T, counts)
    )
    batch["targets"] = torch.from_numpy(enc.targets.take(items)[0].astype(np.int64, copy=False))
    return batch


class TaskBatches:
    """A ``DataSource`` over encoded items: length-bucketed batches shuffled per epoch from
    (seed, epoch), sharded round-robin by rank; lengths padded to a multiple of
    ``pad_multiple`` (not past the longest item's, rounded to 8)."""

    enc: Encoded  # the items (a subclass may drop a packed store's pages: ``packed.release``)
    lengths: np.ndarray  # tokens per item

    def __init__(
        self,
        enc: Encoded,
        pad_id: int,
        batch_size: int,
        max_tokens: int | None,
        seed: int,
        pad_multiple: int = PAD_MULTIPLE,
    ):
        self.enc, self.pad_id, self.batch_size, self.max_tokens = (
            enc,
            pad_id,
            batch_size,
            max_tokens,
        )
        self.seed = seed
        self.lengths = enc.lengths
        self.pad_multiple, self.limit = pad_multiple, length_limit(self.lengths)
        ddp = dist.is_available() and dist.is_initialized()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def _batches(self, epoch: int) -> list[np.ndarray]:
        if self._epoch is None or self._epoch[0] != epoch:
            b = length_batches(
                self.lengths,
                self.batch_size,
                self.max_tokens,
                self.pad_multiple,
                seed=self.seed,
                epoch=epoch,
            )
            self._epoch = (epoch, shard(b, self.rank, self.world))
        return self._epoch[1]

    def num_batches(self, epoch: int) -> int:
        return len(self._batches(epoch))

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        items = self._batches(epoch)[index]
        return make_batch(self.enc, items, self.pad_id, self.pad_multiple, self.limit)
