"""Checkpoint weight files read from their headers (``checkpoint``'s sources): safetensors
(single or sharded through ``model.safetensors.index.json``) and PyTorch ``.bin`` (read-only),
each listing its keys with shape and dtype and reading one tensor, or a range of its rows, at a
time."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from xlt_engine.inputs import read_json, read_safetensors_header

# Hugging Face key (after the ``bert.`` prefix is stripped and gamma/beta renamed) <-> our name
# in BertForMLM. ``{i}`` is a layer index, ``{p}`` is weight or bias; the table reads both ways.

FLOAT_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# ---------------------------------------------------------------------------------------------
# weight sources: list keys with shape and dtype from headers; read one tensor at a time


class WeightSource:
    path: Path

    def keys(self) -> list[str]: ...
    def shape(self, key: str) -> tuple[int, ...]: ...
    def dtype_name(self, key: str) -> str: ...
    def tensor(self, key: str) -> torch.Tensor: ...
    def rows(self, key: str, start: int, stop: int) -> torch.Tensor: ...


class _SafetensorsSource(WeightSource):
    """A safetensors file. The ``safetensors`` library validates it (truncation, overlapping
    offsets); tensors are then read with plain file reads into freshly allocated tensors. The
    model thus owns private memory, never pages of a file mapping that a later in-place rewrite
    of the checkpoint could change under it, and the one-tensor staging cost is explicit."""

    def __init__(self, path: Path):
        self.path = path
        header, self._data_start = read_safetensors_header(path)  # first: names once, a file
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                keys = list(f.keys())
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path}: corrupt or truncated safetensors file ({err})") from None
        # key -> (dtype name, shape, begin, end); offsets relative to the data section
        self._meta = {
            k: (header[k]["dtype"], tuple(header[k]["shape"]), *header[k]["data_offsets"])
            for k in keys
        }

    def keys(self) -> list[str]:
        return list(self._meta)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._meta[key][1]

    def dtype_name(self, key: str) -> str:
        return self._meta[key][0]

    def _read(self, key: str, shape: tuple[int, ...], offset: int, nbytes: int) -> torch.Tensor:
        dtype = FLOAT_DTYPES.get(self._meta[key][0])
        if dtype is None:
            raise ValueError(
                f"{self.path}: {key}: dtype {self._meta[key][0]} is not floating-point"
            )
        out = torch.empty(shape, dtype=dtype)
        if nbytes:
            buf = memoryview(out.view(-1).view(torch.uint8).numpy())
            with open(self.path, "rb") as fh:
                fh.seek(self._data_start + offset)
                got = fh.readinto(buf)
            if got != nbytes:
                raise ValueError(f"{self.path}: truncated while reading {key!r}")
        return out

    def tensor(self, key: str) -> torch.Tensor:
        _, shape, begin, end = self._meta[key]
        return self._read(key, shape, begin, end - begin)

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        _, shape, begin, end = self._meta[key]
        stop = min(stop, shape[0])
        row_bytes = (end - begin) // shape[0] if shape[0] else 0
        return self._read(
            key, (stop - start, *shape[1:]), begin + start * row_bytes, (stop - start) * row_bytes
        )


_TORCH_DTYPE_NAMES = {v: k for k, v in FLOAT_DTYPES.items()}


class _TorchBinSource(WeightSource):
    """A ``pytorch_model.bin`` read with ``weights_only=True`` (memory-mapped when possible)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
        except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
            raise ValueError(f"{path}: corrupt, truncated or unsafe .bin file ({err})") from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"{path}: expected a flat state dict of tensors")
        self._sd: dict[str, torch.Tensor] = sd

    def keys(self) -> list[str]:
        return list(self._sd)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._sd[key].shape)

    def dtype_name(self, key: str) -> str:
        return _TORCH_DTYPE_NAMES.get(self._sd[key].dtype, str(self._sd[key].dtype))

    def tensor(self, key: str) -> torch.Tensor:
        # a private copy: a parameter must not stay backed by the file's memory map
        return self._sd[key].clone()

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        return self._sd[key][start:stop]


def open_weights(path: Path) -> WeightSource:
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        return _SafetensorsSource(path)
    if path.suffix == ".bin":
        return _TorchBinSource(path)
    raise ValueError(f"{path}: unknown weights format (expected .safetensors or .bin)")


def read_index(path: Path) -> list[Path]:
    """Shard files named by a ``*.index.json`` (in first-seen order)."""
    try:
        raw = read_json(path)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read index ({err.strerror or err})") from None
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{path}: key 'weight_map' missing or empty")
    shards: list[Path] = []
    for key, name in weight_map.items():
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"{path}: weight_map[{key!r}] names an invalid shard {name!r}")
        shard = path.parent / name
        if shard not in shards:
            shards.append(shard)
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise ValueError(f"{path}: shard files listed in weight_map are missing: {missing}")
    return shards
