"""One bounded reader for every whole-file input: configs, tokenizer.json, task.json, a model's
config.json, a run's all.json, stage records (summary, fingerprint, meta, run.json), metrics logs
and the safetensors header.

The rules, the same for every reader (the manual's "What the engine refuses"):

- **Regular files only.** A FIFO, socket, device or folder where a file is expected is refused
  before it is opened, so nothing blocks on it.
- **Bounded.** A file over ``MAX_BYTES`` (or the reader's own limit) is refused unread; JSON
  nested deeper than the parser's recursion limit is refused by name (no ``RecursionError``):
  the C parser stops there, so no pre-scan of every large file is needed.
- **Strict.** UTF-8 only (a leading byte-order mark is skipped, the one liberty: editors on
  Windows write it); a key given twice in one object is refused, never "the last one wins"; a
  string escape that leaves a lone surrogate (text no file can hold) is refused.
- **Named.** Every refusal is an ``InputError`` (a ``ValueError``) naming the file, the line
  where it has one, and what is wrong.

Readers that parse a line at a time (data files, JSON-lines logs) use ``parse_json`` on each
line and ``check_regular`` on the file.
"""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
from pathlib import Path

MAX_BYTES = 1 << 30  # 1 GiB: far above any config, tokenizer (XLM-R's is 17 MB) or record
MAX_LINE = 64 << 20  # a line of a streamed data file (a review, a sentence, a JSON example)

BOM = "\ufeff"


# strict JSON: a duplicated key is an error naming the file and line, never "the last one wins"

_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')


def duplicate_json_key(text: str) -> tuple[int, str] | None:
    """(line, key) of the first key that repeats within one JSON object of ``text`` (a
    document the json module parses), or None. Strings are skipped whole, so braces and
    quotes inside them do not count."""
    stack: list[set | None] = []
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok in "{[":
            stack.append(set() if tok == "{" else None)
        elif tok in "}]":
            if stack:
                stack.pop()
        elif stack and stack[-1] is not None:
            rest = text[m.end() : m.end() + 64].lstrip()
            if rest.startswith(":"):  # a key, not a value
                key = json.loads(tok)
                if key in stack[-1]:
                    return text.count("\n", 0, m.start()) + 1, key
                stack[-1].add(key)
    return None


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


class _DuplicateKey(Exception):
    pass


class DuplicateKeyError(ValueError):
    """A structured file names one key (field, element) twice: refused, never "the last one
    wins"; the message names the file and line."""


def loads_json(text: str | bytes, where: str | Path, line: int | None = None):
    """``json.loads`` that refuses a key given twice in one object (``ValueError`` naming
    ``where`` and the line: ``line``, for one line of a JSON-lines file, or the line in
    ``text``); other JSON errors are ``json.JSONDecodeError`` as ever."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey:
        found = duplicate_json_key(text)
        at, key = found if found is not None else (1, "?")
        shown = key if len(key) <= 80 else key[:77] + "..."
        raise DuplicateKeyError(
            f"{where}:{line or at}: the key {shown!r} is given twice in one object; "
            "keep one (a reader would silently take the last)"
        ) from None


class InputError(ValueError):
    """An input the engine refuses to read: the message names the file and what is wrong."""


class JSONSyntaxError(json.JSONDecodeError):
    """Not JSON: a ``json.JSONDecodeError`` whose message leads with the file (and line of a
    JSON-lines file); ``reason`` is the parser's own words."""

    def __init__(self, where: str, err: json.JSONDecodeError):
        super().__init__(f"{where}: not valid JSON: {err.msg}", err.doc, err.pos)
        self.reason = err.msg


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_regular(path: str | Path, what: str = "") -> os.stat_result:
    """The ``stat`` of ``path`` (links followed) when it is a regular file; an ``InputError``
    naming it when it is a folder, FIFO, socket or device (read, those would block or fail
    later). A missing file raises ``FileNotFoundError`` as ``open`` would."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        label = f"{what} " if what else ""
        raise InputError(f"{label}{path}: is {kind}, not a regular file; name a file")
    return st


def read_bytes(path: str | Path, what: str = "", limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path``, refused unread when over ``limit`` (at most
    ``MAX_BYTES``, read when called)."""
    limit = MAX_BYTES if limit is None else min(limit, MAX_BYTES)
    st = check_regular(path, what)
    if st.st_size > limit:
        label = f"{what} " if what else ""
        raise InputError(
            f"{label}{path}: {st.st_size:,} bytes, over the {limit:,} this reader accepts"
        )
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew since the stat
        raise InputError(f"{path}: over the {limit:,} bytes this reader accepts")
    return data


def decode_text(data: bytes, where: str | Path) -> str:
    """``data`` as UTF-8 text, a leading byte-order mark dropped; an ``InputError`` naming the
    line of the first byte that is not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(
            f"{where}:{line}: not UTF-8 (byte {data[err.start]:#04x} at offset {err.start})"
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise InputError(f"{where}:{line}: a NUL character: not a text file")
    return text[1:] if text.startswith(BOM) else text


def read_text(path: str | Path, what: str = "", limit: int | None = None) -> str:
    """The UTF-8 text of the regular file ``path`` (``read_bytes``, ``decode_text``)."""
    return decode_text(read_bytes(path, what, limit), path)


# a \\uD800-\\uDBFF escape not followed by a \\uDC00-\\uDFFF one, or a low one with no high one
# before it; "(?<!\\)(?:\\\\)*" keeps an escaped backslash followed by "u" out
_LONE_SURROGATE = re.compile(
    r"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})(?<!\\)(?:\\\\)*\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def parse_json(text: str | bytes, where: str | Path, line: int | None = None):
    """A JSON document (``text``, from ``where``; ``line``: its line in a JSON-lines file) under
    the rules above. Syntax errors stay ``json.JSONDecodeError`` (a ``ValueError``), their
    message led by ``where``; every other refusal is an ``InputError``."""
    if isinstance(text, bytes):
        text = decode_text(text, where)
    at = f"{where}:{line}" if line else str(where)
    lone = _LONE_SURROGATE.search(text) if ("\\ud" in text or "\\uD" in text) else None
    if lone is not None:
        raise InputError(
            f"{where}:{line or text.count(chr(10), 0, lone.start()) + 1}: the escape "
            f"{lone.group().lstrip(chr(92) * 2)!r} is half of a surrogate pair (no text holds it)"
        )
    try:
        return loads_json(text, where, line)
    except DuplicateKeyError:
        raise
    except json.JSONDecodeError as err:
        raise JSONSyntaxError(at, err) from None
    except RecursionError:  # the C parser stops at the recursion limit, before the stack does
        raise InputError(f"{at}: JSON nested too deeply to parse; refused") from None


def read_json(path: str | Path, what: str = "", limit: int | None = None):
    """The JSON document in the regular file ``path`` under the rules above."""
    return parse_json(read_text(path, what, limit), path)


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    """The records (JSON objects, one a line) of an append-only JSON-lines log, under the rules
    above. A torn last line (a kill while it was written) is skipped with a warning naming the
    file; a bad line before it is an error naming file and line."""
    path = Path(path)
    lines = read_text(path, limit=limit).split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = parse_json(line, path, i + 1)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:  # no newline after it: the write was cut
                warnings.warn(
                    f"{path}:{i + 1}: a torn last record is skipped ({err.reason})", stacklevel=2
                )
                break
            raise InputError(f"{path}:{i + 1}: not a JSON record ({err.reason})") from None
        if not isinstance(record, dict):
            raise InputError(
                f"{path}:{i + 1}: a record is a JSON object, not {type(record).__name__}"
            )
        records.append(record)
    return records


SAFETENSORS_HEADER_LIMIT = 100 << 20  # the format's own cap on the header (100 MB)


def read_safetensors_header(path: str | Path, what: str = "") -> tuple[dict, int]:
    """(the JSON header, the offset where the data starts) of the safetensors file ``path``,
    under the rules above: a tensor named twice is refused (a reader keyed by name would take
    the last), and so are a header longer than the file or the format's 100 MB, and a header
    that is not one JSON object."""
    size = check_regular(path, what).st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(size - 8, SAFETENSORS_HEADER_LIMIT, MAX_BYTES):
            over = n > MAX_BYTES and n <= size - 8
            raise InputError(
                f"{path}: header of {n:,} bytes, over the {MAX_BYTES:,} this reader accepts"
                if over
                else f"{path}: not a safetensors file (header length {n} in a {size:,}-byte file)"
            )
        raw = f.read(n)
    try:
        header = parse_json(raw, path)
    except ValueError as err:
        raise InputError(f"{path}: not a safetensors file: {err}") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: not a safetensors file (its header is not a JSON object)")
    return header, 8 + n


# ---------------------------------------------------------------------------------------------
# the registry of the readers of a user's files: the hostile-input matrix (tests/test_inputs.py)
# crosses each with every malformation of its kind, and fails for a reader with no sample

READERS: dict[str, tuple[str, str, str]] = {
    # name: (kind, "module:callable" reading it, what it is given: "file", "folder" (the
    # file's), or "folders" (a list of the file's folder))
    "config.toml": ("toml", "xlt_engine.engine.experiment.config:load_config", "file"),
    "stage config.json": ("json", "xlt_engine.engine.experiment.config:load_config", "file"),
    "model config.json": ("json", "xlt_engine.model.config:BertConfig.from_json", "file"),
    "tokenizer.json": ("json", "xlt_engine.data.tokenizer:load_tokenizer", "file"),
    "vocab.txt": ("text", "xlt_engine.data.tokenizer:read_vocab", "file"),
    "task.json": ("json", "xlt_engine.model.task:read_task_meta", "folder"),
    "report all.json": ("json", "xlt_engine.studies.report:build_report", "folders"),
    "metrics.jsonl": ("jsonl", "xlt_engine.inputs:read_jsonl", "file"),
    "examples.jsonl": ("jsonl", "xlt_engine.data.text:read_labeled", "file"),
    "parallel.jsonl": ("jsonl", "xlt_engine.data.parallel:read_parallel", "file"),
    "model.safetensors": ("safetensors", "xlt_engine.inputs:read_safetensors_header", "file"),
}


def reader(name: str):
    """The callable that reads the registered input ``name`` from a file path."""
    import importlib

    _kind, target, given = READERS[name]
    module, _, attr = target.partition(":")
    fn = importlib.import_module(module)
    for part in attr.split("."):
        fn = getattr(fn, part)
    if given == "folder":
        return lambda path: fn(Path(path).parent)
    if given == "folders":
        return lambda path: fn([Path(path).parent])
    return fn
