"""Webis-CLS-10 reader: Amazon reviews in ``.review`` XML (``<items><item>...</item></items>``).

Each item has a ``rating`` (1.0-5.0) and a ``text``, plus a ``summary`` (English; German and
French have it too) and/or a ``title`` (de/fr/jp: the product title). The example text is the
first present head field (``summary``, else ``title``, by default) and the review text, joined
by a newline (an item may have an empty text when its head is there: jp/books/test has one).
The label rule maps the rating to a label or to None (dropped): by default
``> 3`` positive, ``< 3`` negative, 3 dropped.

Fields are stripped of XML whitespace (space, tab, CR, LF) only. Line ends follow XML: LF, CRLF
and a bare CR all end a line (the parser normalises them), so a CR-only file is valid here.

Parsed with expat as a stream, so every error (malformed XML, a missing or non-numeric rating, no
text) names the file and the line of the item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from xml.parsers import expat

from xlt_engine.data.examples import Example, TextDataset, parse_stars, read_bytes
from xlt_engine.data.formats import sequence_format
from xlt_engine.inputs import DuplicateKeyError

CLS_LABELS = ("negative", "positive")
# XML's own whitespace (the S production of XML 1.0): what is stripped from a field's edges; any
# other character there (\xa0, \x85, U+2028, ...) is part of the review's text
XML_SPACE = " \t\r\n"


def rating_label(rating: float) -> str | None:
    """The CLS-10 rule: > 3 positive, < 3 negative, 3 dropped."""
    if rating > 3:
        return "positive"
    if rating < 3:
        return "negative"
    return None


def _parse_items(path: Path, data: bytes) -> list[tuple[int, dict[str, str]]]:
    """The ``<item>``s of a CLS-10 file as (line, {field: text}), parsed with expat; a document
    type or entity declaration is refused (nothing a file declares is fetched or expanded)."""
    items: list[tuple[int, dict[str, str]]] = []
    fields: dict[str, str] = {}
    parts: list[str] = []
    state = {"depth": 0, "item_line": 0, "field": None}
    parser = expat.ParserCreate()

    def start(name, _attrs):
        state["depth"] += 1
        depth = state["depth"]
        if depth == 2:
            if name != "item":
                raise ValueError(
                    f"{path}:{parser.CurrentLineNumber}: expected <item>, found <{name}>"
                )
            state["item_line"] = parser.CurrentLineNumber
            fields.clear()
        elif depth == 3:
            if name in fields:  # never "the last one wins"
                raise DuplicateKeyError(
                    f"{path}:{parser.CurrentLineNumber}: the <item> of line "
                    f"{state['item_line']} has a second <{name}>; keep one"
                )
            state["field"] = name
            parts.clear()

    def end(name):
        depth = state["depth"]
        if depth == 2:
            items.append((state["item_line"], dict(fields)))
        elif depth == 3:
            fields[name] = "".join(parts).strip(XML_SPACE)
            state["field"] = None
        state["depth"] -= 1

    def chars(text):
        if state["field"] is not None:
            parts.append(text)

    def refuse_dtd(name, *_rest):  # nothing a file declares is ever fetched, read or expanded
        raise ValueError(
            f"{path}:{parser.CurrentLineNumber}: a document type declaration (<!DOCTYPE {name}>) "
            "is not allowed in a CLS-10 file: its entities could pull in other files or expand "
            "without bound, and none are needed"
        )

    def refuse_entity(name, *_rest):
        raise ValueError(
            f"{path}:{parser.CurrentLineNumber}: entity declarations (<!ENTITY {name} ...>) are "
            "not allowed in a CLS-10 file"
        )

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_entity
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except expat.ExpatError as err:
        raise ValueError(
            f"{path}:{err.lineno}: malformed XML ({expat.ErrorString(err.code)}, "
            f"column {err.offset + 1})"
        ) from None
    return items


def read_cls10(
    path: str | Path,
    label_rule: Callable[[float], str | None] = rating_label,
    head_fields: Sequence[str] = ("summary", "title"),
    unlabeled: bool = False,
) -> TextDataset:
    """Read a CLS-10 ``.review`` file into examples labeled ``positive``/``negative``.

    ``label_rule``: rating -> label, or None to drop the item. ``head_fields``: the fields tried
    in order for the text's first line (empty tuple: review text only). ``unlabeled``: keep every
    item with ``label=None`` (the target-language train file used as unlabeled data); ratings
    are then still parsed but not required.
    """
    path = Path(path)
    items = _parse_items(path, read_bytes(path, "a CLS-10 .review file"))
    examples: list[Example] = []
    dropped = 0
    for line, item in items:
        text = item.get("text", "")
        head = next((item[f] for f in head_fields if item.get(f)), "")
        full = "\n".join(t for t in (head, text) if t)
        if not full:  # an empty <text> alone happens (one in jp/books/test): the head suffices
            raise ValueError(f"{path}:{line}: item has no <text> and no {'/'.join(head_fields)}")
        raw = item.get("rating")
        if raw is None:
            if unlabeled:
                examples.append(Example(full, None, line))
                continue
            raise ValueError(f"{path}:{line}: item has no <rating>")
        rating = parse_stars(raw, float, f"{path}:{line}", "rating")
        if unlabeled:
            examples.append(Example(full, None, line))
            continue
        label = label_rule(rating)
        if label is None:
            dropped += 1
            continue
        examples.append(Example(full, label, line))
    if not examples:
        raise ValueError(f"{path}: no reviews (no <item> kept out of {len(items)})")
    return TextDataset(path, examples, dropped)


sequence_format("cls10", lambda path, unlabeled: read_cls10(path, unlabeled=unlabeled))
