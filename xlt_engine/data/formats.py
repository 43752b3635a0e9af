"""Task-file formats, registered like stages and rules: a format is a name, the kind of task its
files hold (``token`` or ``sequence`` classification) and a reader into ``TaskData``; a reader
that can stream a file (memory: one example) gives ``stream`` too. The built-ins register in
their reader modules (``conll``, ``cls10``, ``marc``, ``xnli``, ``text``: jsonl and tsv); a format of
one's own is one module that calls ``register_format``, named in a config's ``plugins``::

    from xlt_engine.data.formats import TaskFormat, register_format, sequence_data

    def read(path, unlabeled, encoding):
        ...  # a TextDataset of the file's examples
        return sequence_data(path, ds, unlabeled)

    register_format(TaskFormat("mine", "sequence", read))
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["token", "sequence"]
Format = str  # a registered format's name (``format_names()``)


@dataclass
class TaskData:
    """The examples of one file. token: ``inputs`` are word lists and ``labels`` tag lists;
    sequence: ``inputs`` are texts (``pairs`` the second texts) and ``labels`` strings.
    ``labels`` is None for unlabeled data."""

    path: Path
    format: str
    kind: str
    inputs: list
    pairs: list[str] | None
    labels: list | None
    lines: list[int]  # 1-based line of each example in its file
    conll: Any = None  # a CoNLL file's sentences (``conll.ConllFile``: predict writes them back)

    def __len__(self) -> int:
        return len(self.inputs)

    def label_counts(self) -> dict[str, int]:
        """How often each label occurs (per word for token tasks), most frequent first."""
        if self.labels is None:
            return {}
        flat = [t for tags in self.labels for t in tags] if self.kind == "token" else self.labels
        return dict(Counter(flat).most_common())

    def label_set(self) -> list[str]:
        return label_set([self])

    def plain_lines(self) -> list[str]:
        """Each example as one line of plain text (what btf reads of a task file): a sentence's
        words joined by spaces, or a text and its pair on one line, whitespace collapsed."""
        if self.kind == "token":
            return [" ".join(words) for words in self.inputs]
        pairs = self.pairs or [None] * len(self)
        return [
            " ".join((t + " " + (p or "")).split()) for t, p in zip(self.inputs, pairs, strict=True)
        ]


def label_set(parts: Sequence[TaskData]) -> list[str]:
    """The labels of one or more files of one kind, in the models' order: for tokens O, then
    B-X and I-X for every entity type X seen; for sequences sorted."""
    seen = [x for d in parts if d.labels is not None for x in d.labels]
    if parts and parts[0].kind == "token":
        types = sorted({t[2:] for tags in seen for t in tags if t != "O"})
        return ["O"] + [f"{p}-{t}" for t in types for p in "BI"] if seen else []
    return sorted(set(seen))


Row = tuple[int, Any, "str | None", Any]  # (line, input, pair, label or None)


@dataclass(frozen=True)
class TaskFormat:
    name: str
    kind: Kind
    read: Callable[[Path, bool, str | None], TaskData]  # (path, unlabeled, encoding)
    stream: Callable[[Path, bool, str | None], Iterator[Row]] | None = None  # the same rows,
    # one at a time (packed stores of large files); None: ``read`` whole

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"format name must be an identifier, got {self.name!r}")
        if self.kind not in ("token", "sequence"):
            raise ValueError(
                f"format {self.name}: kind must be token or sequence, got {self.kind!r}"
            )


_FORMATS: dict[str, TaskFormat] = {}


def register_format(fmt: TaskFormat, replace: bool = False) -> TaskFormat:
    """Make ``fmt`` readable by every stage (``data.format``, a stage's ``format``)."""
    if fmt.name in _FORMATS and not replace and _FORMATS[fmt.name] != fmt:
        raise ValueError(f"format {fmt.name!r} is registered already (replace=True replaces it)")
    _FORMATS[fmt.name] = fmt
    return fmt


def unregister_format(name: str) -> None:
    _FORMATS.pop(name, None)


def registered_modules() -> set[str]:
    """The modules whose code the registered formats run (their readers'), for fingerprints."""
    return {f.__module__ for fmt in _FORMATS.values() for f in (fmt.read, fmt.stream) if f}


def format_names() -> tuple[str, ...]:
    return tuple(_FORMATS)


def get_format(name: str) -> TaskFormat:
    """The registered format ``name``; a ValueError naming the choices otherwise."""
    if name not in _FORMATS:
        raise ValueError(f"format must be one of {format_names()}, got {name!r}")
    return _FORMATS[name]


def sequence_data(path: Path, name: str, ds, unlabeled: bool) -> TaskData:
    """A sequence format's ``TextDataset`` as ``TaskData``: texts, pairs (all or none), labels
    (every example has one unless ``unlabeled``), each example's line."""
    if not len(ds):
        raise ValueError(f"{path}: no examples")
    pairs = [e.text_pair for e in ds]
    if all(p is None for p in pairs):
        pairs = None
    elif any(p is None for p in pairs):
        line = next(e.line for e in ds if e.text_pair is None)
        raise ValueError(f"{path}:{line}: a text without a pair in a file of pairs")
    labels = None if unlabeled else ds.labels
    if labels is not None and any(lab is None for lab in labels):
        line = next(e.line for e in ds if e.label is None)
        raise ValueError(f"{path}:{line}: example without a label")
    return TaskData(path, name, "sequence", ds.texts, pairs, labels, [e.line for e in ds])


def sequence_format(name: str, read_dataset: Callable[[Path, bool], Any]) -> TaskFormat:
    """A sequence format whose reader gives a ``TextDataset`` (``read_dataset(path,
    unlabeled)``), registered: the built-ins' CLS-10, MARC, XNLI, JSONL and TSV."""

    def read(path: Path, unlabeled: bool, _encoding: str | None) -> TaskData:
        return sequence_data(path, name, read_dataset(path, unlabeled), unlabeled)

    return register_format(TaskFormat(name, "sequence", read))
