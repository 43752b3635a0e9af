"""Generic text readers: labeled JSONL / TSV (``text,label``, optionally ``text_pair``) and plain
text (one sentence or document per line) for unlabeled data.

``iter_text`` streams a plain-text file of any size; ``read_text`` collects it for small files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from xlt_engine.data.examples import BLANK, Example, TextDataset, check_file, iter_lines, quoted
from xlt_engine.data.formats import sequence_format
from xlt_engine.inputs import DuplicateKeyError, InputError, parse_json


def read_labeled(path: str | Path, format: str | None = None) -> TextDataset:
    """Read ``text,label`` examples from JSONL (objects with ``text``, ``label`` and optionally
    ``text_pair``) or TSV (``text<TAB>label`` or ``text<TAB>text_pair<TAB>label``; a first row
    ``text<TAB>label`` is a header). ``format``: ``jsonl`` or ``tsv``; None: from the suffix."""
    path = Path(path)
    if format is None:
        suffix = path.suffix.lower()
        format = {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv", ".txt": "tsv"}.get(suffix)
        if format is None:
            raise ValueError(f"{path}: cannot tell the format from {suffix!r}; pass jsonl or tsv")
    if format not in ("jsonl", "tsv"):
        raise ValueError(f"{path}: format {format!r} is not jsonl or tsv")
    check_file(path, "a labeled text file")
    examples: list[Example] = []
    for lineno, line in iter_lines(path):
        if not line.strip(BLANK):
            continue
        if format == "jsonl":
            examples.append(_jsonl_example(path, lineno, line))
            continue
        fields = line.split("\t")
        names = [f.strip(BLANK).lower() for f in fields]
        if lineno == 1 and [names[0], names[-1]] == ["text", "label"]:
            if len(set(names)) != len(names):
                raise DuplicateKeyError(f"{path}:1: the header names a column twice: {names}")
            continue
        if len(fields) not in (2, 3):
            raise ValueError(
                f"{path}:{lineno}: {len(fields)} tab-separated fields, expected text<TAB>label "
                "or text<TAB>text_pair<TAB>label"
            )
        label = fields[-1].strip(BLANK)
        if not label:
            raise ValueError(f"{path}:{lineno}: empty label")
        pair = fields[1] if len(fields) == 3 else None
        if not fields[0].strip(BLANK) or (pair is not None and not pair.strip(BLANK)):
            raise ValueError(
                f"{path}:{lineno}: empty {'text' if not fields[0].strip(BLANK) else 'text_pair'}"
            )
        examples.append(Example(fields[0], label, lineno, pair))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return TextDataset(path, examples)


def _jsonl_example(path: Path, lineno: int, line: str) -> Example:
    try:
        obj = parse_json(line, path, lineno)
    except (DuplicateKeyError, InputError):  # each names file and line already
        raise
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}:{lineno}: invalid JSON ({err.reason}, column {err.colno})"
        ) from None
    except ValueError as err:  # e.g. an integer of more than 4,300 digits
        raise ValueError(f"{path}:{lineno}: invalid JSON value ({err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    for key in ("text", "label"):
        if key not in obj:
            raise ValueError(f"{path}:{lineno}: key {key!r} is missing")
    text, label, pair = obj["text"], obj["label"], obj.get("text_pair")
    if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
        raise ValueError(f"{path}:{lineno}: key 'text' / 'text_pair' must be a string")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise ValueError(
            f"{path}:{lineno}: key 'label' must be a string or integer, got {quoted(label)}"
        )
    if not text.strip(BLANK) or (pair is not None and not pair.strip(BLANK)):
        raise ValueError(
            f"{path}:{lineno}: empty {'text' if not text.strip(BLANK) else 'text_pair'}"
        )
    return Example(text, str(label), lineno, pair)


def iter_text(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Stream ``(line number, text)`` for every non-blank line of a plain-text file, stripped of
    spaces and tabs (other separators, e.g. NEL or U+2028, are text)."""
    for lineno, line in iter_lines(path, encoding):
        line = line.strip(BLANK)
        if line:
            yield lineno, line


def read_text(path: str | Path, encoding: str = "utf-8") -> TextDataset:
    """Unlabeled examples, one per non-blank line. An empty file is an error."""
    path = Path(path)
    check_file(path, "a text file")
    examples = [Example(t, None, n) for n, t in iter_text(path, encoding)]
    if not examples:
        raise ValueError(f"{path}: no non-blank lines")
    return TextDataset(path, examples)


for _name in ("jsonl", "tsv"):  # labeled text files: read whole, labels or not
    sequence_format(_name, lambda path, _unlabeled, _f=_name: read_labeled(path, _f))
