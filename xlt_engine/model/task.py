"""A task model: the BERT encoder plus a ``VotersModule``, for sequence classification (the
[CLS] position: CLS-10, MARC, XNLI) or token classification (one label per word, on its first
sub-token: CoNLL NER).

Saved as a Hugging Face folder (``config.json``, ``model.safetensors`` with the encoder under
``bert.*``, the tokenizer) plus ``voters.safetensors`` and ``task.json`` (kind, label names,
voter widths, dropout). transformers' ``BertModel`` loads the encoder from the same folder and
ignores the two extra files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from xlt_engine.model.bert import BertEncoder
from xlt_engine.model.checkpoint import load_encoder, save_pretrained
from xlt_engine.model.heads import VotersModule

KINDS = ("sequence", "token")
TASK_FILE = "task.json"
VOTERS_FILE = "voters.safetensors"


class TaskModel(nn.Module):
    """encoder + voters. ``forward`` returns voter logits ``[M, B, C]`` (sequence) or, for
    tokens, ``[M, N, C]`` at the flat ``positions`` (indices into B*T) when given, else
    ``[M, B, T, C]``."""

    def __init__(
        self, encoder: BertEncoder, voters: VotersModule, kind: str, labels: Sequence[str]
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if len(labels) != voters.num_labels:
            raise ValueError(f"{len(labels)} label names for {voters.num_labels} voter classes")
        self.encoder, self.voters, self.kind, self.labels = encoder, voters, kind, list(labels)
        self.config = encoder.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        if self.kind == "sequence":
            return self.voters(hidden[:, 0])  # (M, B, C)
        if positions is not None:
            B, T, H = hidden.shape
            return self.voters(hidden.reshape(B * T, H).index_select(0, positions))  # (M, N, C)
        return self.voters(hidden)  # (M, B, T, C)


def new_task_model(
    encoder: BertEncoder,
    kind: str,
    labels: Sequence[str],
    num_voters: int = 3,
    widths: Sequence[int] | None = None,
    dropout: float = 0.1,
) -> TaskModel:
    """``encoder`` plus a freshly initialised ``VotersModule`` (on the encoder's device)."""
    p = next(encoder.parameters())
    voters = VotersModule(encoder.config.hidden_size, len(labels), num_voters, widths, dropout)
    return TaskModel(encoder, voters.to(device=p.device, dtype=p.dtype), kind, labels)


def save_task_model(model: TaskModel, out_dir: str | Path, tokenizer=None) -> Path:
    """Write the model folder atomically (see the module docstring)."""
    voters = model.voters
    meta = {
        "kind": model.kind,
        "labels": model.labels,
        "num_voters": voters.num_voters,
        "widths": voters.widths,
        "dropout": voters.voters[0].dropout.p,
    }

    def extra(folder: Path) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in voters.state_dict().items()}
        save_file(tensors, str(folder / VOTERS_FILE), metadata={"format": "pt"})
        (folder / TASK_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    return save_pretrained(model.encoder, out_dir, tokenizer, extra=extra)


def read_task_meta(path: str | Path) -> dict:
    path = Path(path)
    meta_path = path / TASK_FILE
    if not meta_path.is_file():
        raise ValueError(
            f"{path}: no {TASK_FILE}: not a fine-tuned task model (a Base Model or mBERT folder "
            "needs the finetune stage first)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path}: not valid JSON: {err}") from None
    for key in ("kind", "labels", "num_voters", "widths", "dropout"):
        if key not in meta:
            raise ValueError(f"{meta_path}: missing key {key!r}")
    if meta["kind"] not in KINDS:
        raise ValueError(f"{meta_path}: kind {meta['kind']!r} is not one of {KINDS}")
    return meta


def load_task_model(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> TaskModel:
    """Load a folder written by ``save_task_model``; returned in eval mode."""
    path = Path(path)
    meta = read_task_meta(path)
    encoder = load_encoder(path, dtype=dtype, device=device)
    voters = VotersModule(
        encoder.config.hidden_size,
        len(meta["labels"]),
        meta["num_voters"],
        meta["widths"],
        meta["dropout"],
    )
    state = load_file(str(path / VOTERS_FILE))
    expected = voters.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or bad:
        raise ValueError(
            f"{path / VOTERS_FILE}: does not match {TASK_FILE}: missing {missing}, unexpected "
            f"{unexpected}, wrong shape {bad}"
        )
    voters.load_state_dict(state)
    model = TaskModel(encoder, voters.to(device=device, dtype=dtype), meta["kind"], meta["labels"])
    return model.eval()
