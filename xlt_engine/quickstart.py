"""``xlt-engine quickstart``: the whole method on an embedded synthetic task, on CPU, with no
download.

A seed generates a small bilingual NER task: a source and a target "language", each with its own
lexicon (made of its own syllables) for the same concepts, and partly different word order
(the target puts adjectives after nouns, uses postpositions for places and puts the verb last in
about half of its sentences). Both share what real language pairs share: named entities (people,
places, organisations, written the same way) and digits. Sentences of the two languages are
drawn independently (no parallel data); a part of the entity names occurs only in the test
files. A WordPiece vocabulary is learnt from the training text (``learn_wordpieces``:
deterministic, so that a seed gives the same numbers on every run), a tiny BERT is initialised
at random, and ``experiment.pipeline.run_all`` runs btf, finetune (from the random
model: direct transfer, and from the Base Model), selftrain and evaluate with
``configs/quickstart.toml`` (``xlt_engine/quickstart.toml``, shipped with the package).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from itertools import pairwise
from pathlib import Path

from xlt_engine.data.tokenizer import SPECIAL_TOKENS
from xlt_engine.fileio import atomic_write_text


def default_config() -> str:
    """The quickstart's config: ``xlt_engine/quickstart.toml``, shipped with the package
    (``configs/quickstart.toml`` is a link to it), with data.root and model.path to be filled in."""
    return resources.files("xlt_engine").joinpath("quickstart.toml").read_text(encoding="utf-8")


ENTITY_TYPES = ("PER", "LOC", "ORG")


@dataclass(frozen=True)
class Sizes:
    train: int = 800  # sentences per language
    dev: int = 100
    test: int = 300
    held_out: float = 0.3  # share of entity names that occur in the test files only
    vocab_size: int = 1200


class _Lexicon:
    """A language's surface forms: words built from its own syllables."""

    def __init__(self, rng: random.Random, onsets: str, vowels: str, codas: str):
        self.rng, self.onsets, self.vowels, self.codas = rng, onsets, vowels, codas
        self.seen: set[str] = set()

    def word(self, syllables: tuple[int, int] = (1, 3)) -> str:
        while True:
            n = self.rng.randint(*syllables)
            w = "".join(
                self.rng.choice(self.onsets)
                + self.rng.choice(self.vowels)
                + (self.rng.choice(self.codas) if self.rng.random() < 0.3 else "")
                for _ in range(n)
            )
            if w not in self.seen and len(w) > 1:
                self.seen.add(w)
                return w


CONCEPTS = {"noun": 80, "verb": 40, "adj": 25, "time": 10, "det": 3}


def _languages(rng: random.Random):
    src = _Lexicon(rng, "bdfgklmnprstv", "aeiou", "nrs")
    tgt = _Lexicon(rng, "chjkwxyzlmn", "aeiouy", "hkt")
    lex = {}
    for lang, lx in (("src", src), ("tgt", tgt)):
        lex[lang] = {k: [lx.word() for _ in range(n)] for k, n in CONCEPTS.items()}
        lex[lang]["loc_prep"] = lx.word((1, 1))  # "in" (source) / a postposition (target)
        lex[lang]["with"] = lx.word((1, 1))
    names = _Lexicon(rng, "BCDFGHJKLMNPRSTVZ", "aeiouy", "lnrst")
    tail = _Lexicon(rng, "bcdfghklmnprstvz", "aeiou", "lnrs")

    def name() -> str:
        return names.word((1, 2)) + tail.word((1, 2))

    entities = {
        "PER": [(name(), name()) for _ in range(120)],  # first and last names
        "LOC": [(name(),) if rng.random() < 0.7 else (name(), name()) for _ in range(80)],
        "ORG": [(name(), rng.choice(("Group", "Bank", "Union", "Motors"))) for _ in range(60)],
    }
    return lex, entities


def _sentence(rng, lang: str, lex, pool) -> list[tuple[str, str]]:
    """One sentence of ``lang`` as (word, IOB2 tag) pairs."""
    L = lex[lang]

    def entity(kind: str) -> list[tuple[str, str]]:
        words = rng.choice(pool[kind])
        if kind == "PER" and rng.random() < 0.4:
            words = words[1:]  # the last name alone
        return [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(words)]

    def phrase() -> list[tuple[str, str]]:
        noun = [(rng.choice(L["noun"]), "O")]
        adj = [(rng.choice(L["adj"]), "O")] if rng.random() < 0.5 else []
        det = [(rng.choice(L["det"]), "O")]
        return det + (adj + noun if lang == "src" else noun + adj)

    def party() -> list[tuple[str, str]]:
        r = rng.random()
        return entity("PER") if r < 0.4 else entity("ORG") if r < 0.6 else phrase()

    subj, obj, verb = party(), party(), [(rng.choice(L["verb"]), "O")]
    extra = []
    if rng.random() < 0.7:
        place = entity("LOC")
        prep = [(L["loc_prep"], "O")]
        extra += prep + place if lang == "src" else place + prep
    if rng.random() < 0.4:
        n = str(rng.randint(2, 2030))
        extra += [(L["with"], "O"), (n, "O"), (rng.choice(L["noun"]), "O")]
    if rng.random() < 0.3:
        extra += [(rng.choice(L["time"]), "O")]
    if lang == "tgt" and rng.random() < 0.5:
        return subj + obj + extra + verb  # verb last
    return subj + verb + obj + extra


def generate(folder: str | Path, seed: int = 0, sizes: Sizes = Sizes()) -> dict[str, Path]:
    """Write src.{train,dev,test} and tgt.{train,test} (CoNLL, ``word tag`` lines) into
    ``folder``; returns their paths by name."""
    rng = random.Random(seed)
    lex, entities = _languages(rng)
    train_pool, all_pool = {}, {}
    for kind, names in entities.items():
        cut = int(len(names) * (1 - sizes.held_out))
        train_pool[kind] = names[:cut]
        all_pool[kind] = names  # test files draw from every name, the held-out ones too
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    plan = [
        ("src.train", "src", sizes.train, train_pool),
        ("src.dev", "src", sizes.dev, train_pool),
        ("src.test", "src", sizes.test, all_pool),
        ("tgt.train", "tgt", sizes.train, train_pool),
        ("tgt.test", "tgt", sizes.test, all_pool),
    ]
    for name, lang, n, pool in plan:
        lines = []
        for _ in range(n):
            lines += [f"{w} {t}" for w, t in _sentence(rng, lang, lex, pool)] + [""]
        out[name] = folder / name
        atomic_write_text(out[name], "\n".join(lines))
    return out


def _word_counts(texts: list[Path]) -> dict[str, int]:
    """How often each word of CoNLL ``texts`` occurs, split as BERT's pre-tokenizer splits."""
    from tokenizers import pre_tokenizers

    from xlt_engine.data import read_conll

    split = pre_tokenizers.BertPreTokenizer()
    counts: dict[str, int] = {}
    for path in texts:
        for sentence in read_conll(path):
            for word in sentence.tokens:
                for piece, _ in split.pre_tokenize_str(word):
                    counts[piece] = counts.get(piece, 0) + 1
    return counts


def learn_wordpieces(counts: dict[str, int], vocab_size: int, special=SPECIAL_TOKENS) -> list[str]:
    """A WordPiece vocabulary learnt from word counts by byte-pair merges, deterministically.

    Starts from every character (``##c`` inside a word) and merges the most frequent adjacent
    pair until ``vocab_size`` tokens exist or no pair is left. Ties go to the pair whose pieces
    sort first, so the result is a function of ``counts`` alone. (The ``tokenizers``
    WordPieceTrainer breaks ties by hash-map order and gives another vocabulary on every run.)
    """
    words = sorted(counts)
    symbols = [[w[0]] + ["##" + c for c in w[1:]] for w in words]
    freq = [counts[w] for w in words]
    alphabet = sorted({s for syms in symbols for s in syms})
    if len(special) + len(alphabet) > vocab_size:
        raise ValueError(
            f"vocab_size {vocab_size} is below the {len(special)} special tokens "
            f"plus the {len(alphabet)} characters of the text"
        )
    vocab = list(special) + alphabet
    pairs: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], set[int]] = {}

    def count(i: int, sign: int) -> None:
        syms = symbols[i]
        for pair in pairwise(syms):
            pairs[pair] = pairs.get(pair, 0) + sign * freq[i]
            if sign > 0:
                where.setdefault(pair, set()).add(i)

    for i in range(len(words)):
        count(i, 1)
    known = set(vocab)
    while len(vocab) < vocab_size:
        live = [(-n, p) for p, n in pairs.items() if n > 0]
        if not live:
            break
        best = min(live)[1]  # the most frequent pair; of equals, the one that sorts first
        a, b = best
        merged = a + b[2:]
        for i in sorted(where.pop(best, ())):
            syms = symbols[i]
            count(i, -1)
            out, j = [], 0
            while j < len(syms):
                if j + 1 < len(syms) and syms[j] == a and syms[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(syms[j])
                    j += 1
            symbols[i] = out
            count(i, 1)
        pairs.pop(best, None)
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
    return vocab


def build_vocab(texts: list[Path], out: Path, vocab_size: int) -> Path:
    """A cased WordPiece vocabulary learnt from the words of CoNLL ``texts`` -> ``out``.

    The same texts always give the same file (see ``learn_wordpieces``); every training word
    tokenizes without ``[UNK]`` under the ``tokenizers`` WordPiece model built from it.
    """
    vocab = learn_wordpieces(_word_counts(texts), vocab_size)
    atomic_write_text(out, "\n".join(vocab) + "\n")
    return out


def prepare(out: str | Path, seed: int = 0, sizes: Sizes = Sizes()) -> Path:
    """Data, vocabulary, tiny random model and config under ``out``; returns the config path."""
    import torch

    from xlt_engine.data.tokenizer import load_tokenizer
    from xlt_engine.model import BertConfig, BertForMLM, save_pretrained

    out = Path(out).absolute()  # the config it writes works from any folder
    files = generate(out / "data", seed, sizes)
    vocab = build_vocab(
        [files["src.train"], files["tgt.train"]], out / "data" / "vocab.txt", sizes.vocab_size
    )
    tok = load_tokenizer(vocab, do_lower_case=False)
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    save_pretrained(BertForMLM(config), out / "pretrained", tok)
    cfg_path = out / "quickstart.toml"
    text = default_config().replace('root = "data"', f"root = {json.dumps(str(out / 'data'))}")
    text = text.replace('path = "pretrained"', f"path = {json.dumps(str(out / 'pretrained'))}")
    # the config names its own runs folder and seed: run --stage all --config <it> reuses the
    # quickstart's runs instead of training again into ./runs/quickstart
    text = text.replace("\nseed = 1\n", f"\nseed = {seed}\nout = {json.dumps(str(out / 'runs'))}\n")
    atomic_write_text(cfg_path, text)
    return cfg_path
