"""CLS-10, MARC, XNLI, JSONL/TSV and plain-text readers: real files and bad input."""

import csv
import io
import json
import xml.etree.ElementTree as ET

import pytest

from xlt_engine.data import (
    iter_text,
    read_cls10,
    read_conll,
    read_labeled,
    read_marc,
    read_text,
    read_xnli,
)
from xlt_engine.data.examples import check_labels_known, iter_lines

# ----------------------------------------------------------------------------- CLS-10


@pytest.mark.parametrize("lang", ["en", "de", "fr", "jp"])
@pytest.mark.parametrize("domain", ["books", "dvd", "music"])
def test_cls10_real_files(shared_data, lang, domain):
    for split in ("train", "test"):
        path = shared_data / "cls10" / lang / domain / f"{split}.review"
        ds = read_cls10(path)
        # 1,000 positive and 1,000 negative per file (data README); no rating 3 occurs
        assert ds.label_counts() == {"positive": 1000, "negative": 1000}
        assert ds.dropped == 0
        # independent check with ElementTree: ratings and texts in file order
        items = ET.parse(path).getroot().findall("item")
        assert len(items) == 2000
        for ex, item in zip(ds.examples, items, strict=True):
            rating = float(item.findtext("rating"))
            assert ex.label == ("positive" if rating > 3 else "negative")
            # XML whitespace only: jp keeps an ideographic space (U+3000) ending a summary
            heads = [(item.findtext(f) or "").strip(" \t\r\n") for f in ("summary", "title")]
            head = next((h for h in heads if h), "")
            body = (item.findtext("text") or "").strip(" \t\r\n")
            assert ex.text == "\n".join(t for t in (head, body) if t)
    # lines point at the <item> that starts each review
    lines = path.read_text(encoding="utf-8").split("\n")
    assert all("<item>" in lines[ex.line - 1] for ex in ds.examples[:50])


def test_cls10_label_rule_and_fields(tmp_path):
    path = tmp_path / "x.review"
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<items><item>\n'
        "<rating>3.0</rating><title>T</title><text>middle</text></item>\n<item>\n"
        "<rating>5.0</rating><title>T2</title><summary>S2</summary><text>good &amp; fine"
        "</text></item>\n<item><rating>1.0</rating><text>bad</text></item></items>\n",
        encoding="utf-8",
    )
    ds = read_cls10(path)
    assert [(e.text, e.label, e.line) for e in ds] == [
        ("S2\ngood & fine", "positive", 4),
        ("bad", "negative", 6),
    ]
    assert ds.dropped == 1
    ds = read_cls10(path, label_rule=lambda r: "hi" if r >= 3 else "lo", head_fields=("title",))
    assert [(e.text, e.label) for e in ds] == [
        ("T\nmiddle", "hi"),
        ("T2\ngood & fine", "hi"),
        ("bad", "lo"),
    ]
    unlab = read_cls10(path, unlabeled=True)
    assert len(unlab) == 3 and unlab.label_set() == []


@pytest.mark.parametrize(
    "body, message",
    [
        ("<items><item><rating>5.0</rating><text>a</text></item>", r"x.review:1: malformed XML"),
        ("<items>\n<item><rating>five</rating><text>a</text></item></items>", r":2: rating 'five'"),
        ("<items>\n\n<item><text>a</text></item></items>", r":3: item has no <rating>"),
        ("<items><item><rating>9</rating><text>a</text></item></items>", "outside 1-5"),
        ("<items><item><rating>5</rating><text></text></item></items>", "no <text> and no"),
        ("<items><review><rating>5</rating></review></items>", r"expected <item>"),
        ("<items></items>", r"no reviews"),
        ("", r"x.review: the file is empty"),
    ],
)
def test_cls10_bad_input(tmp_path, body, message):
    path = tmp_path / "x.review"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_cls10(path)


@pytest.mark.parametrize(
    "prolog, message",
    [
        (
            '<!DOCTYPE items [<!ENTITY x SYSTEM "file:///etc/hostname">]>',
            "document type declaration",
        ),
        ('<!DOCTYPE items [<!ENTITY big "aaaaaaaaaa">]>', "document type declaration"),
        ('<!DOCTYPE items SYSTEM "http://example.invalid/items.dtd">', "document type declaration"),
    ],
)
def test_cls10_refuses_dtds_and_entities(tmp_path, prolog, message):
    """An external entity was silently dropped from the text; no file may ever be fetched or
    read, nor an entity expanded: a DTD is refused, naming the file and line."""
    path = tmp_path / "x.review"
    body = "<items>\n<item><rating>5</rating><text>a &x;</text></item></items>"
    path.write_text(prolog + "\n" + body, encoding="utf-8")
    with pytest.raises(ValueError, match=f"x.review:1: .*{message}"):
        read_cls10(path)


def test_cls10_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.review: no such file"):
        read_cls10(tmp_path / "nope.review")


# ----------------------------------------------------------------------------- MARC


@pytest.mark.parametrize("lang", ["en", "de", "es", "fr", "ja", "zh"])
def test_marc_real_files(shared_data, lang):
    test = read_marc(shared_data / "marc" / f"{lang}.test.csv")
    # 5,000 rows, 1,000 per star; 3 stars dropped
    assert test.label_counts() == {"negative": 2000, "positive": 2000}
    assert test.dropped == 1000
    pool = read_marc(shared_data / "marc" / f"{lang}.train_pool.csv")
    assert len(pool) + pool.dropped == 12465
    # independent parse with csv.DictReader
    with open(shared_data / "marc" / f"{lang}.train_pool.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["stars"] != "3"]
    assert [e.text for e in pool] == [r["review_body"].strip() for r in rows]
    assert [e.label for e in pool] == [
        "positive" if int(r["stars"]) > 3 else "negative" for r in rows
    ]
    assert len(read_marc(shared_data / "marc" / f"{lang}.test.csv", unlabeled=True)) == 5000


def test_marc_quotes_commas_newlines_and_lines(tmp_path):
    path = tmp_path / "m.csv"
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["orig_test_index", "review_body", "stars"])
    w.writerow([0, 'said "great", then\nbroke, twice', 1])
    w.writerow([1, "meh", 3])
    w.writerow([2, "fine, really", 5])
    path.write_text(buf.getvalue(), encoding="utf-8")
    ds = read_marc(path)
    assert [(e.text, e.label, e.line) for e in ds] == [
        ('said "great", then\nbroke, twice', "negative", 2),
        ("fine, really", "positive", 5),
    ]
    ds = read_marc(path, label_rule=lambda s: str(s))
    assert ds.labels == ["1", "3", "5"] and ds.dropped == 0


@pytest.mark.parametrize(
    "body, message",
    [
        ("idx,text,stars\n0,a,1\n", r"m.csv:1: header .* lacks the column\(s\) \['review_body'\]"),
        ("i,review_body,stars\n0,a,1\n1,b,x\n", r"m.csv:3: stars 'x' is not an integer"),
        ("i,review_body,stars\n0,a,7\n", r"m.csv:2: stars 7 is outside 1-5"),
        ("i,review_body,stars\n0,a,1,9\n", r"m.csv:2: 4 fields, the header has 3"),
        ('i,review_body,stars\n0,"a\n\n1,b,1\n', r"m.csv:2: malformed CSV record"),
        ("i,review_body,stars\n0,a,3\n", r"no reviews kept \(1 dropped"),
        (
            "i,stars,review_body,stars\n0,1,a,5\n",
            r"m.csv:1: header .* names the column\(s\) \['stars'\] more than once",
        ),
        ("review_body,i,review_body,stars\na,0,b,5\n", r"\['review_body'\] more than once"),
        ("", r"m.csv: the file is empty"),
    ],
)
def test_marc_bad_input(tmp_path, body, message):
    path = tmp_path / "m.csv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_marc(path)


def test_marc_reads_a_review_longer_than_the_csv_modules_default_field_limit(tmp_path):
    long = "word " * 60_000  # 300,000 characters (the csv module's default limit: 131,072)
    path = tmp_path / "m.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["i", "review_body", "stars"], [0, long, 5], [1, "short", 1]])
    ds = read_marc(path)
    assert [len(e.text) for e in ds] == [len(long.strip()), 5]


def test_marc_bad_bytes(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"i,review_body,stars\n0,ok,1\n1,caf\xe9,5\n")
    with pytest.raises(ValueError, match=r"m.csv:3: byte 0xe9 is not valid"):
        read_marc(path)


# ----------------------------------------------------------------------------- XNLI


XNLI_LANGS = [
    "ar",
    "bg",
    "de",
    "el",
    "en",
    "es",
    "fr",
    "hi",
    "ru",
    "sw",
    "th",
    "tr",
    "ur",
    "vi",
    "zh",
]


@pytest.mark.parametrize("lang", XNLI_LANGS)
def test_xnli_real_files(shared_data, lang):
    for split, n in (("dev", 2490), ("test", 5010)):
        path = shared_data / "xnli" / f"{split}-{lang}.tsv"
        ds = read_xnli(path)
        assert ds.label_counts() == dict.fromkeys(
            ("entailment", "neutral", "contradiction"), n // 3
        )
        raw = path.read_bytes().decode("utf-8").splitlines()
        assert [e.line for e in ds] == list(range(1, n + 1))
        for ex, line in zip(ds.examples[:200], raw, strict=False):
            p, h, _ = line.split("\t")
            assert (ex.text, ex.text_pair) == (p.strip(), h.strip())
            assert "\r" not in ex.label


def test_xnli_rows_parallel_across_languages(shared_data):
    en = read_xnli(shared_data / "xnli" / "test-en.tsv")
    zh = read_xnli(shared_data / "xnli" / "test-zh.tsv")
    assert en.labels == zh.labels


def test_xnli_quirks(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(b'He said "hi\tShe "left\tcontradictory\r\na\tb\tneutral\r\n')
    ds = read_xnli(path)
    assert [(e.text, e.text_pair, e.label) for e in ds] == [
        ('He said "hi', 'She "left', "contradiction"),
        ("a", "b", "neutral"),
    ]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"a\tb\tneutral\na\tb\n", r"x.tsv:2: 2 tab-separated fields, expected 3"),
        (b"a\tb\tmaybe\n", r"x.tsv:1: label 'maybe' is not one of"),
        (b"a\t\tneutral\n", r"x.tsv:1: empty premise or hypothesis"),
        (b"\n\n", r"x.tsv: the file is empty"),
        (b"a\tb\tneutral\n\xff\tb\tneutral\n", r"x.tsv:2: byte 0xff"),
    ],
)
def test_xnli_bad_input(tmp_path, body, message):
    path = tmp_path / "x.tsv"
    path.write_bytes(body)
    with pytest.raises(ValueError, match=message):
        read_xnli(path)


# ----------------------------------------------------------------------------- JSONL / TSV / text


def test_labeled_jsonl_and_tsv(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text(
        json.dumps({"text": 'a, "b"', "label": "pos"})
        + "\n\n"
        + json.dumps({"text": "c", "text_pair": "d", "label": 2})
        + "\n",
        encoding="utf-8",
    )
    ds = read_labeled(j)
    assert [(e.text, e.text_pair, e.label, e.line) for e in ds] == [
        ('a, "b"', None, "pos", 1),
        ("c", "d", "2", 3),
    ]
    t = tmp_path / "d.tsv"
    t.write_text("text\tlabel\nhello world\tpos\nx\ty\tneg\n", encoding="utf-8")
    ds = read_labeled(t)
    assert [(e.text, e.text_pair, e.label, e.line) for e in ds] == [
        ("hello world", None, "pos", 2),
        ("x", "y", "neg", 3),
    ]


@pytest.mark.parametrize(
    "name, body, message",
    [
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b"\n', r"d.jsonl:2: invalid JSON"),
        ("d.jsonl", '{"text": "a"}\n', r"d.jsonl:1: key 'label' is missing"),
        ("d.jsonl", '["a", 1]\n', r"d.jsonl:1: expected a JSON object, got list"),
        ("d.jsonl", '{"text": 3, "label": 1}\n', r"d.jsonl:1: key 'text'"),
        ("d.jsonl", '{"text": "a", "label": null}\n', r"d.jsonl:1: key 'label' must be"),
        ("d.tsv", "a\tpos\nonly-text\n", r"d.tsv:2: 1 tab-separated fields"),
        ("d.tsv", "a\t \n", r"d.tsv:1: empty label"),
        ("d.tsv", "\n \n", r"d.tsv: no examples"),
        ("d.csv", "a,b\n", r"cannot tell the format from '.csv'"),
    ],
)
def test_labeled_bad_input(tmp_path, name, body, message):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_labeled(path)


def test_plain_text(tmp_path):
    path = tmp_path / "u.txt"
    path.write_bytes(b"\xef\xbb\xbffirst line\r\n\n  second  \nthird")
    assert list(iter_text(path)) == [(1, "first line"), (3, "second"), (4, "third")]
    ds = read_text(path)
    assert ds.texts == ["first line", "second", "third"] and ds.labels == [None] * 3
    path.write_bytes(b"ok\nbad \xc3\x28 byte\n")
    with pytest.raises(ValueError, match=r"u.txt:2: byte 0xc3 at column 5"):
        read_text(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="u.txt: the file is empty"):
        read_text(path)
    with pytest.raises(ValueError, match="no such file"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="is a folder"):
        list(iter_text(tmp_path))


def test_unseen_test_label(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("a\tpos\nb\tneg\n", encoding="utf-8")
    test = tmp_path / "test.tsv"
    test.write_text("a\tpos\nb\tneutral\n", encoding="utf-8")
    tr, te = read_labeled(train), read_labeled(test)
    with pytest.raises(ValueError, match=r"test.tsv: labels neutral never occur"):
        check_labels_known(tr.label_set(), te.path, te.label_set())
    with pytest.warns(UserWarning, match="neutral"):
        assert check_labels_known(tr.label_set(), te.path, te.label_set(), True) == ["neutral"]
    assert check_labels_known(tr.label_set(), tr.path, tr.label_set()) == []


def test_jsonl_nested_too_deeply_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    path.write_text('{"text": "a", "label": "x"}\n' + deep + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"d\.jsonl:2: JSON nested too deeply"):
        read_labeled(path, "jsonl")


def test_jsonl_label_too_long_an_integer_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": ' + "9" * 5000 + "}\n")
    with pytest.raises(ValueError, match=r"d\.jsonl:2: invalid JSON value \(Exceeds the limit"):
        read_labeled(path, "jsonl")


def test_line_readers_keep_unicode_separators_and_refuse_cr_only_files(tmp_path):
    path = tmp_path / "s.jsonl"
    rows = [{"text": "a\u2028b\x85c", "label": "x"}, {"text": "d\x0ce", "label": "y"}]
    body = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n"
    path.write_text(body, encoding="utf-8", newline="")
    ds = read_labeled(path, "jsonl")
    assert ds.texts == ["a\u2028b\x85c", "d\x0ce"] and [e.line for e in ds] == [1, 2]
    path.write_bytes(b'{"text": "a", "label": "x"}\r{"text": "b", "label": "y"}\r')
    with pytest.raises(ValueError, match=r"s\.jsonl: lines end in a bare carriage return"):
        read_labeled(path, "jsonl")


VALID = {  # one small valid file per reader, and its reading as (text, label) pairs
    "conll": (b"EU NNP B-ORG\nrejects VBZ O\n\n", lambda p: read_conll(p), [(["EU", "rejects"], ["B-ORG", "O"])]),
    "cls10": (b'<?xml version="1.0"?><items><item><rating>5.0</rating><text>good</text></item>'
              b"<item><rating>1.0</rating><text>bad</text></item></items>\n",
              lambda p: read_cls10(p), [("good", "positive"), ("bad", "negative")]),
    "marc": (b"i,review_body,stars\n0,good,5\n1,bad,1\n", lambda p: read_marc(p),
             [("good", "positive"), ("bad", "negative")]),
    "xnli": (b"a\tb\tneutral\n", lambda p: read_xnli(p), [("a", "neutral")]),
    "jsonl": (b'{"text": "a", "label": "x"}\n', lambda p: read_labeled(p, "jsonl"), [("a", "x")]),
    "tsv": (b"a\tx\n", lambda p: read_labeled(p, "tsv"), [("a", "x")]),
    "text": (b"one line\n", lambda p: read_text(p), [("one line", None)]),
}  # fmt: skip


def _pairs(ds):
    if hasattr(ds, "sentences"):
        return [(s.tokens, s.tags) for s in ds]
    return [(e.text, e.label) for e in ds]


@pytest.mark.parametrize("reader", sorted(VALID))
def test_every_reader_accepts_a_bom_and_names_the_file_when_it_holds_no_data(tmp_path, reader):
    body, read, expected = VALID[reader]
    path = tmp_path / f"f.{reader}"
    path.write_bytes(b"\xef\xbb\xbf" + body)
    assert _pairs(read(path)) == expected
    for empty in (b"", b"\xef\xbb\xbf", b"\n\n", b"\xef\xbb\xbf\r\n"):
        path.write_bytes(empty)
        with pytest.raises(ValueError, match=rf"{path.name}: "):
            read(path)


@pytest.mark.parametrize("block", [1, 3, 7, 64, 1 << 22])
def test_streamed_lines_are_the_same_at_any_block_size(tmp_path, block):
    """``iter_lines`` reads blocks: lines cut across blocks, longer than a block, CRLF ends, a
    BOM, multi-byte characters, a last line without its end, and a bad byte named by line and
    column wherever its block starts."""
    path = tmp_path / "b.txt"
    body = "één\r\n\nZürich liegt\tam See\n" + "x" * 50 + "\n\u2028 é \n\x85last"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    want = [(i, x.removesuffix("\r")) for i, x in enumerate(body.split("\n"), start=1)]
    assert list(iter_lines(path, block=block)) == want
    path.write_bytes(b"one\ntwo\nthree \xc3\x28\n")
    with pytest.raises(ValueError, match=r"b.txt:3: byte 0xc3 at column 7 is not valid utf-8"):
        list(iter_lines(path, block=block))
    path.write_bytes(b"a\rb\rc\r")
    with pytest.raises(ValueError, match="bare carriage return"):
        list(iter_lines(path, block=block))


def test_plain_lines_join_words_and_pairs_as_btf_reads_them():
    from pathlib import Path

    from xlt_engine.data.task import TaskData

    words = TaskData(Path("a"), "conll", "token", [["El", "Gato"], ["."]], None, None, [1, 4])
    assert words.plain_lines() == ["El Gato", "."]
    pairs = TaskData(
        Path("b"), "xnli", "sequence", ["A  cat\t", "B"], ["sat .", None], None, [2, 3]
    )
    assert pairs.plain_lines() == ["A cat sat .", "B"]
