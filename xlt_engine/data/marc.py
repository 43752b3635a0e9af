"""MARC (Multilingual Amazon Reviews Corpus) CSV reader: header ``<index>,review_body,stars``.

Review bodies hold commas, quotes and newlines, so the file goes through the ``csv`` module
(RFC 4180 quoting); a record's line is the physical line where it starts. Stars (1-5) map to a
label by a rule: by default 1-2 negative, 4-5 positive, 3 dropped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

from xlt_engine.data.examples import (
    BLANK,
    Example,
    TextDataset,
    check_cr_only,
    decode_text,
    parse_stars,
    read_bytes,
)
from xlt_engine.data.formats import sequence_format
from xlt_engine.inputs import DuplicateKeyError


def stars_label(stars: int) -> str | None:
    """The binary MARC rule: 1-2 negative, 4-5 positive, 3 dropped."""
    if stars >= 4:
        return "positive"
    if stars <= 2:
        return "negative"
    return None


def read_marc(
    path: str | Path,
    label_rule: Callable[[int], str | None] = stars_label,
    text_column: str = "review_body",
    label_column: str = "stars",
    unlabeled: bool = False,
) -> TextDataset:
    """Read a MARC CSV into examples; ``label_rule`` maps stars to a label or None (dropped).
    ``unlabeled``: keep every row with ``label=None``."""
    path = Path(path)
    text = decode_text(path, read_bytes(path, "a MARC CSV file"))
    check_cr_only(text, path)
    f = io.StringIO(text, newline="")
    # a field may be as long as the file (csv's default limit, 131,072 characters, rejected
    # valid long reviews); the file is in memory already, so nothing larger can be asked for
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(f, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{path}: no CSV header (the file holds only blank lines)") from None
    except csv.Error as err:
        raise ValueError(f"{path}:1: malformed CSV header ({err})") from None
    missing = [c for c in (text_column, label_column) if c not in header]
    if missing:
        raise ValueError(f"{path}:1: header {header} lacks the column(s) {missing}")
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:  # any column: a reader keyed by name would silently take one of them
        raise DuplicateKeyError(
            f"{path}:1: header {header[:8]} names the column(s) {twice} more than once: which "
            "one to read is ambiguous"
        )
    ti, li = header.index(text_column), header.index(label_column)
    examples: list[Example] = []
    dropped = 0
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise ValueError(f"{path}:{start}: malformed CSV record ({err})") from None
        line, start = start, reader.line_num + 1
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{path}:{line}: {len(row)} fields, the header has {len(header)}: {row[:3]}..."
            )
        body = row[ti].strip(BLANK)
        if unlabeled:
            examples.append(Example(body, None, line))
            continue
        raw = row[li].strip(BLANK)
        stars = parse_stars(raw, int, f"{path}:{line}", label_column)
        label = label_rule(stars)
        if label is None:
            dropped += 1
            continue
        if not body:
            raise ValueError(f"{path}:{line}: empty {text_column}")
        examples.append(Example(body, label, line))
    if not examples:
        raise ValueError(f"{path}: no reviews kept ({dropped} dropped by the label rule)")
    return TextDataset(path, examples, dropped)


sequence_format("marc", lambda path, unlabeled: read_marc(path, unlabeled=unlabeled))
