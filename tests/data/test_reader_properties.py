"""Property tests over every reader (issue 21): a valid file generated from tokens and
labels reads back exactly those, whatever Unicode separators (NEL, U+2028, form feed, ...) are
inside its texts and whether lines end in LF or CRLF; a file with one malformed line gives a
``ValueError`` naming the file and that line, and never another exception."""

import csv
import io
import json
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlt_engine.data import read_cls10, read_conll, read_labeled, read_marc, read_text, read_xnli

# characters str.split() / splitlines() break on, which are ordinary text for the readers
SEPARATORS = "\x85\u2028\u2029\x0b\x0c\x1c\x1d\x1e\xa0"
WORD = st.text(alphabet=st.sampled_from("abcXYZ9é" + SEPARATORS), min_size=1, max_size=6)
TEXT = st.lists(WORD, min_size=1, max_size=4).map(" ".join)
LABEL = st.sampled_from(["pos", "neg", "neutral-ish"])
EOL = st.sampled_from(["\n", "\r\n"])
CASES = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def write(tmp_path, name: str, lines: list[str], eol: str):
    path = tmp_path / name
    path.write_bytes((eol.join(lines) + eol).encode("utf-8"))
    return path


@CASES
@given(
    sents=st.lists(
        st.lists(st.tuples(WORD, st.sampled_from(["O", "B-PER", "B-LOC"])), min_size=1, max_size=5),
        min_size=1,
        max_size=4,
    ),
    eol=EOL,
)
def test_conll_reads_back_what_was_written(tmp_path, sents, eol):
    lines = []
    for sent in sents:
        lines += [f"{w} X {t}" for w, t in sent] + [""]
    cf = read_conll(write(tmp_path, "p.conll", lines, eol))
    assert [(s.tokens, s.tags) for s in cf] == [
        ([w for w, _ in s], [t for _, t in s]) for s in sents
    ]


@CASES
@given(rows=st.lists(st.tuples(TEXT, LABEL), min_size=1, max_size=6), eol=EOL)
def test_jsonl_and_tsv_read_back_what_was_written(tmp_path, rows, eol):
    lines = [json.dumps({"text": t, "label": y}, ensure_ascii=False) for t, y in rows]
    ds = read_labeled(write(tmp_path, "p.jsonl", lines, eol), "jsonl")
    assert [(e.text, e.label, e.line) for e in ds] == [
        (t, y, i + 1) for i, (t, y) in enumerate(rows)
    ]
    ds = read_labeled(write(tmp_path, "p.tsv", [f"{t}\t{y}" for t, y in rows], eol), "tsv")
    assert [(e.text, e.label, e.line) for e in ds] == [
        (t, y, i + 1) for i, (t, y) in enumerate(rows)
    ]


@CASES
@given(
    rows=st.lists(
        st.tuples(TEXT, TEXT, st.sampled_from(["entailment", "neutral", "contradiction"])),
        min_size=1,
        max_size=6,
    ),
    eol=EOL,
)
def test_xnli_reads_back_what_was_written(tmp_path, rows, eol):
    ds = read_xnli(write(tmp_path, "p.tsv", ["\t".join(r) for r in rows], eol))
    assert [(e.text, e.text_pair, e.label, e.line) for e in ds] == [
        (a, b, y, i + 1) for i, (a, b, y) in enumerate(rows)
    ]


@CASES
@given(rows=st.lists(st.tuples(TEXT, st.sampled_from([1, 2, 4, 5])), min_size=1, max_size=6))
def test_marc_reads_back_what_was_written(tmp_path, rows):
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["i", "review_body", "stars"])
    for i, (text, stars) in enumerate(rows):
        w.writerow([i, text, stars])
    path = tmp_path / "p.csv"
    path.write_bytes(buf.getvalue().encode("utf-8"))
    ds = read_marc(path)
    assert [(e.text, e.label) for e in ds] == [
        (t, "positive" if s > 3 else "negative") for t, s in rows
    ]


# XML 1.0 forbids \x0b, \x0c and \x1c-\x1e; the rest are text, as are XML's special characters
XML_TEXT = st.lists(
    st.text(alphabet=st.sampled_from("abcé&<>'\"\x85\u2028\u2029\xa0"), min_size=1, max_size=6),
    min_size=1,
    max_size=4,
).map(" ".join)


@CASES
@given(
    rows=st.lists(
        st.tuples(XML_TEXT, XML_TEXT, st.sampled_from(["1.0", "2.0", "4.0", "5.0"])),
        min_size=1,
        max_size=5,
    ),
    eol=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_cls10_reads_back_what_was_written(tmp_path, rows, eol):
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<items>"]
    lines += [
        f"<item><rating>{r}</rating><summary>{escape(a)}</summary><text>{escape(b)}</text></item>"
        for a, b, r in rows
    ]
    ds = read_cls10(write(tmp_path, "p.review", [*lines, "</items>"], eol))
    assert [(e.text, e.label, e.line) for e in ds] == [
        (f"{a}\n{b}", "positive" if float(r) > 3 else "negative", i + 3)
        for i, (a, b, r) in enumerate(rows)
    ]


@CASES
@given(texts=st.lists(TEXT, min_size=1, max_size=6), blanks=st.lists(st.integers(0, 2)), eol=EOL)
def test_plain_text_reads_back_what_was_written(tmp_path, texts, blanks, eol):
    lines, expected = [], []
    for i, t in enumerate(texts):
        lines += [" \t"] * (blanks[i] if i < len(blanks) else 0)  # blank lines are skipped
        lines.append(t)
        expected.append((t, len(lines)))
    ds = read_text(write(tmp_path, "p.txt", lines, eol))
    assert [(e.text, e.line) for e in ds] == expected


BAD_LINE = {  # reader -> (file name, how to read, a valid line, a malformed line, error text)
    "conll": ("b.conll", read_conll, "w\x0bv X O", "lonely", "needs at least a word and a tag"),
    "jsonl": (
        "b.jsonl",
        lambda p: read_labeled(p, "jsonl"),
        '{"text": "a\u2028b", "label": "x"}',
        '{"text": ',
        "invalid JSON",
    ),
    "tsv": ("b.tsv", lambda p: read_labeled(p, "tsv"), "a\x85b\tx", "a\tb\tc\td", "fields"),
    "xnli": ("b.xnli", read_xnli, "a\u2028\tb\tneutral", "only one field", "fields"),
    "marc": ("b.csv", read_marc, "1,a\x85b,4", "2,a,b,c", "fields, the header has"),
    "cls10": (
        "b.review",
        read_cls10,
        "<item><rating>4.0</rating><text>a\u2028b</text></item>",
        "<item><rating>four</rating><text>t</text></item>",
        "rating",
    ),
}
FRAME = {  # reader -> (lines before the data, lines after it)
    "marc": (["id,review_body,stars"], []),
    "cls10": (['<?xml version="1.0"?>', "<items>"], ["</items>"]),
}


@pytest.mark.parametrize("reader", sorted(BAD_LINE))
@CASES
@given(before=st.integers(0, 6), after=st.integers(0, 3), eol=EOL)
def test_a_malformed_line_is_a_value_error_naming_file_and_line(
    tmp_path, reader, before, after, eol
):
    name, read, good, bad, message = BAD_LINE[reader]
    head, tail = FRAME.get(reader, ([], []))
    lines = [*head, *[good] * before, bad, *[good] * after, *tail]
    path = write(tmp_path, name, lines, eol)
    with pytest.raises(ValueError) as info:
        read(path)
    assert f"{name}:{len(head) + before + 1}:" in str(info.value), str(info.value)
    assert message in str(info.value)
