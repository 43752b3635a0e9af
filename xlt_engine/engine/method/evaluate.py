"""Stages ``evaluate`` and ``predict``.

``evaluate``: a fine-tuned task model (or, for sequence tasks, the mean of several: an
ensemble) on one test file per language (the source language too):
accuracy, or entity-level micro F1 in seqeval's default mode and strict IOB2; the transfer gap
of each target language (source score minus its score). Writes ``results.json`` and
``results.md`` (a Markdown table) into ``out``, and ``eval-wall.json``: the seconds spent loading
the model(s), reading and encoding the files, in the forward-only passes and scoring.

``predict``: predictions for one file. CoNLL input -> the same file with the predicted tag
appended to every token line (so ``word ... gold predicted``, conlleval's layout); any other
format -> JSON lines ``{"line", "label", "probs"}``, one per example of the file read as
unlabeled data (so nothing is dropped: CLS-10 3-star reviews get a prediction too), ``line``
its line in the input. Written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from xlt_engine.data.conll import DOCSTART
from xlt_engine.data.examples import decode_text, read_bytes, split_columns, split_lines
from xlt_engine.data.task import encode, read_task_file, task_kind
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.engine.method.settings import TEST_SPLIT, Split, TaskSettings, check_limit
from xlt_engine.engine.train.distributed import resolve_device
from xlt_engine.engine.train.inference import (
    Parts,
    check_task_model,
    ensemble_probs,
    evaluate_model,
    inference_dtype,
    predict_logits,
    predicted_labels,
    score,
)
from xlt_engine.engine.train.optim import precision_name
from xlt_engine.fileio import atomic_write_text, write_results
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import load_task_model
from xlt_engine.outputs import claim_output, record_output

EVAL_WALL = "eval-wall.json"  # in evaluate's folder: where its time went (seconds by part)


def check_ensemble(ensemble: tuple[str, ...], format: str) -> None:
    """An ensemble's members are task models of ``format``'s kind, and it is a sequence task."""
    for path in ensemble:
        check_task_model(path, format)
    if ensemble and task_kind(format) != "sequence":
        raise ValueError(
            f"ensemble: the mean of several models is for sequence tasks; {format!r} is token "
            "classification"
        )


def load_members(cfg) -> list[tuple]:
    """(model, tokenizer) of ``cfg.model`` and each of ``cfg.ensemble``, checked to predict
    the same labels in the same order."""
    device = resolve_device(cfg.device)
    members = [
        (load_task_model(m, device=device), load_tokenizer(m)) for m in (cfg.model, *cfg.ensemble)
    ]
    labels = members[0][0].labels
    for path, (m, _) in zip(cfg.ensemble, members[1:], strict=True):
        if list(m.labels) != list(labels):
            raise ValueError(
                f"ensemble: {path} predicts {list(m.labels)}, {cfg.model} {list(labels)}"
            )
    return members


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(TaskSettings):
    model: str  # a task model folder (finetune's out/model)
    tests: dict[str, str]  # language -> labeled test file
    out: str
    source: str | None = None  # a language of ``tests``: the transfer gap is measured from it
    extra: dict[str, str] = field(default_factory=dict)  # written into results.json as is
    # more task models (sequence tasks): the prediction is the mean of every model's
    # mean-of-voters probabilities, each model reading the text with its own tokenizer (e.g.
    # co-training's two views, ``cotrain-mean``)
    ensemble: tuple[str, ...] = ()
    max_test: int | None = None  # examples sampled from each file of ``tests`` (sample_seed),
    # None: all (``data.max_test``, or ``data.max_dev`` when they are the dev files)
    sample_seed: int = 0
    split: Split = TEST_SPLIT  # what the files of ``tests`` are (written into results.json)

    def __post_init__(self):
        super().__post_init__()
        check_limit("max_test", self.max_test)
        if not self.tests:
            raise ValueError("tests: give at least one language = test file")
        for lang, path in self.tests.items():
            if not Path(path).is_file():
                raise ValueError(f"tests.{lang}: {path}: no such file")
        if self.source is not None and self.source not in self.tests:
            raise ValueError(f"source: {self.source!r} is not one of tests {sorted(self.tests)}")
        check_task_model(self.model, self.format)
        check_ensemble(self.ensemble, self.format)


def markdown_table(results: dict) -> str:
    ner = results["metric"] == "entity_f1"
    head = ["language", "F1" if ner else "accuracy"] + (["strict F1"] if ner else []) + ["gap"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if results.get("split", TEST_SPLIT) != TEST_SPLIT:
        rows.insert(0, f"on the {results['split']} files\n")
    for lang, s in results["languages"].items():
        gap = results["transfer_gap"].get(lang)
        cells = [
            lang + (" (source)" if lang == results["source"] else ""),
            f"{100 * s['score']:.2f}",
        ]
        if ner:
            cells.append(f"{100 * s['strict_f1']:.2f}")
        cells.append("" if gap is None else f"{100 * gap:.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    if results.get("mean_target") is not None:
        cells = ["mean (targets)", f"{100 * results['mean_target']:.2f}"] + ([""] if ner else [])
        cells.append("" if results["mean_gap"] is None else f"{100 * results['mean_gap']:.2f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def run_evaluate(cfg: EvaluateConfig, resume: bool = False, echo=print, progress=None) -> dict:
    """Score ``cfg``'s model(s) on each test file into ``results.json`` (the evaluate stage's
    runner; ``resume`` and ``progress`` are in its signature for the registry, unused: an
    evaluation keeps no checkpoint and prints no bar)."""
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    wall: dict[str, float] = {}  # where the time went: EVAL_WALL
    clock = Parts(wall)
    with clock("model load"):
        members = load_members(cfg)
    labels = members[0][0].labels
    scores = {}
    for lang, path in cfg.tests.items():
        with clock("reading"):
            data = read_task_file(
                path, cfg.format, False, cfg.max_test, cfg.sample_seed, cfg.encoding
            )
        if len(members) == 1:
            model, tok = members[0]
            scores[lang] = evaluate_model(
                model, data, tok, cfg.max_len, device, cfg.eval_max_tokens, wall=wall
            )
        else:
            probs = ensemble_probs(members, data, cfg.max_len, device, cfg.eval_max_tokens, wall)
            with clock("scoring"):
                scores[lang] = score(data, [labels[i] for i in probs.argmax(-1).tolist()])
        scores[lang]["file"] = str(path)
        if echo:
            echo(f"{lang}: {scores[lang]['metric']} {scores[lang]['score']:.4f} ({path})")
    targets = [lang for lang in scores if lang != cfg.source]
    gap = {}
    if cfg.source is not None:
        gap = {t: scores[cfg.source]["score"] - scores[t]["score"] for t in targets}
    results = {
        "model": str(cfg.model),
        **({"ensemble": [str(cfg.model), *cfg.ensemble]} if cfg.ensemble else {}),
        "metric": next(iter(scores.values()))["metric"],
        "source": cfg.source,
        "split": cfg.split,
        "languages": scores,
        "transfer_gap": gap,
        "mean_target": (sum(scores[t]["score"] for t in targets) / len(targets))
        if targets
        else None,
        "mean_gap": (sum(gap.values()) / len(gap)) if gap else None,
        "precision": precision_name("auto", inference_dtype(members[0][0], device)),
        **cfg.extra,
    }
    write_results(out, "results", results, markdown_table(results), echo)
    parts = {k: round(v, 3) for k, v in wall.items()}
    atomic_write_text(out / EVAL_WALL, json.dumps(parts, indent=2) + "\n")
    return results


@dataclass(frozen=True, kw_only=True)
class PredictConfig(TaskSettings):
    model: str  # a task model folder
    input: str
    output: str  # a new file, or one predict wrote (``outputs.claim_output``)
    ensemble: tuple[str, ...] = ()  # as EvaluateConfig's: the mean of the models' probabilities
    reads: tuple[str, ...] = ()  # more files the caller reads (its config): never the output
    overwrite: bool = False  # replace an existing output that predict did not write

    def __post_init__(self):
        super().__post_init__()
        if not Path(self.input).is_file():
            raise ValueError(f"input: {self.input}: no such file")
        self.claim()
        check_task_model(self.model, self.format)
        check_ensemble(self.ensemble, self.format)

    def claim(self) -> None:
        """The output may be written (``outputs.claim_output``): never the input, a model
        folder or a file the caller reads."""
        reads = (self.input, self.model, *self.ensemble, *self.reads)
        claim_output(self.output, "output", "predict", reads=reads, overwrite=self.overwrite)


def _conll_with_predictions(data, tags: list[list[str]]) -> str:
    """The input file's lines, each token line with its predicted tag appended."""
    text = decode_text(data.path, read_bytes(data.path, "a CoNLL file"), data.conll.encoding)
    flat = iter([t for sent in tags for t in sent])
    lines = []
    for line in split_lines(text, data.path):
        fields = split_columns(line)
        if fields and fields[0] != DOCSTART:
            line = line.rstrip(" \t") + " " + next(flat)
        lines.append(line)
    if next(flat, None) is not None:
        raise ValueError(f"{data.path}: more predictions than token lines")
    return "\n".join(lines) + "\n"


def run_predict(cfg: PredictConfig, resume: bool = False, echo=print, progress=None) -> Path:
    """Label ``cfg.input`` with the model into ``cfg.output`` (the predict stage's runner;
    ``resume`` and ``progress`` unused, as for ``run_evaluate``)."""
    device = resolve_device(cfg.device)
    members = load_members(cfg)
    model, tok = members[0]
    token = task_kind(cfg.format) == "token"
    data = read_task_file(cfg.input, cfg.format, unlabeled=not token, encoding=cfg.encoding)
    if token:  # a token input's tags are kept as the gold column only (CoNLL)
        data.labels = None
    if len(members) > 1:  # sequence tasks: the mean of the members' probabilities
        probs = ensemble_probs(members, data, cfg.max_len, device, cfg.eval_max_tokens).numpy()
        preds = [model.labels[i] for i in probs.argmax(-1).tolist()]
    else:
        enc = encode(data, tok, model.labels, cfg.max_len)
        logits = predict_logits(
            model, enc, tok.pad_id, device, cfg.eval_max_tokens, inference_dtype(model, device)
        )
        preds = predicted_labels(enc, logits, model.labels)
        probs = VotersModule.probs(logits).cpu().numpy() if not token else None
    out = Path(cfg.output)
    cfg.claim()  # again: the file may have appeared while the models ran
    out.parent.mkdir(parents=True, exist_ok=True)
    if token and data.conll is not None:  # the CoNLL file with a predictions column
        atomic_write_text(out, _conll_with_predictions(data, preds))
        n = sum(len(p) for p in preds)
    elif token:  # another token format: one JSON line per sentence, its words and tags
        rows = [
            json.dumps({"line": line, "words": words, "labels": tags}, ensure_ascii=False)
            for line, words, tags in zip(data.lines, data.inputs, preds, strict=True)
        ]
        atomic_write_text(out, "\n".join(rows) + "\n")
        n = sum(len(p) for p in preds)
    else:
        rows = []
        for i, (line, label) in enumerate(zip(data.lines, preds, strict=True)):
            p = {name: round(float(x), 6) for name, x in zip(model.labels, probs[i], strict=True)}
            rows.append(json.dumps({"line": line, "label": label, "probs": p}))
        atomic_write_text(out, "\n".join(rows) + "\n")
        n = len(preds)
    record_output(out, "predict")
    if echo:
        echo(f"wrote {n} predictions to {out}")
    return out
