"""Tokenizer parity with transformers' BertTokenizerFast on the real mBERT vocabulary and
sentences from every language in ../shared/data; the tokenizer.json and vocab.txt routes agree."""

import csv
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlt_engine.data import load_tokenizer
from xlt_engine.data.tokenizer import default_tokenizer, read_vocab


def conll_sentences(path: Path, encoding: str = "utf-8", n: int = 8) -> list[str]:
    out, words = [], []
    for line in path.read_text(encoding=encoding).splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                out.append(" ".join(words))
                words = []
            if len(out) >= n:
                break
            continue
        words.append(line.split()[0])
    return out


def cls10_texts(path: Path, n: int = 4) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [t.strip()[:600] for t in re.findall(r"<text>(.*?)</text>", text, flags=re.S)[:n]]


def xnli_texts(path: Path, n: int = 4) -> list[str]:
    rows = [
        line.rstrip("\r").split("\t") for line in path.read_text(encoding="utf-8").splitlines()[:n]
    ]
    return [field for row in rows for field in row[:2]]


def marc_texts(path: Path, n: int = 4) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return [row["review_body"] for _, row in zip(range(n), csv.DictReader(f), strict=False)]


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    from tests.conftest import SHARED_DATA as d

    if not d.is_dir():
        pytest.skip(f"{d} is absent")
    texts = {
        "conll-en": conll_sentences(d / "conll2003_en" / "eng.train"),
        "conll-es": conll_sentences(d / "conll2002" / "esp.train"),
        "conll-nl": conll_sentences(d / "conll2002" / "ned.train"),
        "conll-de": conll_sentences(d / "conll2003_de" / "deu.testa", encoding="latin-1"),
    }
    for lang in ("en", "de", "fr", "jp"):
        texts[f"cls10-{lang}"] = cls10_texts(d / "cls10" / lang / "books" / "train.review")
    for lang in (
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
    ):
        texts[f"xnli-{lang}"] = xnli_texts(d / "xnli" / f"test-{lang}.tsv")
    for lang in ("de", "es", "ja", "zh"):
        texts[f"marc-{lang}"] = marc_texts(d / "marc" / f"{lang}.test.csv")
    assert all(texts.values()), [k for k, v in texts.items() if not v]
    return texts


@pytest.fixture(scope="module")
def hf_reference(tmp_path_factory):
    """BertTokenizerFast built as transformers 5 requires: from a folder."""
    from tests.conftest import SHARED_DATA as d

    if not d.is_dir():
        pytest.skip(f"{d} is absent")
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("hfvocab")
    (folder / "vocab.txt").symlink_to(d / "mbert" / "vocab.txt")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    return BertTokenizerFast.from_pretrained(folder)


@pytest.fixture(scope="module")
def ours(corpus):
    from tests.conftest import SHARED_DATA as d

    return load_tokenizer(d / "mbert" / "vocab.txt")


def test_mbert_vocab_is_read_as_cased(ours):
    assert ours.vocab_size == 119547
    assert not ours.settings.do_lower_case and ours.settings.strip_accents is None
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
        0,
        100,
        101,
        102,
        103,
    )
    assert ours.tokenize("Zürich")[0].startswith("Z")  # no lower-casing, accent kept
    assert "ü" in "".join(ours.tokenize("Zürich"))


def test_ids_equal_transformers_on_every_language(ours, hf_reference, corpus):
    checked = 0
    for name, texts in corpus.items():
        for text in texts:
            assert ours.encode(text) == hf_reference(text)["input_ids"], (name, text[:80])
            checked += 1
        # pairs (XNLI-style) and batch encoding
        pair = hf_reference(texts[0], texts[-1])
        enc = ours.backend.encode(texts[0], texts[-1])
        assert enc.ids == pair["input_ids"] and enc.type_ids == pair["token_type_ids"], name
        assert ours.encode_batch(texts) == hf_reference(texts)["input_ids"], name
    assert checked > 100


def test_cjk_split_and_unknowns(ours, hf_reference):
    for text in [
        "東京は日本の首都です。",
        "北京欢迎你",
        "ภาษาไทย",
        "नमस्ते दुनिया",
        "مرحبا بالعالم",
        "😀 x" * 3,
    ]:
        assert ours.encode(text) == hf_reference(text)["input_ids"], text
    assert len(ours.tokenize("東京")) == 2


def test_pretokenized_words_match(ours, hf_reference, corpus):
    words = corpus["conll-de"][0].split()
    enc = ours.encode_words(words)
    ref = hf_reference(words, is_split_into_words=True)
    assert enc.ids == ref["input_ids"]
    assert enc.word_ids == ref.word_ids()


def test_tokenizer_json_route_equals_vocab_route(ours, corpus, tmp_path, hf_reference):
    ours.save(tmp_path / "saved")
    from_json = load_tokenizer(tmp_path / "saved")
    assert from_json.settings.source.endswith("tokenizer.json")
    hf_reference.save_pretrained(tmp_path / "hf")  # transformers' own tokenizer.json
    from_hf_json = load_tokenizer(tmp_path / "hf" / "tokenizer.json")
    for texts in corpus.values():
        want = ours.encode_batch(texts)
        assert from_json.encode_batch(texts) == want
        assert from_hf_json.encode_batch(texts) == want


def test_saved_tokenizer_loads_in_transformers(ours, tmp_path, corpus):
    from transformers import BertTokenizerFast

    ours.save(tmp_path)
    hf = BertTokenizerFast.from_pretrained(tmp_path)
    for texts in corpus.values():
        assert hf(texts)["input_ids"] == ours.encode_batch(texts)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(min_size=0, max_size=60))
def test_arbitrary_unicode_matches_transformers(ours, hf_reference, text):
    assert ours.encode(text) == hf_reference(text)["input_ids"]


def test_lower_case_from_config(tmp_path, mbert_vocab):
    (tmp_path / "vocab.txt").symlink_to(mbert_vocab)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    tok = load_tokenizer(tmp_path)
    assert tok.settings.do_lower_case and tok.tokenize("Zürich")[0][0] == "z"
    assert load_tokenizer(tmp_path, do_lower_case=False).tokenize("Zürich")[0][0] == "Z"


def test_conflicting_settings_are_an_error(tmp_path, ours):
    ours.save(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    with pytest.raises(ValueError, match="do_lower_case"):
        load_tokenizer(tmp_path)


def test_bad_vocab_files(tmp_path):
    p = tmp_path / "vocab.txt"
    p.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nhello\n")
    with pytest.raises(ValueError, match=r"vocab\.txt: line 7: token 'hello' repeats line 6"):
        read_vocab(p)
    p.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"special tokens missing.*\[CLS\]"):
        load_tokenizer(p)
    p.write_bytes(b"[PAD]\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"vocab.txt:2: not UTF-8"):
        load_tokenizer(p)
    p.write_text("")
    with pytest.raises(ValueError, match="empty vocabulary"):
        load_tokenizer(p)
    with pytest.raises(ValueError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(ValueError, match="tokenizer.json: invalid JSON at line 1"):
        load_tokenizer(tmp_path)


def test_default_tokenizer_round_trips(tmp_path):
    tok = default_tokenizer()
    assert not tok.settings.do_lower_case
    text = "Señor Müller fährt nach Köln."
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode(text) == tok.encode(text)
    assert load_tokenizer(tmp_path / "vocab.txt").encode(text) == tok.encode(text)
