"""Tokenizers on the Rust ``tokenizers`` library: BERT WordPiece (interchangeable with Hugging
Face's ``BertTokenizerFast``) and any other ``tokenizer.json`` it reads (Unigram / SentencePiece
with Metaspace, as XLM-R, e5 and LaBSE-style models ship, or BPE).

``load_tokenizer(path)`` takes a folder (``tokenizer.json`` when present, else ``vocab.txt`` with
``tokenizer_config.json``), or one of those files directly.

WordPiece: both routes build the same pipeline (BertNormalizer -> BertPreTokenizer -> WordPiece ->
``[CLS] A [SEP] (B [SEP])``) and give identical ids. mBERT is cased: no lower-casing, no accent
stripping, CJK characters split. When no ``tokenizer_config.json`` says whether to lower-case, the
casing is inferred from the vocabulary itself (a vocabulary holding upper-case word pieces is
cased); Hugging Face would lower-case by default, which silently ruins a cased vocabulary such as
mBERT's.

Other models: the file's own pipeline is used as it is. The special tokens (cls or bos, sep or eos,
pad, mask, unk) are named by ``tokenizer_config.json`` and ``special_tokens_map.json`` beside it
when present, else found in the vocabulary under their usual names (``<s>``, ``</s>``, ``<pad>``,
``<mask>``, ``<unk>``, or BERT's ``[CLS]``-style names); a role with no token is an error naming
the file. Whatever padding or truncation a file enables is turned off (the engine pads and windows
itself) and ``padding_disabled`` / ``truncation_disabled`` say so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import (
    Encoding,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from xlt_engine.data.examples import quoted
from xlt_engine.fileio import atomic_write_text
from xlt_engine.inputs import read_bytes, read_json, read_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROLES = ("pad", "unk", "cls", "sep", "mask")  # the order of SPECIAL_TOKENS
# where a role's token is named in tokenizer_config.json / special_tokens_map.json, first first
ROLE_KEYS = {
    "pad": ("pad_token",),
    "unk": ("unk_token",),
    "cls": ("cls_token", "bos_token"),
    "sep": ("sep_token", "eos_token"),
    "mask": ("mask_token",),
}
ROLE_NAMES = {  # usual names, when no file names the role
    "pad": ("<pad>", "[PAD]"),
    "unk": ("<unk>", "[UNK]"),
    "cls": ("<s>", "[CLS]", "<cls>"),
    "sep": ("</s>", "[SEP]", "<sep>"),
    "mask": ("<mask>", "[MASK]"),
}
WORD_START = {"Unigram": "\u2581", "BPE": "\u0120"}  # SentencePiece's ▁, byte-level BPE's Ġ


@dataclass(frozen=True)
class TokenizerSettings:
    do_lower_case: bool
    strip_accents: bool | None  # None: follow do_lower_case, as in BERT
    tokenize_chinese_chars: bool
    source: str  # where the settings came from, for ``inspect``


class SubwordTokenizer:
    """A ``tokenizers.Tokenizer`` plus the special ids the engine needs.

    ``backend`` is the Rust tokenizer, for batch encoding and anything not wrapped here;
    ``special_tokens`` maps each role (pad, unk, cls, sep, mask) to its token. ``settings`` holds
    BERT's normaliser settings for WordPiece tokenizers, and is None for the others.
    """

    settings: TokenizerSettings | None = None

    def __init__(self, backend: Tokenizer, vocab: list[str], special_tokens: dict[str, str]):
        self.backend = backend
        self._vocab = vocab  # id -> token
        self.special_tokens = dict(special_tokens)
        self.padding_disabled = backend.padding is not None
        self.truncation_disabled = backend.truncation is not None
        backend.no_padding()  # the engine pads and windows itself
        backend.no_truncation()
        ids = {}
        for role in ROLES:
            ids[role] = backend.token_to_id(special_tokens[role])
            if ids[role] is None:
                raise ValueError(
                    f"the {role} token {special_tokens[role]!r} is not in the vocabulary"
                )
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (ids[r] for r in ROLES)

    @property
    def kind(self) -> str:
        """The model type: WordPiece, Unigram, BPE or WordLevel."""
        return type(self.backend.model).__name__

    @property
    def special_ids(self) -> list[int]:
        """Ids of every special token: the five roles and the file's other special tokens."""
        added = self.backend.get_added_tokens_decoder()
        ids = {i for i, t in added.items() if t.special}
        ids |= {self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id}
        return sorted(ids)

    def continuation(self) -> list[bool]:
        """Per id: True for a piece that continues a word (``##x`` in WordPiece; a piece without
        the word-start mark ``▁`` / ``Ġ`` in Unigram / BPE), for whole-word masking."""
        special = set(self.special_ids)
        if self.kind == "WordPiece":
            return [t.startswith("##") for t in self._vocab]
        start = WORD_START.get(self.kind)
        if start is None:
            return [False] * len(self._vocab)
        return [i not in special and not t.startswith(start) for i, t in enumerate(self._vocab)]

    def truncating(self, max_len: int) -> Tokenizer:
        """A copy of the backend that truncates to ``max_len`` ids (specials included), longest
        first for pairs, as Hugging Face's ``truncation=True``. Cached per length."""
        cache = self.__dict__.setdefault("_truncating", {})
        if max_len not in cache:
            clone = Tokenizer.from_str(self.backend.to_str())
            clone.enable_truncation(max_len, strategy="longest_first")
            clone.no_padding()
            cache[max_len] = clone
        return cache[max_len]

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab(self) -> list[str]:
        """Tokens by id."""
        return list(self._vocab)

    def encode(
        self, text: str, pair: str | None = None, add_special_tokens: bool = True
    ) -> list[int]:
        return self.backend.encode(text, pair, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [
            e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        ]

    def encode_words(self, words: list[str], add_special_tokens: bool = True) -> Encoding:
        """Encode pre-split words (NER); ``Encoding.word_ids`` maps each piece to its word."""
        return self.backend.encode(
            words, is_pretokenized=True, add_special_tokens=add_special_tokens
        )

    def tokenize(self, text: str) -> list[str]:
        return self.backend.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids)

    def save(self, folder: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json: what this
        loader and transformers' ``PreTrainedTokenizerFast`` (``AutoTokenizer``) read."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "tokenizer.json", self.backend.to_str(pretty=True))
        names = {r + "_token": self.special_tokens[r] for r in ROLES}
        names["bos_token"], names["eos_token"] = names["cls_token"], names["sep_token"]
        # transformers 5 ignores a tokenizer.json whose config names a slow SentencePiece class
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **names}
        atomic_write_text(folder / "tokenizer_config.json", json.dumps(cfg, indent=2) + "\n")
        atomic_write_text(folder / "special_tokens_map.json", json.dumps(names, indent=2) + "\n")

    def __repr__(self) -> str:
        roles = ", ".join(f"{r}={self.special_tokens[r]!r}" for r in ROLES)
        return f"SubwordTokenizer({self.kind}, vocab_size={self.vocab_size}, {roles})"


class WordPieceTokenizer(SubwordTokenizer):
    """BERT's WordPiece tokenizer, with its normaliser settings."""

    def __init__(self, backend: Tokenizer, settings: TokenizerSettings, vocab: list[str]):
        super().__init__(backend, vocab, dict(zip(ROLES, SPECIAL_TOKENS, strict=True)))
        self.settings = settings

    def save(self, folder: str | Path) -> None:
        """Write tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json:
        what both this loader and transformers' ``BertTokenizerFast`` read."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "tokenizer.json", self.backend.to_str(pretty=True))
        atomic_write_text(folder / "vocab.txt", "".join(t + "\n" for t in self._vocab))
        cfg = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.settings.do_lower_case,
            "strip_accents": self.settings.strip_accents,
            "tokenize_chinese_chars": self.settings.tokenize_chinese_chars,
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
        }
        atomic_write_text(folder / "tokenizer_config.json", json.dumps(cfg, indent=2) + "\n")
        special = {t.strip("[]").lower() + "_token": t for t in SPECIAL_TOKENS}
        atomic_write_text(folder / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"WordPieceTokenizer(vocab_size={self.vocab_size}, do_lower_case={s.do_lower_case}, "
            f"strip_accents={s.strip_accents}, tokenize_chinese_chars={s.tokenize_chinese_chars})"
        )


def read_vocab(path: Path) -> list[str]:
    """One token per line; id = line number. Errors name the file and line."""
    try:
        text = read_text(path)
    except OSError as err:
        raise ValueError(f"{path}: cannot read vocabulary ({err.strerror or err})") from None
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    tokens = [t.rstrip("\r") for t in tokens]
    if not tokens:
        raise ValueError(f"{path}: empty vocabulary")
    seen: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok == "" or tok != tok.strip():
            raise ValueError(
                f"{path}: line {i + 1}: empty token or surrounding whitespace {quoted(tok)}"
            )
        if tok in seen:
            raise ValueError(
                f"{path}: line {i + 1}: token {quoted(tok)} repeats line {seen[tok] + 1}"
            )
        seen[tok] = i
    missing = [t for t in SPECIAL_TOKENS if t not in seen]
    if missing:
        raise ValueError(f"{path}: special tokens missing from the vocabulary: {missing}")
    return tokens


def _is_cased(vocab: list[str]) -> bool:
    """A vocabulary is cased if a noticeable share of its word pieces hold upper-case letters."""
    words = [t for t in vocab if not (t.startswith("[") and t.endswith("]"))]
    upper = sum(1 for t in words if any(c.isupper() for c in t))
    return upper >= max(1, len(words) // 100)


def build_wordpiece(vocab: list[str], settings: TokenizerSettings) -> Tokenizer:
    """The BERT pipeline for ``vocab`` (ids = list positions) with ``settings``."""
    tok = Tokenizer(
        models.WordPiece(
            {t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100
        )
    )
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=settings.tokenize_chinese_chars,
        strip_accents=settings.strip_accents,
        lowercase=settings.do_lower_case,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A:0 [SEP]:0",
        pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def _read_json(path: Path) -> dict:
    try:
        raw = read_json(path)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return raw


def _config_settings(
    config_path: Path | None, vocab: list[str], do_lower_case: bool | None
) -> TokenizerSettings:
    raw = _read_json(config_path) if config_path is not None else {}
    source = str(config_path) if config_path is not None else "inferred from the vocabulary"
    for key in ("do_lower_case", "tokenize_chinese_chars"):
        if key in raw and not isinstance(raw[key], bool):
            raise ValueError(f"{config_path}: key {key!r} must be true or false, got {raw[key]!r}")
    if "strip_accents" in raw and raw["strip_accents"] not in (True, False, None):
        raise ValueError(
            f"{config_path}: key 'strip_accents' must be true, false or null, got "
            f"{raw['strip_accents']!r}"
        )
    if do_lower_case is not None:
        source = "argument do_lower_case"
    elif "do_lower_case" in raw:
        do_lower_case = raw["do_lower_case"]
    else:
        do_lower_case = not _is_cased(vocab)
        source = (
            f"{source}: no do_lower_case given, vocabulary is {'un' if do_lower_case else ''}cased"
        )
    return TokenizerSettings(
        do_lower_case=do_lower_case,
        strip_accents=raw.get("strip_accents"),
        tokenize_chinese_chars=raw.get("tokenize_chinese_chars", True),
        source=source,
    )


def _special_tokens(path: Path, vocab: set[str]) -> dict[str, str]:
    """Each role's token: from tokenizer_config.json, then special_tokens_map.json beside
    ``path``, then the usual names found in the vocabulary."""
    named: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the config wins
        f = path.parent / name
        if not f.is_file():
            continue
        raw = _read_json(f)
        for role, keys in ROLE_KEYS.items():
            for key in keys:
                value = raw.get(key)
                if isinstance(value, dict):  # {"content": "<s>", "lstrip": ...}
                    value = value.get("content")
                if value is None:
                    continue
                if not isinstance(value, str) or value not in vocab:
                    raise ValueError(
                        f"{f}: key {key!r} names {value!r}, which is not in the vocabulary of "
                        f"{path}"
                    )
                named[role] = value
                break
    for role in ROLES:
        if role not in named:
            found = [t for t in ROLE_NAMES[role] if t in vocab]
            if not found:
                raise ValueError(
                    f"{path}: no {role} token: none of {', '.join(ROLE_NAMES[role])} is in the "
                    f"vocabulary and no tokenizer_config.json or special_tokens_map.json beside "
                    f"it names one ({' or '.join(ROLE_KEYS[role])})"
                )
            named[role] = found[0]
    return named


def _backend(path: Path) -> Tokenizer:
    """The ``tokenizers`` pipeline of a tokenizer.json, from the text the bounded reader gives
    (a byte-order mark dropped, as everywhere)."""
    try:
        return Tokenizer.from_str(read_text(path))
    except Exception as err:  # the Rust side raises a plain Exception
        raise ValueError(f"{path}: cannot load tokenizer ({err})") from None


def _from_any_tokenizer_json(path: Path, do_lower_case: bool | None) -> SubwordTokenizer:
    """A tokenizer.json that is not BERT's WordPiece pipeline, used as it is."""
    if do_lower_case is not None:
        raise ValueError(
            f"{path}: do_lower_case applies to BERT WordPiece tokenizers only; this file's own "
            "normaliser decides the casing"
        )
    backend = _backend(path)
    by_id = sorted(backend.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError(f"{path}: token ids are not 0..{len(by_id) - 1}")
    vocab = [t for t, _ in by_id]
    return SubwordTokenizer(backend, vocab, _special_tokens(path, set(vocab)))


def _from_tokenizer_json(path: Path, do_lower_case: bool | None) -> SubwordTokenizer:
    raw = _read_json(path)
    model, norm = raw.get("model") or {}, raw.get("normalizer") or {}
    if not isinstance(model, dict) or not isinstance(norm, dict):
        raise ValueError(f"{path}: keys 'model' and 'normalizer' must be JSON objects")
    if model.get("type") != "WordPiece" or norm.get("type") != "BertNormalizer":
        return _from_any_tokenizer_json(path, do_lower_case)
    if not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path}: key 'model' is not a WordPiece model with a vocab")
    by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError(f"{path}: key 'model.vocab' ids are not 0..{len(by_id) - 1}")
    vocab = [t for t, _ in by_id]
    missing = [t for t in SPECIAL_TOKENS if t not in model["vocab"]]
    if missing:
        raise ValueError(f"{path}: special tokens missing from the vocabulary: {missing}")
    settings = TokenizerSettings(
        do_lower_case=bool(norm.get("lowercase", False)),
        strip_accents=norm.get("strip_accents"),
        tokenize_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
        source=str(path),
    )
    config_path = path.parent / "tokenizer_config.json"
    if config_path.is_file():
        raw_cfg = _read_json(config_path)
        for key, ours in (
            ("do_lower_case", settings.do_lower_case),
            ("strip_accents", settings.strip_accents),
            ("tokenize_chinese_chars", settings.tokenize_chinese_chars),
        ):
            if key in raw_cfg and raw_cfg[key] != ours:
                raise ValueError(
                    f"{config_path}: key {key!r} is {raw_cfg[key]!r} but {path} says {ours!r}"
                )
    if do_lower_case is not None and do_lower_case != settings.do_lower_case:
        # an explicit override wins: rebuild the pipeline with it
        settings = TokenizerSettings(
            do_lower_case,
            settings.strip_accents,
            settings.tokenize_chinese_chars,
            "argument do_lower_case",
        )
        return WordPieceTokenizer(build_wordpiece(vocab, settings), settings, vocab)
    backend = _backend(path)
    return WordPieceTokenizer(backend, settings, vocab)


def load_tokenizer(path: str | Path, do_lower_case: bool | None = None) -> SubwordTokenizer:
    """Load a tokenizer from a folder, ``tokenizer.json`` or ``vocab.txt``: BERT WordPiece
    (a ``WordPieceTokenizer``) or any other model a ``tokenizer.json`` holds.

    ``do_lower_case`` (WordPiece only) overrides whatever the files say (None: use the files,
    else infer it from the vocabulary).
    """
    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return _from_tokenizer_json(path / "tokenizer.json", do_lower_case)
        vocab_path = path / "vocab.txt"
        if not vocab_path.is_file():
            raise ValueError(f"{path}: no tokenizer.json or vocab.txt in this folder")
    elif path.is_file():
        if path.name.endswith(".json"):
            return _from_tokenizer_json(path, do_lower_case)
        vocab_path = path
    else:
        raise ValueError(f"{path}: no such tokenizer file or folder")
    vocab = read_vocab(vocab_path)
    config_path = vocab_path.parent / "tokenizer_config.json"
    settings = _config_settings(
        config_path if config_path.is_file() else None, vocab, do_lower_case
    )
    return WordPieceTokenizer(build_wordpiece(vocab, settings), settings, vocab)


# what ``load_tokenizer`` reads of a folder
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
_VOCAB_SIZES: dict[str, int] = {}  # digest of a folder's TOKENIZER_FILES -> tokens


def tokenizer_vocab_size(folder: str | Path) -> int:
    """The number of tokens of the tokenizer in ``folder`` (``load_tokenizer``'s rules and
    errors), parsed once per process for the same file contents: a run loads many model folders
    that hold copies of one tokenizer (e5's tokenizer.json: 17 MB, 3.2 s to parse on a busy core,
    0.025 s to hash; benchmarks/results/load_cpu_20261127.txt). Nothing is kept for a tokenizer
    that does not load."""
    folder = Path(folder)
    digest = hashlib.blake2b(digest_size=20)
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            data = read_bytes(folder / name, "a tokenizer file")  # bounded, as its parse
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
    key = digest.hexdigest()
    if key not in _VOCAB_SIZES:
        _VOCAB_SIZES[key] = load_tokenizer(folder).vocab_size
    return _VOCAB_SIZES[key]


def default_vocab() -> list[str]:
    """A small embedded, cased, character-level WordPiece vocabulary: the special tokens, then
    every printable ASCII and Latin-1 character as a word start and as a ``##`` continuation.
    For models built from scratch (``xlt-engine init``, the quickstart) with no file at hand."""
    chars = [chr(c) for c in range(33, 127)] + [
        chr(c) for c in range(0xC0, 0x100) if c not in (0xD7, 0xF7)
    ]
    return list(SPECIAL_TOKENS) + chars + ["##" + c for c in chars]


def default_tokenizer() -> WordPieceTokenizer:
    """The tokenizer of ``default_vocab()`` (cased, CJK split)."""
    vocab = default_vocab()
    settings = TokenizerSettings(False, None, True, "embedded default vocabulary")
    return WordPieceTokenizer(build_wordpiece(vocab, settings), settings, vocab)
