"""Tokenizers beyond WordPiece: a SentencePiece-style Unigram ``tokenizer.json`` (the XLM-R
pipeline: NFKC, Metaspace, ``<s> A </s></s> B </s>``) and a byte-level BPE one. Parity with
transformers' XLM-R tokenizer built from the same file: ids, pairs and word ids; special tokens
taken from the files; padding and truncation turned off; word alignment and MLM masking on
Metaspace pieces."""

import json

import numpy as np
import pytest
import torch
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from xlt_engine.data import SubwordTokenizer, load_tokenizer
from xlt_engine.data.align import align_words
from xlt_engine.data.masking import MlmMasker

TEXTS = [
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "The quick brown fox jumps over the lazy dog.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "Ο γρήγορος καφέ αλεπού πηδά πάνω από το τεμπέλικο σκυλί.",
]
PROBES = [
    *TEXTS,
    "  Der   Fuchs\tspringt  ",  # runs of spaces, a tab
    "ﬁne Ｆｕｃｈｓ ①",  # NFKC folds these
    "naïve café, ¿qué? «zorro»",
    "emoji 🦊 and ☃ are unknown",
    "",
]


def unigram_file(tmp_path, *, pad=True, mask_last=True):
    """An XLM-R-like Unigram tokenizer.json (ids: <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last),
    with padding and truncation enabled as some exports ship them."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(TEXTS * 30, trainer)
    if mask_last:
        tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    if pad:
        tok.enable_padding(length=64, pad_id=1, pad_token="<pad>")
        tok.enable_truncation(32)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_unigram_loads_with_its_special_tokens_and_no_padding(tmp_path):
    tok = load_tokenizer(unigram_file(tmp_path))
    assert isinstance(tok, SubwordTokenizer) and tok.kind == "Unigram"
    assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.mask_id == tok.vocab_size - 1 and tok.vocab[tok.mask_id] == "<mask>"
    assert tok.padding_disabled and tok.truncation_disabled
    ids = tok.encode(TEXTS[0])
    assert ids[0] == 0 and ids[-1] == 2 and 1 not in ids  # no padding to 64
    long = " ".join(TEXTS * 3)
    assert len(tok.encode(long)) > 32  # no truncation either
    assert tok.settings is None


def test_parity_with_transformers_xlm_roberta_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = unigram_file(tmp_path, pad=False)
    ours = load_tokenizer(path)
    hf = transformers.XLMRobertaTokenizerFast(tokenizer_file=str(path))
    for text in PROBES:
        assert ours.encode(text) == hf(text)["input_ids"], text
    texts = PROBES[:-1]  # transformers reads an empty second text as no pair at all
    for a, b in zip(texts, reversed(texts), strict=True):
        assert ours.encode(a, b) == hf(a, b)["input_ids"], (a, b)
    for text in PROBES[:-1]:
        words = text.split()
        enc = ours.encode_words(words)
        want = hf(words, is_split_into_words=True)
        assert enc.ids == want["input_ids"] and enc.word_ids == want.word_ids(), words


def test_special_tokens_come_from_the_config_files(tmp_path):
    path = unigram_file(tmp_path, pad=False)
    # a config naming other tokens for cls and sep (dict form, as transformers writes it)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": {"content": "</s>"}, "eos_token": "<s>"})
    )
    tok = load_tokenizer(tmp_path)
    assert (tok.cls_id, tok.sep_id) == (2, 0)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"mask_token": "<MASK>"}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: key 'mask_token' names '<MASK>'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "nm").mkdir()
    no_mask = unigram_file(tmp_path / "nm", pad=False, mask_last=False)
    with pytest.raises(
        ValueError, match=r"tokenizer.json: no mask token: none of <mask>, \[MASK\]"
    ):
        load_tokenizer(no_mask)
    with pytest.raises(ValueError, match="do_lower_case applies to BERT WordPiece"):
        load_tokenizer(path, do_lower_case=True)


def test_save_round_trips_and_transformers_auto_tokenizer_reads_it(tmp_path):
    tok = load_tokenizer(unigram_file(tmp_path))
    out = tmp_path / "saved"
    tok.save(out)
    again = load_tokenizer(out)
    assert again.special_tokens == tok.special_tokens
    for text in PROBES:
        assert again.encode(text) == tok.encode(text)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf.mask_token == "<mask>" and hf.cls_token == "<s>" and hf.pad_token_id == 1
    for text in PROBES:
        assert hf(text)["input_ids"] == tok.encode(text)


def test_word_alignment_on_metaspace_pieces(tmp_path):
    """First sub-token of each word carries its label; windows are <s> pieces </s>."""
    transformers = pytest.importorskip("transformers")
    path = unigram_file(tmp_path, pad=False)
    tok = load_tokenizer(path)
    hf = transformers.XLMRobertaTokenizerFast(tokenizer_file=str(path))
    sentences = [t.split() for t in TEXTS]
    labels = [list(range(len(s))) for s in sentences]
    aligned = align_words(tok, sentences, labels, max_len=512)
    assert len(aligned.windows) == len(sentences) and aligned.unk_words == 0
    for w, words, lab in zip(aligned.windows, sentences, labels, strict=True):
        want = hf(words, is_split_into_words=True)
        assert w.input_ids.tolist() == want["input_ids"]
        word_ids = want.word_ids()
        firsts = [word_ids.index(i) for i in range(len(words))]
        assert w.word_positions.tolist() == firsts
        assert w.labels[firsts].tolist() == lab
        assert (np.delete(w.labels, firsts) == -100).all()


def test_masking_uses_the_tokenizers_specials_and_word_starts(tmp_path):
    tok = load_tokenizer(unigram_file(tmp_path, pad=False))
    masker = MlmMasker.from_tokenizer(tok, probability=0.5, whole_word=True)
    assert masker.special[[0, 1, 2, 3, tok.mask_id]].all() and masker.special.sum() == 5
    cont = masker.continuation
    for i, piece in enumerate(tok.vocab):
        assert bool(cont[i]) == (i not in tok.special_ids and not piece.startswith("\u2581"))
    ids = torch.tensor([tok.encode(TEXTS[0]), tok.encode(TEXTS[0])])
    batch = masker(ids, generator=torch.Generator().manual_seed(0))
    flat = ids.flatten()
    assert not masker.special[flat[batch.positions]].any()  # specials never picked
    # whole words: a picked continuation piece's word start is picked too
    picked = set(batch.positions.tolist())
    for p in picked:
        if cont[flat[p]]:
            q = p
            while cont[flat[q]]:
                q -= 1
            assert q in picked


def test_byte_level_bpe_tokenizer_loads(tmp_path):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 10, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer(tmp_path)
    assert ours.kind == "BPE" and (ours.cls_id, ours.sep_id, ours.mask_id) == (0, 2, 4)
    assert ours.decode(ours.encode(TEXTS[2])) == TEXTS[2]
    cont = ours.continuation()
    starts = [i for i, t in enumerate(ours.vocab) if t.startswith("\u0120")]
    assert starts and not any(cont[i] for i in starts)
    assert sum(cont) == len(ours.vocab) - len(starts) - len(ours.special_ids)


def test_a_wordpiece_file_with_fixed_padding_is_loaded_without_it(tmp_path):
    """Sentence-transformers exports often ship padding to a fixed 128 and truncation: loading
    turns both off (they broke word alignment: 118 [PAD]s after every sentence)."""
    from xlt_engine.data.tokenizer import default_tokenizer

    tok = default_tokenizer()
    tok.save(tmp_path)
    raw = json.loads((tmp_path / "tokenizer.json").read_text())
    raw["padding"] = {
        "strategy": {"Fixed": 128},
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": tok.pad_id,
        "pad_type_id": 0,
        "pad_token": "[PAD]",
    }
    raw["truncation"] = {
        "direction": "Right",
        "max_length": 8,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw))
    again = load_tokenizer(tmp_path)
    assert again.padding_disabled and again.truncation_disabled
    ids = again.encode("Zürich liegt in der Schweiz.")
    assert ids == tok.encode("Zürich liegt in der Schweiz.") and again.pad_id not in ids
    aligned = align_words(again, [["Zürich", "liegt"]], [[1, 2]], max_len=64)
    assert len(aligned.windows[0].input_ids) == len("Zürich") + len("liegt") + 2
