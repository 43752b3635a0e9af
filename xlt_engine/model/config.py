"""BERT configuration: a frozen dataclass read from a Hugging Face ``config.json``.

Only the settings the from-scratch encoder implements are accepted: absolute position
embeddings, a gelu / gelu_new / relu activation, and a hidden size divisible by the number of
heads. ``model_type`` names a registered model family (``families``: ``bert``, and the RoBERTa
family ``roberta`` / ``xlm-roberta``, the same encoder with positions counted from
``pad_token_id + 1`` over the non-pad tokens, as Hugging Face's RoBERTa does). Anything else raises a ``ValueError`` naming the key, so a checkpoint that would load but
compute something different is refused up front. Keys of ``config.json`` that do not change the
computation (``architectures``, ``transformers_version``, ...) are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlt_engine.inputs import InputError, parse_json, read_text
from xlt_engine.model.families import PLUG_IN, family_names, get_family

CONFIG_MAX_BYTES = 1 << 24  # 16 MiB: Hugging Face configs are a few KB (id2label included)

SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "relu")

# config.json keys that change the computation but have only one value we implement.
# the largest size a config key may hold: tensor dimensions and embedding indices stay int32
MAX_SIZE = 2**31 - 1

_FIXED_KEYS = {
    "position_embedding_type": "absolute",
    "is_decoder": False,
    "add_cross_attention": False,
}


@dataclass(frozen=True)
class BertConfig:
    """Shape and numerics of a BERT encoder (defaults: bert-base-multilingual-cased)."""

    vocab_size: int = 119547
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    model_type: str = "bert"
    # derived in __post_init__
    head_dim: int = field(init=False)

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
            if value > MAX_SIZE:
                raise ValueError(f"BertConfig.{name} = {value} is beyond 2**31 - 1")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"BertConfig.{name} must be a number in [0, 1), got {value!r}")
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"BertConfig.{name} must be a positive number, got {value!r}")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"BertConfig.hidden_act {self.hidden_act!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
            )
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"BertConfig.position_embedding_type {self.position_embedding_type!r} is not "
                "supported (only 'absolute')"
            )
        if self.model_type not in family_names():
            raise ValueError(
                f"BertConfig.model_type {self.model_type!r} is not supported "
                f"(supported: {', '.join(family_names())}; {PLUG_IN})"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig.hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int):
            raise ValueError(
                f"BertConfig.pad_token_id must be an integer, got {self.pad_token_id!r}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"BertConfig.pad_token_id {self.pad_token_id} is outside the vocabulary "
                f"(vocab_size {self.vocab_size})"
            )
        if self.max_position_embeddings <= self.position_offset:
            raise ValueError(
                f"BertConfig.max_position_embeddings {self.max_position_embeddings} leaves no "
                f"position for a {self.model_type} model (positions start at pad_token_id + 1 = "
                f"{self.position_offset})"
            )
        object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @property
    def position_offset(self) -> int:
        """The first position id of a real token: 0 for BERT, ``pad_token_id + 1`` for RoBERTa."""
        return self.pad_token_id + 1 if get_family(self.model_type).positions_after_pad else 0

    @property
    def max_tokens(self) -> int:
        """The longest input (special tokens included) the position embeddings cover."""
        return self.max_position_embeddings - self.position_offset

    def parameter_count(self, mlm_head: bool = True) -> int:
        """The number of parameters of ``BertForMLM`` (``mlm_head=False``: of the encoder), from
        the sizes alone: what building the model would allocate, before anything is built."""
        H, inter, V = self.hidden_size, self.intermediate_size, self.vocab_size
        embeddings = (V + self.max_position_embeddings + self.type_vocab_size) * H + 2 * H
        layer = 4 * (H * H + H) + 2 * H * inter + inter + H + 4 * H  # attention, FFN, 2 LNs
        head = H * H + H + 2 * H + V if mlm_head else 0  # transform, LN, bias (decoder tied)
        return embeddings + self.num_hidden_layers * layer + head

    def check_fits(
        self, bytes_per_value: int = 4, where: str = "config", budget: int | None = None
    ) -> None:
        """Refuse a model whose weights alone would not fit in this machine's memory (or in
        ``budget`` bytes), naming the keys that make it large, before anything is allocated."""
        need = self.parameter_count() * bytes_per_value
        if budget is None:
            budget = physical_memory()
        if budget and need > budget:
            sizes = ", ".join(
                f"{k} = {getattr(self, k):,}"
                for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")
            )
            raise ValueError(
                f"{where}: the model's weights alone need {need / 2**30:,.1f} GiB "
                f"({self.parameter_count():,} parameters x {bytes_per_value} bytes), more than "
                f"this machine's {budget / 2**30:,.1f} GiB of memory ({sizes})"
            )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> BertConfig:
        """Build from a Hugging Face config dict; ``source`` names it in error messages."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(raw).__name__}")
        model_type = raw.get("model_type", "bert")
        if model_type not in family_names():
            raise ValueError(
                f"{source}: key 'model_type' is {model_type!r}; supported: "
                f"{', '.join(family_names())} ({PLUG_IN})"
            )
        for key, wanted in _FIXED_KEYS.items():
            if key in raw and raw[key] != wanted:
                raise ValueError(
                    f"{source}: key {key!r} is {raw[key]!r}; only {wanted!r} is supported"
                )
        # null values (seen for pad_token_id in some exports) fall back to the defaults
        kwargs = {name: raw[name] for name in cls.field_names() if raw.get(name) is not None}
        try:
            return cls(**kwargs)
        except ValueError as err:
            # re-raise with the file and the config.json key (our fields carry HF names)
            raise ValueError(f"{source}: {err}".replace("BertConfig.", "key ")) from None

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        """Read a Hugging Face ``config.json``; errors name the file and the key or line. A
        file over ``CONFIG_MAX_BYTES`` is refused before it is read, a key given twice too."""
        path = Path(path)
        try:
            text = read_text(path, limit=CONFIG_MAX_BYTES)
        except OSError as err:
            raise ValueError(f"{path}: cannot read config ({err.strerror or err})") from None
        try:
            raw = parse_json(text, path)
        except InputError as err:  # nested too deeply, a lone surrogate: what is invalid
            raise ValueError(f"{path}: invalid config: {str(err).split(': ', 1)[-1]}") from None
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: "
                f"{getattr(err, 'reason', err.msg)}"
            ) from None
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Hugging Face ``config.json`` fields (without ``architectures``/``dtype``)."""
        return {name: getattr(self, name) for name in self.field_names()}


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
