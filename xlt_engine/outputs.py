"""Outputs: a command never replaces a file or folder it did not write. Each folder the engine
writes into holds a ledger (``LEDGER``) of what it wrote there and by which command; a command
claims a path (``claim_output``) before writing it and records it after (``record_output``)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xlt_engine.fileio import atomic_write_text, file_sha256, resolved_path
from xlt_engine.inputs import read_json

LEDGER = ".xlt-engine-outputs.json"  # in a folder: what the engine wrote there, by which command

# the commands that write for a user, each claiming its outputs (``claim_output(by=...)``): the
# hostile-output matrix (tests/engine/experiment/test_writers.py) crosses each with every
# target; a writer not registered here cannot claim a path
BUILTIN_WRITERS = {
    "predict": "file",  # run --stage predict
    "run": "file",  # the tables of run --stage all and ablate
    "report": "file",
    "bench": "file",
    "corpus": "file",
    "xnli-parallel": "file",
    "export": "folder",
    "init": "folder",
    "quickstart": "folder",
}
WRITERS = dict(BUILTIN_WRITERS)  # and the stages of one's own that claim files (registry)


def register_writer(name: str, kind: str) -> None:
    """Add a command (a stage of one's own with ``claims``) that writes a ``kind`` ("file" or
    "folder") for a user through ``claim_output``."""
    if kind not in ("file", "folder"):
        raise ValueError(f"register_writer: kind must be 'file' or 'folder', got {kind!r}")
    WRITERS.setdefault(name, kind)


def unregister_writer(name: str) -> None:
    """Remove a stage of one's own from the writers (never a built-in one)."""
    if name not in BUILTIN_WRITERS:
        WRITERS.pop(name, None)


def _ledger(folder: Path) -> dict:
    try:
        doc = read_json(folder / LEDGER)
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


EDGE = 1 << 16  # a cheap digest hashes a file's first and last 64 KiB


def cheap_digest(path: str | Path) -> str:
    """What the ledger keeps of an output to know it is still what the engine wrote: for a
    file, its size, mtime and a sha256 of its first and last 64 KiB (the whole of a smaller
    file; any edit moves the mtime, and a multi-GB checkpoint costs two reads); for a folder,
    a sha256 over every entry below it (relative name, kind, size, mtime; links not followed)."""
    path = Path(path)
    st = path.lstat()
    if stat.S_ISDIR(st.st_mode):
        h = hashlib.sha256()
        for dirpath, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(
                files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]
            ):
                p = os.path.join(dirpath, name)
                s = os.lstat(p)
                h.update(
                    f"{os.path.relpath(p, path)}\0{s.st_mode}\0{s.st_size}\0{s.st_mtime_ns}\n".encode()
                )
        return "tree:" + h.hexdigest()
    if not stat.S_ISREG(st.st_mode):
        return f"other:{st.st_mode}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(EDGE))
        if st.st_size > EDGE:
            f.seek(max(EDGE, st.st_size - EDGE))
            h.update(f.read(EDGE))
    return f"file:{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()}"


def engine_wrote(path: str | Path, by: str) -> bool:
    """``path`` is a file that the command ``by`` wrote and nobody changed since (its folder's
    ledger holds its name, that command and its ``cheap_digest``), or a folder that ``by`` made
    whose every entry is one it wrote and still holds what it wrote (the folder's own ledger: a
    digest per entry)."""
    path = Path(path)
    if path.is_symlink():
        return False
    if path.is_dir():
        mine = _ledger(path).get("folder")
        if not isinstance(mine, dict) or mine.get("by") != by:
            return False
        entries = mine.get("entries")
        if not isinstance(entries, dict):  # a ledger of names alone (before digests): unknown
            return False
        for p in path.iterdir():
            if p.name != LEDGER and entries.get(p.name) != cheap_digest(p):
                return False
        return True
    entry = _ledger(path.parent).get("files", {}).get(path.name)
    if not isinstance(entry, dict) or entry.get("by") != by or not path.is_file():
        return False
    if "digest" in entry:
        return entry["digest"] == cheap_digest(path)
    return entry.get("size") == path.stat().st_size and entry.get("sha256") == file_sha256(path)


def _same_file(a: Path, b: Path) -> bool:
    """``a`` is a hard link to the file ``b`` or to a file below the folder ``b`` (searched
    only when ``a`` has more than one name)."""
    try:
        st = a.stat()
        if not a.is_file() or st.st_nlink < 2:
            return False
        if b.is_file():
            return os.path.samefile(a, b)
        for dirpath, _dirs, files in os.walk(b):
            for name in files:
                other = os.stat(os.path.join(dirpath, name))
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    return True
    except OSError:
        pass
    return False


def check_not_read(path: str | Path, what: str, reads, holds: bool = True) -> None:
    """``path`` (where a command writes) is none of ``reads`` (what it reads: files, folders)
    nor inside one; with ``holds``, no read path is inside it either (a folder it replaces)."""
    path = Path(path)
    real = resolved_path(path, what)
    for r in reads:
        r = Path(r)
        mine = resolved_path(r, what)
        if _inside(real, mine) or _same_file(real, mine):
            where = (
                "is"
                if real == mine
                else "is inside"
                if _inside(real, mine)
                else "is a hard link to"
            )
            raise ValueError(
                f"{what} {path}: {where} {r}, which this command reads; choose another path"
            )
        if holds and _inside(mine, real):
            raise ValueError(
                f"{what} {path}: holds {r}, which this command reads; choose another folder"
            )


def claim_output(
    path: str | Path,
    what: str,
    by: str,
    *,
    folder: bool = False,
    reads=(),
    overwrite: bool = False,
    remedy: str = "choose another path, or pass --overwrite",
) -> Path:
    """The one rule for the paths the engine writes for a user (predictions, reports, tables,
    exported models, the quickstart's folder): a new path, or one the command ``by`` wrote
    earlier and nobody changed since (``engine_wrote``), or any other existing one with
    ``overwrite``; never a path this command reads (``reads``: files, and folders whose every
    file it may read, such as a model folder), nor a folder holding one. A ``ValueError``
    naming ``what`` (e.g. ``predict.output``), the path and what to do (``remedy``), otherwise."""
    path = Path(path)
    if by not in WRITERS:  # a bug: every writer is registered (and so crossed by the matrix)
        raise AssertionError(f"claim_output: {by!r} is not a registered writer (outputs.WRITERS)")
    if path.name == LEDGER:
        raise ValueError(
            f"{what} {path}: the engine's own record of its outputs; choose another name"
        )
    check_not_read(path, what, reads, folder)
    if not path.exists() and not path.is_symlink():
        return path
    mode = path.lstat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        raise ValueError(  # a FIFO, socket or device: never replaced, not even with --overwrite
            f"{what} {path}: exists and is not a regular file or folder (a FIFO, socket or "
            "device); choose another path"
        )
    if path.is_symlink():
        kind = "a symbolic link"
    elif folder and not path.is_dir():
        raise ValueError(f"{what} {path}: exists and is not a folder; choose another path")
    elif not folder and path.is_dir():
        raise ValueError(f"{what} {path}: is a folder; name a file")
    elif folder and not any(p.name != LEDGER for p in path.iterdir()):
        return path  # an empty folder
    elif engine_wrote(path, by):
        return path
    else:
        kind = "a folder of files" if folder else "a file"
    if overwrite:
        return path
    if _recorded_by(path) == by:
        raise ValueError(
            f"{what} {path}: exists and was changed since xlt-engine {by} wrote it (an edit, "
            f"or an entry added); refusing to replace it: {remedy}"
        )
    raise ValueError(
        f"{what} {path}: exists and is {kind} that xlt-engine {by} did not write; "
        f"refusing to replace it: {remedy}"
    )


def _recorded_by(path: Path) -> str | None:
    """The command a ledger names as the writer of ``path`` (whatever it holds now), or None."""
    if path.is_dir() and not path.is_symlink():
        mine = _ledger(path).get("folder")
        return mine.get("by") if isinstance(mine, dict) else None
    entry = _ledger(path.parent).get("files", {}).get(path.name)
    return entry.get("by") if isinstance(entry, dict) else None


def record_output(path: str | Path, by: str, entries=None) -> None:
    """Note that the command ``by`` wrote ``path``: a file in its folder's ledger (name,
    ``cheap_digest``), or, with ``entries`` (the names it made there), a folder in its own
    ledger (a digest per entry; the files recorded there by other commands stay). Call it after
    the output is in place; a folder's ledger can also be written into its temporary folder
    before the swap (``path`` that folder: a rename keeps every digest)."""
    path = Path(path)
    folder = path if entries is not None else path.parent
    with _ledger_lock(folder):  # read, change, write: another process's entry is never lost
        ledger = _ledger(folder)
        if entries is not None:
            ledger["folder"] = {
                "by": by,
                "entries": {n: cheap_digest(path / n) for n in sorted(entries) if n != LEDGER},
            }
        else:
            files = ledger.get("files") if isinstance(ledger.get("files"), dict) else {}
            files[path.name] = {"by": by, "digest": cheap_digest(path)}
            ledger["files"] = files
        atomic_write_text(folder / LEDGER, json.dumps(ledger, indent=2) + "\n")


@contextmanager
def _ledger_lock(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the folder itself while its ledger is read and rewritten: the
    processes of ``ablate --jobs`` record their tables in one ``seed-<s>/`` folder at once (a
    lock on the ledger file would not do: the atomic rewrite replaces that file)."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
