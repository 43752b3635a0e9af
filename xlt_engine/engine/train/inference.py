"""Inference for task models: voter logits for encoded items (batched by length, split over
the ranks of a torchrun job), predictions per word or text, and scores.

Logits stay on the model's device (``[M, rows, C]``), so what follows them (``voter_filter``,
``threshold_curve``) runs as Triton kernels on a GPU; only what is written to disk or scored by
label name goes to the CPU.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np
import torch

from xlt_engine.data.align import word_predictions
from xlt_engine.data.batching import length_batches, length_limit
from xlt_engine.data.task import Encoded, TaskData, encode, item_rows, make_batch, task_kind
from xlt_engine.engine.train.distributed import all_gather_rows, rank_world
from xlt_engine.engine.train.loop import stage
from xlt_engine.engine.train.metrics import accuracy, entity_confusion, entity_f1, label_confusion
from xlt_engine.engine.train.optim import resolve_precision, widest_layer
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import TaskModel, read_task_meta

EVAL_MAX_TOKENS = 16384  # padded tokens per inference batch, unless a config says otherwise
# on a CPU, at most this many: larger batches leave the caches and run slower (e5-small, fp32,
# one thread, 2026-11-27: 1,001 tokens/s at 1,024 padded tokens a batch, 1,010 at 4,096, 792 at
# 16,384, 1,025 capped here; benchmarks/results/inference_cpu_20261127.json). Another size pads
# an item to another length: e5-small's logits came out the same bits, a tiny model's within
# float rounding (tests/engine/train/test_inference.py)
CPU_MAX_TOKENS = 2048


def check_task_model(path: str | Path, format: str) -> None:
    """``path`` is a task model folder whose kind (token / sequence) suits ``format``."""
    if not Path(path).is_dir():
        raise ValueError(f"model: {path}: no such folder")
    kind = read_task_meta(path)["kind"]
    if kind != task_kind(format):
        raise ValueError(
            f"model: {path} is a {kind} classifier, format {format!r} needs "
            f"{task_kind(format)} classification"
        )


def forward_batch(
    model: torch.nn.Module, batch: dict, device: torch.device, features: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """A task model (or its DDP wrapper) on a ``make_batch`` batch: voter logits [M, rows, C]
    (``features``: and the sentence representations [B, H], as ``TaskModel.forward``)."""
    types = batch.get("token_type_ids")
    return model(
        batch["input_ids"].to(device, non_blocking=True),
        batch["attention_mask"].to(device, non_blocking=True),
        types.to(device, non_blocking=True) if types is not None else None,
        batch["positions"].to(device, non_blocking=True),
        features=features,
    )


@torch.inference_mode()
def predict_logits(
    model: TaskModel,
    enc: Encoded,
    pad_id: int,
    device: torch.device,
    max_tokens: int = EVAL_MAX_TOKENS,
    amp_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype = torch.float32,
    split_ranks: bool = False,
) -> torch.Tensor:
    """Voter logits ``[M, rows, C]`` (on ``device``, ``out_dtype``) for every position of every
    item, rows in input order. Items are batched by length (at most ``max_tokens`` padded
    tokens; on a CPU at most ``CPU_MAX_TOKENS``). ``split_ranks``: under torchrun each rank runs
    a share of the items and every rank gets all rows back (``split_over_ranks``)."""
    M, C = model.voters.num_voters, model.voters.num_labels
    if split_ranks and rank_world()[1] > 1:
        args = (pad_id, device, max_tokens, amp_dtype, out_dtype)
        return split_over_ranks(
            enc, lambda part: predict_logits(model, part, *args), (M, C), device
        )
    if device.type == "cpu":
        max_tokens = min(max_tokens, CPU_MAX_TOKENS)
    was_training = model.training
    model.eval()
    offsets = enc.row_offsets
    out = torch.empty(M, int(offsets[-1]), C, dtype=out_dtype, device=device)
    lengths = enc.lengths
    order = np.argsort(lengths, kind="stable")
    longest = int(lengths.max()) if len(lengths) else 0
    limit = length_limit(lengths)
    batches = length_batches(
        lengths[order], None, max(max_tokens, -(-longest // 8) * 8), shuffle=False
    )
    bar = None
    if len(batches) > 1 and rank_world()[0] == 0 and sys.stderr.isatty():
        # a long inference pass (evaluate, teacher probabilities) shows where it is
        bar = click.progressbar(
            length=len(batches), label="inference", file=sys.stderr, show_eta=True
        )
        bar.__enter__()
    try:
        for b in batches:
            if bar is not None:
                bar.update(1)
            items = order[b]
            batch = make_batch(enc, items, pad_id, limit=limit)
            batch["rows"] = torch.from_numpy(item_rows(offsets, items))
            batch = stage(batch, device)  # pinned, no host wait on CUDA
            with torch.autocast(
                device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
            ):
                logits = forward_batch(model, batch, device)
            out[:, batch["rows"]] = logits.to(out_dtype)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
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
    return Encoded(
        enc.kind, enc.input_ids[lo:hi], types, enc.positions[lo:hi], enc.targets[lo:hi], None
    )


def split_over_ranks(enc: Encoded, predict, shape: tuple[int, int], device) -> torch.Tensor:
    """``predict(items)`` with the work split over the ranks of a torchrun job: each rank runs
    a contiguous share of the items (``shard_items``) and every rank gets all the rows back,
    ``[M, rows, C]`` on ``device``, in input order. ``shape``: (M, C)."""
    rank, world = rank_world()
    bounds = shard_items(enc.lengths, world)
    offsets = enc.row_offsets
    rows = [int(offsets[bounds[k + 1]] - offsets[bounds[k]]) for k in range(world)]
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])
    part = predict(items_of(enc, lo, hi)) if hi > lo else torch.empty(shape[0], 0, shape[1])
    return all_gather_rows(part.to(device), rows, device)


def predicted_labels(enc: Encoded, logits: torch.Tensor, labels: Sequence[str]) -> list:
    """Mean-of-voters argmax -> token: one tag list per sentence (one tag per word);
    sequence: one label per item."""
    best = VotersModule.probs(logits).argmax(-1).cpu().numpy()
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
        return {
            "metric": "accuracy",
            "score": accuracy(data.labels, predictions),
            "examples": len(data),
            "confusion": label_confusion(data.labels, predictions),
        }
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
        "per_type_scores": {  # precision, recall, F1 and gold support per entity type
            t: {"precision": s.precision, "recall": s.recall, "f1": s.f1, "support": s.support}
            for t, s in default.per_type.items()
        },
        "confusion": entity_confusion(data.labels, predictions),  # entity spans, default mode
        "sentences": len(data),
    }


def inference_dtype(model: torch.nn.Module, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``model``'s inference on ``device`` (``precision = "auto"``):
    bf16 on CUDA, and on a CPU where training runs in bf16 too (native bf16 and a wide model:
    e5-small's forward ran 3.2x fp32's tokens/s on one thread); else fp32."""
    return resolve_precision("auto", device, widest_layer(model))


def evaluate_model(
    model: TaskModel, data, tok, max_len: int, device, max_tokens: int, enc=None, wall=None
) -> dict:
    """Score ``model`` on labeled ``TaskData`` (finetune's dev set, evaluate's test sets);
    ``enc``: ``data`` already encoded with the model's labels. ``wall``: a dict that gains
    the seconds of ``encoding``, the ``forward-only passes`` and ``scoring``."""
    clock = Parts(wall)
    if enc is None:
        with clock("encoding"):
            enc = encode(data, tok, model.labels, max_len)
    amp = inference_dtype(model, device)
    with clock("forward-only passes"):
        logits = predict_logits(model, enc, tok.pad_id, device, max_tokens, amp)
    with clock("scoring"):
        return score(data, predicted_labels(enc, logits, model.labels))


class Parts:
    """Seconds added into ``wall[part]`` by ``with clock(part):`` (nothing when ``wall`` is
    None); a CUDA device is synchronized at each end, so a part holds its kernels."""

    def __init__(self, wall: dict | None):
        self.wall = wall

    @contextlib.contextmanager
    def __call__(self, part: str):
        if self.wall is None:
            yield
            return
        _sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.wall[part] = self.wall.get(part, 0.0) + time.perf_counter() - t0


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def ensemble_probs(
    members: Sequence[tuple[TaskModel, object]],
    data,
    max_len: int,
    device,
    max_tokens: int,
    wall: dict | None = None,
) -> torch.Tensor:
    """The mean of several task models' mean-of-voters probabilities ``[items, C]`` (fp32, on
    the CPU) on sequence ``TaskData``; ``members``: (model, its tokenizer) pairs with the same
    labels, each reading the text with its own tokenizer; ``wall`` as ``evaluate_model``'s."""
    clock = Parts(wall)
    total = None
    for model, tok in members:
        with clock("encoding"):
            enc = encode(data, tok, model.labels, max_len)
        amp = inference_dtype(model, device)
        with clock("forward-only passes"):
            logits = predict_logits(model, enc, tok.pad_id, device, max_tokens, amp)
        probs = VotersModule.probs(logits.float()).cpu()
        total = probs if total is None else total + probs
    return total / len(members)
