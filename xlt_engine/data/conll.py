"""CoNLL NER reader: the 2002 (Spanish, Dutch) and 2003 (English, German) formats and their quirks.

One token per line, whitespace-separated columns, the NER tag in the LAST column (files have 2 to
5 columns; every token line of a file must have the same count). Sentences end at blank lines
and at ``-DOCSTART-`` lines (Dutch has DOCSTART lines with no blank line after them); DOCSTART
lines are counted as documents, never as sentences or tokens. Tags are returned in IOB2: IOB1
files (English, German) are converted, and an IOB2 file passes through unchanged except that an
``I-X`` with no ``B-X`` before it (one in Spanish train) becomes ``B-X``, as seqeval reads it.

Encoding: UTF-8 (a BOM is dropped), or exactly the encoding given. A file that is not UTF-8 at
all by a clear margin (the German files: 8,917 bytes invalid as UTF-8, no valid UTF-8 character)
is read as latin-1 with an ``EncodingFallback`` warning saying why; a file that is mostly
UTF-8 with a few stray bytes is an error naming the first one's line and offset (decoding it
as latin-1 would turn every UTF-8 character into mojibake). Every error names the file and the
line.
"""

from __future__ import annotations

import codecs
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xlt_engine.data.examples import (
    check_file,
    decode_text,
    iter_lines,
    quoted,
    read_bytes,
    split_columns,
    split_lines,
)
from xlt_engine.data.examples import check_labels_known as _check_known
from xlt_engine.data.formats import TaskData, TaskFormat, register_format

DOCSTART = "-DOCSTART-"
NON_ASCII = re.compile(r"[^\x00-\x7f]")


@dataclass(frozen=True)
class Sentence:
    tokens: list[str]
    tags: list[str]  # IOB2
    line: int  # 1-based line of the first token in the file


@dataclass
class ConllFile:
    """The sentences of one file, with the counts the data README gives."""

    path: Path
    encoding: str
    sentences: list[Sentence] = field(repr=False)
    documents: int  # -DOCSTART- lines
    converted_tags: int  # tags changed by the IOB1 -> IOB2 conversion

    def __len__(self) -> int:
        return len(self.sentences)

    def __iter__(self):
        return iter(self.sentences)

    def __getitem__(self, i):
        return self.sentences[i]

    @property
    def num_tokens(self) -> int:
        return sum(len(s.tokens) for s in self.sentences)

    @property
    def sentences_and_docstarts(self) -> int:
        """The count the reference paper's table uses (DOCSTART lines counted as sentences)."""
        return len(self.sentences) + self.documents

    def label_counts(self) -> Counter:
        return Counter(tag for s in self.sentences for tag in s.tags)

    def entity_types(self) -> list[str]:
        return sorted({t[2:] for s in self.sentences for t in s.tags if t != "O"})


class EncodingFallback(UserWarning):
    """A file without an encoding given was read as latin-1 (the message says why)."""


LATIN1_MARGIN = 20  # latin-1 only when invalid UTF-8 sequences outnumber valid ones 20 to 1


def decode(path: Path, data: bytes, encoding: str | None) -> tuple[str, str]:
    """Bytes -> text and the encoding used (see the module docstring). An explicit encoding
    that fails is an error naming the file, line and byte."""
    if encoding is not None:
        return decode_text(path, data, encoding), encoding
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as err:
        first = err.start
    lenient = data.decode("utf-8", errors="replace")
    bad = lenient.count("\ufffd") - data.count("\ufffd".encode())  # invalid sequences
    valid = len(NON_ASCII.findall(lenient)) - lenient.count("\ufffd")
    line = data.count(b"\n", 0, first) + 1
    where = f"byte 0x{data[first]:02x} at offset {first} (line {line})"
    if valid * LATIN1_MARGIN > bad:
        raise ValueError(
            f"{path}:{line}: not valid UTF-8 at {where}, yet {valid:,} characters are valid "
            f"UTF-8 ({bad:,} invalid sequences): a UTF-8 file with stray bytes, which latin-1 "
            "would turn into mojibake. Fix those bytes, or give the encoding (data.encoding in a "
            "config, read_conll(path, encoding=...) in code; iconv converts a file to UTF-8)"
        )
    warnings.warn(
        f"{path}: read as latin-1: {bad:,} byte sequences are not UTF-8 (the first: {where}) and "
        f"{valid:,} are; give the encoding to read it otherwise",
        EncodingFallback,
        stacklevel=3,
    )
    return data.decode("latin-1"), "latin-1"


MAX_COLUMNS = 10  # CoNLL-2002/2003 have 2 to 5, CoNLL-U 10


def check_tag(path: Path, lineno: int, tag: str) -> None:
    if tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-")):
        return
    raise ValueError(f"{path}:{lineno}: tag {quoted(tag)} is not O, B-<type> or I-<type>")


def to_iob2(tags: list[str]) -> tuple[list[str], int]:
    """IOB1 (or loose IOB2) -> IOB2: an I-X that does not continue an X entity starts one."""
    if tags.count("O") == len(tags):
        return list(tags), 0
    out, changed, prev = [], 0, "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
            changed += 1
        out.append(tag)
        prev = tag
    return out, changed


def read_conll(path: str | Path, encoding: str | None = None) -> ConllFile:
    """Read a CoNLL NER file into sentences with ``.tokens`` and IOB2 ``.tags``."""
    path = Path(path)
    data = read_bytes(path, "a CoNLL file", allow_empty=True)  # empty: "no sentences" below
    text, used = decode(path, data, encoding)
    counts = {"documents": 0, "converted": 0}
    lines = enumerate(split_lines(text, path), start=1)
    sentences = list(_parse(path, lines, counts))
    if not sentences:
        raise ValueError(f"{path}: no sentences (the file is empty or holds only DOCSTART lines)")
    return ConllFile(path, used, sentences, counts["documents"], counts["converted"])


def iter_conll(path: str | Path, encoding: str | None = None) -> Iterator[Sentence]:
    """Stream the sentences of a CoNLL file of any size (memory holds one sentence), as
    ``read_conll`` reads them. UTF-8 is decoded line by line; a file in another encoding given,
    or not valid UTF-8 with no encoding given, goes through ``read_conll`` whole, since its
    latin-1 rule weighs the whole file (the CoNLL files that need it are small)."""
    path = Path(path)
    check_file(path, "a CoNLL file")
    if not (_is_utf8_name(encoding) if encoding is not None else is_utf8(path)):
        yield from read_conll(path, encoding)
        return
    counts = {"documents": 0, "converted": 0}
    n = 0
    for sentence in _parse(path, iter_lines(path), counts):
        n += 1
        yield sentence
    if not n:
        raise ValueError(f"{path}: no sentences (the file is empty or holds only DOCSTART lines)")


def _is_utf8_name(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False  # read_conll names the unknown encoding


def is_utf8(path: Path, chunk: int = 1 << 20) -> bool:
    """Whether the whole file decodes as UTF-8 (read in chunks: memory stays flat)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _parse(path: Path, lines: Iterable[tuple[int, str]], counts: dict) -> Iterator[Sentence]:
    """CoNLL lines ``(number, text)`` -> sentences; ``counts`` gets the DOCSTART lines
    (``documents``) and the tags the IOB2 conversion changed (``converted``)."""
    columns = None
    tokens: list[str] = []
    tags: list[str] = []
    first = 0

    def done() -> Sentence:
        iob2, changed = to_iob2(tags)
        counts["converted"] += changed
        return Sentence(tokens, iob2, first)

    for lineno, line in lines:
        stripped = line.strip(" \t")
        if "\t" in stripped or "  " in stripped:
            fields = split_columns(stripped)
        else:  # one space between columns (most files): the same split, faster
            fields = stripped.split(" ") if stripped else []
        if not fields or fields[0] == DOCSTART:
            if tokens:
                yield done()
                tokens, tags = [], []
            if fields:
                counts["documents"] += 1
            continue
        if len(fields) < 2:
            raise ValueError(
                f"{path}:{lineno}: a token line needs at least a word and a tag, got {quoted(line)}"
            )
        if len(fields) > MAX_COLUMNS:  # the same verdict on the first token line as on any
            raise ValueError(
                f"{path}:{lineno}: {len(fields):,} columns, more than a CoNLL token line has "
                f"(at most {MAX_COLUMNS}: one token per line, its tag last): {quoted(line)}"
            )
        if columns is None:
            columns = len(fields)
        elif len(fields) != columns:
            raise ValueError(
                f"{path}:{lineno}: {len(fields)} columns, but the file's first token line has "
                f"{columns}: {quoted(line)}"
            )
        tag = fields[-1]
        if tag != "O" and not (len(tag) > 2 and tag[:2] in ("B-", "I-")):
            check_tag(path, lineno, tag)
        if not tokens:
            first = lineno
        tokens.append(fields[0])
        tags.append(tag)
    if tokens:
        yield done()


def check_labels_known(train: ConllFile, other: ConllFile, allow_unseen: bool = False) -> list[str]:
    """Entity types of ``other`` that ``train`` never has: an error, or a warning when
    ``allow_unseen`` (then returned for the caller)."""
    return _check_known(
        train.entity_types(), other.path, other.entity_types(), allow_unseen, "entity types"
    )


def _task_data(path: Path, unlabeled: bool, encoding: str | None) -> TaskData:
    cf = read_conll(path, encoding)
    tags = None if unlabeled else [s.tags for s in cf]
    return TaskData(
        path, "conll", "token", [s.tokens for s in cf], None, tags, [s.line for s in cf], cf
    )


def _rows(path: Path, unlabeled: bool, encoding: str | None):
    for s in iter_conll(path, encoding):
        yield s.line, s.tokens, None, (None if unlabeled else s.tags)


register_format(TaskFormat("conll", "token", _task_data, _rows))
