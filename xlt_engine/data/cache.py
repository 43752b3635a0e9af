"""Pre-tokenised corpus cache: a text file tokenised once into numpy arrays on disk, then read
through memory maps, so a corpus of millions of lines is never held whole in memory.

A cache folder holds ``ids.bin`` (int32 sub-token ids of all lines, no special tokens, back to
back), ``offsets.npy`` (int64 ``[n + 1]``: line i is ``ids[offsets[i]:offsets[i + 1]]``),
``lines.npy`` (int64 ``[n]``: the 1-based source line of each entry; blank lines are skipped)
and ``meta.json``. Its name is keyed by the SHA-256 of the input file's bytes and of the
tokenizer's serialised pipeline: change either and a new cache is built; the same pair reuses
the old one. The folder is built under a temporary name and renamed into place, so an
interrupted build leaves no half cache behind; every array is fsynced before ``meta.json`` is
written, and ``meta.json`` before the rename.

Building streams the file in batches of lines through ``encode_batch`` (Rust, multi-threaded),
appending ids and lengths to files; memory stays flat whatever the file size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from xlt_engine.data.text import iter_text
from xlt_engine.data.tokenizer import WordPieceTokenizer
from xlt_engine.fileio import atomic_write_text, file_sha256, fsync_dir, temp_dir_beside
from xlt_engine.inputs import read_json

FORMAT = 1


def tokenizer_sha256(tokenizer: WordPieceTokenizer) -> str:
    return hashlib.sha256(tokenizer.backend.to_str().encode("utf-8")).hexdigest()


def _save_synced(path: Path, array: np.ndarray) -> None:
    """``np.save`` and fsync: every array is on disk before ``meta.json`` vouches for it."""
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def _tokenize_into(tmp: Path, text_path: Path, tokenizer, batch_lines: int, encoding: str):
    """Tokenise every non-blank line of ``text_path`` into ``tmp``'s ids.bin (int32, all lines
    one after the other), lengths.bin and lines.bin (int64: ids and line number per line),
    ``batch_lines`` lines at a time, synced; returns (lines, ids)."""
    n_lines = n_ids = 0
    with (
        open(tmp / "ids.bin", "wb") as ids_f,
        open(tmp / "lengths.bin", "wb") as len_f,
        open(tmp / "lines.bin", "wb") as line_f,
    ):
        batch: list[str] = []
        numbers: list[int] = []
        backend = tokenizer.backend  # encode_batch_fast skips the offsets (tokenizers 0.21+)
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch

        def flush() -> None:
            nonlocal n_lines, n_ids
            encs = encode(batch, add_special_tokens=False)
            lens = np.fromiter((len(e.ids) for e in encs), np.int64, len(encs))
            if lens.sum():
                ids_f.write(np.concatenate([e.ids for e in encs]).astype(np.int32))
            len_f.write(lens.tobytes())
            line_f.write(np.asarray(numbers, dtype=np.int64).tobytes())
            n_lines += len(batch)
            n_ids += int(lens.sum())
            batch.clear()
            numbers.clear()

        for lineno, line in iter_text(text_path, encoding):
            batch.append(line)
            numbers.append(lineno)
            if len(batch) >= batch_lines:
                flush()
        if batch:
            flush()
        for f in (ids_f, len_f, line_f):
            f.flush()
            os.fsync(f.fileno())
    return n_lines, n_ids


class TokenCache:
    """A built cache, memory-mapped. ``cache[i]`` is the int32 id array of entry i."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        try:
            self.meta = read_json(meta_path)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{meta_path}: not a token cache ({err})") from None
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: cache format {self.meta.get('format')} != {FORMAT}")
        self.offsets = np.load(self.folder / "offsets.npy", mmap_mode="r")
        self.line_numbers = np.load(self.folder / "lines.npy", mmap_mode="r")
        n_ids = int(self.offsets[-1])
        self.ids = (
            np.memmap(self.folder / "ids.bin", dtype=np.int32, mode="r", shape=(n_ids,))
            if n_ids
            else np.zeros(0, dtype=np.int32)
        )

    @classmethod
    def build(
        cls,
        text_path: str | Path,
        tokenizer: WordPieceTokenizer,
        cache_root: str | Path,
        batch_lines: int = 8192,
        encoding: str = "utf-8",
    ) -> TokenCache:
        """The cache of ``text_path`` under ``cache_root``, built unless it already exists."""
        text_path = Path(text_path)
        if not text_path.is_file():
            raise ValueError(f"{text_path}: no such file")
        file_hash, tok_hash = file_sha256(text_path), tokenizer_sha256(tokenizer)
        cache_root = Path(cache_root)
        folder = cache_root / f"{text_path.name}.{file_hash[:16]}.{tok_hash[:16]}"
        if (folder / "meta.json").is_file():
            return cls(folder)
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir_beside(f".{folder.name}.tmp-", cache_root)
        try:
            n_lines, n_ids = _tokenize_into(tmp, text_path, tokenizer, batch_lines, encoding)
            if n_lines == 0:
                raise ValueError(f"{text_path}: no non-blank lines to tokenise")
            lengths = np.fromfile(tmp / "lengths.bin", dtype=np.int64)
            offsets = np.zeros(n_lines + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            _save_synced(tmp / "offsets.npy", offsets)
            _save_synced(tmp / "lines.npy", np.fromfile(tmp / "lines.bin", dtype=np.int64))
            (tmp / "lengths.bin").unlink()
            (tmp / "lines.bin").unlink()
            meta = {
                "format": FORMAT,
                "source": str(text_path.resolve()),
                "source_sha256": file_hash,
                "tokenizer_sha256": tok_hash,
                "lines": n_lines,
                "ids": n_ids,
            }
            atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
            try:
                os.rename(tmp, folder)
            except OSError:
                if not (folder / "meta.json").is_file():  # not a concurrent builder's finished copy
                    raise
            fsync_dir(cache_root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return cls(folder)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"entry {i} out of range for {len(self)} entries")
        i %= len(self)
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def windows(self, max_len: int) -> np.ndarray:
        """``[n_windows, 3]`` int64 rows ``(entry, start, end)``: every entry cut into pieces of
        at most ``max_len - 2`` ids (room for ``[CLS]``/``[SEP]``); empty entries skipped."""
        room = max_len - 2
        if room < 1:
            raise ValueError(f"max_len must be at least 3, got {max_len}")
        lengths = self.lengths
        per = -(-lengths // room)  # windows per entry
        entry = np.repeat(np.arange(len(lengths)), per)
        first = np.cumsum(per) - per
        k = np.arange(len(entry)) - np.repeat(first, per)  # window number within its entry
        start = k * room
        end = np.minimum(start + room, lengths[entry])
        return np.stack([entry, start, end], axis=1)

    def window(self, entry: int, start: int, end: int, cls_id: int, sep_id: int) -> np.ndarray:
        """``[CLS] ids[start:end] [SEP]`` of one entry, int32."""
        body = self[entry][start:end]
        out = np.empty(len(body) + 2, dtype=np.int32)
        out[0], out[1:-1], out[-1] = cls_id, body, sep_id
        return out
