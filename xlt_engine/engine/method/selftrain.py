"""Stage ``selftrain``: cross-lingual self-training with soft and hard labels (DESIGN.md, "The
method", step 3)::

    T = fine-tuned model; D_keep = D_src
    for r = 1, 2, ...:
        S = Base Model + fresh VotersModule          # student_init = "base": the paper
          (or T's encoder + fresh VotersModule)      # student_init = "teacher"
        soft step: S fits T's probabilities on U_tgt (soft_label_mse, each voter)
        check: how S follows T (all rows, T's entity rows, each class), S on the dev files
        if r > N: stop                                # a half round ends after its soft step
        alpha[C] = choose_thresholds(S's voters on D_src, rule)  # paper: one alpha
        D_keep = rows of D_keep that S predicts correctly           # removed for good
        P = voter_filter(S's voters on U_tgt, alpha[C])            # unanimous and confident
        collapse guard (on_collapse): warn, error, or skip the hard step
        hard step: S continues with cross-entropy on D_keep + P
        check (as after the soft step)
        T = S

Where the student starts (``student_init``): the paper restores it from the Base Model every
round and gives the soft step 18,750 steps over 60,000 sentences to relearn the task from the
teacher; at a few hundred steps such a student learns "an entity" but not which kind (issue
54's measurements). ``"teacher"`` starts it from the round's teacher's encoder (with several
teachers, the first's) and fresh voters: fresh, because copied voters would make the student
the teacher itself (the soft loss's gradient nearly zero at step 0) and the voters' agreement,
which the filter reads, would be the source-trained head's rather than views fitted to the
target.

The check after every step (a diagnostic; nothing is chosen by it) records the student's
agreement with the round's teacher on the target rows: on all of them, on the rows the teacher
calls an entity (not the background class) and per class of the teacher's argmax, where a lost
class shows at once (an all-rows agreement of 97% hid a student that had lost every entity
kind but one); and its score on ``dev_files`` (the source dev file; a target dev file is read
as a diagnostic only). The hard step's student pass doubles as the next round's teacher
probabilities (linked, not computed again).

The embeddings and the bottom ``freeze_layers`` layers stay fixed in both steps
(``FreezeSettings``, as in btf and fine-tuning).

Rows are what the model classifies: a word (its first sub-token) for NER, a text for sequence
classification. Both filters work per row; an item (a sentence window, a text) with no row left
is dropped. ``filter_unit = "sequence"`` drops a whole sentence as soon as one of its words fails.

The pseudo-label rule (thresholds, how they apply, the source filter, the collapse check) lives
in ``pseudo_labels``: ``rule.name = "paper"`` is one alpha from the curve over all source rows
(the pseudo labels' precision at each t); the class-aware rules give each class its own. The
source filter (``source_filter``) keeps a row when the mean of the voters' probabilities
predicts its gold label (``correct``, the paper), when the voters agree on it above its class's
threshold (``confident``), or always (``off``). A round whose pseudo labels collapsed (almost all
one class, no entity words, a class the student predicts left out, or a source side stripped of
its entities) is named before its hard step (``on_collapse``).

Folder ``out``::

    round-<r>/teacher-probs.safetensors   T's mean-of-voters probabilities on U_tgt, fp16 [rows, C]
    round-<r>/soft/                       the soft step's loop folder; soft/model: S after it;
                                          soft/student-probs.safetensors: S's probabilities
                                          on U_tgt (the check's pass), fp16 [rows, C]
    round-<r>/threshold.json, .csv        the paper's alpha and the whole curve (threshold,
                                          accuracy, ...); each class's threshold, its source
                                          rows and precision (``classes``)
    round-<r>/source-ok.safetensors       per source row: S's agreed label (-1: none),
                                          confidence, predicted label (the source filter's input)
    round-<r>/filter.safetensors, .json   source_keep [src rows] bool, pseudo [tgt rows] int64
                                          (-1: no label), agreed / confidence / student [tgt
                                          rows]; the counts, the pseudo labels' classes, the
                                          class thresholds, how closely S follows T (the
                                          classes of both argmaxes, agreement), ``collapse``
    round-<r>/hard/                       the hard step's loop folder; hard/model: S after
                                          it; hard/student-probs.safetensors (the check's pass,
                                          round r + 1's teacher probabilities)
    model/                                the final student
    selftrain.jsonl                       one record per finished step (timings, counts;
                                          ``check`` records: agreement and dev scores)

Under torchrun the soft and hard steps train with DDP (batches sharded by rank), and each
inference pass (teacher, threshold, filter) is split over the ranks by items and gathered
(``predict_logits(..., split_ranks=True)``); rank 0 writes every artefact, the others wait and read it.

Every artefact is written atomically and marks its step as done: a killed run resumed with
``resume=True`` redoes nothing that finished, and a killed soft or hard step continues from its
latest loop checkpoint. The student's encoder digest at the start of each round is logged, so the
chain (the student of every round starts from the Base Model, or from its teacher) can be checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from xlt_engine.data.align import IGNORE
from xlt_engine.data.packed import (
    INPUT_FORMATS,
    STORE_FORMAT,
    StoreFile,
    StoreSpec,
    StoreWriter,
    build_store,
    open_store,
    release,
)
from xlt_engine.data.task import Encoded, TaskBatches, encode, item_rows, read_task_file, task_kind
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.engine.method.pseudo_labels import (
    background_class,
    check_collapse,
    pseudo_label,
    rule_settings,
    source_ok,
    thresholds_from,
)
from xlt_engine.engine.method.rules import PseudoRule, rule_names
from xlt_engine.engine.method.settings import (
    FreezeSettings,
    HeadSettings,
    SelftrainSettings,
    TaskSettings,
    check_limit,
)
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.checkpoints import latest_checkpoint
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.engine.train.inference import (
    check_task_model,
    evaluate_model,
    forward_batch,
    inference_dtype,
    items_of,
    predict_logits,
    shard_items,
)
from xlt_engine.engine.train.loop import RunIO, train
from xlt_engine.engine.train.metrics import by_name, label_counts
from xlt_engine.engine.train.optim import prepare
from xlt_engine.engine.train.progress import format_loss
from xlt_engine.fileio import (
    append_jsonl,
    atomic_folder,
    atomic_write_bytes,
    atomic_write_text,
    create_safetensors,
    fsync_dir,
    link_or_copy,
    link_tree,
    open_safetensors,
    read_jsonl,
)
from xlt_engine.kernels import soft_label_kl, soft_label_mse, voter_filter
from xlt_engine.model.checkpoint import load_encoder
from xlt_engine.model.heads import LINEAR, VotersModule
from xlt_engine.model.task import TaskModel, load_task_model, new_task_model, save_task_model

T = TypeVar("T")


TEACHER_FILE = "teacher-probs.safetensors"
STUDENT_FILE = "student-probs.safetensors"  # a step's student on U_tgt (the check's pass)
FILTER_FILE = "filter.safetensors"
SOURCE_OK_FILE = "source-ok.safetensors"
CHUNK_ITEMS = 4096  # items per inference chunk: its logits are all a pass holds at once (a
# larger chunk leaves more of the C heap behind between trims; measured with 16K-token batches:
# +7 MB at 2,048 items, +30 at 8,192, +118 at 16,384)
RELEASE_EVERY = 1  # batches between drops of a packed store's pages (``packed.release``): a
# training batch reads random items, and the kernel maps far more than it reads (measured: 576
# random rows of a 175 MB memory-mapped file left 142 MB of it resident; MADV_RANDOM changed
# nothing), so the pages go after every batch (a few madvise calls)


class CollapseError(ValueError):
    """A round's pseudo labels collapsed and ``on_collapse = "error"`` stops the run."""


@dataclass(frozen=True, kw_only=True)
class SelftrainConfig(SelftrainSettings, FreezeSettings, TaskSettings):
    """The method's settings (``SelftrainSettings``: rounds, steps, threshold, filters), what
    the soft and hard steps freeze (``FreezeSettings``) plus what this run reads and where it
    writes."""

    base_model: str  # the Base Model (btf's base-model, or mBERT): the students start from it
    # (student_init = "base"); its tokenizer is the run's
    teacher: str  # the fine-tuned task model: round 1's teacher
    source_file: str  # D_src: labeled source-language data
    unlabeled_file: str  # U_tgt: target-language data (labels, if any, are never read)
    out: str
    student_head: HeadSettings | None = None  # the students' head (its kind, voters, widths,
    # dropout and sentence vector; widths () : the teacher's when the voters are as many), or
    # None: the teacher's head
    max_source: int | None = None  # examples sampled from each source file (soft.seed)
    more_teachers: tuple[str, ...] = ()  # several sources: round 1's soft labels are the mean
    # of the teachers' probabilities (teacher and these)
    more_source_files: tuple[str, ...] = ()  # other sources' labeled data: the threshold, the
    # source filter and the hard steps use every source's rows
    unlabeled_format: str | None = None  # U_tgt's format: None (``format``) or "text" (one
    # sentence / text per line; NER words split on spaces and tabs)
    cache_dir: str | None = None  # where the packed source and target data go (None: out/cache)
    dev_files: dict[str, str] = dataclasses.field(default_factory=dict)  # language ->
    # labeled dev file: every step's student is scored on each (the check; a diagnostic)
    max_dev: int | None = None  # examples sampled from each dev file (soft.seed); None: all

    def __post_init__(self):
        SelftrainSettings.__post_init__(self)
        FreezeSettings.__post_init__(self)
        TaskSettings.__post_init__(self)
        for name in ("source_file", "unlabeled_file"):
            if not Path(getattr(self, name)).is_file():
                raise ValueError(f"{name}: {getattr(self, name)}: no such file")
        for path in self.more_source_files:
            if not Path(path).is_file():
                raise ValueError(f"more_source_files: {path}: no such file")
        if not Path(self.base_model).is_dir():
            raise ValueError(f"base_model: {self.base_model}: no such folder")
        for teacher in (self.teacher, *self.more_teachers):
            check_task_model(teacher, self.format)
        check_limit("max_source", self.max_source)
        check_limit("max_dev", self.max_dev)
        for lang, path in self.dev_files.items():
            if not Path(path).is_file():
                raise ValueError(f"dev_files.{lang}: {path}: no such file")
        if self.unlabeled_format is not None:
            if self.unlabeled_format not in INPUT_FORMATS:
                raise ValueError(
                    f"unlabeled_format must be one of {INPUT_FORMATS}, got {self.unlabeled_format!r}"
                )
            if self.unlabeled_format != "text" and (
                task_kind(self.unlabeled_format) != task_kind(self.format)
            ):
                raise ValueError(
                    f"unlabeled_format {self.unlabeled_format!r} is not a "
                    f"{task_kind(self.format)} classification format like {self.format!r}"
                )


@dataclass
class SelftrainResult:
    model: Path
    rounds: list[dict]


def encoder_digest(model: nn.Module) -> str:
    """sha256 over an encoder's parameters and buffers (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")  # no extra copy
    return h.hexdigest()


def row_units(enc: Encoded) -> np.ndarray:
    """The unit (sentence / text) of every row: for NER the sentence of the row's window."""
    counts = np.diff(enc.row_offsets)
    if enc.units is not None:
        units = np.asarray(enc.units, dtype=np.int64)
    elif enc.kind == "token":
        units = np.array([w.sentence for w in enc.aligned.windows], dtype=np.int64)
    else:
        units = np.arange(len(enc), dtype=np.int64)
    return np.repeat(units, counts)


def whole_units(ok: np.ndarray, units: np.ndarray) -> np.ndarray:
    """``ok`` per row -> True only where every row of the row's unit is ok."""
    bad_units = np.unique(units[~ok])
    return ok & ~np.isin(units, bad_units)


def labeled_items(
    enc: Encoded, targets: np.ndarray, lo: int = 0, hi: int | None = None
) -> dict[str, list]:
    """Items ``lo:hi`` of ``enc`` that have at least one of ``targets`` (one per row of those
    items, -1: none) >= 0, as lists of arrays (``StoreWriter.add``'s ``ids``, ``types``,
    ``positions``, ``targets``; the others -100)."""
    hi = len(enc) if hi is None else hi
    offsets = enc.row_offsets
    base = offsets[lo]
    items, tg = [], []
    for i in range(lo, hi):
        t = targets[offsets[i] - base : offsets[i + 1] - base]
        if (t >= 0).any():
            items.append(i)
            tg.append(np.where(t >= 0, t, IGNORE).astype(np.int64))
    return {
        "ids": [enc.input_ids[i] for i in items],
        "types": None if enc.token_type_ids is None else [enc.token_type_ids[i] for i in items],
        "positions": [enc.positions[i] for i in items],
        "targets": tg,
    }


def with_targets(enc: Encoded, targets: np.ndarray) -> Encoded:
    """``enc``'s items that have at least one target >= 0, with ``targets`` (one per row), in
    memory (``write_with_targets`` writes them to a store chunk by chunk)."""
    part = labeled_items(enc, targets)
    return Encoded(enc.kind, part["ids"], part["types"], part["positions"], part["targets"], None)


def write_with_targets(
    writer: StoreWriter, enc: Encoded, targets: np.ndarray, chunk: int = CHUNK_ITEMS
) -> int:
    """``with_targets`` into a store, ``chunk`` items at a time; ``targets`` may be a memory
    map (its pages and ``enc``'s are dropped after each chunk). Returns the items written."""
    if not enc.packed:
        raise ValueError("write_with_targets reads a packed store (data.packed.open_store)")
    offsets, written = enc.row_offsets, 0
    for lo in range(0, len(enc), chunk):
        hi = min(lo + chunk, len(enc))
        t = np.asarray(targets[offsets[lo] : offsets[hi]])
        # the items with a target, by gathers (no loop over the items)
        local = offsets[lo : hi + 1] - offsets[lo]
        labeled = np.concatenate([[0], np.cumsum(t >= 0)])
        items = np.flatnonzero(labeled[local[1:]] > labeled[local[:-1]])
        ids, lengths = enc.input_ids.take(lo + items)
        types = None if enc.token_type_ids is None else enc.token_type_ids.take(lo + items)[0]
        positions, rows = enc.positions.take(lo + items)
        kept = t[item_rows(local, items)]
        part = {"ids": ids, "lengths": lengths, "types": types, "positions": positions}
        part |= {"rows": rows, "targets": np.where(kept >= 0, kept, IGNORE)}
        n = len(part["lengths"])
        if n:
            writer.add(
                part | {"units": np.arange(n, dtype=np.int64), "lines": np.zeros(n, np.int64)}
            )
        written += n
        release(enc, *([targets] if isinstance(targets, np.memmap) else []))
    return written


class StoreBatches(TaskBatches):
    """``TaskBatches`` that drop the pages of their packed store every ``RELEASE_EVERY`` batches,
    so an epoch over a memory-mapped corpus leaves resident memory flat."""

    held: tuple = ()  # other memory maps to drop with the store's

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        if index % RELEASE_EVERY == 0:
            release(self.enc, *self.held)
        return super().batch(epoch, index)


class SoftBatches(StoreBatches):
    """``TaskBatches`` over U_tgt whose batches also carry the teacher's ``probs`` per row
    (``[rows, C]``, a tensor or a memory map)."""

    def __init__(self, enc: Encoded, probs, pad_id, batch_size, max_tokens, seed, pad_multiple):
        super().__init__(enc, pad_id, batch_size, max_tokens, seed, pad_multiple)
        self.probs = probs
        self.held = (probs,)
        self.offsets = enc.row_offsets

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        items = self._batches(epoch)[index]
        out = super().batch(epoch, index)
        rows = item_rows(self.offsets, items)
        out["probs"] = torch.as_tensor(np.asarray(self.probs[rows])).float()
        return out


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    data = save({k: v.cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
    atomic_write_bytes(path, data)


def _class_alphas(labels: list[str], alpha: list[float]) -> str:
    """``O 0.995, B-LOC 0.7, ...``: each class's threshold, for the log (1: none admitted)."""
    return ", ".join(f"{c} {a:g}" for c, a in zip(labels, alpha, strict=True))


def _remedies(cfg: SelftrainSettings) -> str:
    """The settings a collapsed round may be avoided with, other than the ones in use."""
    out = []
    rule = cfg.rule
    others = [n for n in rule_names() if n not in (rule.name, PseudoRule.name)]
    out.append(" or ".join(f'selftrain.rule.name = "{r}"' for r in others) + " (thresholds "
               "per class)")  # fmt: skip
    out += rule.remedies()
    if rule.grid != "even" and not rule.reads_target:
        out.append('selftrain.rule.grid = "even" (no 0.995 / 0.999 tail)')
    if rule.threshold != "fixed":
        out.append('a fixed alpha (selftrain.rule.threshold = "fixed")')
    if cfg.source_filter == "confident":
        out.append('selftrain.source_filter = "correct" (the paper\'s)')
    return "; ".join(out)


def _names(teachers: list[Path]) -> str | list[str]:
    """How the log names a round's teacher(s): one path, or the list."""
    return str(teachers[0]) if len(teachers) == 1 else [str(t) for t in teachers]


def _distribution(labels: np.ndarray, names: list[str]) -> dict[str, int]:
    return by_name(label_counts(labels, len(names)), names)


def _distribution_chunked(flat: np.ndarray, lo: int, hi: int, names: list[str]) -> dict[str, int]:
    """``_distribution`` of ``flat[lo:hi]`` (a memory map), read a million rows at a time."""
    counts = np.zeros(len(names), dtype=np.int64)
    for a in range(lo, hi, 1 << 20):
        counts += label_counts(flat[a : min(a + (1 << 20), hi)], len(names))
    return by_name(counts, names)


def _in_place(path: Path, work) -> None:
    """``work(arrays)`` on the tensors of the safetensors file ``path``, memory-mapped for
    writing; flushed after."""
    arrays = open_safetensors(path, "r+")
    work(arrays)
    for a in arrays.values():
        if isinstance(a, np.memmap):
            a.flush()


def drop_failed_units(enc: Encoded, pseudo: np.ndarray, chunk: int = CHUNK_ITEMS) -> None:
    """``filter_unit = "sequence"`` on a store: every row of a unit (sentence) with a row
    without a pseudo label loses its label (-1), in place, ``chunk`` items at a time."""
    units, offsets = enc.units, enc.row_offsets
    bad = np.zeros(int(units[-1]) + 1 if len(units) else 0, dtype=bool)
    spans = [(lo, min(lo + chunk, len(enc))) for lo in range(0, len(enc), chunk)]
    for lo, hi in spans:
        ok = np.asarray(pseudo[offsets[lo] : offsets[hi]]) >= 0
        item_ok = np.logical_and.reduceat(ok, offsets[lo:hi] - offsets[lo])
        bad[np.asarray(units[lo:hi])[~item_ok]] = True
        release(enc, pseudo)
    for lo, hi in spans:
        rows_bad = np.repeat(bad[np.asarray(units[lo:hi])], np.diff(offsets[lo : hi + 1]))
        seg = pseudo[offsets[lo] : offsets[hi]]
        seg[rows_bad] = -1
        release(enc, pseudo)


def fidelity_counts(
    teacher: np.ndarray,
    student: np.ndarray,
    names: list[str],
    background: int | None = None,
    chunk: int = 1 << 20,
) -> dict:
    """How well a student reproduces its teacher on the target rows: the classes of the
    teacher's argmax (of its probabilities ``teacher`` [rows, C]) and of the student's
    (``student``: [rows] labels, the argmax of its voters' mean probabilities, or its
    probabilities [rows, C]); the share of rows where the two agree (``teacher_agreement``),
    of the rows whose teacher class is not ``background`` (``entity_agreement``: the teacher's
    entity words; None for tasks without a background class) and per teacher class
    (``class_agreement``: None for a class the teacher never gives). ``chunk`` rows at a
    time. The all-rows share is dominated by the background class: a student that lost a
    whole entity class still agrees on ~97% of CoNLL's rows."""
    C = len(names)
    t_counts = np.zeros(C, dtype=np.int64)
    s_counts = np.zeros(C, dtype=np.int64)
    hits = np.zeros(C, dtype=np.int64)  # per teacher class: rows where the student agrees
    rows = len(student)
    for lo in range(0, rows, chunk):
        hi = min(lo + chunk, rows)
        t = np.asarray(teacher[lo:hi]).argmax(axis=-1)
        s = np.asarray(student[lo:hi])
        s = s.argmax(axis=-1) if s.ndim == 2 else s
        t_counts += label_counts(t, C)
        s_counts += label_counts(s, C)
        hits += label_counts(t[t == s], C)
    agree = int(hits.sum())
    entity = None
    if background is not None:
        n = rows - int(t_counts[background])
        entity = (agree - int(hits[background])) / n if n else None
    return {
        "teacher_distribution": by_name(t_counts, names),
        "student_distribution": by_name(s_counts, names),
        "teacher_agreement": agree / rows if rows else 0.0,
        "entity_agreement": entity,
        "class_agreement": {
            name: (int(hits[c]) / int(t_counts[c]) if t_counts[c] else None)
            for c, name in enumerate(names)
        },
    }


def lost_classes(fidelity: dict, share: float = 0.01) -> list[str]:
    """The classes the teacher's argmax gives at least ``share`` of the target rows and the soft
    student's none (``fidelity_counts``' record): a soft step that did not fit its teacher
    (e.g. an all-O student), whose pseudo labels can hold none of them."""
    teacher, student = fidelity["teacher_distribution"], fidelity["student_distribution"]
    rows = sum(teacher.values())
    return [c for c, n in teacher.items() if rows and n >= share * rows and student.get(c, 0) == 0]


def target_counts(
    enc: Encoded, pseudo: np.ndarray, agreed: np.ndarray, names: list[str], chunk: int = CHUNK_ITEMS
) -> dict:
    """filter.json's target counts, read ``chunk`` items at a time: rows, pseudo-labeled rows,
    units with at least one, the pseudo labels' classes and the voters' agreement."""
    units, offsets = enc.units, enc.row_offsets
    n_units = int(units[-1]) + 1 if len(units) else 0
    labeled_units = np.zeros(n_units, dtype=bool)
    classes = np.zeros(len(names), dtype=np.int64)
    agree = 0
    for lo in range(0, len(enc), chunk):
        hi = min(lo + chunk, len(enc))
        p = np.asarray(pseudo[offsets[lo] : offsets[hi]])
        item_any = np.logical_or.reduceat(p >= 0, offsets[lo:hi] - offsets[lo])
        labeled_units[np.asarray(units[lo:hi])[item_any]] = True
        classes += label_counts(p, len(names))
        agree += int(np.asarray(agreed[offsets[lo] : offsets[hi]]).sum())
        release(enc, pseudo, agreed)
    rows = int(offsets[-1])
    return {
        "target_rows": rows,
        "pseudo_rows": int(classes.sum()),
        "target_units": int(np.unique(np.asarray(units)).size),
        "pseudo_units": int(labeled_units.sum()),
        "pseudo_distribution": by_name(classes, names),
        "voter_agreement": agree / rows if rows else 0.0,  # share of target rows whose voters agree
    }


def describe_check(record: dict) -> str:
    """A check record in one line: agreement with the teacher on all rows, on its entity
    rows and the classes it keeps least, and the dev scores."""
    parts = [f"follows its teacher on {100 * record['teacher_agreement']:.1f}% of the rows"]
    if record.get("entity_agreement") is not None:
        parts.append(f"{100 * record['entity_agreement']:.1f}% of its entity rows")
    per = {c: a for c, a in record.get("class_agreement", {}).items() if a is not None}
    if per:
        low = sorted(per, key=per.get)[:3]
        parts.append("least: " + ", ".join(f"{c} {100 * per[c]:.1f}%" for c in low))
    for lang, d in record.get("dev", {}).items():
        parts.append(f"dev {lang} {100 * d['score']:.2f}")
    return "; ".join(parts)


def shared(
    path: Path, compute: Callable[[], T], write: Callable[[T], None], read: Callable[[], T]
) -> T:
    """Compute once, write atomically, share with every rank, read back: the pattern of every
    artefact of a round. When ``path`` exists (an earlier run got this far) it is only read;
    else every rank computes (inference is split over the ranks and gathered), rank 0 writes
    (``write`` marks the step done by writing ``path`` last), every rank waits and reads."""
    if not path.is_file():
        value = compute()
        if rank_world()[0] == 0:
            write(value)
        distributed.barrier()
    return read()


class SelfTraining:
    """The state of one self-training run (data, tokenizer, voters' shape, log) and its steps:
    ``teacher_probs``, ``soft_step``, ``thresholds``, ``filter``, ``hard_step``, and the
    ``check`` after each training step."""

    def __init__(self, cfg: SelftrainConfig, device: torch.device, echo, progress):
        self.cfg, self.device, self.progress = cfg, device, progress
        self.out = Path(cfg.out)
        self.main = rank_world()[0] == 0
        self.echo = echo if self.main else None
        self.say = echo if (echo and self.main) else (lambda _s: None)
        self.tok = load_tokenizer(cfg.base_model)
        first = load_task_model(cfg.teacher, device="cpu")
        self.labels, self.kind = first.labels, first.kind
        self.background = background_class(self.labels) if self.kind == "token" else None
        head = cfg.student_head
        self.num_voters = head.voters if head else first.voters.num_voters
        self.widths = (tuple(head.voter_widths) or None) if head else None
        if head and head.head == "linear":
            self.num_voters, self.widths = head.voter_shape()
        elif (
            self.widths is None
            and self.num_voters == first.voters.num_voters
            and (head is None or LINEAR not in first.voters.widths)
        ):  # the teacher's widths, unless the head was asked to differ in kind
            self.widths = tuple(first.voters.widths)
        self.dropout = head.voter_dropout if head else first.voters.voters[0].dropout.p
        self.representation = head.representation if head else first.representation
        self.amp = inference_dtype(first, device)  # students and teachers alike are this wide
        del first
        self.seed = cfg.soft.seed
        # D_src and U_tgt as packed stores (built by rank 0, memory-mapped by every rank): a
        # unit (sentence, text) is one of its own file, numbered over the files
        self.cache = Path(cfg.cache_dir) if cfg.cache_dir else self.out / "cache"
        sources = [
            StoreFile(p, cfg.format, False) for p in (cfg.source_file, *cfg.more_source_files)
        ]
        unlabeled = StoreFile(cfg.unlabeled_file, cfg.unlabeled_format or cfg.format, True)
        self.src, src_meta = self.store(sources, cfg.max_source)
        self.tgt, tgt_meta = self.store([unlabeled], cfg.max_unlabeled)
        n_src, n_tgt = src_meta["units"], tgt_meta["units"]
        self.gold = self.src.flat_targets()
        self.src_units = row_units(self.src)
        self.dev = {}  # language -> (data, encoded): read once, so a bad file fails first
        for lang, path in cfg.dev_files.items():
            data = read_task_file(path, cfg.format, False, cfg.max_dev, self.seed, cfg.encoding)
            self.dev[lang] = (data, encode(data, self.tok, self.labels, cfg.max_len))
        self.forward_seconds = 0.0  # inference time of ``chunks`` (the model's forward passes)
        self.log_path = self.out / "selftrain.jsonl"
        self.records: list[dict] = []
        self.collapsed: list[dict] = []  # rounds whose pseudo labels collapsed (``guard``)
        if self.log_path.exists():
            self.records = read_jsonl(self.log_path)
        self.say(
            f"selftrain: {n_src} source examples in {len(sources)} file(s) ({len(self.gold)} rows), "
            f"{n_tgt} unlabeled target examples ({self.tgt_rows} rows), labels "
            f"{self.labels}, N = {cfg.rounds}"
        )

    def store(self, files: list[StoreFile], limit: int | None) -> tuple[Encoded, dict]:
        """``files`` encoded into a packed store under the cache (rank 0 builds it, or finds it
        built), opened by every rank; and its meta.json."""
        cfg = self.cfg
        spec = StoreSpec(self.kind, self.tok, self.labels, cfg.max_len, cfg.encoding)
        folder = None
        if self.main:
            folder = build_store(files, spec, self.cache, limit, self.seed)
        folder = distributed.broadcast_object(folder)
        meta = json.loads((Path(folder) / "meta.json").read_text(encoding="utf-8"))
        return open_store(folder), meta

    @property
    def tgt_rows(self) -> int:
        return int(self.tgt.row_offsets[-1])

    def share(self, enc: Encoded) -> tuple[int, int]:
        """This rank's items ``lo:hi`` of ``enc`` (contiguous, about equal token counts)."""
        rank, world = rank_world()
        bounds = shard_items(enc.lengths, world)
        return int(bounds[rank]), int(bounds[rank + 1])

    def chunks(self, model: nn.Module, enc: Encoded, *held: np.ndarray):
        """Voter logits of this rank's share of ``enc``, ``CHUNK_ITEMS`` items at a time:
        yields ``(first row, logits [M, rows, C] on the device)``; the pages of the store and
        of the memory maps ``held`` (the files the pass writes) are dropped after each chunk."""
        lo, hi = self.share(enc)
        offsets = enc.row_offsets
        args = (self.tok.pad_id, self.device, self.cfg.eval_max_tokens, self.amp)
        for a in range(lo, hi, CHUNK_ITEMS):
            b = min(a + CHUNK_ITEMS, hi)
            t0 = time.perf_counter()
            logits = predict_logits(model, items_of(enc, a, b), *args)
            self.forward_seconds += time.perf_counter() - t0
            yield int(offsets[a]), logits
            del logits
            release(enc, *held)

    def warn(self, msg: str) -> None:
        """Said once: to the run's output where it has one (the CLI), else as a Python warning
        (a library caller's), on rank 0."""
        if self.echo:
            self.say(msg)
        elif self.main:
            warnings.warn(msg, stacklevel=3)

    def rows_file(self, path: Path, specs: dict, meta: dict[str, str], fill, finish=None) -> None:
        """The safetensors file ``path`` of per-row tensors (``specs``: name -> (dtype code,
        shape)), filled in place: rank 0 creates it under a temporary name, every rank writes
        its share (``fill(arrays)``, arrays memory-mapped; a list of such passes runs in order,
        each one after every rank finished the one before), rank 0 runs ``finish(arrays)`` on
        the whole and renames it into place (last: it marks the step done). Memory: what
        ``fill`` and ``finish`` hold, whatever the row count."""
        tmp = path.parent / f".{path.name}.tmp-rows"
        if self.main:
            tmp.unlink(missing_ok=True)
            create_safetensors(tmp, specs, meta)
        distributed.barrier()
        for one in fill if isinstance(fill, list) else [fill]:
            _in_place(tmp, one)
            distributed.barrier()
        if self.main:
            if finish is not None:
                _in_place(tmp, finish)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        distributed.barrier()

    def log(self, record: dict) -> None:
        self.records.append(record)
        if self.main:
            append_jsonl(self.log_path, record)

    def logits(self, model: nn.Module, enc: Encoded) -> torch.Tensor:
        """Voter logits [M, rows, C] on the device, the work split over the ranks."""
        args = (self.tok.pad_id, self.device, self.cfg.eval_max_tokens, self.amp)
        return predict_logits(model, enc, *args, split_ranks=True)

    def frozen(self, model: TaskModel) -> tuple[str, ...]:
        """The embeddings and bottom layers the soft and hard steps keep fixed."""
        return self.cfg.frozen_patterns(len(model.encoder.layers))

    def train_step(self, model, loss_fn, data, train_cfg, folder: Path):
        """One soft or hard step through the loop (resumed from its checkpoint, if any)."""
        t0 = time.perf_counter()
        result = train(
            prepare(model, train_cfg, self.device, self.frozen(model)),
            loss_fn,
            data,
            train_cfg.with_steps(data.num_batches(0)),
            folder,
            RunIO(
                lambda m, f: save_task_model(m, f, self.tok),
                lambda m, f: m.load_state_dict(load_task_model(f, device=self.device).state_dict()),
                echo=self.echo,
                progress=self.progress,
            ),
            resume=latest_checkpoint(folder) is not None,
        )
        if self.main:
            save_task_model(model, folder / "model", self.tok)
        distributed.barrier()
        rates = [h["tokens_per_s"] for h in result.history]
        return result, time.perf_counter() - t0, (sum(rates) / len(rates) if rates else None)

    # ---- the steps of a round

    def probs_file(self, path: Path, models: list[Path], meta: dict[str, str]) -> None:
        """The mean-of-voters probabilities on U_tgt [rows, C], fp16, of the task model in
        ``models`` (several: the mean of theirs, one per source language) into ``path``, each
        rank its share of the rows, chunk by chunk (``rows_file``)."""
        C = len(self.labels)
        total = None
        if len(models) > 1:  # the sum over models, fp32, beside the file (debris if killed)
            total = path.parent / f".{path.name}.tmp-sum"
            if self.main:
                create_safetensors(total, {"sum": ("F32", (self.tgt_rows, C))}, {})
            distributed.barrier()

        def fill(arrays):
            out = arrays["probs"]
            acc = open_safetensors(total, "r+")["sum"] if total is not None else None
            for k, folder in enumerate(models):
                model = load_task_model(folder, device=self.device)
                if model.labels != self.labels:
                    raise ValueError(
                        f"{folder}: the teacher's labels {model.labels} are not the first "
                        f"teacher's {self.labels} (same labels, same order)"
                    )
                held = (out,) if acc is None else (out, acc)
                for row, logits in self.chunks(model, self.tgt, *held):
                    p = VotersModule.probs(logits).float().cpu().numpy()
                    rows = slice(row, row + len(p))
                    if acc is None:
                        out[rows] = p.astype(np.float16)
                    elif k + 1 < len(models):
                        acc[rows] = p if k == 0 else acc[rows] + p
                    else:
                        out[rows] = ((acc[rows] + p) / len(models)).astype(np.float16)
                del model
            if acc is not None:
                acc.flush()

        self.rows_file(path, {"probs": ("F16", (self.tgt_rows, C))}, meta, fill)
        if total is not None and self.main:
            total.unlink(missing_ok=True)

    def open_probs(self, path: Path) -> np.ndarray:
        probs = open_safetensors(path)["probs"]
        if probs.shape != (self.tgt_rows, len(self.labels)):
            raise ValueError(
                f"{path}: probabilities {tuple(probs.shape)} do not fit the "
                f"{self.tgt_rows} target rows x {len(self.labels)} labels"
            )
        return probs

    def teacher_probs(self, r: int, teachers: list[Path]) -> np.ndarray:
        """T's mean-of-voters probabilities on U_tgt [rows, C], fp16, once per round, as a
        memory map of ``round-<r>/teacher-probs.safetensors``; with several teachers (one per
        source language) the mean of theirs. A teacher that is an earlier round's hard
        student was already read by that step's check: its pass is linked, not repeated."""
        path = self.out / f"round-{r}" / TEACHER_FILE
        teacher = _names(teachers)
        if not path.is_file():
            t0 = time.perf_counter()
            last = self.out / f"round-{r - 1}" / "hard"  # T = the last round's student
            checked = last / STUDENT_FILE
            linked = teachers == [last / "model"] and checked.is_file()
            if linked:
                if self.main:
                    tmp = path.parent / f".{path.name}.tmp-link"
                    tmp.unlink(missing_ok=True)
                    link_or_copy(checked, tmp)
                    os.replace(tmp, path)
                    fsync_dir(path.parent)
                distributed.barrier()
            else:
                meta = {"teacher": teacher if isinstance(teacher, str) else json.dumps(teacher)}
                self.probs_file(path, teachers, meta)
            secs = time.perf_counter() - t0
            forward, self.forward_seconds = self.forward_seconds, 0.0
            self.log(
                {
                    "round": r,
                    "step": "teacher",
                    "teacher": teacher,
                    "ranks": rank_world()[1],
                    "rows": self.tgt_rows,
                    **({"linked_from": str(checked)} if linked else {}),
                    "seconds": secs,
                    "forward_seconds": forward,  # of which the model's forward passes
                    "tokens_per_s": float(self.tgt.lengths.sum()) / max(secs, 1e-9),
                }
            )
            how = f"linked from {checked}" if linked else f"{secs:.1f} s"
            self.say(f"round {r}: teacher {teacher} on {self.tgt_rows} target rows ({how})")
        return self.open_probs(path)

    def soft_step(self, r: int, probs: np.ndarray, teachers: list[Path]) -> TaskModel:
        """S = the Base Model's encoder (``student_init = "base"``) or the first teacher's
        (``"teacher"``) + fresh voters, trained to fit ``probs`` (``soft_loss``)."""
        folder = self.out / f"round-{r}" / "soft"
        if (folder / "model").is_dir():
            return load_task_model(folder / "model", device=self.device)
        cfg, device = self.cfg, self.device
        start = cfg.base_model if cfg.student_init == "base" else str(teachers[0])
        encoder = load_encoder(start, dtype=torch.float32, device=device)
        digest = encoder_digest(encoder)
        torch.manual_seed(self.seed + 1000 * r)  # the fresh voters: a function of seed, round
        try:
            student = new_task_model(
                encoder,
                self.kind,
                self.labels,
                self.num_voters,
                self.widths,
                self.dropout,
                self.representation,
            )
        except ValueError as err:
            raise ValueError(f"{start}: {err}") from None
        data = SoftBatches(
            self.tgt, probs, self.tok.pad_id, cfg.batch_size, cfg.max_tokens, self.seed,
            cfg.pad_for(device),
        )  # fmt: skip

        fit = soft_label_kl if cfg.soft_loss == "kl" else soft_label_mse

        def soft_loss(m, batch, gen):
            return fit(forward_batch(m, batch, device), batch["probs"])  # staged by the loop

        res, secs, toks = self.train_step(student, soft_loss, data, cfg.soft, folder)
        self.log(
            {
                "round": r,
                "step": "soft",
                "student_init": cfg.student_init,
                "student_from": start,
                "student_digest": digest,
                "base_model": cfg.base_model,
                "teacher": _names(teachers),
                "steps": res.step,
                "loss": res.last_loss,
                "seconds": secs,
                "tokens_per_s": toks,
            }
        )
        self.say(f"round {r}: soft step done, loss {format_loss(res.last_loss)} ({secs:.1f} s)")
        return student

    def check(self, r: int, which: str, probs: np.ndarray) -> dict:
        """After round ``r``'s ``which`` step: how its student (the step's saved model) follows
        the round's teacher ``probs`` on the target rows (``fidelity_counts``: all rows, the
        teacher's entity rows, each class) and its score on each dev file; a ``check`` record
        (its presence marks the check done: a resumed run repeats only what it lacks)."""
        done = [
            x for x in self.records
            if x.get("step") == "check" and x.get("round") == r and x.get("of") == which
        ]  # fmt: skip
        if done:
            return done[-1]
        t0 = time.perf_counter()
        folder = self.out / f"round-{r}" / which
        path = folder / STUDENT_FILE
        if not path.is_file():
            self.probs_file(path, [folder / "model"], {"student": str(folder / "model")})
        fidelity = fidelity_counts(probs, self.open_probs(path), self.labels, self.background)
        dev = {}
        if self.main and self.dev:
            model = load_task_model(folder / "model", device=self.device)
            for lang, (data, enc) in self.dev.items():
                args = (self.tok, self.cfg.max_len, self.device, self.cfg.eval_max_tokens)
                res = evaluate_model(model, data, *args, enc=enc)
                dev[lang] = {"metric": res["metric"], "score": res["score"]}
                if "per_type" in res:
                    dev[lang]["per_type"] = res["per_type"]
            del model
        distributed.barrier()
        forward, self.forward_seconds = self.forward_seconds, 0.0
        record = {
            "round": r,
            "step": "check",
            "of": which,
            **fidelity,
            "dev": dev,
            "seconds": time.perf_counter() - t0,
            "forward_seconds": forward,
        }
        self.log(record)
        self.say(f"round {r}: {which} student: {describe_check(record)}")
        return record

    def thresholds(self, r: int, student: TaskModel) -> tuple[dict, dict[str, np.ndarray]]:
        """The pseudo-label rule's thresholds from S's voters on D_src (``pseudo_labels``;
        ``class_quota``'s per-class ones come with the target, in ``filter``) and S's outputs
        per source row (agreed label or -1, confidence, the mean's argmax), which the source
        filter reads. ``threshold.json`` (written last: it marks the step done) holds the
        paper's alpha and curve, each class's threshold with its source rows and precision."""
        rdir = self.out / f"round-{r}"
        path = rdir / "threshold.json"
        rule = self.cfg.rule

        def compute():
            t0 = time.perf_counter()
            agreed, conf, mean = voter_filter(self.logits(student, self.src), 0.0)
            gold = torch.from_numpy(self.gold).to(agreed.device)
            # a rule that reads the target (class_quota) sets its thresholds from the target
            # rows (in ``filter``): here the paper's alpha and each class's source record at it
            th = thresholds_from(
                agreed, conf, gold, len(self.labels),
                rule.paper() if rule.reads_target else rule,
                background=self.background, names=self.labels,
            )  # fmt: skip
            if rule.reads_target:
                th.rule = rule.name
                th.notes.append(f"{rule.name}: the class thresholds come from the target rows "
                                "(filter.json)")  # fmt: skip
            outputs = {"agreed": agreed, "confidence": conf, "predicted": mean.argmax(-1)}
            secs = time.perf_counter() - t0
            base = th.base
            self.log(
                {
                    "round": r,
                    "step": "threshold",
                    "alpha": base.alpha,
                    "method": base.method,
                    "fallback": base.fallback,
                    "rule": rule.name,
                    "class_alpha": dict(zip(self.labels, th.alpha, strict=True)),
                    "seconds": secs,
                }
            )
            self.say(
                f"round {r}: alpha = {base.alpha} ({base.method}"
                + (f"; {base.fallback}" if base.fallback else "")
                + ")"
                + (
                    f"; {rule.describe()}: {_class_alphas(self.labels, th.alpha)}"
                    if rule.name != PseudoRule.name  # another rule than the paper's
                    else ""
                )
            )
            for note in th.notes:
                self.say(f"round {r}: {note}")
            return th, {k: v.cpu().numpy() for k, v in outputs.items()}

        def write(value):
            th, outputs = value
            record = th.base.to_json() | {
                "round": r,
                "rows": len(self.gold),
                "rule": th.rule,
                "rule_settings": rule_settings(rule),
                "class_alpha": th.alpha,
                "classes": th.classes,
                "notes": th.notes,
            }
            atomic_write_text(rdir / "threshold.csv", th.base.to_csv())
            _write_tensors(
                rdir / SOURCE_OK_FILE, {k: torch.from_numpy(v) for k, v in outputs.items()}, {}
            )
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")  # last: marks it done

        def read():
            record = json.loads(path.read_text(encoding="utf-8"))
            outputs = {k: v.numpy() for k, v in load_file(str(rdir / SOURCE_OK_FILE)).items()}
            return record, outputs

        return shared(path, compute, write, read)

    def filter(
        self,
        r: int,
        student: TaskModel,
        threshold: dict,
        source_out: dict[str, np.ndarray],
        source_keep: np.ndarray,
        probs: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """The permanent source filter (rows of D_keep that pass ``source_filter`` at the
        classes' thresholds) and the pseudo labels (``voter_filter`` with the per-class
        thresholds, -1 = none; ``class_quota`` first reads the target's voters to set them, then
        labels in a second pass); returns (source_keep, pseudo, collapse findings).
        ``probs``: the probabilities the soft step fitted, for filter.json's record of how
        closely the student follows them (``fidelity_counts``)."""
        rdir = self.out / f"round-{r}"
        path = rdir / FILTER_FILE
        if not path.is_file():
            job = RoundFilter(self, r, student, threshold, source_out, source_keep, probs)
            passes = [job.fill, job.set_quota, job.relabel] if job.quota else [job.fill]
            self.rows_file(path, job.specs(), {}, passes, job.finish)
        saved = open_safetensors(path)
        findings = json.loads((rdir / "filter.json").read_text(encoding="utf-8"))["collapse"]
        return np.asarray(saved["source_keep"]) > 0, saved["pseudo"], findings

    def hard_data(self, r: int, source_keep: np.ndarray, pseudo: np.ndarray) -> tuple[Encoded, int]:
        """D_keep + P as a packed store (``round-<r>/hard-data``, written by rank 0 chunk by
        chunk): the source items with a kept row (gold labels), then the target items with a
        pseudo label; and how many items are the source's."""
        folder = self.out / f"round-{r}" / "hard-data"
        if self.main and not (folder / "meta.json").is_file():
            with atomic_folder(folder) as tmp:
                writer = StoreWriter(tmp, self.kind)
                n_src = write_with_targets(writer, self.src, np.where(source_keep, self.gold, -1))
                write_with_targets(writer, self.tgt, pseudo)
                pairs = self.src.token_type_ids is not None or self.tgt.token_type_ids is not None
                meta = {"store_format": STORE_FORMAT, "source_items": n_src, "pairs": int(pairs)}
                writer.close(meta)
        distributed.barrier()
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        return open_store(folder), int(meta["source_items"])

    def guard(self, r: int, findings: list[str], threshold: dict) -> str | None:
        """The collapse guard (``on_collapse``), before round ``r``'s hard step: ``findings``
        (``pseudo_labels.check_collapse``) are said in a clear block; ``warn`` goes on,
        ``error`` stops with the block (filter.json and all before it stay: the run resumes),
        ``skip_hard`` returns why the hard step is skipped."""
        if not findings:
            return None
        cfg = self.cfg
        msg = (
            f"round {r}: the pseudo labels collapsed (selftrain.rule.name = {cfg.rule.name!r}, alpha = "
            f"{threshold['alpha']:g}, source_filter = {cfg.source_filter!r}):\n  - "
            + "\n  - ".join(findings)
            + "\n  a hard step on these labels teaches the student (almost) only the classes they "
            f"hold. Settings that may avoid it: {_remedies(cfg)}; selftrain.on_collapse = "
            '"skip_hard" keeps the soft student as the round\'s result, "error" stops here'
        )
        self.collapsed.append({"round": r, "findings": findings, "action": cfg.on_collapse})
        if cfg.on_collapse == "error":
            raise CollapseError(f"{msg}\n(stopped before the hard step: resume with --resume)")
        self.warn(msg)
        return msg if cfg.on_collapse == "skip_hard" else None

    def skip_hard(self, r: int, student: TaskModel, why: str) -> TaskModel:
        """No hard step in round ``r``: the soft student is the round's result (hard/model)."""
        folder = self.out / f"round-{r}" / "hard"
        if self.main:
            save_task_model(student, folder / "model", self.tok)
        distributed.barrier()
        self.log({"round": r, "step": "hard", "items": 0, "steps": 0, "skipped": why})
        self.warn(f"round {r}: hard step skipped: {why}; the student stays the soft one")
        return student

    def hard_step(
        self,
        r: int,
        student: TaskModel,
        source_keep: np.ndarray,
        pseudo: np.ndarray,
        alpha: float,
        skip: str | None = None,
    ) -> TaskModel:
        """S continues with cross-entropy on D_keep + P (``skip``: why it does not)."""
        folder = self.out / f"round-{r}" / "hard"
        if (folder / "model").is_dir():
            return load_task_model(folder / "model", device=self.device)
        if skip is not None:
            return self.skip_hard(
                r, student, "the pseudo labels collapsed (on_collapse = skip_hard)"
            )
        cfg, device = self.cfg, self.device
        hard, n_src = self.hard_data(r, source_keep, pseudo)
        rows = np.asarray(hard.targets.offsets)
        src_y = np.asarray(hard.targets.flat[: rows[n_src]])
        tgt_dist = _distribution_chunked(
            hard.targets.flat, int(rows[n_src]), int(rows[-1]), self.labels
        )
        if len(hard) == 0:  # a student too unsure for the rule: nothing to fit, S stays as it is
            why = (
                f"no training data: the source filter removed every source row and no target "
                f"row passed alpha = {alpha}"
            )
            return self.skip_hard(r, student, why)
        data = StoreBatches(
            hard, self.tok.pad_id, cfg.batch_size, cfg.max_tokens, self.seed, cfg.pad_for(device)
        )

        def hard_loss(m, batch, gen):
            return VotersModule.loss(forward_batch(m, batch, device), batch["targets"])

        res, secs, toks = self.train_step(student, hard_loss, data, cfg.hard, folder)
        self.log(
            {
                "round": r,
                "step": "hard",
                "items": len(hard),
                "source_items": n_src,
                "source_rows": int((src_y >= 0).sum()),
                "target_items": len(hard) - n_src,
                "target_rows": sum(tgt_dist.values()),
                "target_distribution": tgt_dist,
                "steps": res.step,
                "loss": res.last_loss,
                "seconds": secs,
                "tokens_per_s": toks,
            }
        )
        self.say(
            f"round {r}: hard step on {len(hard)} items done, loss {format_loss(res.last_loss)} "
            f"({secs:.1f} s)"
        )
        return student


class RoundFilter:
    """One round's filter file (``SelfTraining.filter``), written in passes over the target
    store: ``fill`` (the voters' agreement, confidence and argmax; the pseudo labels unless the
    rule is ``class_quota``), for ``class_quota`` ``set_quota`` (the thresholds from the target's
    voters) and ``relabel``, then ``finish`` (the source filter, filter.json, the warnings)."""

    def __init__(self, run, r, student, threshold, source_out, source_keep, probs):
        self.run, self.r, self.student, self.threshold = run, r, student, threshold
        self.source_out, self.source_keep, self.probs = source_out, source_keep, probs
        self.rule = run.cfg.rule
        self.quota = self.rule.reads_target
        self.alpha = np.asarray(threshold["class_alpha"], dtype=np.float64)  # as recorded
        self.classes = threshold["classes"]
        self.t0 = time.perf_counter()

    def specs(self) -> dict:
        rows = self.run.tgt_rows
        return {
            "source_keep": ("U8", (len(self.run.gold),)),
            "pseudo": ("I64", (rows,)),
            "agreed": ("I32", (rows,)),  # the voters' common label at any confidence, or -1
            "confidence": ("F32", (rows,)),  # the smallest of the voters' top probabilities
            "student": ("I32", (rows,)),  # argmax of the voters' mean probabilities
        }

    def fill(self, arrays) -> None:
        # quota: no label yet; the voters' outputs set the thresholds (``set_quota``)
        a = torch.from_numpy(self.alpha).float()
        for row, logits in self.run.chunks(self.student, self.run.tgt, *arrays.values()):
            agreed, conf, mean = voter_filter(logits, 0.0)  # at any confidence
            labels = (
                torch.full_like(agreed, -1) if self.quota
                else pseudo_label(logits, a.to(logits.device))[0]
            )  # fmt: skip
            rows = slice(row, row + labels.shape[0])
            # one copy to the host per chunk: labels and confidence as float64 (exact for both)
            parts = (labels, agreed, mean.argmax(dim=-1), conf)
            out = torch.stack([x.double() for x in parts]).cpu().numpy()
            arrays["pseudo"][rows] = out[0]
            arrays["agreed"][rows] = out[1]
            arrays["student"][rows] = out[2]
            arrays["confidence"][rows] = out[3]

    def relabel(self, arrays) -> None:  # class_quota's second pass, at the thresholds it set
        a = torch.from_numpy(self.alpha).float()
        for row, logits in self.run.chunks(self.student, self.run.tgt, *arrays.values()):
            labels = pseudo_label(logits, a.to(logits.device))[0]
            arrays["pseudo"][row : row + labels.shape[0]] = labels.cpu().numpy()

    def set_quota(self, arrays) -> None:
        """class_quota: the thresholds from the target's voters (every rank reads every rank's
        rows and sets the same ones)."""
        run, src = self.run, self.source_out
        th = thresholds_from(
            torch.from_numpy(src["agreed"]), torch.from_numpy(src["confidence"]),
            torch.from_numpy(run.gold), len(run.labels), self.rule, background=run.background,
            names=run.labels,
            target=(torch.from_numpy(np.asarray(arrays["agreed"])),
                    torch.from_numpy(np.asarray(arrays["confidence"]))),
        )  # fmt: skip
        self.alpha[:] = th.alpha
        self.classes[:] = th.classes
        run.say(f"round {self.r}: {self.rule.describe()}: {_class_alphas(run.labels, th.alpha)}")

    def kept_source(self) -> np.ndarray:
        """D_keep after this round: the rows kept so far that pass the source filter."""
        run, src = self.run, self.source_out
        ok = source_ok(
            torch.from_numpy(src["agreed"]), torch.from_numpy(src["confidence"]),
            torch.from_numpy(src["predicted"]), torch.from_numpy(run.gold),
            torch.from_numpy(self.alpha), run.cfg.source_filter,
        ).numpy()  # fmt: skip
        unit_ok = ok if run.cfg.filter_unit == "word" else whole_units(ok, run.src_units)
        return self.source_keep & unit_ok

    def record(self, arrays, keep: np.ndarray) -> dict:
        """filter.json: the rule, the thresholds, the source and target counts, the student's
        fidelity to its teacher, the class histograms and the collapse findings."""
        run, cfg, before = self.run, self.run.cfg, int(self.source_keep.sum())
        counts = {
            "round": self.r, "filter_unit": cfg.filter_unit, "source_filter": cfg.source_filter,
            "pseudo_rule": self.rule.name, "alpha": self.threshold["alpha"],
            "class_alpha": dict(zip(run.labels, self.alpha.tolist(), strict=True)),
            "classes": self.classes, "source_rows": len(run.gold), "source_rows_before": before,
            "source_rows_kept": int(keep.sum()), "source_rows_removed": before - int(keep.sum()),
            "source_units_kept": int(np.unique(run.src_units[keep]).size),
            **target_counts(run.tgt, arrays["pseudo"], arrays["agreed"] >= 0, run.labels),
            **fidelity_counts(self.probs, arrays["student"], run.labels, run.background),
            "source_distribution": _distribution(run.gold, run.labels),  # gold, all rows
            "source_kept_distribution": _distribution(run.gold[keep], run.labels),
        }  # fmt: skip
        counts["collapse"] = check_collapse(
            counts["pseudo_distribution"], counts["student_distribution"],
            counts["source_distribution"], counts["source_kept_distribution"],
            None if run.background is None else run.labels[run.background],
        )  # fmt: skip
        counts["on_collapse"] = cfg.on_collapse
        return counts

    def finish(self, arrays) -> None:
        run, r = self.run, self.r
        forward, run.forward_seconds = run.forward_seconds, 0.0
        keep = self.kept_source()
        arrays["source_keep"][:] = keep
        if run.cfg.filter_unit == "sequence":
            drop_failed_units(run.tgt, arrays["pseudo"])
        counts = self.record(arrays, keep)
        secs = time.perf_counter() - self.t0
        run.log({"step": "filter", **counts, "seconds": secs, "forward_seconds": forward})
        run.say(
            f"round {r}: source rows kept {counts['source_rows_kept']}/{len(run.gold)} "
            f"(-{counts['source_rows_removed']}), pseudo-labeled target rows "
            f"{counts['pseudo_rows']}/{run.tgt_rows} in {counts['pseudo_units']} units; "
            f"classes {counts['pseudo_distribution']}"
        )
        atomic_write_text(
            run.out / f"round-{r}" / "filter.json", json.dumps(counts, indent=2) + "\n"
        )
        lost = lost_classes(counts)
        if lost:
            run.warn(
                f"round {r}: the soft student predicts none of {lost} on the target "
                f"rows, where its teacher gives each to at least 1% of them (it follows "
                f"the teacher on {100 * counts['teacher_agreement']:.1f}% of the rows): "
                "the soft step did not fit, and no pseudo label can be of these classes "
                "(see the soft step's loss in selftrain.jsonl; a lower selftrain.soft.lr "
                "or head_lr_scale may help)"
            )


def lay_down_round1(src: Path, out: Path) -> str | None:
    """Round 1's teacher probabilities and soft student of the self-training folder ``src``
    (a finished run whose round 1 this run's would equal: the experiment finds it) linked
    into ``out``, each with its step's record (``shared_from`` added, the seconds those steps
    took there kept), where ``out`` has not made its own: a resumed run then finds them as its
    own. Files first, then the record, so a kill between them only repeats the record. Returns
    what it did (None: nothing to take, or taken already)."""
    mine, theirs = out / "round-1", src / "round-1"
    log = out / "selftrain.jsonl"
    done = {(r.get("round"), r.get("step")) for r in (read_jsonl(log) if log.is_file() else [])}
    own = (mine / "soft" / "latest").exists() or any((mine / "soft").glob("ckpt-*"))
    if (1, "soft") in done or own:  # taken already, or a soft step of its own under way
        return None
    records = {(r.get("round"), r.get("step")): r for r in read_jsonl(src / "selftrain.jsonl")}
    missing = [
        str(p) for p in (theirs / TEACHER_FILE, theirs / "soft" / "model") if not p.exists()
    ] + [f"its round 1 {w} record" for w in ("teacher", "soft") if (1, w) not in records]
    if missing:
        return f"round 1: not taken from {src}: no {', '.join(missing)}"
    (mine / "soft").mkdir(parents=True, exist_ok=True)
    if not (mine / TEACHER_FILE).is_file():
        _link_file(theirs / TEACHER_FILE, mine / TEACHER_FILE)
    if (1, "teacher") not in done:
        append_jsonl(log, {**records[(1, "teacher")], "shared_from": str(src)})
    if not (mine / "soft" / "model").is_dir():
        with atomic_folder(mine / "soft" / "model") as tmp:
            for f in sorted((theirs / "soft" / "model").iterdir()):
                link_or_copy(f, tmp / f.name)
    probs = theirs / "soft" / STUDENT_FILE  # the soft student's pass (the check's)
    if probs.is_file() and not (mine / "soft" / STUDENT_FILE).is_file():
        _link_file(probs, mine / "soft" / STUDENT_FILE)
    append_jsonl(log, {**records[(1, "soft")], "shared_from": str(src)})
    return f"round 1: teacher probabilities and soft student taken from {src}"


def _link_file(src: Path, dst: Path) -> None:
    """``src`` linked (or copied) to ``dst`` through a temporary name: never half there."""
    tmp = dst.parent / f".{dst.name}.tmp-link"
    tmp.unlink(missing_ok=True)
    link_or_copy(src, tmp)
    os.replace(tmp, dst)


def run_selftrain(
    cfg: SelftrainConfig, resume: bool = False, echo=print, progress=None
) -> SelftrainResult:
    """Run (or, with ``resume``, continue) self-training: the method in the module docstring,
    step by step."""
    out = Path(cfg.out)
    device = distributed.init(cfg.device)
    main = rank_world()[0] == 0
    if not resume and ((out / "selftrain.jsonl").exists() or any(out.glob("round-*"))):
        raise ValueError(
            f"{out} holds an earlier self-training run: resume it (--resume) or "
            "choose another folder (--out)"
        )
    if main:
        out.mkdir(parents=True, exist_ok=True)
    run = SelfTraining(cfg, device, echo, progress)
    source_keep = np.ones(len(run.gold), dtype=bool)  # D_keep = D_src
    teachers = [Path(t) for t in (cfg.teacher, *cfg.more_teachers)]
    student = None
    for r, which in cfg.steps:
        if main:
            (out / f"round-{r}").mkdir(parents=True, exist_ok=True)
        if which == "soft":
            probs = run.teacher_probs(r, teachers)
            student = run.soft_step(r, probs, teachers)
            run.check(r, "soft", probs)
            continue
        threshold, source_out = run.thresholds(r, student)
        source_keep, pseudo, collapse = run.filter(
            r, student, threshold, source_out, source_keep, probs
        )
        skip = run.guard(r, collapse, threshold)  # before every hard step
        student = run.hard_step(r, student, source_keep, pseudo, threshold["alpha"], skip)
        run.check(r, "hard", probs)
        teachers = [out / f"round-{r}" / "hard" / "model"]  # T = S

    final = out / "model"
    if main:
        summary = {
            "rounds": cfg.rounds,
            "steps": [f"{w}{r}" for r, w in cfg.steps],
            "model": str(final),
            "collapsed": run.collapsed,
            "log": run.records,
        }
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        last = out / f"round-{cfg.steps[-1][0]}" / cfg.steps[-1][1] / "model"
        with atomic_folder(final) as tmp:  # the last step's model, linked: no third copy
            link_tree(last, tmp)  # last: model/ marks the stage finished
    distributed.barrier()
    for c in run.collapsed:  # repeated where a reader of the run's end looks
        run.say(
            f"selftrain: round {c['round']} collapsed ({c['action']}): " + "; ".join(c["findings"])
        )
    run.say(f"selftrain: final student in {final}")
    return SelftrainResult(final, run.records)
