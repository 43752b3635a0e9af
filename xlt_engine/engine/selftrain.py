"""Stage ``selftrain``: cross-lingual self-training with soft and hard labels (DESIGN.md, "The
method", step 3)::

    T = fine-tuned model; D_keep = D_src
    for r = 1, 2, ...:
        S = Base Model + fresh VotersModule          # the student is restored every round
        soft step: S fits T's probabilities on U_tgt (soft_label_mse, each voter)
        if r > N: stop                                # a half round ends after its soft step
        alpha = select_threshold(curve of S on D_src)
        D_keep = rows of D_keep that S predicts correctly          # removed for good
        P = voter_filter(S's voters on U_tgt, alpha)               # unanimous and confident
        hard step: S continues with cross-entropy on D_keep + P
        T = S

Rows are what the model classifies: a word (its first sub-token) for NER, a text for sequence
classification. Both filters work per row; an item (a sentence window, a text) with no row left
is dropped. ``filter_unit = "sequence"`` drops a whole sentence as soon as one of its words fails.

The confidence of the threshold curve and of ``voter_filter`` is the smallest of the voters'
top probabilities, and a source row counts as correct when all voters agree on its gold label:
accuracy(t) is then the precision the pseudo labels would have at threshold t. The source
filter keeps a row when the prediction (the mean of the voters' probabilities) is its gold
label.

Folder ``out``::

    round-<r>/teacher-probs.safetensors   T's mean-of-voters probabilities on U_tgt, fp16 [rows, C]
    round-<r>/soft/                       the soft step's loop folder; soft/model: S after it
    round-<r>/threshold.json, .csv        alpha and the whole curve (threshold, accuracy, ...)
    round-<r>/filter.safetensors, .json   source_keep [src rows] bool, pseudo [tgt rows] int64
                                          (-1: no label); the counts and class distribution
    round-<r>/hard/                       the hard step's loop folder; hard/model: S after it
    model/                                the final student
    selftrain.jsonl                       one record per finished step (timings, counts)

Under torchrun the soft and hard steps train with DDP (batches sharded by rank), and each
inference pass (teacher, threshold, filter) is split over the ranks by items and gathered
(``predict_logits_all_ranks``); rank 0 writes every artefact, the others wait and read it.

Every artefact is written atomically and marks its step as done: a killed run resumed with
``resume=True`` redoes nothing that finished, and a killed soft or hard step continues from its
latest loop checkpoint. The student's encoder digest at the start of each round is logged, so the
chain (the student of every round starts from the Base Model) can be checked.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from xlt_engine.data.align import IGNORE
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.engine import distributed
from xlt_engine.engine.config import SelftrainSettings
from xlt_engine.engine.distributed import rank_world
from xlt_engine.engine.evaluate import _check_model
from xlt_engine.engine.loop import latest_checkpoint, prepare, resolve_precision, train
from xlt_engine.engine.tasks import (
    Encoded,
    TaskBatches,
    TaskData,
    encode,
    predict_logits_all_ranks,
    read_task_file,
    task_kind,
    voters_loss,
)
from xlt_engine.engine.threshold import select_threshold
from xlt_engine.fileio import atomic_write_bytes, atomic_write_text
from xlt_engine.kernels import soft_label_mse, voter_filter
from xlt_engine.model.checkpoint import load_encoder
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import load_task_model, new_task_model, save_task_model

TEACHER_FILE = "teacher-probs.safetensors"
FILTER_FILE = "filter.safetensors"


@dataclass(frozen=True, kw_only=True)
class SelftrainConfig(SelftrainSettings):
    """The method's settings (``SelftrainSettings``: rounds, steps, threshold, filters) plus
    what this run reads and where it writes."""

    base_model: str  # the Base Model (btf's base-model, or mBERT): every student starts from it
    teacher: str  # the fine-tuned task model: round 1's teacher
    source_file: str  # D_src: labeled source-language data
    unlabeled_file: str  # U_tgt: target-language data (labels, if any, are never read)
    out: str
    format: str = "conll"
    max_len: int = 128
    num_voters: int | None = None  # the student's voters; None: as the teacher's
    voter_widths: tuple[int, ...] | None = None
    voter_dropout: float | None = None
    eval_max_tokens: int = 16384  # padded tokens per inference batch
    device: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        task_kind(self.format)
        for name in ("source_file", "unlabeled_file"):
            if not Path(getattr(self, name)).is_file():
                raise ValueError(f"{name}: {getattr(self, name)}: no such file")
        if not Path(self.base_model).is_dir():
            raise ValueError(f"base_model: {self.base_model}: no such folder")
        _check_model(self.teacher, self.format)
        if self.max_len < 8:
            raise ValueError(f"max_len must be >= 8, got {self.max_len}")
        if self.num_voters is not None and self.num_voters < 1:
            raise ValueError(f"num_voters must be >= 1, got {self.num_voters}")


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
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def subsample(data: TaskData, limit: int | None, seed: int) -> TaskData:
    """At most ``limit`` examples of ``data``, drawn without replacement from ``seed``, kept in
    file order."""
    if limit is None or len(data) <= limit:
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data), limit, replace=False))
    pick = [int(i) for i in keep]
    return replace(
        data,
        inputs=[data.inputs[i] for i in pick],
        pairs=None if data.pairs is None else [data.pairs[i] for i in pick],
        labels=None if data.labels is None else [data.labels[i] for i in pick],
        lines=[data.lines[i] for i in pick],
        conll=None,
    )


def row_units(enc: Encoded) -> np.ndarray:
    """The unit (sentence / text) of every row: for NER the sentence of the row's window."""
    counts = np.diff(enc.row_offsets)
    if enc.kind == "token":
        units = np.array([w.sentence for w in enc.aligned.windows], dtype=np.int64)
    else:
        units = np.arange(len(enc), dtype=np.int64)
    return np.repeat(units, counts)


def whole_units(ok: np.ndarray, units: np.ndarray) -> np.ndarray:
    """``ok`` per row -> True only where every row of the row's unit is ok."""
    bad_units = np.unique(units[~ok])
    return ok & ~np.isin(units, bad_units)


def with_targets(enc: Encoded, targets: np.ndarray) -> Encoded:
    """``enc``'s items that have at least one target >= 0, with ``targets`` (one per row)."""
    offsets = enc.row_offsets
    items, tg = [], []
    for i in range(len(enc)):
        t = targets[offsets[i] : offsets[i + 1]]
        if (t >= 0).any():
            items.append(i)
            tg.append(np.where(t >= 0, t, IGNORE).astype(np.int64))
    types = None if enc.token_type_ids is None else [enc.token_type_ids[i] for i in items]
    return Encoded(enc.kind, [enc.input_ids[i] for i in items], types,
                   [enc.positions[i] for i in items], tg, None)  # fmt: skip


def concat(a: Encoded, b: Encoded) -> Encoded:
    types = None
    if a.token_type_ids is not None or b.token_type_ids is not None:
        types = (a.token_type_ids or []) + (b.token_type_ids or [])
    return Encoded(a.kind, a.input_ids + b.input_ids, types, a.positions + b.positions,
                   a.targets + b.targets, None)  # fmt: skip


class SoftBatches(TaskBatches):
    """``TaskBatches`` over U_tgt whose batches also carry the teacher's ``probs`` per row."""

    def __init__(self, enc: Encoded, probs: torch.Tensor, pad_id, batch_size, max_tokens, seed):
        super().__init__(enc, pad_id, batch_size, max_tokens, seed)
        self.probs = probs
        self.offsets = enc.row_offsets

    def batch(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        items = self._batches(epoch)[index]
        out = super().batch(epoch, index)
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in items])
        out["probs"] = self.probs[torch.from_numpy(rows)].float()
        return out


def _forward(m: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    types = batch.get("token_type_ids")
    return m(
        batch["input_ids"].to(device, non_blocking=True),
        batch["attention_mask"].to(device, non_blocking=True),
        types.to(device, non_blocking=True) if types is not None else None,
        batch["positions"].to(device, non_blocking=True),
    )  # fmt: skip


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    atomic_write_bytes(path, data)


def _distribution(labels: np.ndarray, names: list[str]) -> dict[str, int]:
    counts = Counter(int(x) for x in labels if x >= 0)
    return {names[i]: counts.get(i, 0) for i in range(len(names))}


def run_selftrain(
    cfg: SelftrainConfig, resume: bool = False, echo=print, progress=None
) -> SelftrainResult:
    """Run (or, with ``resume``, continue) self-training."""
    out = Path(cfg.out)
    device = distributed.init(cfg.device)
    rank, world = rank_world()
    main = rank == 0
    say = echo if (echo and main) else (lambda _s: None)
    log_path = out / "selftrain.jsonl"
    if not resume and (log_path.exists() or any(out.glob("round-*"))):
        raise ValueError(f"{out} holds an earlier self-training run: resume it (--resume) or "
                         "choose another folder (--out)")  # fmt: skip
    if main:
        out.mkdir(parents=True, exist_ok=True)

    tok = load_tokenizer(cfg.base_model)
    first_teacher = load_task_model(cfg.teacher, device="cpu")
    labels, kind = first_teacher.labels, first_teacher.kind
    num_voters = cfg.num_voters or first_teacher.voters.num_voters
    widths = cfg.voter_widths
    if widths is None and num_voters == first_teacher.voters.num_voters:
        widths = tuple(first_teacher.voters.widths)
    dropout = cfg.voter_dropout
    if dropout is None:
        dropout = first_teacher.voters.voters[0].dropout.p
    del first_teacher
    C = len(labels)
    seed = cfg.soft.seed

    src_data = read_task_file(cfg.source_file, cfg.format)
    src = encode(src_data, tok, labels, cfg.max_len)
    tgt_data = subsample(read_task_file(cfg.unlabeled_file, cfg.format, unlabeled=True),
                         cfg.max_unlabeled, seed)  # fmt: skip
    tgt = encode(tgt_data, tok, labels, cfg.max_len)
    gold = np.concatenate(src.targets)
    src_units, tgt_units = row_units(src), row_units(tgt)
    amp = resolve_precision("auto", device)
    say(f"selftrain: {len(src_data)} source examples ({len(gold)} rows), {len(tgt_data)} "
        f"unlabeled target examples ({int(tgt.row_offsets[-1])} rows), labels {labels}, "
        f"N = {cfg.rounds}")  # fmt: skip

    records: list[dict] = []
    if log_path.exists():
        lines = log_path.read_text(encoding="utf-8").splitlines()
        records = [json.loads(x) for x in lines if x.strip()]

    def log(record: dict) -> None:
        records.append(record)
        if main:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def save_model(m, folder):
        save_task_model(m, folder, tok)

    def load_model(m, folder):
        m.load_state_dict(load_task_model(folder, device=device).state_dict())

    def run_loop(model, loss_fn, data, train_cfg, folder, which, r):
        go_on = latest_checkpoint(folder) is not None
        t0 = time.perf_counter()
        result = train(
            prepare(model, train_cfg, device), loss_fn, data,
            train_cfg.with_steps(data.num_batches(0)), folder, save_model=save_model,
            load_model=load_model, resume=go_on, echo=echo if main else None,
            progress=progress,
        )  # fmt: skip
        if main:
            save_task_model(model, folder / "model", tok)
        distributed.barrier()
        rates = [h["tokens_per_s"] for h in result.history]
        return result, time.perf_counter() - t0, (sum(rates) / len(rates) if rates else None)

    source_keep = np.ones(len(gold), dtype=bool)
    teacher_path = Path(cfg.teacher)
    student = None
    for r, which in cfg.steps:
        rdir = out / f"round-{r}"
        if main:
            rdir.mkdir(parents=True, exist_ok=True)
        if which == "soft":
            student = None
            # teacher probabilities on U_tgt: once per round, inference mode, stored as fp16
            tp = rdir / TEACHER_FILE
            if not tp.is_file():
                t0 = time.perf_counter()
                teacher = load_task_model(teacher_path, device=device)
                logits = predict_logits_all_ranks(
                    teacher, tgt, tok.pad_id, device, cfg.eval_max_tokens, amp
                )
                probs = VotersModule.probs(logits).to(torch.float16)
                del teacher, logits
                if main:
                    _write_tensors(tp, {"probs": probs}, {"teacher": str(teacher_path)})
                distributed.barrier()
                secs = time.perf_counter() - t0
                log({"round": r, "step": "teacher", "teacher": str(teacher_path), "ranks": world,
                     "rows": int(probs.shape[0]), "seconds": secs,
                     "tokens_per_s": float(tgt.lengths.sum()) / max(secs, 1e-9)})  # fmt: skip
                say(f"round {r}: teacher {teacher_path} on {probs.shape[0]} target rows "
                    f"({secs:.1f} s)")  # fmt: skip
            probs = load_file(str(tp))["probs"]
            if probs.shape != (int(tgt.row_offsets[-1]), C):
                raise ValueError(f"{tp}: probabilities {tuple(probs.shape)} do not fit the "
                                 f"{int(tgt.row_offsets[-1])} target rows x {C} labels")  # fmt: skip

            soft_dir = rdir / "soft"
            if (soft_dir / "model").is_dir():
                student = load_task_model(soft_dir / "model", device=device)
            else:
                encoder = load_encoder(cfg.base_model, dtype=torch.float32, device=device)
                digest = encoder_digest(encoder)
                torch.manual_seed(seed + 1000 * r)  # the fresh voters: a function of seed, round
                student = new_task_model(encoder, kind, labels, num_voters, widths, dropout)
                data = SoftBatches(tgt, probs, tok.pad_id, cfg.batch_size, cfg.max_tokens, seed)

                def soft_loss(m, batch, gen):
                    p = batch["probs"].to(device, non_blocking=True)
                    return soft_label_mse(_forward(m, batch, device), p)

                res, secs, toks = run_loop(student, soft_loss, data, cfg.soft, soft_dir, "soft", r)
                log({"round": r, "step": "soft", "student_init": digest,
                     "base_model": cfg.base_model, "teacher": str(teacher_path),
                     "steps": res.step, "loss": res.last_loss, "seconds": secs,
                     "tokens_per_s": toks})  # fmt: skip
                say(f"round {r}: soft step done, loss {res.last_loss:.5f} ({secs:.1f} s)")
            continue

        # ---- hard half of round r: threshold, source filter, pseudo labels, hard step
        assert student is not None
        th_path = rdir / "threshold.json"
        if not th_path.is_file():
            t0 = time.perf_counter()
            logits = predict_logits_all_ranks(
                student, src, tok.pad_id, device, cfg.eval_max_tokens, amp
            )
            agreed, conf, mean = voter_filter(logits, 0.0)
            correct = torch.from_numpy(gold) == agreed
            choice = select_threshold(conf, correct, C, cfg.threshold, cfg.grid or None, cfg.alpha)
            predicted_ok = (mean.argmax(-1) == torch.from_numpy(gold)).numpy()
            if main:
                record = choice.to_json() | {"round": r, "rows": len(gold),
                                             "correct_rows": int(predicted_ok.sum())}  # fmt: skip
                atomic_write_text(rdir / "threshold.csv", choice.to_csv())
                np_ok = predicted_ok.astype(np.uint8)
                _write_tensors(rdir / "source-correct.safetensors",
                               {"correct": torch.from_numpy(np_ok)}, {})  # fmt: skip
                atomic_write_text(th_path, json.dumps(record, indent=2) + "\n")
            distributed.barrier()
            secs = time.perf_counter() - t0
            log({"round": r, "step": "threshold", "alpha": choice.alpha, "method": choice.method,
                 "fallback": choice.fallback, "seconds": secs})  # fmt: skip
            say(f"round {r}: alpha = {choice.alpha} ({choice.method}"
                + (f"; {choice.fallback}" if choice.fallback else "") + ")")  # fmt: skip
        alpha = float(json.loads(th_path.read_text(encoding="utf-8"))["alpha"])
        predicted_ok = load_file(str(rdir / "source-correct.safetensors"))["correct"].numpy() > 0

        f_path = rdir / FILTER_FILE
        if r > 1:  # the permanent source filter of the previous rounds
            source_keep = load_file(str(out / f"round-{r - 1}" / FILTER_FILE))["source_keep"]
            source_keep = source_keep.numpy() > 0
        if not f_path.is_file():
            t0 = time.perf_counter()
            before = int(source_keep.sum())
            keep = source_keep.copy()
            if cfg.source_filter:
                ok = (
                    predicted_ok
                    if cfg.filter_unit == "word"
                    else whole_units(predicted_ok, src_units)
                )
                keep &= ok
            logits = predict_logits_all_ranks(
                student, tgt, tok.pad_id, device, cfg.eval_max_tokens, amp
            )
            pseudo, _, _ = voter_filter(logits, alpha)
            pseudo = pseudo.numpy()
            if cfg.filter_unit == "sequence":
                pseudo = np.where(whole_units(pseudo >= 0, tgt_units), pseudo, -1)
            counts = {
                "round": r,
                "filter_unit": cfg.filter_unit,
                "alpha": alpha,
                "source_rows": len(gold),
                "source_rows_before": before,
                "source_rows_kept": int(keep.sum()),
                "source_rows_removed": before - int(keep.sum()),
                "source_units_kept": int(np.unique(src_units[keep]).size),
                "target_rows": len(pseudo),
                "pseudo_rows": int((pseudo >= 0).sum()),
                "target_units": int(np.unique(tgt_units).size),
                "pseudo_units": int(np.unique(tgt_units[pseudo >= 0]).size),
                "pseudo_distribution": _distribution(pseudo, labels),
            }
            if main:
                _write_tensors(f_path, {"source_keep": torch.from_numpy(keep.astype(np.uint8)),
                                        "pseudo": torch.from_numpy(pseudo.astype(np.int64))},
                               {})  # fmt: skip
                atomic_write_text(rdir / "filter.json", json.dumps(counts, indent=2) + "\n")
            distributed.barrier()
            log({"step": "filter", **counts, "seconds": time.perf_counter() - t0})
            say(f"round {r}: source rows kept {counts['source_rows_kept']}/{len(gold)} "
                f"(-{counts['source_rows_removed']}), pseudo-labeled target rows "
                f"{counts['pseudo_rows']}/{len(pseudo)} in {counts['pseudo_units']} units; "
                f"classes {counts['pseudo_distribution']}")  # fmt: skip
        saved = load_file(str(f_path))
        source_keep = saved["source_keep"].numpy() > 0
        pseudo = saved["pseudo"].numpy()

        hard_dir = rdir / "hard"
        if (hard_dir / "model").is_dir():
            student = load_task_model(hard_dir / "model", device=device)
        else:
            hard_src = with_targets(src, np.where(source_keep, gold, -1))
            hard_tgt = with_targets(tgt, pseudo)
            hard = concat(hard_src, hard_tgt)
            src_y, tgt_y = (np.concatenate([np.zeros(0, np.int64), *part.targets])
                            for part in (hard_src, hard_tgt))  # fmt: skip
            if len(hard) == 0:
                raise ValueError(f"round {r}: no training data for the hard step: every source "
                                 f"row was removed and no target row passed alpha = {alpha}")  # fmt: skip
            data = TaskBatches(hard, tok.pad_id, cfg.batch_size, cfg.max_tokens, seed)

            def hard_loss(m, batch, gen):
                return voters_loss(_forward(m, batch, device), batch["targets"].to(device))

            res, secs, toks = run_loop(student, hard_loss, data, cfg.hard, hard_dir, "hard", r)
            log({"round": r, "step": "hard", "items": len(hard), "source_items": len(hard_src),
                 "source_rows": int((src_y >= 0).sum()), "target_items": len(hard_tgt),
                 "target_rows": int((tgt_y >= 0).sum()),
                 "target_distribution": _distribution(tgt_y, labels), "steps": res.step,
                 "loss": res.last_loss, "seconds": secs, "tokens_per_s": toks})  # fmt: skip
            say(f"round {r}: hard step on {len(hard)} items done, loss {res.last_loss:.5f} "
                f"({secs:.1f} s)")  # fmt: skip
        teacher_path = hard_dir / "model"

    assert student is not None
    final = out / "model"
    if main:
        save_task_model(student, final, tok)
        summary = {"rounds": cfg.rounds, "steps": [f"{w}{r}" for r, w in cfg.steps],
                   "model": str(final), "log": records}  # fmt: skip
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    distributed.barrier()
    say(f"selftrain: final student in {final}")
    return SelftrainResult(final, records)
