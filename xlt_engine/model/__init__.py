"""From-scratch BERT encoder, task heads and Hugging Face checkpoint interop."""

from xlt_engine.model.bert import BertEncoder, BertForMLM
from xlt_engine.model.checkpoint import (
    load_encoder,
    load_pretrained,
    plan_checkpoint,
    save_pretrained,
)
from xlt_engine.model.config import BertConfig
from xlt_engine.model.heads import SequenceClassificationHead, TokenClassificationHead, VotersModule

__all__ = [
    "BertConfig",
    "BertEncoder",
    "BertForMLM",
    "SequenceClassificationHead",
    "TokenClassificationHead",
    "VotersModule",
    "load_encoder",
    "load_pretrained",
    "plan_checkpoint",
    "save_pretrained",
]
