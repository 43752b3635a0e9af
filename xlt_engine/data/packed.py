"""Packed task data: the encoded items of one or more task files as flat arrays on disk, built
chunk by chunk and read through memory maps, so self-training's unlabeled target corpus (millions
of sentences) is never held whole in memory, in Python objects or otherwise.

``build_store`` streams each file (``iter_examples``: CoNLL and plain text line by line; the
other formats through their readers), samples ``limit`` examples *before* encoding anything
(a counting pass, then ``sample_indices`` as ``subsample`` draws them: the same examples), encodes
``chunk`` examples at a time exactly as ``task.encode`` does (NER windows, text / pair
truncation) and appends them to the folder's files. ``open_store`` gives an ``Encoded`` whose
fields are ``Ragged`` views of memory maps: what a pass touches is paged in from the page cache
and can be dropped again (``release``), so resident memory stays flat in corpus size.

A store folder (name: first file's name and a key over the files' bytes, formats, the
tokenizer, labels, ``max_len``, ``limit`` and ``seed``: change any and a new store is built)::

    meta.json       counts and the settings it was built from (written last: marks it built)
    ids.bin         int32: every item's sub-token ids ([CLS] ... [SEP]) back to back
    items.npy       int64 [items + 1]: item i is ids[items[i]:items[i + 1]]
    types.bin       int8: token types, as ids (all 0 unless a file has text pairs)
    positions.bin   int64: positions classified in each item (NER: first sub-token of a word)
    targets.bin     int64: one label id per position (-100: none)
    rows.npy        int64 [items + 1]: item i's rows are positions[rows[i]:rows[i + 1]]
    units.npy       int64 [items]: the unit (sentence, text) of each item, numbered over all files
    lines.npy       int64 [units]: each unit's 1-based line in its file

The folder is built under a temporary name and renamed into place (``atomic_folder``): a kill
leaves no half store, only debris that ``fileio.remove_debris`` clears.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlt_engine.data.align import IGNORE, WordPieces, align_flat, encode_texts
from xlt_engine.data.cache import tokenizer_sha256
from xlt_engine.data.examples import split_columns
from xlt_engine.data.formats import format_names, get_format
from xlt_engine.data.task import Encoded, Ragged, sample_indices
from xlt_engine.data.text import iter_text
from xlt_engine.data.tokenizer import WordPieceTokenizer
from xlt_engine.fileio import atomic_folder, atomic_write_text, file_sha256
from xlt_engine.inputs import read_json

STORE_FORMAT = 1
TEXT = "text"  # plain text, one example per non-blank line (NER: words split on spaces / tabs)


def input_formats() -> tuple[str, ...]:
    """What a store reads: every registered task format, and plain text."""
    return (*format_names(), TEXT)


CHUNK = 8192  # examples encoded at a time
TRIM_SLACK = 64 << 20  # bytes of heap growth that make trim_heap trim


@dataclass(frozen=True)
class StoreFile:
    """One input of a store: a file, its format (a task format or ``text``) and whether its
    labels are read (``unlabeled``: never)."""

    path: str
    format: str
    unlabeled: bool

    def __post_init__(self):
        if self.format not in input_formats():
            raise ValueError(
                f"{self.path}: format must be one of {input_formats()}, got {self.format!r}"
            )
        if self.format == TEXT and not self.unlabeled:
            raise ValueError(f"{self.path}: a plain-text file has no labels (use it as unlabeled)")


def iter_examples(
    file: StoreFile, kind: str, encoding: str | None = None
) -> Iterator[tuple[int, object, str | None, object]]:
    """``(line, input, pair, label)`` for every example of ``file`` in order: ``input`` a word
    list (token tasks) or a text, ``label`` a tag list / label string, or None when unlabeled.
    CoNLL and plain text stream (memory holds one example); the other formats are read whole
    by their readers."""
    path = Path(file.path)
    if file.format == TEXT:
        for lineno, line in iter_text(path):
            yield lineno, (split_columns(line) if kind == "token" else line), None, None
        return
    fmt = get_format(file.format)
    if fmt.kind != kind:
        raise ValueError(f"{path}: format {file.format!r} is not a {kind} classification format")
    if fmt.stream is not None:
        yield from fmt.stream(path, file.unlabeled, encoding)
        return
    data = fmt.read(path, file.unlabeled, encoding)
    for i in range(len(data)):
        pair = None if data.pairs is None else data.pairs[i]
        label = None if data.labels is None else data.labels[i]
        yield data.lines[i], data.inputs[i], pair, label


def store_key(
    files: Sequence[StoreFile],
    kind: str,
    tok: WordPieceTokenizer,
    labels: Sequence[str],
    max_len: int,
    limit: int | None,
    seed: int,
    encoding: str | None,
) -> dict:
    return {
        "store_format": STORE_FORMAT,
        "kind": kind,
        "files": [
            {
                "path": str(Path(f.path).resolve()),
                "sha256": file_sha256(Path(f.path)),
                "format": f.format,
                "unlabeled": f.unlabeled,
            }
            for f in files
        ],
        "tokenizer_sha256": tokenizer_sha256(tok),
        "labels": list(labels),
        "max_len": max_len,
        "limit": limit,
        "seed": seed if limit is not None else None,
        "encoding": encoding,
    }


@dataclass(frozen=True)
class StoreSpec:
    """How a store's examples are encoded: the task kind ("token" or "sequence"), the
    tokenizer, the labels, the cut length and the CoNLL files' encoding (None: UTF-8, or latin-1
    when clearly not UTF-8)."""

    kind: str
    tok: WordPieceTokenizer
    labels: Sequence[str]
    max_len: int
    encoding: str | None = None


def build_store(
    files: Sequence[StoreFile],
    spec: StoreSpec,
    root: str | Path,
    limit: int | None = None,
    seed: int = 0,
    chunk: int = CHUNK,
) -> Path:
    """The store of ``files`` encoded as ``spec`` says under ``root`` (built unless one with the
    same key exists); ``limit``: at most that many examples of each file, drawn from ``seed``
    before encoding."""
    kind, tok, labels, max_len, encoding = (
        spec.kind,
        spec.tok,
        spec.labels,
        spec.max_len,
        spec.encoding,
    )
    if not files:
        raise ValueError("build_store needs at least one file")
    for f in files:
        if not Path(f.path).is_file():
            raise ValueError(f"{f.path}: no such file")
    key = store_key(files, kind, tok, labels, max_len, limit, seed, encoding)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    folder = Path(root) / f"{Path(files[0].path).name}.{digest[:16]}"
    if (folder / "meta.json").is_file():
        return folder
    with atomic_folder(folder) as tmp:
        writer = StoreWriter(tmp, kind)
        pieces = WordPieces(tok)
        per_file = []
        for f in files:
            per_file.append(
                _encode_file(
                    writer, f, (kind, tok, labels, max_len), (limit, seed), encoding, chunk, pieces
                )
            )
        writer.close(key | {"per_file": per_file})
    return folder


def _encode_file(writer, f, spec: tuple, sample: tuple, encoding, chunk, pieces) -> dict:
    """One file's examples into ``writer``, ``chunk`` at a time; ``spec``: (kind, tokenizer,
    labels, max_len); ``sample``: (limit, seed), the examples drawn before encoding."""
    (kind, tok, labels, max_len), (limit, seed) = spec, sample
    keep = None
    total = None
    if limit is not None:  # count first, then draw the sample as ``subsample`` would
        total = sum(1 for _ in iter_examples(f, kind, encoding))
        if total > limit:
            keep = np.zeros(total, dtype=bool)
            keep[sample_indices(total, limit, seed)] = True
    index = {name: i for i, name in enumerate(labels)}
    batch: list[tuple] = []
    n = kept = 0
    for example in iter_examples(f, kind, encoding):
        if keep is None or keep[n]:
            batch.append(example)
            if len(batch) >= chunk:
                writer.add(_encode_chunk(batch, f, kind, tok, index, max_len, pieces))
                kept += len(batch)
                batch = []
        n += 1
    if batch:
        writer.add(_encode_chunk(batch, f, kind, tok, index, max_len, pieces))
        kept += len(batch)
    if n == 0:
        raise ValueError(f"{f.path}: no examples")
    return {"path": f.path, "examples": n, "kept": kept}


def _label_ids(batch, f: StoreFile, index: dict[str, int], kind: str) -> list | None:
    if batch[0][3] is None:
        return None
    out = []
    for line, _, _, label in batch:
        names = label if kind == "token" else [label]
        unknown = sorted({x for x in names if x not in index})
        if unknown:
            raise ValueError(
                f"{f.path}:{line}: labels {unknown} are not among the model's labels {list(index)}"
            )
        out.append([index[x] for x in names])
    return out


def _encode_chunk(batch, f: StoreFile, kind, tok, index, max_len, pieces: WordPieces) -> dict:
    """One chunk of examples -> the flat arrays ``StoreWriter.add`` appends (as ``task.encode``
    encodes them; NER through ``align_flat``, which cuts the same windows)."""
    label_ids = _label_ids(batch, f, index, kind)
    lines = np.array([b[0] for b in batch], dtype=np.int64)
    if kind == "token":
        part = align_flat(pieces, [b[1] for b in batch], label_ids, max_len)
        return part | {"types": None, "lines": lines}
    pairs = [b[2] for b in batch]
    has_pairs = any(p is not None for p in pairs)
    enc = encode_texts(tok, [b[1] for b in batch], pairs if has_pairs else None, max_len)
    n = len(batch)
    if label_ids is None:
        targets = np.full(n, IGNORE, dtype=np.int64)
    else:
        targets = np.array([ids[0] for ids in label_ids], dtype=np.int64)
    return flat_part(enc.input_ids, enc.token_type_ids if has_pairs else None) | {
        "positions": np.zeros(n, dtype=np.int64),
        "rows": np.ones(n, dtype=np.int64),
        "targets": targets,
        "units": np.arange(n, dtype=np.int64),
        "lines": lines,
        "stats": {"truncated": enc.truncated, "pairs": int(has_pairs)},
    }


def flat_part(ids: Sequence[np.ndarray], types: Sequence[np.ndarray] | None) -> dict:
    """Per-item id (and token type) arrays -> ``StoreWriter.add``'s ``ids``, ``lengths`` and
    ``types`` (None: zeros)."""
    lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    flat = np.concatenate([np.zeros(0, np.int32), *ids]).astype(np.int32, copy=False)
    if types is not None:
        types = np.concatenate([np.zeros(0, np.int8), *types]).astype(np.int8, copy=False)
    return {"ids": flat, "lengths": lengths, "types": types}


class StoreWriter:
    """Appends encoded items to a store folder, chunk by chunk (memory: one chunk)."""

    def __init__(self, folder: Path, kind: str):
        self.folder, self.kind = Path(folder), kind
        names = ("ids.bin", "types.bin", "positions.bin", "targets.bin", "item-len.bin")
        names += ("row-len.bin", "units.bin", "lines.bin")
        self.files = {n: open(self.folder / n, "wb") for n in names}  # noqa: SIM115 (closed in close)
        self.items = self.rows = self.units = 0
        self.stats: dict[str, int] = {}

    def add(self, part: dict) -> None:
        """Append items, as flat arrays: ``ids`` and ``lengths`` (per item), ``types`` (as
        ids, or None: zeros), ``positions`` and ``targets`` and ``rows`` (per item),
        ``units`` (per item, numbered within the part), ``lines`` (per unit of the part) and
        ``stats`` (counts summed into meta.json)."""
        lengths = np.asarray(part["lengths"], dtype=np.int64)
        if not len(lengths):
            return
        f = self.files
        f["ids.bin"].write(np.asarray(part["ids"]).astype(np.int32, copy=False).tobytes())
        types = part["types"]
        f["types.bin"].write(
            np.zeros(int(lengths.sum()), np.int8).tobytes()
            if types is None
            else np.asarray(types).astype(np.int8, copy=False).tobytes()
        )
        rows = np.asarray(part["rows"], dtype=np.int64)
        f["positions.bin"].write(np.asarray(part["positions"]).astype(np.int64).tobytes())
        f["targets.bin"].write(np.asarray(part["targets"]).astype(np.int64).tobytes())
        f["item-len.bin"].write(lengths.tobytes())
        f["row-len.bin"].write(rows.tobytes())
        f["units.bin"].write((np.asarray(part["units"], np.int64) + self.units).tobytes())
        f["lines.bin"].write(np.asarray(part["lines"], np.int64).tobytes())
        self.items += len(lengths)
        self.rows += int(rows.sum())
        self.units += len(part["lines"])
        for k, v in part.get("stats", {}).items():
            self.stats[k] = (
                max(self.stats.get(k, 0), v) if k == "pairs" else self.stats.get(k, 0) + v
            )

    def close(self, meta: dict) -> None:
        """Offsets from the lengths, then meta.json (last: it vouches for the arrays)."""
        for f in self.files.values():
            f.close()
        d = self.folder
        for lengths, name in (("item-len.bin", "items.npy"), ("row-len.bin", "rows.npy")):
            n = np.fromfile(d / lengths, dtype=np.int64)
            offsets = np.zeros(len(n) + 1, dtype=np.int64)
            np.cumsum(n, out=offsets[1:])
            np.save(d / name, offsets)
            (d / lengths).unlink()
        for raw, name in (("units.bin", "units.npy"), ("lines.bin", "lines.npy")):
            np.save(d / name, np.fromfile(d / raw, dtype=np.int64))
            (d / raw).unlink()
        counts = {"kind": self.kind, "items": self.items, "rows": self.rows, "units": self.units}
        atomic_write_text(d / "meta.json", json.dumps(meta | counts | self.stats, indent=2) + "\n")


def _map(path: Path, dtype, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def open_store(folder: str | Path) -> Encoded:
    """A built store as an ``Encoded`` of memory-mapped ``Ragged`` fields (``units`` set,
    ``aligned`` None)."""
    folder = Path(folder)
    try:
        meta = read_json(folder / "meta.json")
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder}: not a packed task store ({err})") from None
    if meta.get("store_format") != STORE_FORMAT:
        raise ValueError(f"{folder}: store format {meta.get('store_format')} != {STORE_FORMAT}")
    items = np.load(folder / "items.npy", mmap_mode="r")
    rows = np.load(folder / "rows.npy", mmap_mode="r")
    n_ids, n_rows = int(items[-1]), int(rows[-1])
    ids = Ragged(_map(folder / "ids.bin", np.int32, n_ids), items)
    types = Ragged(_map(folder / "types.bin", np.int8, n_ids), items) if meta.get("pairs") else None
    positions = Ragged(_map(folder / "positions.bin", np.int64, n_rows), rows)
    targets = Ragged(_map(folder / "targets.bin", np.int64, n_rows), rows)
    units = np.load(folder / "units.npy", mmap_mode="r")
    return Encoded(
        meta["kind"], ids, types, positions, targets, None, meta.get("truncated", 0), units
    )


def release(enc: Encoded, *more: np.ndarray) -> None:
    """Drop the pages of ``enc``'s memory maps (and of the arrays ``more``) from this process:
    they stay in the page cache, and a later access reads them back from there, so a pass over
    a store leaves no resident memory behind. A no-op for in-memory arrays."""
    arrays = list(more)
    for field in (enc.input_ids, enc.token_type_ids, enc.positions, enc.targets):
        if isinstance(field, Ragged):
            arrays += [field.flat, field.offsets]
    if enc.units is not None:
        arrays.append(enc.units)
    for arr in arrays:
        base = arr
        while isinstance(base, np.ndarray):
            base = getattr(base, "_mmap", None) or base.base
        if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            base.madvise(mmap.MADV_DONTNEED)
    trim_heap()


def trim_heap(slack: int = TRIM_SLACK) -> None:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim``) once this
    process's anonymous memory has grown by ``slack`` bytes since the last trim: a guard for a
    long pass whose allocations change size from batch to batch. The growth once blamed on the
    heap (a 1M-sentence pass: 303 -> 717 MB untrimmed) was oneDNN's per-shape GELU primitives
    (``model.bert.gelu`` avoids them); since then that pass stays flat either way (peak 295 MB
    untrimmed, 297 MB with this guard), so the guard rarely fires. A trim costs about 9 ms plus
    the page faults of memory used again. A no-op where there is no glibc."""
    global _AFTER_TRIM
    if _LIBC is None:
        return
    if anonymous_bytes() - _AFTER_TRIM > slack:
        _LIBC.malloc_trim(0)
        _AFTER_TRIM = anonymous_bytes()


def anonymous_bytes() -> int:
    """Resident memory of this process not backed by files (Linux ``/proc/self/statm``:
    resident minus shared); 0 where that file does not exist."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
    except OSError:
        return 0
    return (int(fields[1]) - int(fields[2])) * mmap.PAGESIZE


def _glibc():
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()
_AFTER_TRIM = 0  # anonymous_bytes() after the last trim
