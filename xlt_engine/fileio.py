"""Atomic file writing: a temporary file in the same folder, fsync, then rename, so a reader
(or a crash) never sees a half-written file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Write ``path`` through a temporary file beside it: on a clean exit the file is flushed,
    fsynced and renamed over ``path`` (and the folder fsynced); on an error it is removed and
    ``path`` is left as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Build the folder ``path`` in a temporary folder beside it: on a clean exit its files are
    fsynced and it replaces ``path`` (an existing ``path`` is moved aside first and put back if
    the rename fails); on an error the temporary folder is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rmdir(old)
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)  # put the previous folder back
            raise
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


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
