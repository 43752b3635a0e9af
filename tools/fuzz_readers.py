"""Fuzz the readers (CoNLL, JSONL, TSV, XNLI, MARC, CLS-10, plain text) with generated files and count
what happens. Not product code: a repository tool for issue 21's question, "is bad input ever
misread?".

Each case is a valid file generated from random texts and labels (with Unicode separators such
as NEL, U+2028 and form feed inside the texts, LF or CRLF line ends, sometimes a BOM), either
left valid or given one mutation: a malformed line at a known line, CR-only line ends, an empty
or BOM-only file. CLS-10 is XML, where a bare CR is a valid line end (XML normalises it), so a
CR-only CLS-10 file counts as valid and must read correctly. Outcomes:

- ``correct read``: a valid file read back exactly (texts, labels, line numbers);
- ``clean error``: a mutated file refused with a ``ValueError`` naming the file (and the
  malformed line's number when there is one);
- ``wrong line``: refused, but naming another line;
- ``misread``: a valid file read differently, or a mutated one read without an error;
- ``other exception``: anything but ``ValueError``.

Run: ``PYTHONPATH=. python tools/fuzz_readers.py --cases 400 --seed 1``
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape

from xlt_engine.data import read_cls10, read_conll, read_labeled, read_marc, read_text, read_xnli

SEPARATORS = "\x85\u2028\u2029\x0b\x0c\x1c\x1d\x1e\xa0"
LETTERS = "abcXYZ9é"


XML_SEPARATORS = "\x85\u2028\u2029\xa0"  # XML 1.0 forbids \x0b, \x0c and \x1c-\x1e
# where a malformed line may go: lines of header before, of footer after (MARC's CSV header;
# CLS-10's XML declaration and <items> ... </items>)
FRAME = {"marc": (1, 0), "cls10": (2, 1)}


def word(rng: random.Random, chars: str = LETTERS + SEPARATORS) -> str:
    return "".join(rng.choice(chars) for _ in range(rng.randint(1, 6)))


def text(rng: random.Random, chars: str = LETTERS + SEPARATORS) -> str:
    return " ".join(word(rng, chars) for _ in range(rng.randint(1, 4)))


def conll_case(rng):
    sents = [
        [(word(rng), rng.choice(["O", "B-PER", "B-LOC"])) for _ in range(rng.randint(1, 5))]
        for _ in range(rng.randint(1, 4))
    ]
    lines = []
    for sent in sents:
        lines += [f"{w} X {t}" for w, t in sent] + [""]
    expected = [(tuple(w for w, _ in s), tuple(t for _, t in s)) for s in sents]
    return lines, expected, "lonely"


def jsonl_case(rng):
    rows = [(text(rng), rng.choice(["pos", "neg"])) for _ in range(rng.randint(1, 6))]
    lines = [json.dumps({"text": t, "label": y}, ensure_ascii=False) for t, y in rows]
    return lines, [(t, y, i + 1) for i, (t, y) in enumerate(rows)], '{"text": '


def tsv_case(rng):
    rows = [(text(rng), rng.choice(["pos", "neg"])) for _ in range(rng.randint(1, 6))]
    return (
        [f"{t}\t{y}" for t, y in rows],
        [(t, y, i + 1) for i, (t, y) in enumerate(rows)],
        "a\tb\tc\td",
    )


def xnli_case(rng):
    rows = [
        (text(rng), text(rng), rng.choice(["entailment", "neutral"]))
        for _ in range(rng.randint(1, 6))
    ]
    lines = ["\t".join(r) for r in rows]
    return lines, [(a, b, y, i + 1) for i, (a, b, y) in enumerate(rows)], "only one field"


def marc_case(rng):
    rows = [(text(rng), rng.choice([1, 2, 4, 5])) for _ in range(rng.randint(1, 6))]
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["i", "review_body", "stars"])
    for i, (t, s) in enumerate(rows):
        w.writerow([i, t, s])
    lines = buf.getvalue().split("\n")[:-1]
    return lines, [(t, "positive" if s > 3 else "negative") for t, s in rows], "0,a,b,c,d"


def cls10_case(rng):
    rows = [
        (text(rng, LETTERS + XML_SEPARATORS + "&<"), text(rng, LETTERS + XML_SEPARATORS + ">"))
        for _ in range(rng.randint(1, 6))
    ]
    ratings = [rng.choice(["1.0", "2.0", "4.0", "5.0"]) for _ in rows]
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<items>"]
    for (summary, body), rating in zip(rows, ratings, strict=True):
        lines.append(
            f"<item><rating>{rating}</rating><summary>{escape(summary)}</summary>"
            f"<text>{escape(body)}</text></item>"
        )
    lines.append("</items>")
    expected = [
        (f"{a}\n{b}", "positive" if float(r) > 3 else "negative")
        for (a, b), r in zip(rows, ratings, strict=True)
    ]
    return lines, expected, "<item><rating>four</rating><text>t</text></item>"


def text_case(rng):
    lines = [text(rng) for _ in range(rng.randint(1, 6))]
    return lines, [(t, None, i + 1) for i, t in enumerate(lines)], None


READERS = {  # name: (case generator, reader, what a reading is compared as)
    "conll": (conll_case, read_conll, lambda r: [(tuple(s.tokens), tuple(s.tags)) for s in r]),
    "jsonl": (jsonl_case, lambda p: read_labeled(p, "jsonl"), lambda r: [(e.text, e.label, e.line) for e in r]),
    "tsv": (tsv_case, lambda p: read_labeled(p, "tsv"), lambda r: [(e.text, e.label, e.line) for e in r]),
    "xnli": (xnli_case, read_xnli, lambda r: [(e.text, e.text_pair, e.label, e.line) for e in r]),
    "marc": (marc_case, read_marc, lambda r: [(e.text, e.label) for e in r]),
    "cls10": (cls10_case, read_cls10, lambda r: [(e.text, e.label) for e in r]),
    "text": (text_case, read_text, lambda r: [(e.text, e.label, e.line) for e in r]),
}  # fmt: skip


def one_case(name: str, rng: random.Random, folder: Path) -> str:
    make, read, view = READERS[name]
    lines, expected, bad = make(rng)
    eol = rng.choice(["\n", "\r\n"])
    kinds = (
        [None, None, "bad line", "cr only", "empty"]
        if bad is not None
        else [None, None, "cr only", "empty"]
    )
    mutation = rng.choice(kinds)  # plain text has no malformed line
    bad_line = None
    if mutation == "bad line":
        before, after = FRAME.get(name, (0, 0))
        at = rng.randint(before, len(lines) - after)
        lines = [*lines[:at], bad, *lines[at:]]
        bad_line = at + 1
    body = (eol.join(lines) + eol).encode("utf-8")
    if mutation == "cr only":
        body = "\r".join(lines).encode("utf-8") + b"\r"
        if len(lines) == 1 or name == "cls10":
            mutation = None  # one line ending in CR, or XML: a valid file, read as it is
    elif mutation == "empty":
        body = rng.choice([b"", b"\xef\xbb\xbf", b"\n\n", b"\xef\xbb\xbf\r\n"])
    elif rng.random() < 0.2:
        body = b"\xef\xbb\xbf" + body
    path = folder / f"case.{name}"
    path.write_bytes(body)
    try:
        got = view(read(path))
    except ValueError as err:
        if mutation is None:
            return "misread"  # a valid file refused
        if path.name not in str(err):
            return "misread"
        if bad_line is not None and f"{path.name}:{bad_line}:" not in str(err):
            return "wrong line"
        return "clean error"
    except Exception:
        return "other exception"
    if mutation is None:
        return "correct read" if got == expected else "misread"
    return "misread"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=400, help="cases per reader")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    counts: dict[str, Counter] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in READERS:
            counts[name] = Counter(one_case(name, rng, Path(tmp)) for _ in range(args.cases))
    kinds = ["correct read", "clean error", "wrong line", "misread", "other exception"]
    print(f"{'reader':<8}" + "".join(f"{k:>17}" for k in kinds))
    for name, c in counts.items():
        print(f"{name:<8}" + "".join(f"{c[k]:>17}" for k in kinds))
    total = sum(counts.values(), Counter())
    print(f"{'all':<8}" + "".join(f"{total[k]:>17}" for k in kinds))
    return 1 if total["wrong line"] + total["misread"] + total["other exception"] else 0


if __name__ == "__main__":
    sys.exit(main())
