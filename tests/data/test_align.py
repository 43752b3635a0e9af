"""Word / sub-token alignment, windows, and text-pair encoding."""

import numpy as np
import pytest

from xlt_engine.data import load_tokenizer, read_conll, read_xnli
from xlt_engine.data.align import (
    IGNORE,
    WordPieces,
    align_flat,
    align_words,
    encode_texts,
    word_predictions,
)
from xlt_engine.data.tokenizer import default_tokenizer


@pytest.fixture(scope="module")
def mbert(request):
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return load_tokenizer(SHARED_DATA / "mbert" / "vocab.txt")


def tag_ids(conll):
    types = ["O"] + [p + t for t in conll.entity_types() for p in ("B-", "I-")]
    index = {t: i for i, t in enumerate(types)}
    return [[index[t] for t in s.tags] for s in conll], types


@pytest.mark.parametrize("max_len", [128, 24])
def test_round_trip_on_all_of_eng_train(shared_data, mbert, max_len):
    conll = read_conll(shared_data / "conll2003_en" / "eng.train")
    labels, _ = tag_ids(conll)
    sentences = [s.tokens for s in conll]
    a = align_words(mbert, sentences, labels, max_len=max_len)
    assert a.num_words == [len(s) for s in sentences]
    for w in a.windows:
        assert len(w.input_ids) <= max_len
        assert w.input_ids[0] == mbert.cls_id and w.input_ids[-1] == mbert.sep_id
        # exactly the first sub-tokens carry labels, nothing else does
        assert (w.labels != IGNORE).sum() <= len(w.word_positions)
        mask = np.zeros(len(w.labels), bool)
        mask[w.word_positions] = True
        assert (w.labels[~mask] == IGNORE).all()
    # the labels read back at the word positions are the input labels, one per word
    back = word_predictions(a, [w.labels[w.word_positions] for w in a.windows])
    assert back == [list(x) for x in labels]
    # full-length per-position predictions map back the same way
    back = word_predictions(a, [w.labels for w in a.windows])
    assert back == [list(x) for x in labels]
    if max_len == 24:
        assert a.split_sentences > 1000  # windows really were cut


def test_first_subtoken_labels_match_word_ids(mbert):
    words = ["Zürich", "liegt", "in", "der", "Schweizerischen", "Eidgenossenschaft", "."]
    a = align_words(mbert, [words], [list(range(7))], max_len=64)
    (w,) = a.windows
    enc = mbert.encode_words(words)
    first = [enc.word_ids.index(i) for i in range(7)]
    assert w.word_positions.tolist() == first
    assert w.input_ids.tolist() == enc.ids
    assert w.labels[first].tolist() == list(range(7))


def test_empty_word_becomes_unk_and_is_kept(mbert):
    words = ["A", "\u200b", "B", "\x00", "C"]  # zero-width space and NUL tokenise to nothing
    a = align_words(mbert, [words], [[1, 2, 3, 4, 5]], max_len=16)
    (w,) = a.windows
    assert a.unk_words == 2
    assert len(w.word_positions) == 5
    assert w.input_ids[w.word_positions].tolist()[1] == mbert.unk_id
    assert w.input_ids[w.word_positions].tolist()[3] == mbert.unk_id
    assert w.labels[w.word_positions].tolist() == [1, 2, 3, 4, 5]


def test_windows_split_at_word_boundaries_and_clip_giant_words():
    tok = default_tokenizer()  # character level: a word of n letters has n pieces
    words = ["ab", "cde", "f", "ghijklmnop", "q"]
    a = align_words(tok, [words], [[0, 1, 2, 3, 4]], max_len=6)  # 4 pieces per window
    got = [(w.first_word, len(w.word_positions), len(w.input_ids)) for w in a.windows]
    # [ab] + [cde] would be 5 > 4; then cde f (4); ghij... alone (clipped to 4); q
    assert got == [(0, 1, 4), (1, 2, 6), (3, 1, 6), (4, 1, 3)]
    assert a.clipped_words == 1 and a.split_sentences == 1
    preds = word_predictions(a, [w.labels[w.word_positions] for w in a.windows])
    assert preds == [[0, 1, 2, 3, 4]]


def test_word_predictions_checks_counts():
    tok = default_tokenizer()
    a = align_words(tok, [["ab", "c"], ["d"]], None, max_len=8)
    with pytest.raises(ValueError, match="1 window predictions for 2 windows"):
        word_predictions(a, [[0, 0]])
    with pytest.raises(ValueError, match="sentence 0, window at word 0: 3 predictions for 2"):
        word_predictions(a, [[0, 0, 0], [0]])


def test_bad_alignment_input():
    tok = default_tokenizer()
    with pytest.raises(ValueError, match="sentence 1 has no words"):
        align_words(tok, [["a"], []])
    with pytest.raises(ValueError, match="sentence 0: 1 labels for 2 words"):
        align_words(tok, [["a", "b"]], [[0]])
    with pytest.raises(ValueError, match="max_len must be at least 3"):
        align_words(tok, [["a"]], max_len=2)


def test_encode_pairs_match_transformers(shared_data, mbert, tmp_path):
    transformers = pytest.importorskip("transformers")
    mbert.save(tmp_path)
    hf = transformers.BertTokenizerFast.from_pretrained(tmp_path)
    ds = read_xnli(shared_data / "xnli" / "dev-de.tsv")
    ex = ds.examples[:300]
    for max_len in (128, 24):
        ours = encode_texts(mbert, [e.text for e in ex], [e.text_pair for e in ex], max_len)
        ref = hf(
            [e.text for e in ex], [e.text_pair for e in ex], truncation=True, max_length=max_len
        )
        assert [x.tolist() for x in ours.input_ids] == ref["input_ids"]
        assert [x.tolist() for x in ours.token_type_ids] == ref["token_type_ids"]
        full = hf([e.text for e in ex], [e.text_pair for e in ex])["input_ids"]
        assert ours.truncated == sum(len(r) > max_len for r in full)
    texts = [e.text for e in ex]
    ours = encode_texts(mbert, texts, max_len=16)
    assert [x.tolist() for x in ours.input_ids] == hf(texts, truncation=True, max_length=16)[
        "input_ids"
    ]
    assert all((t == 0).all() for t in ours.token_type_ids)
    assert ours.truncated == sum(len(r) > 16 for r in hf(texts)["input_ids"]) > 100


def test_encode_texts_bad_input():
    tok = default_tokenizer()
    with pytest.raises(ValueError, match="1 pair texts for 2 texts"):
        encode_texts(tok, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="max_len 3 leaves no room"):
        encode_texts(tok, ["a"], ["b"], max_len=3)


def expected_flat(a) -> dict:
    """``align_flat``'s arrays, built from ``align_words``' windows."""
    ws = a.windows
    return {
        "ids": np.concatenate([w.input_ids for w in ws]),
        "lengths": [len(w.input_ids) for w in ws],
        "positions": np.concatenate([w.word_positions for w in ws]),
        "rows": [len(w.word_positions) for w in ws],
        "targets": np.concatenate([w.labels[w.word_positions] for w in ws]),
        "units": [w.sentence for w in ws],
    }


def assert_flat_equal(tok, sentences, labels, max_len, chunk, limit) -> dict:
    """``align_flat`` chunk by chunk, one ``WordPieces`` table across the chunks (``limit``
    small: it starts again empty), equals ``align_words`` on each chunk: arrays and counts."""
    pieces = WordPieces(tok, limit=limit)
    totals = {"unk_words": 0, "split_sentences": 0, "clipped_words": 0}
    for lo in range(0, len(sentences), chunk):
        part = sentences[lo : lo + chunk]
        part_labels = None if labels is None else labels[lo : lo + chunk]
        ref = align_words(tok, part, part_labels, max_len)
        got = align_flat(pieces, part, part_labels, max_len)
        for k, v in expected_flat(ref).items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert got["ids"].dtype == np.int32 and got["targets"].dtype == np.int64
        assert got["stats"] == {
            "unk_words": ref.unk_words,
            "split_sentences": ref.split_sentences,
            "clipped_words": ref.clipped_words,
        }
        for k in totals:
            totals[k] += got["stats"][k]
    return totals


@pytest.mark.parametrize("max_len", [128, 24])
def test_flat_alignment_equals_align_words_on_conll(shared_data, mbert, max_len):
    conll = read_conll(shared_data / "conll2002" / "esp.testa")
    labels, _ = tag_ids(conll)
    sentences = [s.tokens for s in conll]
    totals = assert_flat_equal(mbert, sentences, labels, max_len, chunk=700, limit=3000)
    if max_len == 24:
        assert totals["split_sentences"] > 100  # both paths ran: cut sentences and whole ones
    extra = [["A", "\u200b", "B"], ["\x00"], ["ab" * 40, "y"], ["Zürich", "\u200b"]]
    totals = assert_flat_equal(mbert, extra, [[1] * len(s) for s in extra], 16, 2, 3)
    assert totals["unk_words"] == 3 and totals["clipped_words"] == 1


def test_flat_alignment_cuts_and_clips_as_align_words():
    tok = default_tokenizer()  # character level: a word of n letters has n pieces
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    sentences = [
        ["".join(rng.choice(letters, rng.integers(1, 12))) for _ in range(rng.integers(1, 9))]
        for _ in range(400)
    ]
    labels = [list(rng.integers(0, 5, len(s))) for s in sentences]
    totals = assert_flat_equal(tok, sentences, labels, 8, chunk=64, limit=40)
    assert totals["split_sentences"] > 50 and totals["clipped_words"] > 20
    assert_flat_equal(tok, sentences, None, 40, chunk=400, limit=10_000)  # unlabeled: -100


@pytest.mark.parametrize("kind", ["unigram-always", "unigram-first", "byte-bpe"])
def test_flat_alignment_on_other_tokenizers(tmp_path, kind):
    """Each word encoded alone gives the pieces it gets inside a sentence (the table's
    premise), for SentencePiece Unigram (either prepend scheme) and byte-level BPE."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    from tests.data.test_tokenizer_subword import TEXTS

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    if kind.startswith("unigram"):
        tok = Tokenizer(models.Unigram())
        scheme = kind.split("-")[1]
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme)
        trainer = trainers.UnigramTrainer(
            vocab_size=300, special_tokens=specials, unk_token="<unk>"
        )
    else:
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    tok.train_from_iterator(TEXTS * 20, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path)
    sentences = [t.split() for t in TEXTS] + [["zorro", "Fuchs", "🦊"], ["Hund", "zorro"]]
    assert_flat_equal(ours, sentences * 3, None, 12, chunk=5, limit=8)
