"""The hostile-input matrix of the readers (issue 66, rule 3): every reader of a user's file
registered in ``xlt_engine.inputs.READERS``, crossed with every malformation of its kind. Each
cell asserts that the reader refuses (a ``ValueError`` whose message names the file), within
seconds (nothing blocks on a FIFO or reads a device forever), and leaves the file as it was.
A reader registered without a sample here fails ``test_every_registered_reader_has_a_sample``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from xlt_engine import inputs
from xlt_engine.inputs import READERS, reader


def _config_toml() -> bytes:
    from tests.engine.experiment.test_config import MINIMAL

    return MINIMAL.encode()


def _stage_config_json() -> bytes:
    from xlt_engine.engine.experiment.config import load_config, to_dict

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "exp.toml"
        path.write_bytes(_config_toml())
        tree = to_dict(load_config(path))
    return json.dumps({"experiment": tree}, indent=1).encode()


def _tokenizer_json() -> bytes:
    from xlt_engine.data.tokenizer import default_tokenizer

    with tempfile.TemporaryDirectory() as d:
        default_tokenizer().save(d)
        return (Path(d) / "tokenizer.json").read_bytes()


def _safetensors() -> bytes:
    from xlt_engine.fileio import create_safetensors

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        create_safetensors(path, {"w": ("F32", (2, 3)), "b": ("F32", (3,))}, {"format": "pt"})
        return path.read_bytes()


MODEL_CONFIG = {
    "model_type": "bert",
    "vocab_size": 32,
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "max_position_embeddings": 16,
}
TASK = {"kind": "token", "labels": ["O", "B-PER"], "num_voters": 3, "widths": [], "dropout": 0.1}
ALL = {
    "metric": "entity_f1",
    "source": "src",
    "split": "test",
    "targets": {"tgt": {"direct": 0.38, "btf": 0.63, "selftrain": 0.67}},
}
PARALLEL_ROW = {"id": "1", "text": "a cat", "label": "entailment", "language": "de"}

# the file name each reader expects, and a valid file of it (bytes, or a function making them)
SAMPLES = {
    "config.toml": ("exp.toml", _config_toml),
    "stage config.json": ("config.json", _stage_config_json),
    "model config.json": ("config.json", lambda: json.dumps(MODEL_CONFIG, indent=1).encode()),
    "tokenizer.json": ("tokenizer.json", _tokenizer_json),
    "vocab.txt": ("vocab.txt", b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\n"),
    "task.json": ("task.json", json.dumps(TASK, indent=1).encode()),
    "report all.json": ("all.json", json.dumps(ALL, indent=1).encode()),
    "metrics.jsonl": ("metrics.jsonl", b'{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n'),
    "examples.jsonl": (
        "train.jsonl",
        b'{"text": "a good book", "label": "pos"}\n{"text": "a bad one", "label": "neg"}\n',
    ),
    "parallel.jsonl": (
        "parallel.jsonl",
        (
            json.dumps({**PARALLEL_ROW, "translation": "eine Katze"})
            + "\n"
            + json.dumps({**PARALLEL_ROW, "id": "2", "text": "a dog", "translation": "ein Hund"})
            + "\n"
        ).encode(),
    ),
    "model.safetensors": ("model.safetensors", _safetensors),
}


def _sample(name: str) -> tuple[str, bytes]:
    file, content = SAMPLES[name]
    return file, content() if callable(content) else content


# ---------------------------------------------------------------------------------------------
# malformations: each a function (valid bytes, kind) -> bad bytes, or None where it does not
# apply to the kind; the file-kind ones (FIFO, folder, device, socket) replace the file itself

TEXT_KINDS = ("json", "jsonl", "toml", "text")


def _first_object(data: bytes, insert: bytes) -> bytes:
    at = data.index(b"{") + 1
    return data[:at] + insert + data[at:]


def dup_key(data: bytes, kind: str) -> bytes | None:
    if kind in ("json", "jsonl"):
        return _first_object(data, b'"dup": 1, "dup": 2, ')
    if kind == "toml":
        return b"seed = 1\nseed = 2\n" + data
    if kind == "safetensors":
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        name, spec = next((k, v) for k, v in header.items() if k != "__metadata__")
        raw = json.dumps(header)[:-1] + f', "{name}": ' + json.dumps(spec) + "}"
        raw = raw.encode() + b" " * (-len(raw) % 8)
        return len(raw).to_bytes(8, "little") + raw + data[8 + header_len :]
    return None


def deep(data: bytes, kind: str) -> bytes | None:
    nest = b"[" * 100_000 + b"]" * 100_000
    if kind == "json":
        return b'{"deep": ' + nest + b"}"
    if kind == "jsonl":
        return b'{"deep": ' + nest + b"}\n" + data
    if kind == "toml":
        return b"deep = " + nest + b"\n" + data
    return None


def lone_surrogate(data: bytes, kind: str) -> bytes | None:
    if kind in ("json", "jsonl"):
        return _first_object(data, b'"odd": "a\\ud800b", ')
    if kind == "toml":
        return b'odd = "a\\ud800b"\n' + data
    return None


def not_utf8(data: bytes, kind: str) -> bytes | None:
    if kind not in TEXT_KINDS:
        return None
    at = data.index(b"\n") if kind != "toml" else data.index(b"ner")
    return data[:at] + b"\xff\xfe" + data[at:]


def nul(data: bytes, kind: str) -> bytes | None:
    if kind not in TEXT_KINDS:
        return None
    at = data.index(b"\n")
    return data[:at] + b"\x00" + data[at:]


def truncated(data: bytes, kind: str) -> bytes | None:
    if kind == "text":  # a shorter word list is a word list: nothing to tell
        return None
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]  # cut inside the last line (a record)
    return data[: len(data) - len(last) // 2 - 1]


def not_the_format(data: bytes, kind: str) -> bytes | None:
    return b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


MALFORMED = {
    f.__name__: f for f in (dup_key, deep, lone_surrogate, not_utf8, nul, truncated, not_the_format)
}
NOT_FILES = ("fifo", "folder", "device", "socket")

# cells whose rule is another: a metrics log torn at its end is a kill during an append; its
# reader keeps every whole record and warns naming the file (the resume depends on it)
WARNS = {("metrics.jsonl", "truncated")}


@pytest.fixture
def short_dir():
    """A folder with a short path (a Unix socket's path is limited to about 100 bytes)."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="xi") as d:
        yield Path(d)


class Hang(Exception):
    pass


def _call(read, path: Path):
    """``read(path)``, stopped after 10 s (a FIFO would block forever)."""

    def on_alarm(*_):
        raise Hang(f"{path}: still reading after 10 s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(10)
    try:
        return read(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _place(name: str, folder: Path) -> Path:
    """The valid sample of ``name`` in ``folder`` (with the files its reader reads beside it)."""
    file, data = _sample(name)
    path = folder / file
    path.write_bytes(data)
    return path


def test_every_registered_reader_has_a_sample():
    assert set(SAMPLES) == set(READERS), "register each reader's sample in SAMPLES"


@pytest.mark.parametrize("name", sorted(READERS))
def test_each_sample_is_read(name, short_dir):
    """The matrix's baseline: each reader accepts its valid sample, and the same behind a
    byte-order mark (the one liberty of the rules) where it is text."""
    path = _place(name, short_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _call(reader(name), path)
        if READERS[name][0] in TEXT_KINDS:
            path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
            _call(reader(name), path)


CELLS = [(n, m) for n in sorted(READERS) for m in [*MALFORMED, *NOT_FILES]]


@pytest.mark.parametrize(("name", "malformation"), CELLS)
def test_a_reader_refuses_a_malformed_input_naming_it(name, malformation, short_dir):
    kind = READERS[name][0]
    path = _place(name, short_dir)
    if malformation in MALFORMED:
        bad = MALFORMED[malformation](path.read_bytes(), kind)
        if bad is None:
            pytest.skip(f"{malformation} does not apply to a {kind} file")
        path.write_bytes(bad)
    elif malformation == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif malformation == "folder":
        path.unlink()
        path.mkdir()
    elif malformation == "device":
        path.unlink()
        path.symlink_to("/dev/zero")
    elif malformation == "socket":
        path.unlink()
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    before = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    if (name, malformation) in WARNS:
        with pytest.warns(UserWarning, match=path.name):
            _call(reader(name), path)
        return
    try:
        with pytest.raises(ValueError) as info:
            _call(reader(name), path)
    finally:
        if malformation == "socket":
            sock.close()
    message = str(info.value)
    assert path.name in message or str(path.parent) in message, message
    assert "Traceback" not in message
    if before is not None:
        assert path.read_bytes() == before  # a reader never changes what it reads


def test_the_size_limit_holds_for_every_reader(short_dir, monkeypatch):
    """A file (or, for a streamed data file, a line) over the limit is refused unread."""
    paths = {}
    for name in sorted(READERS):
        folder = short_dir / name.replace(" ", "_")
        folder.mkdir()
        paths[name] = _place(name, folder)
    monkeypatch.setattr(inputs, "MAX_BYTES", 16)
    monkeypatch.setattr(inputs, "MAX_LINE", 16)
    for name, path in paths.items():
        with pytest.raises(ValueError, match=r"over the 16"):
            _call(reader(name), path)


def test_numpy_is_not_needed_to_name_a_safetensors_file(short_dir):
    """A header that is valid JSON but not an object is refused by name."""
    path = short_dir / "x.safetensors"
    raw = b"[1, 2]  "
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + np.zeros(4, np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"x.safetensors: not a safetensors file \(its header"):
        reader("model.safetensors")(path)
