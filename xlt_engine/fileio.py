"""Atomic file writing: a temporary file in the same folder, fsync, then rename, so a reader
(or a crash) never sees a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_results(folder: str | Path, stem: str, data: dict, table: str, echo=None) -> None:
    """``<stem>.json`` (``data``) and ``<stem>.md`` (``table``, Markdown) in ``folder``, each
    written atomically; ``echo`` (if given) prints the table."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{stem}.json", json.dumps(data, indent=2) + "\n")
    atomic_write_text(folder / f"{stem}.md", table)
    if echo:
        echo(table.rstrip())
