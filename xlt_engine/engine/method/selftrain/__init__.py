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

The code, one concern a module, each step a function of the run's ``SelftrainContext`` and its
round (no step reads state another module sets): here the loop; ``context`` the settings and
what every step shares (stores, inference in chunks, the log); ``passes`` the teacher's
probabilities, the check and the thresholds; ``filter`` the source filter and pseudo labels;
``guard`` the collapse guard; ``training`` the soft and hard steps; ``store`` the rows and
batches; ``files`` the round's file names and how each is written once for every rank;
``counts`` and ``wall`` what the records count and where the time went.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xlt_engine.engine.method.selftrain.context import SelftrainConfig, SelftrainContext
from xlt_engine.engine.method.selftrain.filter import filter_round
from xlt_engine.engine.method.selftrain.guard import guard
from xlt_engine.engine.method.selftrain.passes import check, teacher_probs, thresholds
from xlt_engine.engine.method.selftrain.training import hard_step, soft_step
from xlt_engine.engine.method.selftrain.wall import describe_wall, wall_breakdown
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.fileio import atomic_folder, atomic_write_text, link_tree

__all__ = ["SelftrainConfig", "SelftrainResult", "run_selftrain"]


@dataclass
class SelftrainResult:
    model: Path
    rounds: list[dict]


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
    ctx = SelftrainContext(cfg, device, echo, progress)
    ctx.say(f"{ctx.opening}, N = {cfg.rounds}")
    source_keep = np.ones(len(ctx.gold), dtype=bool)  # D_keep = D_src
    teachers = [Path(t) for t in (cfg.teacher, *cfg.more_teachers)]
    student = None
    for r, which in cfg.steps:
        if main:
            (out / f"round-{r}").mkdir(parents=True, exist_ok=True)
        if which == "soft":
            probs = teacher_probs(ctx, r, teachers)
            student = soft_step(ctx, r, probs, teachers)
            check(ctx, r, "soft", probs, student)
            continue
        threshold, source_out = thresholds(ctx, r, student)
        source_keep, pseudo, collapse = filter_round(
            ctx, r, student, threshold, source_out, source_keep, probs
        )
        skip = guard(ctx, r, collapse, threshold)  # before every hard step
        student = hard_step(ctx, r, student, source_keep, pseudo, threshold["alpha"], skip)
        check(ctx, r, "hard", probs, student)
        teachers = [out / f"round-{r}" / "hard" / "model"]  # T = S

    final = out / "model"
    if main:
        # (a resumed run's records hold earlier runs' steps: no "other" against this run's wall)
        wall = wall_breakdown(ctx.records, None if resume else time.perf_counter() - started)
        summary = {
            "rounds": cfg.rounds,
            "steps": [f"{w}{r}" for r, w in cfg.steps],
            "model": str(final),
            "collapsed": ctx.collapsed,
            "wall": wall,
            "log": ctx.records,
        }
        ctx.say(f"selftrain: where the time went: {describe_wall(wall)}")
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        last = out / f"round-{cfg.steps[-1][0]}" / cfg.steps[-1][1] / "model"
        with atomic_folder(final) as tmp:  # the last step's model, linked: no third copy
            link_tree(last, tmp)  # last: model/ marks the stage finished
    distributed.barrier()
    for c in ctx.collapsed:  # repeated where a reader of the run's end looks
        ctx.say(
            f"selftrain: round {c['round']} collapsed ({c['action']}): " + "; ".join(c["findings"])
        )
    ctx.say(f"selftrain: final student in {final}")
    return SelftrainResult(final, ctx.records)
