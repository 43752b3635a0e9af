"""A task model: the BERT encoder plus a ``VotersModule``, for sequence classification (one
vector per input: CLS-10, MARC, XNLI) or token classification (one label per word, on its first
sub-token: CoNLL NER).

A sequence is represented (``REPRESENTATIONS``) by its first position's last hidden state
(``cls``, BERT fine-tuning's default), by BERT's pooler over it (``pooler``: tanh(dense(h[CLS])),
for checkpoints that ship ``pooler.dense``, as LaBSE does), or by the mean of the last hidden
state over the attention mask (``mean``: how e5 and most sentence-embedding models pool).

Saved as a Hugging Face folder (``config.json``, ``model.safetensors`` with the encoder under
``bert.*``, the tokenizer) plus ``voters.safetensors`` and ``task.json`` (kind, label names,
voter widths, dropout, representation). transformers' ``BertModel`` loads the encoder from the
same folder and ignores the two extra files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from xlt_engine.inputs import DuplicateKeyError, read_json
from xlt_engine.model.bert import BertEncoder
from xlt_engine.model.checkpoint import NonFiniteWeights, load_encoder, save_pretrained
from xlt_engine.model.heads import VotersModule

KINDS = ("sequence", "token")
REPRESENTATIONS = ("cls", "pooler", "mean")
TASK_FILE = "task.json"
VOTERS_FILE = "voters.safetensors"


def check_representation(representation: str, kind: str, encoder: BertEncoder) -> None:
    if representation not in REPRESENTATIONS:
        raise ValueError(
            f"representation must be one of {', '.join(REPRESENTATIONS)}, got {representation!r}"
        )
    if kind == "token" and representation != "cls":
        raise ValueError(
            f"representation {representation!r} is for sequence tasks: token classification "
            "labels every word's first sub-token (leave representation = 'cls')"
        )
    if representation == "pooler" and encoder.pooler is None:
        raise ValueError(
            "representation 'pooler': the encoder has no pooler (its checkpoint holds no "
            "pooler.dense weights); use 'cls' or 'mean'"
        )


def represent(
    encoder: BertEncoder,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
    representation: str,
) -> torch.Tensor:
    """[B, T, H] last hidden state -> [B, H] sentence vectors (see the module docstring)."""
    if representation == "cls":
        return hidden[:, 0]
    if representation == "pooler":
        return encoder.pooled(hidden)
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    # a fully padded row (never made by the batcher) gives zeros, not NaN
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class TaskModel(nn.Module):
    """encoder + voters. ``forward`` returns voter logits ``[M, B, C]`` (sequence) or, for
    tokens, ``[M, N, C]`` at the flat ``positions`` (indices into B*T) when given, else
    ``[M, B, T, C]``."""

    def __init__(
        self,
        encoder: BertEncoder,
        voters: VotersModule,
        kind: str,
        labels: Sequence[str],
        representation: str = "cls",
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if len(labels) != voters.num_labels:
            raise ValueError(f"{len(labels)} label names for {voters.num_labels} voter classes")
        check_representation(representation, kind, encoder)
        self.encoder, self.voters, self.kind, self.labels = encoder, voters, kind, list(labels)
        self.representation = representation
        self.config = encoder.config

    def idle_parameters(self) -> list[str]:
        """Parameters this model never reads (the pooler, unless it is the representation):
        ``loop.prepare`` freezes them, as DDP needs every trainable parameter to get a
        gradient."""
        if self.representation == "pooler":
            return []
        return [n for n, _ in self.named_parameters() if n.startswith("encoder.pooler.")]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        features: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``features`` (sequence tasks): also return the sentence representations [B, H] the
        voters read, as ``(logits, features)``."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        if self.kind == "sequence":
            reps = represent(self.encoder, hidden, attention_mask, self.representation)
            logits = self.voters(reps)  # (M, B, C)
            return (logits, reps) if features else logits
        if features:
            raise ValueError("features: token classification has no sentence representation")
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
    representation: str = "cls",
) -> TaskModel:
    """``encoder`` plus a freshly initialised ``VotersModule`` (on the encoder's device)."""
    check_representation(representation, kind, encoder)  # before drawing any weights
    p = next(encoder.parameters())
    voters = VotersModule(encoder.config.hidden_size, len(labels), num_voters, widths, dropout)
    voters = voters.to(device=p.device, dtype=p.dtype)
    return TaskModel(encoder, voters, kind, labels, representation)


def save_task_model(model: TaskModel, out_dir: str | Path, tokenizer=None) -> Path:
    """Write the model folder atomically (see the module docstring)."""
    voters = model.voters
    meta = {
        "kind": model.kind,
        "labels": model.labels,
        "num_voters": voters.num_voters,
        "widths": voters.widths,
        "dropout": voters.voters[0].dropout.p,
        "representation": model.representation,
    }

    tensors = {k: v.detach().cpu().contiguous() for k, v in voters.state_dict().items()}
    NonFiniteWeights.refuse_writing(Path(out_dir) / VOTERS_FILE, tensors)  # before any write

    def extra(folder: Path) -> None:
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
        meta = read_json(meta_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path}: not valid JSON: {err}") from None
    for key in ("kind", "labels", "num_voters", "widths", "dropout"):
        if key not in meta:
            raise ValueError(f"{meta_path}: missing key {key!r}")
    if meta["kind"] not in KINDS:
        raise ValueError(f"{meta_path}: kind {meta['kind']!r} is not one of {KINDS}")
    labels = meta["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{meta_path}: labels: expected a non-empty list of strings")
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:  # two output rows of one name: predictions would be mislabelled
        raise DuplicateKeyError(f"{meta_path}: labels: {twice} given twice; each label once")
    meta.setdefault("representation", "cls")  # folders written before it was a setting
    if meta["representation"] not in REPRESENTATIONS:
        raise ValueError(
            f"{meta_path}: representation {meta['representation']!r} is not one of "
            f"{', '.join(REPRESENTATIONS)}"
        )
    return meta


def load_task_model(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    allow_nonfinite: bool = False,
) -> TaskModel:
    """Load a folder written by ``save_task_model``; returned in eval mode. NaN or inf weights
    (encoder or head) are refused, naming the tensors, unless ``allow_nonfinite``."""
    path = Path(path)
    meta = read_task_meta(path)
    encoder = load_encoder(path, dtype=dtype, device=device, allow_nonfinite=allow_nonfinite)
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
    nonfinite = NonFiniteWeights(path / VOTERS_FILE)
    for k in sorted(state):
        nonfinite.check(k, state[k], state[k].to(dtype) if state[k].dtype != dtype else None)
    nonfinite.refuse(allow_nonfinite)
    voters.load_state_dict(state)
    try:
        model = TaskModel(
            encoder,
            voters.to(device=device, dtype=dtype),
            meta["kind"],
            meta["labels"],
            meta["representation"],
        )
    except ValueError as err:
        raise ValueError(f"{path / TASK_FILE}: {err}") from None
    return model.eval()
