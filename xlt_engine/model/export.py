"""Export a task model as a standard Hugging Face classification folder, for the tools people
already have (``AutoModelForTokenClassification``, ``pipeline("ner", model=...)``).

A task folder holds the encoder in Hugging Face layout and the head apart (``voters.safetensors``,
``task.json``), so transformers loads it as a ``BertModel`` only. ``export_hf`` writes the same
weights under the names of one of transformers' classes, with ``id2label`` / ``label2id``, when
that class computes exactly what the task model computes (dropout aside, which both skip in
eval mode):

- token tasks with the linear head (one voter, no hidden layer): ``BertForTokenClassification``
  (``XLMRobertaForTokenClassification`` / ``RobertaForTokenClassification`` for that family).
  transformers scores every sub-token; the engine reads a word's first one, as
  ``pipeline("ner", aggregation_strategy="first")`` does.
- sequence tasks with the linear head on the pooler (``representation = "pooler"``):
  ``BertForSequenceClassification`` (the pooler, then the classifier); for the RoBERTa family
  ``XLMRobertaForSequenceClassification``, whose head is that same tanh(dense(h[<s>])) followed
  by a linear layer.

Refused, with the reason, because no transformers class computes them:

- the Voters Module (several voters): its prediction is the mean of the voters' softmax
  probabilities, and each voter has its own hidden layer (H -> d -> H with GELU). No single
  linear classifier gives the same probabilities; averaging the voters' weights or logits would
  change the predictions, so it is not offered. Train with ``model.head = "linear"`` for an
  exportable model, or use the engine's own ``evaluate`` / ``predict``.
- sequence tasks on ``cls`` (the raw first hidden state: transformers' classes apply the pooler's
  tanh(dense) first) or ``mean`` (no transformers classification class pools by the mean).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from xlt_engine.fileio import atomic_folder
from xlt_engine.inputs import read_json
from xlt_engine.model.checkpoint import NonFiniteWeights
from xlt_engine.model.config import BertConfig
from xlt_engine.model.families import get_family
from xlt_engine.model.heads import LINEAR
from xlt_engine.model.task import TASK_FILE, VOTERS_FILE, read_task_meta
from xlt_engine.outputs import claim_output, record_output

NOT_COPIED = ("model.safetensors", "config.json", VOTERS_FILE, TASK_FILE)


def exportable(meta: dict) -> str | None:
    """Why a task model (its ``task.json``) cannot be exported, or None when it can."""
    if meta["num_voters"] != 1 or list(meta["widths"]) != [LINEAR]:
        return (
            f"its head is the Voters Module ({meta['num_voters']} voters, widths "
            f"{meta['widths']}): its prediction is the mean of the voters' softmax "
            "probabilities, each through its own hidden layer, which no single linear "
            "classifier reproduces (averaging weights or logits would change the predictions). "
            'Train with model.head = "linear" for an exportable model, or use xlt-engine '
            "evaluate / predict"
        )
    if meta["kind"] == "sequence" and meta["representation"] != "pooler":
        return (
            f"it classifies the {meta['representation']!r} representation; transformers' "
            "sequence classifiers apply the pooler (tanh(dense(h[CLS]))) first, so only a "
            "model trained with model.representation = 'pooler' exports exactly"
        )
    return None


def export_hf(model_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``model_dir`` (a task model folder) to ``out_dir`` as a transformers classification
    folder (``config.json`` with ``architectures``, ``id2label``, ``label2id``;
    ``model.safetensors``; the tokenizer files), atomically. ``out_dir`` is new, empty or an
    earlier export (``outputs.claim_output``; ``overwrite``: any folder but the model's). Raises
    ``ValueError`` naming why a model cannot be exported exactly (see the module docstring), or
    the tensors holding NaN or inf (nothing is written)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    claim_output(out_dir, "OUT", "export", folder=True, reads=[model_dir], overwrite=overwrite)
    meta = read_task_meta(model_dir)
    why = exportable(meta)
    if why is not None:
        raise ValueError(f"{model_dir}: cannot be exported as a transformers model: {why}")
    cfg = read_json(model_dir / "config.json")
    family = get_family(BertConfig.from_json(model_dir / "config.json").model_type)
    cls = family.classifiers[meta["kind"] == "sequence"]
    prefix = family.prefix
    stored = load_file(str(model_dir / "model.safetensors"))
    head = load_file(str(model_dir / VOTERS_FILE))
    weight, bias = head["voters.0.classifier.weight"], head["voters.0.classifier.bias"]
    tensors = {k: v for k, v in stored.items() if not k.split(".", 1)[-1].startswith("pooler.")}
    pooler = {k.split("pooler.", 1)[1]: v for k, v in stored.items() if ".pooler." in f".{k}"}
    if meta["kind"] == "sequence" and family.sequence_head == "pooler":
        tensors |= {f"{prefix}pooler.{k}": v for k, v in pooler.items()}
        tensors |= {"classifier.weight": weight, "classifier.bias": bias}
    elif meta["kind"] == "sequence":  # RobertaClassificationHead: dense, tanh, out_proj
        tensors |= {f"classifier.dense.{k.split('.')[-1]}": v for k, v in pooler.items()}
        tensors |= {"classifier.out_proj.weight": weight, "classifier.out_proj.bias": bias}
    else:
        tensors |= {"classifier.weight": weight, "classifier.bias": bias}
    labels = list(meta["labels"])
    cfg |= {
        "architectures": [cls],
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "classifier_dropout": meta["dropout"],
    }
    cfg.pop("tie_word_embeddings", None)  # no MLM head: nothing tied
    NonFiniteWeights.refuse_writing(model_dir, tensors)  # what is written, not only what is read
    with atomic_folder(out_dir) as tmp:
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        for f in sorted(model_dir.iterdir()):
            if f.is_file() and f.name not in NOT_COPIED:
                shutil.copy2(f, tmp / f.name)  # the tokenizer's files
        record_output(tmp, "export", entries=[p.name for p in tmp.iterdir()])
    return out_dir
