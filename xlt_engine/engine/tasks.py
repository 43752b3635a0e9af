"""Task data for the finetune / evaluate / predict stages: read a file in any supported format,
encode it for a ``TaskModel``, batch it, predict, score.

One representation serves both task kinds. Every encoded item is an input sequence plus the
positions whose hidden states are classified and one target per position: for token
classification (CoNLL) an item is a window of a sentence and its positions are the first
sub-tokens of its words; for sequence classification an item is a text (or pair) and its single
position is [CLS]. A batch carries those positions as flat indices into B*T, so only they reach
the voters, and the voter logits come back as ``[M, rows, C]`` with rows in input order (for
NER: every word of every sentence, in order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xlt_engine.data.align import IGNORE, AlignedWords, align_words, encode_texts, word_predictions
from xlt_engine.data.batching import length_batches, pad_batch, shard
from xlt_engine.data.cls10 import read_cls10
from xlt_engine.data.conll import ConllFile, read_conll
from xlt_engine.data.marc import read_marc
from xlt_engine.data.text import read_labeled
from xlt_engine.data.tokenizer import WordPieceTokenizer
from xlt_engine.data.xnli import read_xnli
from xlt_engine.engine.distributed import all_gather_rows, rank_world
from xlt_engine.engine.loop import resolve_precision
from xlt_engine.engine.metrics import accuracy, entity_f1
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import TaskModel

FORMATS = ("conll", "cls10", "marc", "xnli", "jsonl", "tsv")


def task_kind(format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    return "token" if format == "conll" else "sequence"


@dataclass
class TaskData:
    """The examples of one file. token: ``inputs`` are word lists and ``labels`` tag lists;
    sequence: ``inputs`` are texts (``pairs`` the second texts) and ``labels`` strings.
    ``labels`` is None for unlabeled data."""

    path: Path
    format: str
    kind: str
    inputs: list
    pairs: list[str] | None
    labels: list | None
    lines: list[int]  # 1-based line of each example in its file
    conll: ConllFile | None = None

    def __len__(self) -> int:
        return len(self.inputs)

    def label_set(self) -> list[str]:
        if self.labels is None:
            return []
        if self.kind == "token":  # O, then B-X and I-X for every entity type X seen
            types = sorted({t[2:] for tags in self.labels for t in tags if t != "O"})
            return ["O"] + [f"{p}-{t}" for t in types for p in "BI"]
        return sorted(set(self.labels))


def read_task_file(path: str | Path, format: str, unlabeled: bool = False) -> TaskData:
    """Read ``path`` in ``format``; ``unlabeled``: the labels (if any) are not kept."""
    kind = task_kind(format)
    path = Path(path)
    if format == "conll":
        cf = read_conll(path)
        tags = None if unlabeled else [s.tags for s in cf]
        return TaskData(path, format, kind, [s.tokens for s in cf], None, tags,
                        [s.line for s in cf], cf)  # fmt: skip
    if format == "cls10":
        ds = read_cls10(path, unlabeled=unlabeled)
    elif format == "marc":
        ds = read_marc(path, unlabeled=unlabeled)
    elif format == "xnli":
        ds = read_xnli(path, unlabeled=unlabeled)
    else:
        ds = read_labeled(path, format)
    if not len(ds):
        raise ValueError(f"{path}: no examples")
    pairs = [e.text_pair for e in ds]
    if all(p is None for p in pairs):
        pairs = None
    elif any(p is None for p in pairs):
        line = next(e.line for e in ds if e.text_pair is None)
        raise ValueError(f"{path}:{line}: a text without a pair in a file of pairs")
    labels = None if unlabeled else ds.labels
    if labels is not None and any(lab is None for lab in labels):
        line = next(e.line for e in ds if e.label is None)
        raise ValueError(f"{path}:{line}: example without a label")
    return TaskData(path, format, kind, ds.texts, pairs, labels, [e.line for e in ds])


def check_known_labels(data: TaskData, labels: Sequence[str]) -> None:
    """Every label of ``data`` must be one the model knows."""
    if data.labels is None:
        return
    unknown = sorted(set(data.label_set()) - set(labels))
    if unknown:
        raise ValueError(
            f"{data.path}: labels {unknown} are not among the model's labels {list(labels)}"
        )


@dataclass
class Encoded:
    """Model inputs: per item ids, token types (or None), positions and targets."""

    kind: str
    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray] | None
    positions: list[np.ndarray]  # int64 positions classified in each item
    targets: list[np.ndarray]  # int64 per position (-100: no label)
    aligned: AlignedWords | None  # token: to map rows back to words
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.input_ids], dtype=np.int64)

    @property
    def row_offsets(self) -> np.ndarray:
        """Start of each item's rows in the concatenated rows; last entry: the total."""
        return np.concatenate([[0], np.cumsum([len(p) for p in self.positions])]).astype(np.int64)


def encode(data: TaskData, tok: WordPieceTokenizer, labels: Sequence[str], max_len: int) -> Encoded:
    """Encode ``data`` with label ids from ``labels`` (the model's label order)."""
    index = {name: i for i, name in enumerate(labels)}
    check_known_labels(data, labels)
    if data.kind == "token":
        ids = None
        if data.labels is not None:
            ids = [[index[t] for t in tags] for tags in data.labels]
        aligned = align_words(tok, data.inputs, ids, max_len)
        ws = aligned.windows
        return Encoded(
            "token", [w.input_ids for w in ws], None,
            [w.word_positions.astype(np.int64) for w in ws],
            [w.labels[w.word_positions] for w in ws], aligned,
        )  # fmt: skip
    enc = encode_texts(tok, data.inputs, data.pairs, max_len)
    types = enc.token_type_ids if data.pairs is not None else None
    zero = np.zeros(1, dtype=np.int64)
    if data.labels is None:
        targets = [np.full(1, IGNORE, dtype=np.int64) for _ in data.inputs]
    else:
        targets = [np.array([index[lab]], dtype=np.int64) for lab in data.labels]
    return Encoded("sequence", enc.input_ids, types, [zero] * len(targets), targets, None,
                   enc.truncated)  # fmt: skip


def make_batch(enc: Encoded, items: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """Padded inputs of ``items`` plus ``positions`` (flat indices into B*T) and ``targets``."""
    seqs = [enc.input_ids[i] for i in items]
    types = [enc.token_type_ids[i] for i in items] if enc.token_type_ids is not None else None
    batch = pad_batch(seqs, pad_id, token_type_ids=types)
    T = batch["input_ids"].shape[1]
    flat = [b * T + enc.positions[i] for b, i in enumerate(items)]
    batch["positions"] = torch.from_numpy(np.concatenate(flat))
    batch["targets"] = torch.from_numpy(np.concatenate([enc.targets[i] for i in items]))
    return batch


class TaskBatches:
    """A ``DataSource`` over encoded items: length-bucketed batches shuffled per epoch from
    (seed, epoch), sharded round-robin by rank."""

    def __init__(
        self, enc: Encoded, pad_id: int, batch_size: int, max_tokens: int | None, seed: int
    ):
        self.enc, self.pad_id, self.batch_size, self.max_tokens = (
            enc,
            pad_id,
            batch_size,
            max_tokens,
        )
        self.seed = seed
        self.lengths = enc.lengths
        self.rank, self.world = rank_world()
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def _batches(self, epoch: int) -> list[np.ndarray]:
        if self._epoch is None or self._epoch[0] != epoch:
            b = length_batches(self.lengths, self.batch_size, self.max_tokens, seed=self.seed,
                               epoch=epoch)  # fmt: skip
            self._epoch = (epoch, shard(b, self.rank, self.world))
        return self._epoch[1]

    def num_batches(self, epoch: int) -> int:
        return len(self._batches(epoch))

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        return make_batch(self.enc, self._batches(epoch)[index], self.pad_id)


def voters_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``[M, N, C]`` voter logits against ``[N]`` targets (-100 ignored),
    averaged over voters (each voter sees the same rows, so this is the mean over all)."""
    M, N, C = logits.shape
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(M * N, C), targets.repeat(M), ignore_index=IGNORE
    )


@torch.inference_mode()
def predict_logits(
    model: TaskModel,
    enc: Encoded,
    pad_id: int,
    device: torch.device,
    max_tokens: int = 16384,
    amp_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Voter logits ``[M, rows, C]`` (on CPU, ``out_dtype``) for every position of every item,
    rows in input order. Items are batched by length (at most ``max_tokens`` padded tokens)."""
    was_training = model.training
    model.eval()
    offsets = enc.row_offsets
    M, C = model.voters.num_voters, model.voters.num_labels
    out = torch.empty(M, int(offsets[-1]), C, dtype=out_dtype)
    lengths = enc.lengths
    order = np.argsort(lengths, kind="stable")
    longest = int(lengths.max()) if len(lengths) else 0
    batches = length_batches(lengths[order], None, max(max_tokens, -(-longest // 8) * 8),
                             shuffle=False)  # fmt: skip
    try:
        for b in batches:
            items = order[b]
            batch = make_batch(enc, items, pad_id)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):  # fmt: skip
                logits = model(
                    batch["input_ids"].to(device), batch["attention_mask"].to(device),
                    batch["token_type_ids"].to(device) if "token_type_ids" in batch else None,
                    batch["positions"].to(device),
                )  # fmt: skip
            logits = logits.to("cpu", out_dtype)
            rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in items])
            out[:, torch.from_numpy(rows)] = logits
    finally:
        model.train(was_training)
    return out


def shard_items(lengths: np.ndarray, world: int) -> np.ndarray:
    """Boundaries ``[world + 1]`` that cut items ``0..n`` into ``world`` contiguous shares of
    about equal token counts (rank ``k`` takes items ``bounds[k]:bounds[k + 1]``)."""
    cum = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    bounds = np.searchsorted(cum, cum[-1] * np.arange(world + 1) / world, side="left")
    bounds[0], bounds[-1] = 0, len(lengths)
    return np.maximum.accumulate(bounds)


def items_of(enc: Encoded, lo: int, hi: int) -> Encoded:
    """Items ``lo:hi`` of ``enc`` (no word alignment: for inference only)."""
    types = None if enc.token_type_ids is None else enc.token_type_ids[lo:hi]
    return Encoded(enc.kind, enc.input_ids[lo:hi], types, enc.positions[lo:hi],
                   enc.targets[lo:hi], None)  # fmt: skip


def predict_logits_all_ranks(
    model: TaskModel,
    enc: Encoded,
    pad_id: int,
    device: torch.device,
    max_tokens: int = 16384,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``predict_logits`` with the work split over the ranks of a torchrun job: each rank runs
    a contiguous share of the items (``shard_items``) and every rank gets all the rows back,
    ``[M, rows, C]`` fp32 on CPU, in input order. One process: ``predict_logits`` itself."""
    rank, world = rank_world()
    if world == 1:
        return predict_logits(model, enc, pad_id, device, max_tokens, amp_dtype)
    bounds = shard_items(enc.lengths, world)
    offsets = enc.row_offsets
    rows = [int(offsets[bounds[k + 1]] - offsets[bounds[k]]) for k in range(world)]
    M, C = model.voters.num_voters, model.voters.num_labels
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    part = torch.empty(M, 0, C)
    if hi > lo:
        part = predict_logits(model, items_of(enc, lo, hi), pad_id, device, max_tokens, amp_dtype)
    return all_gather_rows(part, rows, device)


def predicted_labels(enc: Encoded, logits: torch.Tensor, labels: Sequence[str]) -> list:
    """Mean-of-voters argmax -> token: one tag list per sentence (one tag per word);
    sequence: one label per item."""
    best = VotersModule.probs(logits).argmax(-1).numpy()
    if enc.kind == "sequence":
        return [labels[i] for i in best]
    offsets = enc.row_offsets
    per_window = [best[offsets[i] : offsets[i + 1]] for i in range(len(enc))]
    return [[labels[i] for i in sent] for sent in word_predictions(enc.aligned, per_window)]


def score(data: TaskData, predictions: list) -> dict:
    """token: entity F1 (seqeval default and strict modes); sequence: accuracy."""
    if data.labels is None:
        raise ValueError(f"{data.path}: no labels to score against")
    if data.kind == "sequence":
        return {"metric": "accuracy", "score": accuracy(data.labels, predictions),
                "examples": len(data)}  # fmt: skip
    default = entity_f1(data.labels, predictions, mode="default")
    strict = entity_f1(data.labels, predictions, mode="strict")
    return {
        "metric": "entity_f1",
        "score": default.f1,
        "precision": default.precision,
        "recall": default.recall,
        "strict_f1": strict.f1,
        "strict_precision": strict.precision,
        "strict_recall": strict.recall,
        "per_type": {t: s.f1 for t, s in default.per_type.items()},
        "sentences": len(data),
    }


def evaluate_model(
    model: TaskModel, data, tok, max_len: int, device, max_tokens: int, enc=None
) -> dict:
    """Score ``model`` on labeled ``TaskData`` (finetune's dev set, evaluate's test sets);
    ``enc``: ``data`` already encoded with the model's labels."""
    if enc is None:
        enc = encode(data, tok, model.labels, max_len)
    amp = resolve_precision("auto", device)
    logits = predict_logits(model, enc, tok.pad_id, device, max_tokens, amp)
    return score(data, predicted_labels(enc, logits, model.labels))
