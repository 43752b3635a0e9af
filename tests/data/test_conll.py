"""read_conll on the real CoNLL files (official counts) and on small crafted ones."""

import pytest

from xlt_engine.data import read_conll
from xlt_engine.data.conll import check_labels_known, to_iob2

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


def test_explicit_encoding_error_names_the_line(tmp_path):
    p = write(tmp_path, "a O\n\nGroße O\n", encoding="latin-1")
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
