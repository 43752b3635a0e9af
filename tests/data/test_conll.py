"""read_conll on the real CoNLL files (official counts) and on small crafted ones."""

import warnings

import pytest

from xlt_engine.data import read_conll
from xlt_engine.data.conll import EncodingFallback, check_labels_known, to_iob2

OFFICIAL = {  # sentences, documents, tokens: ../shared/data/README.md
    "conll2003_en/eng.train": (14041, 946, 203621),
    "conll2003_en/eng.testa": (3250, 216, 51362),
    "conll2003_en/eng.testb": (3453, 231, 46435),
    "conll2002/esp.train": (8323, 0, 264715),
    "conll2002/esp.testa": (1915, 0, 52923),
    "conll2002/esp.testb": (1517, 0, 51533),
    "conll2002/ned.train": (15806, 287, 202644),
    "conll2002/ned.testa": (2895, 74, 37687),
    "conll2002/ned.testb": (5195, 119, 68787),
    "conll2003_de/deu.testa": (2867, 201, 51444),
    "conll2003_de/deu.testb": (3005, 155, 51943),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_real_files_give_the_official_counts(shared_data, name):
    f = read_conll(shared_data / name)
    assert (len(f), f.documents, f.num_tokens) == OFFICIAL[name]
    assert f.entity_types() == ["LOC", "MISC", "ORG", "PER"]
    for s in f:  # IOB2: every entity starts with B-
        assert len(s.tokens) == len(s.tags)
        for prev, tag in zip(["O", *s.tags], s.tags, strict=False):
            if tag.startswith("I-"):
                assert prev[2:] == tag[2:], (name, s.line, s.tags)


def test_paper_count_includes_docstart_lines(shared_data):
    assert read_conll(shared_data / "conll2003_en/eng.train").sentences_and_docstarts == 14987


def test_german_is_latin1_and_decoded(shared_data):
    with pytest.warns(EncodingFallback, match=r"deu.testa: read as latin-1: 8,917 byte sequences"):
        f = read_conll(shared_data / "conll2003_de/deu.testa")
    assert f.encoding == "latin-1"
    assert f[0].tokens[:2] == ["Großer", "Foto-Wettbeweb"]
    assert f.converted_tags > 0  # IOB1


def test_iob1_to_iob2():
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-LOC", "I-ORG"]) == (
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG"],
        3,
    )
    assert to_iob2(["B-PER", "I-PER"]) == (["B-PER", "I-PER"], 0)  # IOB2 passes through


def write(tmp_path, text, name="x.conll", encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_docstart_without_blank_line_splits_sentences(tmp_path):
    p = write(
        tmp_path,
        "-DOCSTART- -DOCSTART- O\nDe Art O\nman N B-PER\n-DOCSTART- -DOCSTART- O\nhet Art O\n",
    )
    f = read_conll(p)
    assert [s.tokens for s in f] == [["De", "man"], ["het"]]
    assert f.documents == 2 and f[0].line == 2 and f[1].line == 5


def test_utf8_with_a_stray_latin1_byte_is_an_error_not_mojibake(tmp_path, shared_data):
    """It was decoded entirely as latin-1 with no word: every UTF-8 letter became two."""
    text = (shared_data / "conll2002/esp.testa").read_bytes()[:20000]  # UTF-8 Spanish
    text = text[: text.rindex(b"\n") + 1]
    cut = text.index(b"\n", 10000) + 1
    p = tmp_path / "x.conll"
    p.write_bytes(text[:cut] + b"Gro\xdfe NC O\n" + text[cut:])  # one latin-1 sharp s
    line = text[:cut].count(b"\n") + 1
    with pytest.raises(ValueError) as info:
        read_conll(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}:{line}: not valid UTF-8 at byte 0xdf at offset {cut + 3} ")
    assert "stray bytes" in msg and "encoding=" in msg
    assert read_conll(p, encoding="latin-1").encoding == "latin-1"  # the way out


def test_explicit_encoding_error_names_the_line(tmp_path):
    p = write(tmp_path, "a O\n\nGroße O\n", encoding="latin-1")
    with pytest.warns(
        EncodingFallback, match=r"x.conll: read as latin-1: 1 byte sequences .* 0xdf"
    ):
        assert read_conll(p).encoding == "latin-1"
    with pytest.raises(ValueError, match=r"x.conll:3: byte 0xdf is not valid utf-8"):
        read_conll(p, encoding="utf-8")
    assert read_conll(p, encoding="latin-1")[1].tokens == ["Große"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("EU B-ORG\nrejects\n", r"x.conll:2: a token line needs at least a word and a tag"),
        (
            "EU NNP B-ORG\nrejects VBZ O x\n",
            r"x.conll:2: 4 columns, but the file's first token line has 3",
        ),
        ("EU B-ORG\nrejects E-ORG\n", r"x.conll:2: tag 'E-ORG' is not O, B-<type> or I-<type>"),
        ("", "no sentences"),
        ("-DOCSTART- -X- O\n\n", "no sentences"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_conll(write(tmp_path, text))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ValueError, match="nope.conll: no such file"):
        read_conll(tmp_path / "nope.conll")
    with pytest.raises(ValueError, match="is a folder"):
        read_conll(tmp_path)


def test_label_unseen_in_training(tmp_path):
    train = read_conll(write(tmp_path, "a B-PER\n", "train"))
    test = read_conll(write(tmp_path, "b B-LOC\n", "test"))
    with pytest.raises(ValueError, match="test.*: entity types LOC never occur in the training"):
        check_labels_known(train, test)
    with pytest.warns(UserWarning, match="entity types LOC never occur"):
        assert check_labels_known(train, test, allow_unseen=True) == ["LOC"]


# ----------------------------------------------------------------------------- property tests

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

WORD = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="\ufeff"
    ),
    min_size=1,
    max_size=6,
).filter(lambda w: w.split() == [w] and w != "-DOCSTART-")
TAG = st.sampled_from(["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-MISC"])
SENTENCE = st.lists(st.tuples(WORD, TAG), min_size=1, max_size=8)


def iob2_valid(tags):
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            return False
        prev = tag
    return True


@settings(max_examples=80, deadline=None)
@given(
    docs=st.lists(st.lists(SENTENCE, min_size=1, max_size=4), min_size=1, max_size=4),
    columns=st.integers(2, 5),
    docstart=st.booleans(),
    blank_after_docstart=st.booleans(),
    blanks=st.integers(1, 3),
    encoding=st.sampled_from(["utf-8", "latin-1"]),
    crlf=st.booleans(),
)
def test_reader_round_trip_property(
    tmp_path_factory, docs, columns, docstart, blank_after_docstart, blanks, encoding, crlf
):
    """Any file written in the format reads back to the same words, IOB2 tags and counts."""
    lines = []
    for doc in docs:
        if docstart:
            lines.append(" ".join(["-DOCSTART-"] + ["-X-"] * (columns - 2) + ["O"]))
            if blank_after_docstart:
                lines.append("")
        for sent in doc:
            lines += [" ".join([w] + ["X"] * (columns - 2) + [t]) for w, t in sent]
            lines += [""] * blanks
    text = ("\r\n" if crlf else "\n").join(lines)
    sentences = [s for doc in docs for s in doc]
    expected_words = [[w for w, _ in s] for s in sentences]
    if encoding == "latin-1":  # only what latin-1 can hold
        fix = lambda x: "".join(c if ord(c) < 256 else "?" for c in x)  # noqa: E731
        text, expected_words = fix(text), [[fix(w) for w in s] for s in expected_words]
    data = text.encode(encoding)
    path = tmp_path_factory.mktemp("conll") / "f.conll"
    path.write_bytes(data)
    try:
        data.decode("utf-8")
        detected = "utf-8"
    except UnicodeDecodeError:
        detected = "latin-1"
        # latin-1 bytes can also be valid UTF-8 ("Â¡" is C2 A1): a file where such pairs are
        # not rare next to the invalid bytes is refused, not guessed
        lenient = data.decode("utf-8", errors="replace")
        bad = lenient.count("\ufffd")
        valid = sum(ord(c) > 127 for c in lenient) - bad
        if valid * 20 > bad:
            with pytest.raises(ValueError, match="a UTF-8 file with stray bytes"):
                read_conll(path)
            return
    # ... and a file that is valid UTF-8 is read as UTF-8
    expected_words = [[w.encode(encoding).decode(detected) for w in s] for s in expected_words]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EncodingFallback)
        f = read_conll(path)
    assert f.encoding == detected
    assert [s.tokens for s in f] == expected_words
    expected_tags = [to_iob2([t for _, t in s])[0] for s in sentences]
    assert [s.tags for s in f] == expected_tags
    assert all(iob2_valid(s.tags) for s in f)
    assert f.documents == (len(docs) if docstart else 0)
    assert f.num_tokens == sum(len(s) for s in expected_words)


# characters Python's splitlines() / str.split() break on, which are not line or column ends here
SEPARATORS = ["\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\xa0"]


@pytest.mark.parametrize("sep", SEPARATORS, ids=[f"U+{ord(c):04X}" for c in SEPARATORS])
def test_only_newline_ends_a_line_and_only_space_or_tab_a_column(tmp_path, sep):
    path = tmp_path / "x.conll"
    text = f"EU NNP B-ORG\nre{sep}jects VBZ O\n\nPeter NNP B-PER\r\nBlack{sep} NNP I-PER\n"
    path.write_text(text, encoding="utf-8", newline="")
    cf = read_conll(path)
    assert [s.tokens for s in cf] == [["EU", f"re{sep}jects"], ["Peter", f"Black{sep}"]]
    assert [s.tags for s in cf] == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert [s.line for s in cf] == [1, 4]
    # an error after such a line names the line the file's \n count gives
    path.write_text(f"a{sep}b X O\nc X O\nd O\n", encoding="utf-8", newline="")
    with pytest.raises(ValueError, match=r"x\.conll:3: 2 columns"):
        read_conll(path)


def test_latin1_file_with_byte_0x85_reads(tmp_path):
    path = tmp_path / "deu.conll"
    path.write_bytes(b"Bonn NE B-LOC\nsagte\x85 VVFIN O\n\n")  # \x85: NEL in latin-1
    cf = read_conll(path)
    assert cf.encoding == "latin-1" and [s.tokens for s in cf] == [["Bonn", "sagte\x85"]]


def test_cr_only_line_ends_are_a_clear_error(tmp_path):
    path = tmp_path / "mac.conll"
    path.write_bytes(b"EU NNP B-ORG\rrejects VBZ O\r\r")
    with pytest.raises(ValueError, match=r"mac\.conll: lines end in a bare carriage return"):
        read_conll(path)
