"""XNLI TSV reader: ``premise<TAB>hypothesis<TAB>label`` rows, no header, no quoting (fields may
hold ``"``), LF or CRLF line ends. ``contradictory`` is normalised to ``contradiction``.
"""

from __future__ import annotations

from pathlib import Path

from xlt_engine.data.examples import (
    BLANK,
    Example,
    TextDataset,
    decode_text,
    quoted,
    read_bytes,
    split_lines,
)
from xlt_engine.data.formats import sequence_format

NLI_LABELS = ("entailment", "neutral", "contradiction")
_ALIASES = {"contradictory": "contradiction"}


def read_xnli(path: str | Path, unlabeled: bool = False) -> TextDataset:
    """Read an XNLI TSV into sentence-pair examples (``text`` premise, ``text_pair``
    hypothesis). ``unlabeled``: rows may have two columns and labels are dropped."""
    path = Path(path)
    text = decode_text(path, read_bytes(path, "an XNLI TSV file"))
    examples: list[Example] = []
    for lineno, line in enumerate(split_lines(text, path), start=1):
        if not line.strip(BLANK):
            continue
        fields = line.split("\t")
        if len(fields) != 3 and not (unlabeled and len(fields) == 2):
            raise ValueError(
                f"{path}:{lineno}: {len(fields)} tab-separated fields, expected 3 "
                "(premise, hypothesis, label)"
            )
        premise, hypothesis = fields[0].strip(BLANK), fields[1].strip(BLANK)
        if not premise or not hypothesis:
            raise ValueError(f"{path}:{lineno}: empty premise or hypothesis")
        if unlabeled:
            examples.append(Example(premise, None, lineno, hypothesis))
            continue
        label = fields[2].strip(BLANK)
        label = _ALIASES.get(label, label)
        if label not in NLI_LABELS:
            raise ValueError(
                f"{path}:{lineno}: label {quoted(fields[2])} is not one of {', '.join(NLI_LABELS)}"
            )
        examples.append(Example(premise, label, lineno, hypothesis))
    if not examples:
        raise ValueError(f"{path}: no examples (only blank lines)")
    return TextDataset(path, examples)


sequence_format("xnli", lambda path, unlabeled: read_xnli(path, unlabeled=unlabeled))
