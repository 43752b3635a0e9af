"""Pre-tokenised, memory-mapped corpus cache."""

import os
from pathlib import Path

import numpy as np
import pytest

from xlt_engine.data import load_tokenizer
from xlt_engine.data.cache import TokenCache
from xlt_engine.data.tokenizer import default_tokenizer

LINES = ["Zürich liegt in der Schweiz.", "", "  Hello world  ", "東京は日本の首都です。", "x" * 50]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def test_build_read_and_reuse(tmp_path, text_file, mbert_vocab, monkeypatch):
    tok = load_tokenizer(mbert_vocab)
    cache = TokenCache.build(text_file, tok, tmp_path / "cache", batch_lines=2)
    kept = [(i + 1, line.strip()) for i, line in enumerate(LINES) if line.strip()]
    assert len(cache) == len(kept)
    for i, (lineno, line) in enumerate(kept):
        assert cache[i].tolist() == tok.encode(line, add_special_tokens=False)
        assert cache.line_numbers[i] == lineno
    assert cache[-1].tolist() == cache[len(cache) - 1].tolist()
    assert isinstance(cache.ids, np.memmap) and cache.ids.dtype == np.int32
    assert cache.lengths.tolist() == [len(cache[i]) for i in range(len(cache))]
    with pytest.raises(IndexError):
        cache[len(cache)]
    # the same file and tokenizer reuse the cache without tokenising again
    backend = tok.backend

    class NoEncoding:
        def __getattr__(self, name):
            if name.startswith("encode"):
                raise AssertionError("tokenised again")
            return getattr(backend, name)

    monkeypatch.setattr(tok, "backend", NoEncoding())
    again = TokenCache.build(text_file, tok, tmp_path / "cache")
    assert again.folder == cache.folder


def test_key_changes_with_file_or_tokenizer(tmp_path, text_file, mbert_vocab):
    a = TokenCache.build(text_file, load_tokenizer(mbert_vocab), tmp_path / "c")
    b = TokenCache.build(text_file, default_tokenizer(), tmp_path / "c")
    text_file.write_text("changed\n", encoding="utf-8")
    c = TokenCache.build(text_file, default_tokenizer(), tmp_path / "c")
    assert len({a.folder, b.folder, c.folder}) == 3
    assert len(c) == 1 and len(b) == 4


def test_windows_cover_every_entry(tmp_path, text_file):
    tok = default_tokenizer()  # character level: the long line has 50 pieces
    cache = TokenCache.build(text_file, tok, tmp_path / "c")
    win = cache.windows(max_len=12)
    assert (win[:, 2] - win[:, 1] <= 10).all() and (win[:, 2] > win[:, 1]).all()
    for entry in range(len(cache)):
        rows = win[win[:, 0] == entry]
        pieces = np.concatenate([cache[entry][s:e] for _, s, e in rows])
        assert pieces.tolist() == cache[entry].tolist()
    w = cache.window(*win[0], cls_id=tok.cls_id, sep_id=tok.sep_id)
    assert w[0] == tok.cls_id and w[-1] == tok.sep_id and len(w) <= 12


def test_interrupted_build_leaves_nothing(tmp_path, text_file, monkeypatch):
    tok = default_tokenizer()
    calls = {"n": 0}
    backend = tok.backend
    real = backend.encode_batch

    class Flaky:
        def __getattr__(self, name):
            return getattr(backend, name)

        def encode_batch(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        encode_batch_fast = encode_batch

    monkeypatch.setattr(tok, "backend", Flaky())
    with pytest.raises(KeyboardInterrupt):
        TokenCache.build(text_file, tok, tmp_path / "c", batch_lines=1)
    assert list((tmp_path / "c").iterdir()) == []
    monkeypatch.undo()
    assert len(TokenCache.build(text_file, tok, tmp_path / "c")) == 4


def test_bad_input(tmp_path):
    tok = default_tokenizer()
    with pytest.raises(ValueError, match="nope.txt: no such file"):
        TokenCache.build(tmp_path / "nope.txt", tok, tmp_path / "c")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="blank.txt: no non-blank lines"):
        TokenCache.build(blank, tok, tmp_path / "c")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\n")
    with pytest.raises(ValueError, match="bad.txt:2: byte 0xff"):
        TokenCache.build(bad, tok, tmp_path / "c")
    with pytest.raises(ValueError, match="not a token cache"):
        TokenCache(tmp_path)


def test_every_array_is_on_disk_before_meta_json_vouches_for_it(tmp_path, text_file, monkeypatch):
    """Issue 23 (5): offsets.npy and lines.npy were written without fsync, so a power cut after
    the rename could leave a cache whose meta.json names arrays that never reached the disk."""
    import xlt_engine.data.cache as cache_mod

    events = []
    real_fsync, real_write = os.fsync, cache_mod.atomic_write_text

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        return real_fsync(fd)

    def write(path, text):
        events.append(("write", Path(path).name))
        return real_write(path, text)

    monkeypatch.setattr(cache_mod.os, "fsync", fsync)
    monkeypatch.setattr(cache_mod, "atomic_write_text", write)
    TokenCache.build(text_file, default_tokenizer(), tmp_path / "cache")
    meta = events.index(("write", "meta.json"))
    synced = {name for kind, name in events[:meta] if kind == "fsync"}
    assert {"ids.bin", "offsets.npy", "lines.npy"} <= synced, events
