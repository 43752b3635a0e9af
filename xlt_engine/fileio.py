"""Atomic file writing: a temporary file in the same folder, fsync, then rename, so a reader
(or a crash) never sees a half-written file. Files and folders get the permissions ``open`` and
``mkdir`` would give them (0666 / 0777 less the umask), not the 0600 / 0700 of ``tempfile``."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from xlt_engine.inputs import read_safetensors_header


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and put back at once
    os.umask(mask)
    return mask


def temp_dir_beside(prefix: str, dir: str | Path) -> Path:
    """``tempfile.mkdtemp`` with the permissions of ``mkdir`` (it would be 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def resolved_path(path: Path, what: str) -> Path:
    """``path`` resolved, or a ValueError naming ``what`` (a symlink loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise ValueError(
            f"{what} {path}: cannot be resolved ({err}); choose another path"
        ) from None


def check_writable(path: str | Path, what: str) -> None:
    """``path`` (a folder to write into, created later if missing) can be made and written:
    its nearest existing ancestor is a folder where a file can be created. A ``ValueError``
    naming ``what`` (e.g. ``--out``) and the path otherwise; nothing is left behind."""
    path = Path(path)
    resolved_path(path, what)  # a link loop: one line, not an OSError deep inside a stage
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path}: is a file, not a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what} {path}: {probe} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".xlt-write-check-", dir=probe)
    except OSError as err:
        raise ValueError(f"{what} {path}: cannot write in {probe} ({err.strerror})") from None
    os.close(fd)
    os.unlink(tmp)


DEBRIS = re.compile(r"\..+\.(tmp|old)-[A-Za-z0-9_]+\Z")  # what atomic writes leave when killed


def folder_bytes(folder: Path) -> int:
    """The size of the files below ``folder`` (links not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # removed while walking
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


_SHA256: dict[tuple, str] = {}  # (path, device, inode, size, mtime, ctime) -> hex digest


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (about 1 GB/s here), remembered for the process while its
    size, mtime and ctime stay (any write or touch moves the ctime): plans name the same model
    and data files many times over."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """``dst`` as a hard link to ``src`` (no second copy on disk; safe as every writer here
    replaces a file rather than changing it in place), or a copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def link_tree(src: str | Path, dst: str | Path, skip=lambda rel: False) -> None:
    """Every file below ``src`` linked (``link_or_copy``) to the same place below ``dst``,
    folders made as needed, a file already there replaced (each through a temporary link and
    a rename); ``skip(relative path)`` true leaves a file or a whole folder out."""
    src, dst = Path(src), Path(dst)
    for dirpath, dirs, files in os.walk(src):
        here = Path(dirpath).relative_to(src)
        dirs[:] = sorted(d for d in dirs if not skip(here / d))
        (dst / here).mkdir(parents=True, exist_ok=True)
        for name in sorted(files):
            if skip(here / name):
                continue
            tmp = dst / here / f".{name}.tmp-link"
            tmp.unlink(missing_ok=True)
            link_or_copy(Path(dirpath) / name, tmp)
            os.replace(tmp, dst / here / name)


def remove_debris(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders that atomic writes below ``folder`` left when a
    kill stopped them (``.model.tmp-*``: about 700 MB at mBERT size); returns what it removed.
    Call it only where no other process is writing (the start of a stage, on rank 0)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for dirpath, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            if DEBRIS.match(name):
                found.append(Path(dirpath) / name)
        dirs[:] = [d for d in dirs if not DEBRIS.match(d)]  # removed whole below
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


LOCK_FILE = ".lock"  # held (flock) by the process running a stage in its folder


@contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``flock`` on ``folder/.lock``, released when the
    process ends however it ends) while ``what`` runs there. A second process that tries the
    same folder is refused at once, naming the holder's pid: two processes in one stage folder
    would remove each other's temporary files (``remove_debris``) and interleave checkpoints."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(
                f"{folder}: another process (pid {holder}) is running {what} in this folder; "
                "wait for it to end or stop it, then run again (--resume continues its work)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it 0600
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        named = _named(err, path)
        if named is not err:
            raise named from None
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Build the folder ``path`` in a temporary folder beside it: on a clean exit its files are
    given the umask's mode, fsynced, and it replaces ``path`` (an existing ``path`` is moved aside first and put back if
    the rename fails); on an error the temporary folder is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(f".{path.name}.tmp-", path.parent)
    try:
        yield tmp
        mode = 0o666 & ~current_umask()
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fchmod(fh.fileno(), mode)  # writers such as safetensors' make them 0600
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
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        named = _named(err, path)
        if named is not err:
            raise named from None
        raise


def disk_full(err: BaseException) -> bool:
    """``err`` says the disk is full (or the quota spent): an ``OSError`` ENOSPC / EDQUOT, or
    a writer's own wrapper of one (safetensors' Rust I/O, ``torch.save``'s zip writer)."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(err)
    return any(s in text for s in ("No space left on device", "os error 28", "StorageFull"))


def _named(err: BaseException, path: Path) -> BaseException:
    """``err`` with the output it was writing named: a write's ``OSError`` (no space, quota)
    carries no file name, and a writer's wrapper of a full disk is a plain exception; others
    as they are."""
    if isinstance(err, OSError) and err.filename is None and err.errno is not None:
        return OSError(err.errno, err.strerror, str(path))
    if not isinstance(err, OSError) and disk_full(err):
        return OSError(errno.ENOSPC, "No space left on device", str(path))
    return err


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line and fsync it: a log read back after a kill holds every record
    written before it, and at most the last line torn."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_results(folder: str | Path, stem: str, data: dict, table: str, echo=None) -> None:
    """``<stem>.md`` (``table``, Markdown) and ``<stem>.json`` (``data``) in ``folder``, each
    written atomically, the JSON last: it is what marks a stage done, so it never stands without
    its table. ``echo`` (if given) prints the table."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{stem}.md", table)
    atomic_write_text(folder / f"{stem}.json", json.dumps(data, indent=2) + "\n")
    if echo:
        echo(table.rstrip())


# safetensors files written in place, row range by row range (by several ranks at once), and
# read through memory maps: the per-row artefacts of self-training at any corpus size
SAFETENSORS_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "I64": np.int64,
    "I32": np.int32,
    "U8": np.uint8,
}


def create_safetensors(
    path: str | Path, specs: dict[str, tuple[str, tuple[int, ...]]], metadata: dict[str, str]
) -> None:
    """A zero-filled safetensors file at ``path`` with tensors ``name: (dtype code, shape)``
    (``open_safetensors(path, "r+")`` fills them), the widest dtypes first so every tensor
    starts aligned to its element size. Its blocks are allocated here (``posix_fallocate``),
    not left sparse: a full disk is then an ``OSError`` (ENOSPC) naming the file, not a SIGBUS
    at a page write through the memory map that fills it."""
    header: dict = {"__metadata__": metadata}
    start = 0
    order = sorted(specs, key=lambda k: -np.dtype(SAFETENSORS_DTYPES[specs[k][0]]).itemsize)
    for name in order:
        code, shape = specs[name]
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(SAFETENSORS_DTYPES[code]).itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [start, start + size]}
        start += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.flush()
        try:
            os.posix_fallocate(f.fileno(), 0, 8 + len(raw) + start)
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(path)) from None


def open_safetensors(path: str | Path, mode: str = "r") -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as numpy memory maps (``mode`` ``r`` or ``r+``)."""
    path = Path(path)
    header, start = read_safetensors_header(path)
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if spec["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name}: dtype {spec['dtype']} not supported here")
        dtype = SAFETENSORS_DTYPES[spec["dtype"]]
        shape = tuple(spec["shape"])
        lo, hi = spec["data_offsets"]
        if hi == lo:
            out[name] = np.zeros(shape, dtype=dtype)
        else:
            out[name] = np.memmap(path, dtype=dtype, mode=mode, offset=start + lo, shape=shape)
    return out
