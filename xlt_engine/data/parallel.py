"""Parallel files for paper 003's language adaptation: labeled source items and their
translations (the paper's D^bi).

Format: JSONL, one row per (item, language)::

    {"id": "17", "text": "...", "text_pair": "...", "label": "entailment",
     "language": "de", "translation": "...", "translation_pair": "..."}

``text_pair`` / ``translation_pair`` only for sentence pairs (both or neither). Rows with the
same ``id`` are one source item: they must agree on ``text``, ``text_pair`` and ``label``, and
name each language once. ``build_xnli_parallel`` writes one from XNLI's dev files, whose rows are
parallel across the 15 languages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlt_engine.data.examples import check_file, iter_lines, quoted
from xlt_engine.data.xnli import read_xnli
from xlt_engine.fileio import atomic_write_text
from xlt_engine.inputs import parse_json

_KEYS = ("id", "text", "label", "language", "translation")


@dataclass(frozen=True)
class ParallelItem:
    """A source item and its translations, ``(language, text, text_pair)`` each."""

    id: str
    text: str
    text_pair: str | None
    label: str
    translations: tuple[tuple[str, str, str | None], ...]


def read_parallel(path: str | Path) -> list[ParallelItem]:
    """The items of a parallel file, in the order of their first row."""
    path = Path(path)
    check_file(path, "a parallel file")
    items: dict[str, dict] = {}
    where: dict[str, int] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        at = f"{path}:{lineno}"
        try:
            row = parse_json(line, path, lineno)
        except json.JSONDecodeError as err:
            raise ValueError(f"{at}: invalid JSON ({err.reason}, column {err.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{at}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in _KEYS if k not in row]
        if missing:
            raise ValueError(f"{at}: key(s) {missing} missing")
        for k in (*_KEYS, "text_pair", "translation_pair"):
            if k in row and not isinstance(row[k], str):
                raise ValueError(f"{at}: key {quoted(k)} must be a string, got {quoted(row[k])}")
        if ("text_pair" in row) != ("translation_pair" in row):
            raise ValueError(f"{at}: text_pair and translation_pair go together")
        key = row["id"]
        source = (row["text"], row.get("text_pair"), row["label"])
        item = items.setdefault(key, {"source": source, "translations": {}})
        where.setdefault(key, lineno)
        if item["source"] != source:
            raise ValueError(
                f"{at}: id {quoted(key)} has another text, text_pair or label than on line {where[key]}"
            )
        lang = row["language"]
        if lang in item["translations"]:
            raise ValueError(f"{at}: id {quoted(key)} has a second {quoted(lang)} translation")
        item["translations"][lang] = (row["translation"], row.get("translation_pair"))
    if not items:
        raise ValueError(f"{path}: no rows")
    return [
        ParallelItem(
            key, *it["source"], tuple((lang, t, p) for lang, (t, p) in it["translations"].items())
        )
        for key, it in items.items()
    ]


def build_xnli_parallel(
    xnli_dir: str | Path, source: str, languages: list[str], n: int, seed: int, out: str | Path
) -> int:
    """Write the parallel file of ``n`` items of ``source``'s XNLI dev file (drawn from
    ``seed``) with their rows of each of ``languages``' dev files; returns the rows written."""
    xnli_dir = Path(xnli_dir)
    if source in languages:
        raise ValueError(f"languages: {source!r} is the source language")
    if not languages:
        raise ValueError("languages: give at least one target language")
    src = read_xnli(xnli_dir / f"dev-{source}.tsv")
    others = {lang: read_xnli(xnli_dir / f"dev-{lang}.tsv") for lang in languages}
    for lang, ds in others.items():
        if len(ds) != len(src) or ds.labels != src.labels:
            raise ValueError(
                f"{xnli_dir / f'dev-{lang}.tsv'}: not parallel to dev-{source}.tsv "
                f"({len(ds)} rows against {len(src)}, or other labels)"
            )
    if not 1 <= n <= len(src):
        raise ValueError(f"n must be in [1, {len(src)}] (the rows of dev-{source}.tsv), got {n}")
    rows = np.sort(np.random.default_rng(seed).choice(len(src), n, replace=False))
    lines = []
    for i in rows.tolist():
        s = src[i]
        for lang in languages:
            t = others[lang][i]
            rec = {
                "id": str(i),
                "text": s.text,
                "text_pair": s.text_pair,
                "label": s.label,
                "language": lang,
                "translation": t.text,
                "translation_pair": t.text_pair,
            }
            lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    atomic_write_text(out, "".join(lines))
    return len(lines)
