"""A round's passes over the target and source text that read a model and train nothing: the
teacher's probabilities on U_tgt (several teachers: their mean), the check of each step's student
(how it follows its teacher, its dev scores), and the pseudo-label rule's thresholds from the
student's voters on D_src. Each is a function of the run's ``SelftrainContext`` and the round."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from xlt_engine.engine.method.pseudo_labels import rule_settings, source_thresholds
from xlt_engine.engine.method.rules import PseudoRule
from xlt_engine.engine.method.selftrain.context import SelftrainContext
from xlt_engine.engine.method.selftrain.counts import (
    class_alphas,
    describe_check,
    fidelity_counts,
    lost_classes,
    teacher_names,
)
from xlt_engine.engine.method.selftrain.files import (
    SOURCE_OK_FILE,
    STUDENT_FILE,
    TEACHER_FILE,
    link_file,
    shared,
    write_tensors,
)
from xlt_engine.engine.method.selftrain.guard import soft_lost_message
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.engine.train.inference import evaluate_model
from xlt_engine.fileio import atomic_write_text, create_safetensors, open_safetensors
from xlt_engine.inputs import read_json
from xlt_engine.kernels import voter_filter
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import TaskModel, load_task_model


def probs_file(
    ctx: SelftrainContext,
    path: Path,
    models: list[Path | TaskModel],
    meta: dict[str, str],
    voters: bool = False,
) -> None:
    """The mean-of-voters probabilities on U_tgt [rows, C], fp16, of the task model in
    ``models`` (a folder, or a model already loaded; several: the mean of theirs, one per
    source language) into ``path``, each rank its share of the rows, chunk by chunk
    (``rows_file``). ``voters`` (one model): also
    what the filter reads of it per row (``VOTER_ROWS``: the voters' common label at any
    confidence or -1, the smallest of their top probabilities, the argmax of their mean), from
    the same forward pass, so that the filter needs none of its own."""
    C = len(ctx.labels)
    if voters and len(models) != 1:
        raise ValueError("probs_file: voters=True reads one model")
    total = None
    if len(models) > 1:  # the sum over models, fp32, beside the file (debris if killed)
        total = path.parent / f".{path.name}.tmp-sum"
        if ctx.main:
            create_safetensors(total, {"sum": ("F32", (ctx.tgt_rows, C))}, {})
        distributed.barrier()

    def fill(arrays):
        out = arrays["probs"]
        acc = open_safetensors(total, "r+")["sum"] if total is not None else None
        for k, given in enumerate(models):
            loaded = isinstance(given, TaskModel)
            model = given if loaded else load_task_model(given, device=ctx.device)
            if model.labels != ctx.labels:
                raise ValueError(
                    f"{given}: the teacher's labels {model.labels} are not the first "
                    f"teacher's {ctx.labels} (same labels, same order)"
                )
            held = (out,) if acc is None else (out, acc)
            held += tuple(arrays[name] for name in VOTER_ROWS) if voters else ()
            for row, logits in ctx.chunks(model, ctx.tgt, *held):
                p = VotersModule.probs(logits).float().cpu().numpy()
                rows = slice(row, row + len(p))
                if voters:
                    write_voter_rows(arrays, rows, logits)
                if acc is None:
                    out[rows] = p.astype(np.float16)
                elif k + 1 < len(models):
                    acc[rows] = p if k == 0 else acc[rows] + p
                else:
                    out[rows] = ((acc[rows] + p) / len(models)).astype(np.float16)
            del model
        if acc is not None:
            acc.flush()

    specs = {"probs": ("F16", (ctx.tgt_rows, C))}
    if voters:
        specs |= {k: (dtype, (ctx.tgt_rows,)) for k, dtype in VOTER_ROWS.items()}
    ctx.rows_file(path, specs, meta, fill)
    if total is not None and ctx.main:
        total.unlink(missing_ok=True)


VOTER_ROWS = {  # per target row, what the filter reads of a student's voters
    "agreed": "I32",  # the voters' common label at any confidence, or -1
    "confidence": "F32",  # the smallest of the voters' top probabilities
    "student": "I32",  # argmax of the voters' mean probabilities
}


def write_voter_rows(arrays: dict, rows: slice, logits: torch.Tensor) -> None:
    """``VOTER_ROWS`` of voter logits [M, rows, C] into ``arrays[...][rows]``: one copy to the
    host, as float64 (exact for labels and fp32 confidences)."""
    agreed, conf, mean = voter_filter(logits, 0.0)  # at any confidence
    out = torch.stack([x.double() for x in (agreed, conf, mean.argmax(dim=-1))]).cpu().numpy()
    for k, values in zip(VOTER_ROWS, out, strict=True):
        arrays[k][rows] = values


def open_probs(ctx: SelftrainContext, path: Path) -> np.ndarray:
    probs = open_safetensors(path)["probs"]
    if probs.shape != (ctx.tgt_rows, len(ctx.labels)):
        raise ValueError(
            f"{path}: probabilities {tuple(probs.shape)} do not fit the "
            f"{ctx.tgt_rows} target rows x {len(ctx.labels)} labels"
        )
    return probs


def teacher_probs(ctx: SelftrainContext, r: int, teachers: list[Path]) -> np.ndarray:
    """T's mean-of-voters probabilities on U_tgt [rows, C], fp16, once per round, as a
    memory map of ``round-<r>/teacher-probs.safetensors``; with several teachers (one per
    source language) the mean of theirs. A teacher that is an earlier round's hard
    student was already read by that step's check: its pass is linked, not repeated."""
    path = ctx.out / f"round-{r}" / TEACHER_FILE
    teacher = teacher_names(teachers)
    if not distributed.rank0_view(path.is_file()):  # rank 0 links it before any wait
        t0 = time.perf_counter()
        last = ctx.out / f"round-{r - 1}" / "hard"  # T = the last round's student
        checked = last / STUDENT_FILE
        linked = teachers == [last / "model"] and checked.is_file()
        if linked:
            if ctx.main:
                link_file(checked, path)
            distributed.barrier()
        else:
            meta = {"teacher": teacher if isinstance(teacher, str) else json.dumps(teacher)}
            probs_file(ctx, path, teachers, meta)
        secs = time.perf_counter() - t0
        forward = ctx.take_forward_seconds()
        ctx.log(
            {
                "round": r,
                "step": "teacher",
                "teacher": teacher,
                "ranks": rank_world()[1],
                "rows": ctx.tgt_rows,
                **({"linked_from": str(checked)} if linked else {}),
                "seconds": secs,
                "forward_seconds": forward,  # of which the model's forward passes
                "precision": ctx.precision,
                "tokens_per_s": float(ctx.tgt.lengths.sum()) / max(secs, 1e-9),
            }
        )
        how = f"linked from {checked}" if linked else f"{secs:.1f} s"
        ctx.say(f"round {r}: teacher {teacher} on {ctx.tgt_rows} target rows ({how})")
    return open_probs(ctx, path)


def check(ctx: SelftrainContext, r: int, which: str, probs: np.ndarray, student: TaskModel) -> dict:
    """After round ``r``'s ``which`` step: how its ``student`` (the step's model, as saved)
    follows the round's teacher ``probs`` on the target rows (``fidelity_counts``: all rows,
    the teacher's entity rows, each class) and its score on each dev file; a ``check`` record
    (its presence marks the check done: a resumed run repeats only what it lacks). A skipped
    hard step's model is its soft student: its check links the soft check's pass and record."""
    done = [
        x
        for x in ctx.records
        if x.get("step") == "check" and x.get("round") == r and x.get("of") == which
    ]
    if done:
        return done[-1]
    t0 = time.perf_counter()
    folder = ctx.out / f"round-{r}" / which
    path = folder / STUDENT_FILE
    same = soft_check_of_a_skipped_hard_step(ctx, r, which)
    if same is not None:  # the hard student is the soft one, as saved: its check, not a pass
        if ctx.main and not path.is_file():
            link_file(ctx.out / f"round-{r}" / "soft" / STUDENT_FILE, path)
        distributed.barrier()
        record = {k: v for k, v in same.items() if k != "shared_from"}
        record |= {"of": which, "seconds": time.perf_counter() - t0, "forward_seconds": 0.0}
        record["linked_from"] = str(ctx.out / f"round-{r}" / "soft" / STUDENT_FILE)
        ctx.log(record)
        ctx.say(f"round {r}: {which} student (the soft one, its check linked): "
                f"{describe_check(record)}")  # fmt: skip
        return record
    if not distributed.rank0_view(path.is_file()):
        meta = {"student": str(folder / "model")}
        # the soft student's voters per row, which the round's filter reads (no pass of its own)
        probs_file(ctx, path, [student], meta, voters=which == "soft")
    fidelity = fidelity_counts(probs, open_probs(ctx, path), ctx.labels, ctx.background)
    dev = {}
    if ctx.main and ctx.dev:
        for lang, (data, enc) in ctx.dev.items():
            args = (ctx.tok, ctx.cfg.max_len, ctx.device, ctx.cfg.eval_max_tokens)
            res = evaluate_model(student, data, *args, enc=enc)
            dev[lang] = {"metric": res["metric"], "score": res["score"]}
            if "per_type" in res:
                dev[lang]["per_type"] = res["per_type"]
    distributed.barrier()
    forward = ctx.take_forward_seconds()
    record = {
        "round": r,
        "step": "check",
        "of": which,
        **fidelity,
        "dev": dev,
        "seconds": time.perf_counter() - t0,
        "forward_seconds": forward,
        "precision": ctx.precision,
    }
    ctx.log(record)
    ctx.say(f"round {r}: {which} student: {describe_check(record)}")
    lost = lost_classes(fidelity) if which == "soft" else []
    if lost:
        ctx.warn(f"round {r}: {soft_lost_message(ctx.cfg, lost, record)}")
    return record


def soft_check_of_a_skipped_hard_step(ctx: SelftrainContext, r: int, which: str) -> dict | None:
    """Round ``r``'s soft check where ``which`` is a hard step that was skipped (its model is
    the soft student, saved as it was checked) and that check's pass is on disk; else None."""
    if which != "hard":
        return None
    mine = [x for x in ctx.records if x.get("round") == r]
    hard = [x for x in mine if x.get("step") == "hard"]
    soft = [x for x in mine if x.get("step") == "check" and x.get("of") == "soft"]
    passed = ctx.out / f"round-{r}" / "soft" / STUDENT_FILE
    if not hard or "skipped" not in hard[-1] or not soft:
        return None
    return soft[-1] if distributed.rank0_view(passed.is_file()) else None


def twin_source_pass(ctx: SelftrainContext, r: int) -> Path | None:
    """The voters' outputs on D_src (``SOURCE_OK_FILE``) of the twin whose round 1 this run
    took (its soft record's ``shared_from``: the same soft student, the same source rows),
    where ``r`` is 1 and the twin's threshold step has finished with as many rows; else None.
    Only the pass is taken: the thresholds are this run's rule's."""
    if r != 1:
        return None
    soft = [x for x in ctx.records if x.get("round") == 1 and x.get("step") == "soft"]
    if not soft or "shared_from" not in soft[-1]:
        return None
    twin = Path(soft[-1]["shared_from"]) / "round-1"
    path = twin / SOURCE_OK_FILE

    def finished() -> bool:
        if not (twin / "threshold.json").is_file() or not path.is_file():
            return False
        rows = read_json(twin / "threshold.json").get("rows")
        return rows == len(ctx.gold) and all(
            len(v) == rows for v in open_safetensors(path, "r").values()
        )

    return path if distributed.rank0_view(ctx.main and finished()) else None


def thresholds(
    ctx: SelftrainContext, r: int, student: TaskModel
) -> tuple[dict, dict[str, np.ndarray]]:
    """The pseudo-label rule's thresholds from S's voters on D_src (``pseudo_labels``;
    ``class_quota``'s per-class ones come with the target, in ``filter``) and S's outputs
    per source row (agreed label or -1, confidence, the mean's argmax), which the source
    filter reads. ``threshold.json`` (written last: it marks the step done) holds the
    paper's alpha and curve, each class's threshold with its source rows and precision."""
    rdir = ctx.out / f"round-{r}"
    path = rdir / "threshold.json"
    rule = ctx.cfg.rule

    def compute():
        t0 = time.perf_counter()
        taken, forward = twin_source_pass(ctx, r), 0.0
        if taken is None:
            logits = ctx.logits(student, ctx.src)  # the one forward pass of the step
            forward = time.perf_counter() - t0
            agreed, conf, mean = voter_filter(logits, 0.0)
            del logits
            outputs = {"agreed": agreed, "confidence": conf, "predicted": mean.argmax(-1)}
        else:  # the same student on the same rows: the twin's pass, not a second one
            outputs = {k: v.to(ctx.device) for k, v in load_file(str(taken)).items()}
            agreed, conf = outputs["agreed"], outputs["confidence"]
        gold = torch.from_numpy(ctx.gold).to(agreed.device)
        th = source_thresholds(
            agreed, conf, gold, len(ctx.labels), rule, background=ctx.background, names=ctx.labels
        )
        secs = time.perf_counter() - t0
        base = th.base
        ctx.log(
            {
                "round": r,
                "step": "threshold",
                "alpha": base.alpha,
                "method": base.method,
                "fallback": base.fallback,
                "rule": th.rule,
                "class_alpha": dict(zip(ctx.labels, th.alpha, strict=True)),
                **({"source_pass_from": str(taken)} if taken is not None else {}),
                "seconds": secs,
                "forward_seconds": forward,  # the student on D_src; the rest: arithmetic
                "precision": ctx.precision,
            }
        )
        if taken is not None:
            ctx.say(f"round {r}: the soft student's voters on the source rows taken from {taken}")
        ctx.say(f"round {r}: {alpha_line(base, rule, ctx.labels, th.alpha)}")
        for note in th.notes:
            ctx.say(f"round {r}: {note}")
        return th, {k: v.cpu().numpy() for k, v in outputs.items()}

    def write(value):
        th, outputs = value
        record = th.base.to_json() | {
            "round": r,
            "rows": len(ctx.gold),
            "rule": th.rule,
            "rule_settings": rule_settings(rule),
            "class_alpha": th.alpha,
            "classes": th.classes,
            "notes": th.notes,
        }
        atomic_write_text(rdir / "threshold.csv", th.base.to_csv())
        write_tensors(
            rdir / SOURCE_OK_FILE, {k: torch.from_numpy(v) for k, v in outputs.items()}, {}
        )
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")  # last: marks it done

    def read():
        record = read_json(path)
        outputs = {k: v.numpy() for k, v in load_file(str(rdir / SOURCE_OK_FILE)).items()}
        return record, outputs

    return shared(path, compute, write, read)


def alpha_line(base, rule: PseudoRule, labels: list[str], alpha: list[float]) -> str:
    """The threshold step's line: the paper's alpha and how it was chosen, and another rule's
    class thresholds."""
    line = f"alpha = {base.alpha} ({base.method}" + (f"; {base.fallback}" if base.fallback else "")
    if type(rule) is not PseudoRule:  # another rule than the paper's
        return f"{line}); {rule.describe()}: {class_alphas(labels, alpha)}"
    return line + ")"
