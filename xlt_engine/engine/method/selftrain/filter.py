"""A round's filter: the permanent source filter (the rows of D_keep the student still gets
right) and the pseudo labels on U_tgt (``voter_filter``: the voters unanimous above their
class's threshold), written as one per-row file in passes over the target store
(``RoundFilter``), with filter.json's counts and the collapse findings."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from xlt_engine.data.packed import release
from xlt_engine.engine.method.pseudo_labels import check_collapse, source_ok, thresholds_from
from xlt_engine.engine.method.selftrain.context import SelftrainContext
from xlt_engine.engine.method.selftrain.counts import (
    class_alphas,
    distribution,
    fidelity_counts,
    lost_classes,
    target_counts,
)
from xlt_engine.engine.method.selftrain.files import FILTER_FILE, STUDENT_FILE
from xlt_engine.engine.method.selftrain.passes import VOTER_ROWS, write_voter_rows
from xlt_engine.engine.method.selftrain.store import drop_failed_units, whole_units
from xlt_engine.engine.train import distributed
from xlt_engine.fileio import atomic_write_text, open_safetensors
from xlt_engine.inputs import read_json
from xlt_engine.model.task import TaskModel


def filter_round(
    ctx: SelftrainContext,
    r: int,
    student: TaskModel,
    threshold: dict,
    source_out: dict[str, np.ndarray],
    source_keep: np.ndarray,
    probs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The permanent source filter (rows of D_keep that pass ``source_filter`` at the
    classes' thresholds) and the pseudo labels (``labels_at``: voter_filter's rule at the
    per-class thresholds on the soft student's voter rows, which the soft step's check wrote;
    -1 = none; ``class_quota`` first reads the target's voters to set them, then labels in a
    second pass); returns (source_keep, pseudo, collapse findings).
    ``probs``: the probabilities the soft step fitted, for filter.json's record of how
    closely the student follows them (``fidelity_counts``)."""
    rdir = ctx.out / f"round-{r}"
    path = rdir / FILTER_FILE
    if not distributed.rank0_view(path.is_file()):
        job = RoundFilter(ctx, r, student, threshold, source_out, source_keep, probs)
        passes = [job.fill, job.set_quota, job.relabel] if job.quota else [job.fill]
        ctx.rows_file(path, job.specs(), {}, passes, job.finish)
    saved = open_safetensors(path)
    findings = read_json(rdir / "filter.json")["collapse"]
    return np.asarray(saved["source_keep"]) > 0, saved["pseudo"], findings


def labels_at(agreed: np.ndarray, conf: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Pseudo labels [rows] int64 (-1: none) at the class thresholds ``alpha`` [C] from the
    voters' common label (``agreed``, -1: none) and confidence per row: ``voter_filter``'s rule
    (all voters agree and the smallest top probability exceeds the agreed class's threshold,
    compared in fp32), without the logits."""
    a = alpha.astype(np.float32)[np.clip(agreed, 0, None)]
    return np.where((agreed >= 0) & (conf > a), agreed, -1).astype(np.int64)


@dataclass(eq=False)
class RoundFilter:
    """One round's filter file (``filter_round``), written in passes over its rows: ``fill``
    (the voters' agreement, confidence and argmax, from the soft step's check; the pseudo labels
    unless the rule is ``class_quota``), for ``class_quota`` ``set_quota`` (the thresholds from
    the target's voters) and ``relabel``, then ``finish`` (the source filter, filter.json, the
    warnings)."""

    ctx: SelftrainContext
    r: int
    student: TaskModel
    threshold: dict  # threshold.json's record
    source_out: dict[str, np.ndarray]  # S's outputs per source row (source-ok.safetensors)
    source_keep: np.ndarray  # D_keep so far
    probs: np.ndarray  # the probabilities the soft step fitted

    def __post_init__(self):
        self.rule = self.ctx.cfg.rule
        self.quota = self.rule.reads_target
        self.alpha = np.asarray(self.threshold["class_alpha"], dtype=np.float64)  # as recorded
        self.classes = self.threshold["classes"]
        self.t0 = time.perf_counter()

    def specs(self) -> dict:
        rows = self.ctx.tgt_rows
        return {
            "source_keep": ("U8", (len(self.ctx.gold),)),
            "pseudo": ("I64", (rows,)),
            "agreed": ("I32", (rows,)),  # the voters' common label at any confidence, or -1
            "confidence": ("F32", (rows,)),  # the smallest of the voters' top probabilities
            "student": ("I32", (rows,)),  # argmax of the voters' mean probabilities
        }

    def fill(self, arrays) -> None:
        """This rank's rows: the student's voters (``VOTER_ROWS``), read from the soft step's
        check, which ran the same model over the same chunks (or, where that file lacks them,
        from a pass of its own), then the pseudo labels at the class thresholds (quota: none
        yet; the voters' outputs set the thresholds, ``set_quota``)."""
        ctx = self.ctx
        seen = open_safetensors(ctx.out / f"round-{self.r}" / "soft" / STUDENT_FILE)
        if all(k in seen for k in VOTER_ROWS):
            for rows in self.my_rows():
                for k in VOTER_ROWS:
                    arrays[k][rows] = seen[k][rows]
                release(ctx.tgt, *arrays.values(), *seen.values())
        else:
            for row, logits in ctx.chunks(self.student, ctx.tgt, *arrays.values()):
                write_voter_rows(arrays, slice(row, row + logits.shape[1]), logits)
        self.relabel(arrays, none=self.quota)

    def my_rows(self, chunk: int = 1 << 20):
        """This rank's target rows (its items' share, ``ctx.share``), ``chunk`` at a time."""
        lo, hi = self.ctx.share(self.ctx.tgt)
        offsets = self.ctx.tgt.row_offsets
        first, last = int(offsets[lo]), int(offsets[hi])
        for a in range(first, last, chunk):
            yield slice(a, min(a + chunk, last))

    def relabel(self, arrays, none: bool = False) -> None:
        """This rank's pseudo labels at the class thresholds, from the voters' rows (``none``:
        -1 everywhere); class_quota's second pass, at the thresholds it set."""
        for rows in self.my_rows():
            if none:
                arrays["pseudo"][rows] = -1
            else:
                agreed = np.asarray(arrays["agreed"][rows])
                conf = np.asarray(arrays["confidence"][rows])
                arrays["pseudo"][rows] = labels_at(agreed, conf, self.alpha)
            release(self.ctx.tgt, *arrays.values())

    def set_quota(self, arrays) -> None:
        """class_quota: the thresholds from the target's voters (every rank reads every rank's
        rows and sets the same ones)."""
        ctx, src = self.ctx, self.source_out
        th = thresholds_from(
            torch.from_numpy(src["agreed"]),
            torch.from_numpy(src["confidence"]),
            torch.from_numpy(ctx.gold),
            len(ctx.labels),
            self.rule,
            background=ctx.background,
            names=ctx.labels,
            target=(
                torch.from_numpy(np.asarray(arrays["agreed"])),
                torch.from_numpy(np.asarray(arrays["confidence"])),
            ),
        )
        self.alpha[:] = th.alpha
        self.classes[:] = th.classes
        ctx.say(f"round {self.r}: {self.rule.describe()}: {class_alphas(ctx.labels, th.alpha)}")

    def kept_source(self) -> np.ndarray:
        """D_keep after this round: the rows kept so far that pass the source filter."""
        ctx, src = self.ctx, self.source_out
        ok = source_ok(
            torch.from_numpy(src["agreed"]),
            torch.from_numpy(src["confidence"]),
            torch.from_numpy(src["predicted"]),
            torch.from_numpy(ctx.gold),
            torch.from_numpy(self.alpha),
            ctx.cfg.source_filter,
        ).numpy()
        unit_ok = ok if ctx.cfg.filter_unit == "word" else whole_units(ok, ctx.src_units)
        return self.source_keep & unit_ok

    def record(self, arrays, keep: np.ndarray) -> dict:
        """filter.json: the rule, the thresholds, the source and target counts, the student's
        fidelity to its teacher, the class histograms and the collapse findings."""
        ctx, cfg, before = self.ctx, self.ctx.cfg, int(self.source_keep.sum())
        counts = {
            "round": self.r,
            "filter_unit": cfg.filter_unit,
            "source_filter": cfg.source_filter,
            "pseudo_rule": self.threshold["rule"],
            "alpha": self.threshold["alpha"],
            "class_alpha": dict(zip(ctx.labels, self.alpha.tolist(), strict=True)),
            "classes": self.classes,
            "source_rows": len(ctx.gold),
            "source_rows_before": before,
            "source_rows_kept": int(keep.sum()),
            "source_rows_removed": before - int(keep.sum()),
            "source_units_kept": int(np.unique(ctx.src_units[keep]).size),
            **target_counts(ctx.tgt, arrays["pseudo"], arrays["agreed"] >= 0, ctx.labels),
            **fidelity_counts(self.probs, arrays["student"], ctx.labels, ctx.background),
            "source_distribution": distribution(ctx.gold, ctx.labels),  # gold, all rows
            "source_kept_distribution": distribution(ctx.gold[keep], ctx.labels),
        }
        counts["collapse"] = check_collapse(
            counts["pseudo_distribution"],
            counts["student_distribution"],
            counts["source_distribution"],
            counts["source_kept_distribution"],
            None if ctx.background is None else ctx.labels[ctx.background],
        )
        counts["on_collapse"] = cfg.on_collapse
        return counts

    def finish(self, arrays) -> None:
        ctx, r = self.ctx, self.r
        forward = ctx.take_forward_seconds()
        keep = self.kept_source()
        arrays["source_keep"][:] = keep
        if ctx.cfg.filter_unit == "sequence":
            drop_failed_units(ctx.tgt, arrays["pseudo"])
        counts = self.record(arrays, keep)
        secs = time.perf_counter() - self.t0
        ctx.log(
            {
                "step": "filter",
                **counts,
                "seconds": secs,
                "forward_seconds": forward,
                "precision": ctx.precision,
            }
        )
        ctx.say(
            f"round {r}: source rows kept {counts['source_rows_kept']}/{len(ctx.gold)} "
            f"(-{counts['source_rows_removed']}), pseudo-labeled target rows "
            f"{counts['pseudo_rows']}/{ctx.tgt_rows} in {counts['pseudo_units']} units; "
            f"classes {counts['pseudo_distribution']}"
        )
        atomic_write_text(
            ctx.out / f"round-{r}" / "filter.json", json.dumps(counts, indent=2) + "\n"
        )
        lost = lost_classes(counts)
        if lost:
            ctx.warn(
                f"round {r}: the soft student predicts none of {lost} on the target "
                f"rows, where its teacher gives each to at least 1% of them (it follows "
                f"the teacher on {100 * counts['teacher_agreement']:.1f}% of the rows): "
                "the soft step did not fit, and no pseudo label can be of these classes "
                "(see the soft step's loss in selftrain.jsonl; a lower selftrain.soft.lr "
                "or head_lr_scale may help)"
            )
