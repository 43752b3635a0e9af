"""Labeled text examples shared by the classification readers (CLS-10, MARC, XNLI, JSONL/TSV),
and the file helpers they use: strict UTF-8 decoding whose errors name the file and line, and
the check that a test file holds no label the training file lacks.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xlt_engine import inputs
from xlt_engine.inputs import check_regular


@dataclass(frozen=True)
class Example:
    """One labeled (or unlabeled: ``label=None``) text; ``text_pair`` for sentence pairs."""

    text: str
    label: str | None
    line: int  # 1-based line where the example starts in its file
    text_pair: str | None = None


@dataclass
class TextDataset:
    """The examples of one file, and how many were dropped by the label rule (e.g. 3 stars)."""

    path: Path
    examples: list[Example] = field(repr=False)
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def __getitem__(self, i):
        return self.examples[i]

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    @property
    def labels(self) -> list[str | None]:
        return [e.label for e in self.examples]

    def label_set(self) -> list[str]:
        return sorted({e.label for e in self.examples if e.label is not None})

    def label_counts(self) -> Counter:
        return Counter(e.label for e in self.examples)


QUOTED_MAX = 200  # characters of the offending input an error message shows


def quoted(value, limit: int = QUOTED_MAX) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length said: an error names
    what it found without echoing a two-million-character line."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(str(value)):,} characters)"


def read_bytes(path: Path, what: str, allow_empty: bool = False) -> bytes:
    """The whole file; a missing file, a folder or (unless ``allow_empty``) an empty file is an
    error naming it."""
    try:
        check_regular(path, what)
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not {what}") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror or err})") from None
    if not allow_empty and not data.removeprefix(b"\xef\xbb\xbf").strip():
        raise ValueError(f"{path}: the file is empty (no data, at most a byte-order mark)")
    return data


def check_file(path: Path, what: str) -> None:
    """A missing file, a folder or a zero-byte file is an error naming it (without reading it)."""
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not {what}")
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    check_regular(path)  # a FIFO or device would block or never end
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty")


def decode_text(path: Path, data: bytes, encoding: str = "utf-8", hint: str = "") -> str:
    """Bytes -> text (for UTF-8 a BOM is dropped); a bad byte is an error naming the line and
    byte, followed by ``hint``."""
    codec = encoding
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        codec = "utf-8-sig"
    try:
        text = data.decode(codec)
    except LookupError:
        raise ValueError(f"{path}: unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}:{line}: byte 0x{data[err.start]:02x} is not valid {encoding} "
            f"({err.reason}){hint}"
        ) from None
    _no_nul(path, text, 0)
    return text


COLUMN_SEPARATOR = re.compile(r"[ \t]+")
# what is stripped from the edges of a field or tested for a blank line: spaces, tabs and a
# line end's CR; every other character (\x85, U+2028, \xa0, ...) is text
BLANK = " \t\r"


def end_of_line(line: str) -> str:
    """``line`` without its end: one ``\n``, then one ``\r`` (CRLF files)."""
    line = line.removesuffix("\n")
    return line.removesuffix("\r")


def split_lines(text: str, path: Path) -> list[str]:
    """The lines of a whole decoded file. Only ``\n`` (and ``\r\n``) end a line: the other
    characters Python's ``splitlines()`` breaks on (``\x85``, ``\u2028``, ``\x0b``, ``\x0c``,
    ``\x1c``-``\x1e``, ...) belong to the line's text, so sentences and line numbers are what
    the file says. A file whose lines end in a bare ``\r`` is an error saying so."""
    check_cr_only(text, path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line end
    return [end_of_line(x) for x in lines]


def check_cr_only(text: str, path: Path) -> None:
    """``text`` (a whole file, or its first line when streaming) has no ``\n`` but a ``\r``
    before its end: a file whose lines end in a bare CR, which would read as one line."""
    if "\n" not in text and "\r" in text.removesuffix("\r"):
        raise ValueError(
            f"{path}: lines end in a bare carriage return (CR, old Mac style); convert the file "
            "to \\n line ends"
        )


def split_columns(line: str) -> list[str]:
    """The columns of a CoNLL token line: split on spaces and tabs only (other whitespace,
    e.g. ``\xa0`` or ``\u2028``, is part of a token)."""
    stripped = line.strip(" \t")
    return COLUMN_SEPARATOR.split(stripped) if stripped else []


def iter_lines(
    path: str | Path, encoding: str = "utf-8", block: int = 1 << 22
) -> Iterator[tuple[int, str]]:
    """Stream ``(line number, line without its end)`` from a text file of any size; memory holds
    one ``block`` of bytes (or one longer line). Bad bytes are an error naming the file, line
    and column. Lines end at the byte ``\n`` (as with UTF-8 and the single-byte encodings)."""
    path = Path(path)
    try:
        check_regular(path)
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below; open errors named here)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not a text file") from None
    with f:
        lineno, rest = 0, b""
        while data := f.read(block):
            data = rest + data
            cut = data.rfind(b"\n") + 1
            data, rest = data[:cut], data[cut:]
            _check_line_lengths(path, data, rest, lineno)
            if data:
                yield from _block_lines(path, data, lineno, encoding)
                lineno += data.count(b"\n")
        if rest:
            yield from _block_lines(path, rest, lineno, encoding)


def _check_line_lengths(path: Path, data: bytes, rest: bytes, lineno: int) -> None:
    """No line of a streamed file is longer than ``inputs.MAX_LINE`` bytes (a file with no line
    end would otherwise be read whole into memory)."""
    limit = inputs.MAX_LINE
    if len(rest) > limit:
        at = lineno + data.count(b"\n") + 1
        raise ValueError(
            f"{path}:{at}: a line over the {limit:,} bytes a line may hold (is it a text file?)"
        )
    if len(data) > limit:
        for i, line in enumerate(data.split(b"\n")):
            if len(line) > limit:
                raise ValueError(
                    f"{path}:{lineno + i + 1}: a line over the {limit:,} bytes a line may hold"
                )


def _no_nul(path: Path, text: str, lineno: int) -> None:
    at = text.find("\x00")
    if at >= 0:
        raise ValueError(
            f"{path}:{lineno + text.count(chr(10), 0, at) + 1}: a NUL character: not a text file"
        )


def _block_lines(path: Path, data: bytes, lineno: int, encoding: str) -> Iterator[tuple[int, str]]:
    """The lines of ``data`` (whole lines; the first is line ``lineno + 1``)."""
    if lineno == 0 and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        start = data.rfind(b"\n", 0, err.start) + 1
        line = lineno + data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}:{line}: byte "
            f"0x{data[err.start]:02x} at column {err.start - start + 1} is not valid "
            f"{encoding} ({err.reason})"
        ) from None
    _no_nul(path, text, lineno)
    lines = text.split("\n")
    if lineno == 0:
        check_cr_only(lines[0] + ("\n" if len(lines) > 1 else ""), path)
    if lines[-1] == "":
        lines.pop()  # the block's last line end
    for k, line in enumerate(lines, start=lineno + 1):
        yield k, line[:-1] if line.endswith("\r") else line


def check_labels_known(
    train_labels, path: Path | str, other_labels, allow_unseen: bool = False, what: str = "labels"
) -> list[str]:
    """Labels of ``other_labels`` (a file at ``path``) absent from ``train_labels``. An error
    naming them and the file, or a warning when ``allow_unseen``. Returns them sorted."""
    unseen = sorted(set(other_labels) - set(train_labels) - {None})
    if unseen:
        msg = (
            f"{path}: {what} {', '.join(map(str, unseen))} never occur in the training data; "
            "a model trained there cannot predict them"
        )
        if not allow_unseen:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    return unseen


def parse_stars(raw: str, kind: type, where: str, name: str) -> float | int:
    """A 1-5 star rating read as ``kind`` (float for CLS-10, int for MARC); ``where`` is
    ``path:line`` and ``name`` the field, for the error."""
    try:
        stars = kind(raw)
    except ValueError:
        what = "a number" if kind is float else "an integer"
        raise ValueError(f"{where}: {name} {quoted(raw)} is not {what}") from None
    if not 1 <= stars <= 5:
        shown = repr(raw) if kind is float else stars  # as each reader has always said it
        raise ValueError(f"{where}: {name} {shown} is outside 1-5")
    return stars
