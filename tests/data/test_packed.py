"""Packed task stores: the same items as ``task.encode`` (NER windows, texts and pairs, several
files, sampling), built chunk by chunk and read through memory maps; streamed CoNLL equal to the
whole-file reader; the store key; per-row safetensors files written in place."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xlt_engine.data.batching import spans
from xlt_engine.data.conll import iter_conll, read_conll
from xlt_engine.data.packed import StoreFile, StoreSpec, build_store, open_store, release
from xlt_engine.data.task import (
    Ragged,
    TaskData,
    concat_encoded,
    encode,
    item_rows,
    make_batch,
    read_task_file,
)
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.fileio import create_safetensors, open_safetensors

NER = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.fixture(scope="module")
def tok(request):
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return load_tokenizer(SHARED_DATA / "mbert" / "vocab.txt")


def assert_same_items(store, ref) -> None:
    """Every field of every item equal, and the same batches from ``make_batch``."""
    assert len(store) == len(ref)
    np.testing.assert_array_equal(store.lengths, ref.lengths)
    np.testing.assert_array_equal(store.row_offsets, ref.row_offsets)
    for i in range(len(ref)):
        np.testing.assert_array_equal(store.input_ids[i], ref.input_ids[i])
        np.testing.assert_array_equal(store.positions[i], ref.positions[i])
        np.testing.assert_array_equal(store.targets[i], ref.targets[i])
        if ref.token_type_ids is not None:
            np.testing.assert_array_equal(store.token_type_ids[i], ref.token_type_ids[i])
    assert (store.token_type_ids is None) == (ref.token_type_ids is None)
    assert store.packed and not ref.packed
    # a batch in any order (inference sorts items by length), the store's built by gathers
    for items in (np.arange(0, len(ref), 3), np.random.default_rng(0).permutation(len(ref))[:37]):
        a, b = make_batch(store, items, 0), make_batch(ref, items, 0)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("unlabeled", [False, True])
def test_conll_store_equals_encode_with_the_same_sample(tok, shared_data, tmp_path, unlabeled):
    path = shared_data / "conll2002" / "esp.testa"
    ref_data = read_task_file(path, "conll", unlabeled, limit=300, seed=3)
    ref = encode(ref_data, tok, NER, 24)  # short windows: long sentences split in several
    assert len(ref) > 300
    folder = build_store(
        [StoreFile(str(path), "conll", unlabeled)],
        StoreSpec("token", tok, NER, 24),
        tmp_path,
        300,
        3,
        chunk=64,
    )
    store = open_store(folder)
    assert isinstance(store.input_ids, Ragged) and isinstance(store.input_ids.flat, np.memmap)
    assert_same_items(store, ref)
    # units: the sentence of each window, numbered over the chunks; lines: the sample's lines
    np.testing.assert_array_equal(store.units, [w.sentence for w in ref.aligned.windows])
    np.testing.assert_array_equal(np.load(folder / "lines.npy"), ref_data.lines)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["per_file"][0]["examples"] == len(read_conll(path))
    assert meta["units"] == 300 and meta["split_sentences"] == ref.aligned.split_sentences
    release(store)  # the pages go; the data reads back the same
    assert_same_items(store, ref)


def test_several_files_are_numbered_over_files(tok, shared_data, tmp_path):
    paths = [shared_data / "conll2002" / "esp.testb", shared_data / "conll2002" / "ned.testa"]
    parts = [encode(read_task_file(p, "conll", limit=40, seed=1), tok, NER, 64) for p in paths]
    files = [StoreFile(str(p), "conll", False) for p in paths]
    store = open_store(
        build_store(files, StoreSpec("token", tok, NER, 64), tmp_path, 40, 1, chunk=16)
    )
    assert_same_items(store, concat_encoded(parts))
    want = [w.sentence + 40 * k for k, part in enumerate(parts) for w in part.aligned.windows]
    np.testing.assert_array_equal(store.units, want)
    np.testing.assert_array_equal(store.flat_targets(), concat_encoded(parts).flat_targets())


def test_texts_pairs_and_plain_text_equal_encode(tok, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    rows = [
        (f"premise {i} " + "ünïcode word " * (i % 5), f"hypothesis {i}", "ab"[i % 2])
        for i in range(50)
    ]
    pairs.write_text("".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows), encoding="utf-8")
    ref = encode(read_task_file(pairs, "tsv"), tok, ["a", "b"], 12)  # some truncated
    assert ref.lengths.max() == 12 and ref.lengths.min() < 12  # some cut to max_len
    store = open_store(
        build_store(
            [StoreFile(str(pairs), "tsv", False)],
            StoreSpec("sequence", tok, ["a", "b"], 12),
            tmp_path,
            chunk=8,
        )
    )
    assert_same_items(store, ref)
    assert store.truncated == ref.truncated

    # plain text, one example per line: words split on spaces and tabs for NER
    text = tmp_path / "u.txt"
    lines = ["Juan vive en\tMadrid .", "  ", "Ámsterdam es  grande", "x"]
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    words = [["Juan", "vive", "en", "Madrid", "."], ["Ámsterdam", "es", "grande"], ["x"]]
    data = TaskData(text, "conll", "token", words, None, None, [1, 3, 4])
    store = open_store(
        build_store(
            [StoreFile(str(text), "text", True)], StoreSpec("token", tok, NER, 128), tmp_path
        )
    )
    assert_same_items(store, encode(data, tok, NER, 128))
    np.testing.assert_array_equal(np.load(next(tmp_path.glob("u.txt.*")) / "lines.npy"), [1, 3, 4])
    seq = open_store(
        build_store(
            [StoreFile(str(text), "text", True)],
            StoreSpec("sequence", tok, ["a", "b"], 16),
            tmp_path,
        )
    )
    texts = TaskData(
        text, "tsv", "sequence", [x.strip() for x in lines if x.strip()], None, None, []
    )
    assert_same_items(seq, encode(texts, tok, ["a", "b"], 16))


def test_the_store_key_reuses_and_rebuilds(tok, tmp_path):
    src = tmp_path / "u.txt"
    src.write_text("a b c\nd e\n", encoding="utf-8")
    root = tmp_path / "cache"
    args = (StoreSpec("token", tok, NER, 32), root)
    first = build_store([StoreFile(str(src), "text", True)], *args)
    stamp = (first / "meta.json").stat().st_mtime_ns
    assert build_store([StoreFile(str(src), "text", True)], *args) == first
    assert (first / "meta.json").stat().st_mtime_ns == stamp  # found, not rebuilt
    assert (
        build_store([StoreFile(str(src), "text", True)], StoreSpec("token", tok, NER, 16), root)
        != first
    )
    src.write_text("a b c\nd f\n", encoding="utf-8")
    assert build_store([StoreFile(str(src), "text", True)], *args) != first
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]  # no debris
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt: no examples"):
        build_store([StoreFile(str(empty), "text", True)], *args)
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]
    with pytest.raises(ValueError, match="has no labels"):
        StoreFile(str(src), "text", False)
    bad = tmp_path / "bad.conll"
    bad.write_text("Juan B-PER\nvive X-Y\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.conll:2"):
        build_store([StoreFile(str(bad), "conll", False)], *args)
    unknown = tmp_path / "unknown.conll"
    unknown.write_text("Juan B-PER\n\nvive B-FOO\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown.conll:3: labels \['B-FOO'\]"):
        build_store([StoreFile(str(unknown), "conll", False)], *args)


def test_ragged_views():
    r = Ragged(np.arange(10), np.array([2, 2, 5, 9]))
    assert len(r) == 3 and r.lengths.tolist() == [0, 3, 4]
    assert r[1].tolist() == [2, 3, 4] and r[-1].tolist() == [5, 6, 7, 8]
    s = r[1:]
    assert (
        len(s) == 2
        and s[0].tolist() == [2, 3, 4]
        and s.concatenated().tolist() == [2, 3, 4, 5, 6, 7, 8]
    )
    assert len(r[3:]) == 0 and len(r[2:1]) == 0
    with pytest.raises(IndexError):
        r[3]
    assert [x.tolist() for x in r] == [[], [2, 3, 4], [5, 6, 7, 8]]
    values, lengths = r.take(np.array([2, 0, 1, 2]))
    assert values.tolist() == [5, 6, 7, 8, 2, 3, 4, 5, 6, 7, 8] and lengths.tolist() == [4, 0, 3, 4]
    values, lengths = s.take(np.array([1]))  # a slice's items are its own
    assert values.tolist() == [5, 6, 7, 8] and lengths.tolist() == [4]
    assert r.take(np.array([], dtype=np.int64))[0].size == 0
    assert spans(np.array([7, 0, 3]), np.array([2, 0, 3])).tolist() == [7, 8, 3, 4, 5]
    assert item_rows(np.array([0, 2, 2, 5]), np.array([2, 0])).tolist() == [2, 3, 4, 0, 1]


def test_streamed_conll_equals_the_whole_file_reader(tmp_path):
    text = (
        "-DOCSTART- -X- O O\n\nEU NNP I-ORG\nrejects VBZ O\n\n\n-DOCSTART- -X- O O\n"
        "Peter NNP I-PER\nBlackburn NNP I-PER\n-DOCSTART- -X- O O\nx NN O\n"
    )
    utf8 = tmp_path / "a.conll"
    utf8.write_text(text, encoding="utf-8")
    assert list(iter_conll(utf8)) == read_conll(utf8).sentences
    assert next(iter_conll(utf8)).tags == ["B-ORG", "O"]
    latin = tmp_path / "b.conll"
    latin.write_bytes("Müller B-PER\nißt O\n\nKöln B-LOC\n".encode("latin-1"))
    with pytest.warns(UserWarning, match="latin-1"):
        streamed = list(iter_conll(latin))
    with pytest.warns(UserWarning, match="latin-1"):
        assert streamed == read_conll(latin).sentences
    assert streamed[0].tokens == ["Müller", "ißt"]
    bad = tmp_path / "c.conll"
    bad.write_text("a O\nb O\n\nc O X\n", encoding="utf-8")
    with pytest.raises(ValueError, match="c.conll:4: 3 columns"):
        list(iter_conll(bad))


def test_per_row_safetensors_written_in_place(tmp_path):
    path = tmp_path / "rows.safetensors"
    specs = {"probs": ("F16", (1001, 3)), "pseudo": ("I64", (1001,)), "keep": ("U8", (7,))}
    create_safetensors(path, specs, {"teacher": "t"})
    arrays = open_safetensors(path, "r+")
    probs = np.random.default_rng(0).random((1001, 3)).astype(np.float16)
    for lo in range(0, 1001, 300):  # row range by row range, as each rank writes its share
        arrays["probs"][lo : lo + 300] = probs[lo : lo + 300]
        arrays["pseudo"][lo : lo + 300] = np.arange(lo, min(lo + 300, 1001)) - 5
    arrays["keep"][:] = [1, 0, 1, 0, 0, 1, 1]
    for a in arrays.values():
        a.flush()
    del arrays
    saved = load_file(str(path))  # the safetensors library reads it
    assert torch.equal(saved["probs"], torch.from_numpy(probs))
    assert saved["pseudo"].tolist() == list(range(-5, 996))
    assert saved["keep"].tolist() == [1, 0, 1, 0, 0, 1, 1]
    with open(path, "rb") as f:  # the data starts 8-byte aligned, each tensor at its width
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    assert n % 8 == 0 and os.path.getsize(path) == 8 + n + 1001 * 3 * 2 + 1001 * 8 + 7
    assert (
        header["pseudo"]["data_offsets"][0] % 8 == 0 and header["probs"]["data_offsets"][0] % 2 == 0
    )
    again = open_safetensors(path)
    assert isinstance(again["probs"], np.memmap) and again["probs"].dtype == np.float16
