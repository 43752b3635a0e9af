"""Model families: what sets BERT, RoBERTa and XLM-R checkpoints apart on the same encoder, one
spec each, registered by ``config.json``'s ``model_type``.

A family says how its checkpoints name the encoder's and the MLM head's keys (in BERT's names
otherwise: ``keys.KEY_TABLE``), which transformers classes its saved and exported folders name,
where its position ids start and which activation its MLM head applies. Everything that reads or
writes a checkpoint (``config``, ``bert``, ``checkpoint``, ``export``) asks ``get_family``: a new
family of the same architecture is one ``register_family`` call, in a plug-in module of its own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

SEQUENCE_HEADS = ("pooler", "dense")


@dataclass(frozen=True)
class ModelFamily:
    model_type: str  # config.json's model_type
    prefix: str  # the encoder's key prefix in its checkpoints ("bert.", "roberta.")
    architectures: tuple[str, str]  # transformers classes: (with the MLM head, encoder only)
    classifiers: tuple[str, str]  # transformers classes: (token, sequence classification)
    head_keys: tuple[tuple[str, str], ...] = ()  # MLM head key prefixes: (theirs, BERT's)
    positions_after_pad: bool = False  # position ids start at pad_token_id + 1 (RoBERTa)
    head_act: str | None = None  # the MLM head's activation (None: the config's hidden_act)
    # transformers' sequence classifier over the encoder: "pooler" (BERT: the pooler, then the
    # classifier) or "dense" (RobertaClassificationHead: dense, tanh, out_proj on h[CLS])
    sequence_head: str = "pooler"

    def __post_init__(self):
        if not self.model_type or not isinstance(self.model_type, str):
            raise ValueError(f"ModelFamily.model_type must be a name, got {self.model_type!r}")
        if not self.prefix.endswith("."):
            raise ValueError(
                f"ModelFamily {self.model_type!r}: prefix must end with '.', got {self.prefix!r}"
            )
        if self.sequence_head not in SEQUENCE_HEADS:
            raise ValueError(
                f"ModelFamily {self.model_type!r}: sequence_head must be one of "
                f"{SEQUENCE_HEADS}, got {self.sequence_head!r}"
            )


_FAMILIES: dict[str, ModelFamily] = {}
_HOMES: dict[str, str] = {}  # model_type -> the module that registered it
# how another family becomes known, said where an unknown model_type is refused
PLUG_IN = "another family is one register_family call in a module the config's plugins name"


def register_family(family: ModelFamily) -> ModelFamily:
    """Make ``family`` known by its ``model_type``; registering the same spec again is a no-op,
    another spec under a taken name an error."""
    taken = _FAMILIES.get(family.model_type)
    if taken is not None and taken != family:
        raise ValueError(f"model family {family.model_type!r} is already registered as {taken}")
    _FAMILIES[family.model_type] = family
    _HOMES[family.model_type] = sys._getframe(1).f_globals.get("__name__", "")
    return family


def registered_modules() -> set[str]:
    """The modules that registered the known families (their specs), for fingerprints."""
    return {_HOMES[t] for t in _FAMILIES if t in _HOMES}


def family_names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def get_family(model_type: str) -> ModelFamily:
    """The family of ``model_type``; an unknown one names the registered ones."""
    try:
        return _FAMILIES[model_type]
    except (KeyError, TypeError):
        raise ValueError(
            f"model_type {model_type!r} is not supported (supported: {', '.join(_FAMILIES)}; "
            f"{PLUG_IN})"
        ) from None


BERT = register_family(
    ModelFamily(
        "bert",
        prefix="bert.",
        architectures=("BertForMaskedLM", "BertModel"),
        classifiers=("BertForTokenClassification", "BertForSequenceClassification"),
    )
)
# RoBERTa and XLM-R: the same encoder, positions counted from pad_token_id + 1 over the non-pad
# tokens, an MLM head named lm_head.* with the exact gelu whatever hidden_act says
ROBERTA_HEAD_KEYS = (
    ("lm_head.dense.", "cls.predictions.transform.dense."),
    ("lm_head.layer_norm.", "cls.predictions.transform.LayerNorm."),
    ("lm_head.decoder.", "cls.predictions.decoder."),
    ("lm_head.bias", "cls.predictions.bias"),
)
for _name, _cls in (("roberta", "Roberta"), ("xlm-roberta", "XLMRoberta")):
    register_family(
        ModelFamily(
            _name,
            prefix="roberta.",
            architectures=(f"{_cls}ForMaskedLM", f"{_cls}Model"),
            classifiers=(f"{_cls}ForTokenClassification", f"{_cls}ForSequenceClassification"),
            head_keys=ROBERTA_HEAD_KEYS,
            positions_after_pad=True,
            head_act="gelu",
            sequence_head="dense",
        )
    )
