"""From-scratch BERT encoder, task heads and Hugging Face checkpoint interop."""

from xlt_engine.model.bert import BertEncoder, BertForMLM
from xlt_engine.model.checkpoint import (
    load_encoder,
    load_pretrained,
    plan_checkpoint,
    save_pretrained,
)
from xlt_engine.model.config import BertConfig
from xlt_engine.model.families import ModelFamily, family_names, get_family, register_family
from xlt_engine.model.heads import SequenceClassificationHead, TokenClassificationHead, VotersModule
from xlt_engine.model.task import (
    REPRESENTATIONS,
    TaskModel,
    load_task_model,
    new_task_model,
    save_task_model,
)

__all__ = [
    "REPRESENTATIONS",
    "BertConfig",
    "BertEncoder",
    "BertForMLM",
    "ModelFamily",
    "SequenceClassificationHead",
    "TaskModel",
    "TokenClassificationHead",
    "VotersModule",
    "family_names",
    "get_family",
    "load_encoder",
    "load_pretrained",
    "load_task_model",
    "new_task_model",
    "plan_checkpoint",
    "register_family",
    "save_pretrained",
    "save_task_model",
]
