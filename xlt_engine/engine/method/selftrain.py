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

The code in three modules: here the settings, the run and its training steps (``SelfTraining``:
soft and hard step, the stores, inference in chunks); ``selftrain_labels`` the passes over the
target text (``RoundPasses``: teacher probabilities, the check, thresholds, filter, hard data,
collapse guard; ``RoundFilter``); ``selftrain_rows`` the file names, row arithmetic, stores of
relabeled items, the check's counts and the lay-down of a twin's round 1.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xlt_engine.data.packed import (
    INPUT_FORMATS,
    StoreFile,
    StoreSpec,
    build_store,
    open_store,
    release,
)
from xlt_engine.data.task import Encoded, encode, read_task_file, task_kind
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.engine.method.pseudo_labels import background_class
from xlt_engine.engine.method.selftrain_labels import RoundPasses
from xlt_engine.engine.method.selftrain_rows import (
    CHUNK_ITEMS,
    SoftBatches,
    StoreBatches,
    describe_wall,
    distribution_chunked,
    encoder_digest,
    in_place,
    row_units,
    teacher_names,
    wall_breakdown,
)
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
    forward_batch,
    inference_dtype,
    items_of,
    predict_logits,
    shard_items,
)
from xlt_engine.engine.train.loop import RunIO, train
from xlt_engine.engine.train.optim import prepare
from xlt_engine.engine.train.progress import format_loss
from xlt_engine.fileio import (
    append_jsonl,
    atomic_folder,
    atomic_write_text,
    create_safetensors,
    fsync_dir,
    link_tree,
)
from xlt_engine.inputs import read_json, read_jsonl
from xlt_engine.kernels import soft_label_kl, soft_label_mse
from xlt_engine.model.checkpoint import load_encoder
from xlt_engine.model.heads import LINEAR, VotersModule
from xlt_engine.model.task import TaskModel, load_task_model, new_task_model, save_task_model


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


class SelfTraining(RoundPasses):
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

    def soft_step(self, r: int, probs: np.ndarray, teachers: list[Path]) -> TaskModel:
        """S = the Base Model's encoder (``student_init = "base"``) or the first teacher's
        (``"teacher"``) + fresh voters, trained to fit ``probs`` (``soft_loss``)."""
        folder = self.out / f"round-{r}" / "soft"
        if distributed.rank0_view((folder / "model").is_dir()):
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
            self.tgt,
            probs,
            self.tok.pad_id,
            cfg.batch_size,
            cfg.max_tokens,
            self.seed,
            cfg.pad_for(device),
        )

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
                "teacher": teacher_names(teachers),
                "steps": res.step,
                "loss": res.last_loss,
                "seconds": secs,
                "tokens_per_s": toks,
            }
        )
        self.say(f"round {r}: soft step done, loss {format_loss(res.last_loss)} ({secs:.1f} s)")
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
        if distributed.rank0_view((folder / "model").is_dir()):  # skip_hard writes it at once
            return load_task_model(folder / "model", device=self.device)
        cfg, device = self.cfg, self.device
        if not cfg.hard_steps:
            return self.skip_hard(r, student, "hard_steps = false (soft steps only)")
        if skip is not None:
            return self.skip_hard(
                r, student, "the pseudo labels collapsed (on_collapse = skip_hard)"
            )
        hard, n_src = self.hard_data(r, source_keep, pseudo)
        rows = np.asarray(hard.targets.offsets)
        src_y = np.asarray(hard.targets.flat[: rows[n_src]])
        tgt_dist = distribution_chunked(
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


def run_selftrain(
    cfg: SelftrainConfig, resume: bool = False, echo=print, progress=None
) -> SelftrainResult:
    """Run (or, with ``resume``, continue) self-training: the method in the module docstring,
    step by step."""
    started = time.perf_counter()
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
        # (a resumed run's records hold earlier runs' steps: no "other" against this run's wall)
        wall = wall_breakdown(run.records, None if resume else time.perf_counter() - started)
        summary = {
            "rounds": cfg.rounds,
            "steps": [f"{w}{r}" for r, w in cfg.steps],
            "model": str(final),
            "collapsed": run.collapsed,
            "wall": wall,
            "log": run.records,
        }
        run.say(f"selftrain: where the time went: {describe_wall(wall)}")
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
