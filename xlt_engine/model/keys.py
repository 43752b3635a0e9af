"""Hugging Face checkpoint key names and ours (``checkpoint``'s naming): the declarative
table read both ways, in any registered family's naming (``families``: its encoder prefix and
MLM head names), legacy aliases and the keys dropped on load."""

from __future__ import annotations

import re

from xlt_engine.model.families import BERT, ModelFamily

# Hugging Face key (after the ``bert.`` prefix is stripped and gamma/beta renamed) <-> our name
# in BertForMLM. ``{i}`` is a layer index, ``{p}`` is weight or bias; the table reads both ways.
KEY_TABLE: list[tuple[str, str]] = [
    ("embeddings.word_embeddings.weight", "encoder.embeddings.word.weight"),
    ("embeddings.position_embeddings.weight", "encoder.embeddings.position.weight"),
    ("embeddings.token_type_embeddings.weight", "encoder.embeddings.token_type.weight"),
    ("embeddings.LayerNorm.{p}", "encoder.embeddings.norm.{p}"),
    ("encoder.layer.{i}.attention.self.query.{p}", "encoder.layers.{i}.attn.q.{p}"),
    ("encoder.layer.{i}.attention.self.key.{p}", "encoder.layers.{i}.attn.k.{p}"),
    ("encoder.layer.{i}.attention.self.value.{p}", "encoder.layers.{i}.attn.v.{p}"),
    ("encoder.layer.{i}.attention.output.dense.{p}", "encoder.layers.{i}.attn.out.{p}"),
    ("encoder.layer.{i}.attention.output.LayerNorm.{p}", "encoder.layers.{i}.attn_norm.{p}"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "encoder.layers.{i}.ffn_in.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "encoder.layers.{i}.ffn_out.{p}"),
    ("encoder.layer.{i}.output.LayerNorm.{p}", "encoder.layers.{i}.ffn_norm.{p}"),
    ("cls.predictions.transform.dense.{p}", "head.dense.{p}"),
    ("cls.predictions.transform.LayerNorm.{p}", "head.norm.{p}"),
    ("cls.predictions.bias", "head.bias"),
    ("pooler.dense.{p}", "encoder.pooler.{p}"),
]


def _template_regex(template: str) -> re.Pattern:
    rx = re.escape(template)
    rx = rx.replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(rx + r"\Z")


_HF_TO_OURS = [(_template_regex(hf), ours) for hf, ours in KEY_TABLE]
_OURS_TO_HF = [(_template_regex(ours), hf) for hf, ours in KEY_TABLE]

# Keys that duplicate another tensor: checked for equality, never loaded.
ALIASES = {
    "cls.predictions.decoder.weight": "encoder.embeddings.word.weight",
    "cls.predictions.decoder.bias": "head.bias",
}

# Keys dropped on load, with the reason shown by ``xlt-engine inspect``.
IGNORED: list[tuple[str, str]] = [
    (r"embeddings\.position_ids", "position-id buffer (recomputed)"),
    (r"cls\.seq_relationship\..*", "next-sentence-prediction classifier"),
]
IGNORED_KEYS = [(re.compile(p + r"\Z"), why) for p, why in IGNORED]


def hf_to_ours(key: str) -> str | None:
    """Our BertForMLM name for a normalised Hugging Face key, or None if it has none."""
    for rx, target in _HF_TO_OURS:
        m = rx.match(key)
        if m:
            return target.format(**m.groupdict())
    return None


def ours_to_hf(name: str, family: ModelFamily = BERT) -> str:
    """Hugging Face key for our BertForMLM name, in ``family``'s naming (BERT: ``bert.`` on
    encoder keys, ``cls.predictions.*``; RoBERTa: ``roberta.``, ``lm_head.*``)."""
    prefix, head = family.prefix, family.head_keys
    for rx, target in _OURS_TO_HF:
        m = rx.match(name)
        if m:
            hf = target.format(**m.groupdict())
            if not hf.startswith("cls."):
                return prefix + hf
            for theirs, bert in head:
                if hf.startswith(bert):
                    return theirs + hf[len(bert) :]
            return hf
    raise KeyError(f"no Hugging Face name for parameter {name!r}")
