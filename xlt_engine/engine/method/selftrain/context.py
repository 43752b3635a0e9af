"""What a self-training run reads and what all its steps share: ``SelftrainConfig`` (the method's
settings, the files it reads, where it writes) and ``SelftrainContext``, built from it once: the
tokenizer and labels, the students' head shape, D_src and U_tgt as packed stores, the dev files,
inference in chunks split over the ranks, per-row files written in place, and the run's log.
The steps (``passes``, ``training``, ``filter``, ``guard``) take the context as an argument."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xlt_engine.data.packed import (
    StoreFile,
    StoreSpec,
    build_store,
    input_formats,
    open_store,
    release,
)
from xlt_engine.data.task import Encoded, encode, read_task_file, task_kind
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.engine.method.pseudo_labels import background_class
from xlt_engine.engine.method.selftrain.files import in_place
from xlt_engine.engine.method.selftrain.store import CHUNK_ITEMS, row_units
from xlt_engine.engine.method.selftrain_settings import SelftrainSettings
from xlt_engine.engine.method.settings import (
    FreezeSettings,
    HeadSettings,
    TaskSettings,
    check_limit,
)
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.engine.train.inference import (
    check_task_model,
    inference_dtype,
    items_of,
    predict_logits,
    shard_items,
)
from xlt_engine.engine.train.optim import precision_name
from xlt_engine.fileio import append_jsonl, create_safetensors, fsync_dir
from xlt_engine.inputs import read_json, read_jsonl
from xlt_engine.model.heads import LINEAR
from xlt_engine.model.task import TaskModel, load_task_model


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
            if self.unlabeled_format not in input_formats():
                raise ValueError(
                    f"unlabeled_format must be one of {input_formats()}, "
                    f"got {self.unlabeled_format!r}"
                )
            if self.unlabeled_format != "text" and (
                task_kind(self.unlabeled_format) != task_kind(self.format)
            ):
                raise ValueError(
                    f"unlabeled_format {self.unlabeled_format!r} is not a "
                    f"{task_kind(self.format)} classification format like {self.format!r}"
                )


class SelftrainContext:
    """The state one self-training run's steps share (see the module docstring); built once per
    run, on every rank."""

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
        self.precision = precision_name("auto", self.amp)  # the passes' records say it
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
        self.opening = (  # the run's first line (``run_selftrain`` adds N)
            f"selftrain: {n_src} source examples in {len(sources)} file(s) ({len(self.gold)} rows), "
            f"{n_tgt} unlabeled target examples ({self.tgt_rows} rows), labels {self.labels}"
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
        meta = read_json(Path(folder) / "meta.json")
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
            in_place(tmp, one)
            distributed.barrier()
        if self.main:
            if finish is not None:
                in_place(tmp, finish)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        distributed.barrier()

    def take_forward_seconds(self) -> float:
        """The forward time of ``chunks`` since the last call (a step's record holds it)."""
        secs, self.forward_seconds = self.forward_seconds, 0.0
        return secs

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
