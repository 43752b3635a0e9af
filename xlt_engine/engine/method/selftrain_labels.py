"""A self-training round's passes over the target text (``selftrain``): the teacher's
probabilities, the check of each step's student, the rule's thresholds from the student's voters
on the source rows, the filter file written in passes over the target store (``RoundFilter``),
the hard step's data, and the collapse guard. ``RoundPasses`` holds these steps of
``SelfTraining``; the training steps and the run stay in ``selftrain``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from xlt_engine.data.packed import STORE_FORMAT, StoreWriter, open_store
from xlt_engine.data.task import Encoded
from xlt_engine.engine.method.pseudo_labels import (
    check_collapse,
    pseudo_label,
    rule_settings,
    source_ok,
    thresholds_from,
)
from xlt_engine.engine.method.rules import PseudoRule
from xlt_engine.engine.method.selftrain_rows import (
    FILTER_FILE,
    SOURCE_OK_FILE,
    STUDENT_FILE,
    TEACHER_FILE,
    CollapseError,
    class_alphas,
    describe_check,
    distribution,
    drop_failed_units,
    fidelity_counts,
    lost_classes,
    remedies,
    shared,
    target_counts,
    teacher_names,
    whole_units,
    write_tensors,
    write_with_targets,
)
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.engine.train.inference import evaluate_model
from xlt_engine.fileio import (
    atomic_folder,
    atomic_write_text,
    create_safetensors,
    fsync_dir,
    link_or_copy,
    open_safetensors,
)
from xlt_engine.inputs import read_json
from xlt_engine.kernels import voter_filter
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import TaskModel, load_task_model, save_task_model


class RoundPasses:
    """The passes of a round over the target text, as steps of ``SelfTraining`` (its state:
    ``self.cfg``, the stores, the log, ``chunks``): the teacher's probabilities, the check after
    each training step, the pseudo-label rule's thresholds, the filter, the hard step's data and
    the collapse guard."""

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
        teacher = teacher_names(teachers)
        if not distributed.rank0_view(path.is_file()):  # rank 0 links it before any wait
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

    def check(self, r: int, which: str, probs: np.ndarray) -> dict:
        """After round ``r``'s ``which`` step: how its student (the step's saved model) follows
        the round's teacher ``probs`` on the target rows (``fidelity_counts``: all rows, the
        teacher's entity rows, each class) and its score on each dev file; a ``check`` record
        (its presence marks the check done: a resumed run repeats only what it lacks)."""
        done = [
            x
            for x in self.records
            if x.get("step") == "check" and x.get("round") == r and x.get("of") == which
        ]
        if done:
            return done[-1]
        t0 = time.perf_counter()
        folder = self.out / f"round-{r}" / which
        path = folder / STUDENT_FILE
        if not distributed.rank0_view(path.is_file()):
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
        lost = lost_classes(fidelity) if which == "soft" else []
        if lost:
            self.warn(f"round {r}: {soft_lost_message(self.cfg, lost, record)}")
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
            logits = self.logits(student, self.src)  # the one forward pass of the step
            forward = time.perf_counter() - t0
            agreed, conf, mean = voter_filter(logits, 0.0)
            del logits
            gold = torch.from_numpy(self.gold).to(agreed.device)
            # a rule that reads the target (class_quota) sets its thresholds from the target
            # rows (in ``filter``): here the paper's alpha and each class's source record at it
            th = thresholds_from(
                agreed,
                conf,
                gold,
                len(self.labels),
                rule.paper() if rule.reads_target else rule,
                background=self.background,
                names=self.labels,
            )
            if rule.reads_target:
                th.rule = rule.name
                th.notes.append(
                    f"{rule.name}: the class thresholds come from the target rows (filter.json)"
                )
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
                    "forward_seconds": forward,  # the student on D_src; the rest: arithmetic
                }
            )
            self.say(f"round {r}: {alpha_line(base, rule, self.labels, th.alpha)}")
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
            write_tensors(
                rdir / SOURCE_OK_FILE, {k: torch.from_numpy(v) for k, v in outputs.items()}, {}
            )
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")  # last: marks it done

        def read():
            record = read_json(path)
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
        if not distributed.rank0_view(path.is_file()):
            job = RoundFilter(self, r, student, threshold, source_out, source_keep, probs)
            passes = [job.fill, job.set_quota, job.relabel] if job.quota else [job.fill]
            self.rows_file(path, job.specs(), {}, passes, job.finish)
        saved = open_safetensors(path)
        findings = read_json(rdir / "filter.json")["collapse"]
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
        meta = read_json(folder / "meta.json")
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
            f"hold. Settings that may avoid it: {remedies(cfg)}; selftrain.on_collapse = "
            '"skip_hard" keeps the soft student as the round\'s result, "error" stops here'
        )
        self.collapsed.append({"round": r, "findings": findings, "action": cfg.on_collapse})
        if cfg.on_collapse == "error" and cfg.hard_steps:  # soft only: no hard step to stop
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


def soft_lost_message(cfg, lost: list[str], record: dict) -> str:
    """What to say when a soft step's student lost classes its teacher predicts: a student that
    learned "an entity" but not which kind, whose pseudo labels cannot hold those classes; and
    the settings that change it, the measured one first."""
    share = record.get("entity_agreement")
    kept = f" (it follows the teacher on {100 * share:.1f}% of its entity rows)" if share else ""
    fixes = []
    if cfg.soft_loss == "mse":
        fixes.append(
            'selftrain.soft_loss = "kl" (the MSE of probabilities barely moves a class the '
            "student gives near-zero probability; measured on multilingual-e5-small, 612-776 "
            "soft steps from the Base Model: kl kept 91-93% of the teacher's entity rows, mse "
            "21-24%, lab/README.md)"
        )
    if cfg.student_init == "base":
        fixes.append('selftrain.student_init = "teacher" (the student starts from its teacher)')
    fixes.append("more soft steps (selftrain.soft.epochs) or a higher selftrain.soft.head_lr_scale")
    return (
        f"the soft student predicts none of {', '.join(lost)}, which its teacher gives{kept}. "
        "Settings that may avoid it: " + "; ".join(fixes)
    )


def alpha_line(base, rule: PseudoRule, labels: list[str], alpha: list[float]) -> str:
    """The threshold step's line: the paper's alpha and how it was chosen, and another rule's
    class thresholds."""
    line = f"alpha = {base.alpha} ({base.method}" + (f"; {base.fallback}" if base.fallback else "")
    if rule.name != PseudoRule.name:  # another rule than the paper's
        return f"{line}); {rule.describe()}: {class_alphas(labels, alpha)}"
    return line + ")"


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
                torch.full_like(agreed, -1)
                if self.quota
                else pseudo_label(logits, a.to(logits.device))[0]
            )
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
            torch.from_numpy(src["agreed"]),
            torch.from_numpy(src["confidence"]),
            torch.from_numpy(run.gold),
            len(run.labels),
            self.rule,
            background=run.background,
            names=run.labels,
            target=(
                torch.from_numpy(np.asarray(arrays["agreed"])),
                torch.from_numpy(np.asarray(arrays["confidence"])),
            ),
        )
        self.alpha[:] = th.alpha
        self.classes[:] = th.classes
        run.say(f"round {self.r}: {self.rule.describe()}: {class_alphas(run.labels, th.alpha)}")

    def kept_source(self) -> np.ndarray:
        """D_keep after this round: the rows kept so far that pass the source filter."""
        run, src = self.run, self.source_out
        ok = source_ok(
            torch.from_numpy(src["agreed"]),
            torch.from_numpy(src["confidence"]),
            torch.from_numpy(src["predicted"]),
            torch.from_numpy(run.gold),
            torch.from_numpy(self.alpha),
            run.cfg.source_filter,
        ).numpy()
        unit_ok = ok if run.cfg.filter_unit == "word" else whole_units(ok, run.src_units)
        return self.source_keep & unit_ok

    def record(self, arrays, keep: np.ndarray) -> dict:
        """filter.json: the rule, the thresholds, the source and target counts, the student's
        fidelity to its teacher, the class histograms and the collapse findings."""
        run, cfg, before = self.run, self.run.cfg, int(self.source_keep.sum())
        counts = {
            "round": self.r,
            "filter_unit": cfg.filter_unit,
            "source_filter": cfg.source_filter,
            "pseudo_rule": self.rule.name,
            "alpha": self.threshold["alpha"],
            "class_alpha": dict(zip(run.labels, self.alpha.tolist(), strict=True)),
            "classes": self.classes,
            "source_rows": len(run.gold),
            "source_rows_before": before,
            "source_rows_kept": int(keep.sum()),
            "source_rows_removed": before - int(keep.sum()),
            "source_units_kept": int(np.unique(run.src_units[keep]).size),
            **target_counts(run.tgt, arrays["pseudo"], arrays["agreed"] >= 0, run.labels),
            **fidelity_counts(self.probs, arrays["student"], run.labels, run.background),
            "source_distribution": distribution(run.gold, run.labels),  # gold, all rows
            "source_kept_distribution": distribution(run.gold[keep], run.labels),
        }
        counts["collapse"] = check_collapse(
            counts["pseudo_distribution"],
            counts["student_distribution"],
            counts["source_distribution"],
            counts["source_kept_distribution"],
            None if run.background is None else run.labels[run.background],
        )
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
