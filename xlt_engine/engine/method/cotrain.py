"""Stage ``cotrain``: co-training of two views (paper 003, Algorithm 1), sequence tasks.

Two classifiers, each an encoder with a plain linear head (``model.head = "linear"``; nothing
frozen unless ``freeze_layers`` / ``freeze_embeddings`` say so: the paper fine-tunes whole
models): the LM
view (``model``: mBERT, XLM-R; ``lm_representation``, default [CLS]) and the embedding view
(``embedding_model``: LaBSE, e5; ``emb_representation``, default the mean). Both start on the
labeled source set D (n examples) and share the unlabeled target pool U. Iteration k:

1. fine-tune each view on its own labeled set (``train``: K epochs), from its pre-trained encoder
   when ``reinit`` (DESIGN's choice), else from its model of iteration k - 1;
2. predict U with each view: label and confidence (the top probability);
3. (not after the last iteration, whose exchange no model would read) for each view, its
   candidates are the rows of *its* pool with confidence > ``threshold``; draw
   min(round(``subset_fraction`` x n), candidates) of them at random (seeded by the seed, k and
   the view), remove them from that view's pool for good and add them, with that view's
   labels, to the *other* view's labeled set.

With ``exchange = "self"`` each view's chosen rows go to its own labeled set instead: self-training
of each view alone, the baseline paper 003 compares co-training with.

After the last iteration each view is scored on the dev file, and the final prediction is
``predict_with``: the LM view, the embedding view, or the mean of their probabilities.

Folders (``out/iter-<k>/``): ``lm/`` and ``emb/`` (each a finetune run: ``train.jsonl`` it read,
``model/``, checkpoints), ``predictions.safetensors`` (each view's probabilities [|U|, C] and the
pools before the exchange), ``exchange.json`` (the chosen rows, their labels and class counts,
each view's dev accuracy) and ``state.safetensors`` (the pools and the labeled additions after
the exchange), written last: it marks the iteration done. A killed run resumes at the first
iteration without it, and a view's fine-tuning inside it resumes from its own checkpoints, so a
resumed run ends where an uninterrupted one does. Inference passes are split over the ranks
under torchrun (``predict_logits(split_ranks=True)``); rank 0 writes. ``dev.json`` (the final
prediction's dev accuracy) and then ``cotrain.json`` (the final models, ``predict_with``) end the
stage.

``lay_down_iteration1`` links a finished run's iteration-1 views into a new folder (the
experiment does, for a folder whose iteration 1 would be the same: e.g. ``cotrain/``'s for
``cotrain-self/``; ``iter-1/<view>/shared.json`` names it); the run, resumed, finds them done.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save as save_numpy

from xlt_engine.data.task import encode, label_set, read_task_file, task_kind
from xlt_engine.data.tokenizer import load_tokenizer
from xlt_engine.engine.method.finetune import FinetuneConfig, run_finetune
from xlt_engine.engine.method.settings import CotrainSettings, TaskSettings, check_limit
from xlt_engine.engine.train import distributed
from xlt_engine.engine.train.checkpoints import latest_checkpoint
from xlt_engine.engine.train.distributed import rank_world
from xlt_engine.engine.train.inference import inference_dtype, predict_logits
from xlt_engine.engine.train.metrics import accuracy, by_name, label_counts
from xlt_engine.fileio import atomic_folder, atomic_write_bytes, atomic_write_text, link_or_copy
from xlt_engine.inputs import read_json
from xlt_engine.model.heads import VotersModule
from xlt_engine.model.task import load_task_model

VIEWS = ("lm", "emb")
MARKER = "cotrain.json"  # the finished stage's summary, written last


@dataclass(frozen=True, kw_only=True)
class CotrainConfig(CotrainSettings, TaskSettings):
    model: str  # the LM view's pre-trained encoder folder
    embedding_model: str  # the embedding view's
    train_file: str  # labeled source data (D)
    unlabeled_file: str  # the target pool (U), read without its labels
    out: str
    dev_file: str | None = None  # labeled target dev data: each view's accuracy per iteration
    labels: tuple[str, ...] | None = None  # None: sorted from the train file
    max_train: int | None = None  # examples sampled from train_file (train.seed)
    max_unlabeled: int | None = None
    max_dev: int | None = None

    def __post_init__(self):
        CotrainSettings.__post_init__(self)
        TaskSettings.__post_init__(self)
        for name in ("max_train", "max_unlabeled", "max_dev"):
            check_limit(name, getattr(self, name))
        if task_kind(self.format) != "sequence":
            raise ValueError(
                f"format: co-training classifies sequences; {self.format!r} is token classification"
            )
        for name in ("train_file", "unlabeled_file", "dev_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: {path}: no such file")
        for name in ("model", "embedding_model"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_dir():
                raise ValueError(f"{name}: {path}: no such folder")


@dataclass
class CotrainResult:
    models: dict[str, Path]  # the last iteration's model of each view
    iterations: list[dict]  # exchange.json of each iteration
    dev: dict | None  # the final prediction's dev score (predict_with)


def _records(data, rows: np.ndarray, labels: list[str]) -> list[dict]:
    """JSONL records of ``data``'s examples ``rows`` labeled ``labels``."""
    out = []
    for i, label in zip(rows.tolist(), labels, strict=True):
        rec = {"text": data.inputs[i], "label": label}
        if data.pairs is not None:
            rec["text_pair"] = data.pairs[i]
        out.append(rec)
    return out


def _view_probs(folder: Path, enc, pad_id: int, cfg: CotrainConfig, device) -> np.ndarray:
    """Mean-of-voters probabilities [items, C] (fp32) of the task model in ``folder`` on the
    encoded items ``enc`` (the work split over the ranks)."""
    model = load_task_model(folder, device=device)
    amp = inference_dtype(model, device)
    logits = predict_logits(model, enc, pad_id, device, cfg.eval_max_tokens, amp, split_ranks=True)
    return VotersModule.probs(logits.float()).cpu().numpy().astype(np.float32)


SHARED = "shared.json"  # in a view's folder: the folder its model was taken from


def lay_down_iteration1(src: Path, out: Path) -> str | None:
    """The finished iteration-1 views of the co-training folder ``src`` (each view's
    ``model/``, training data, log and dev score) linked into ``out``'s ``iter-1/`` where
    ``out`` has not trained that view itself; ``shared.json`` names where each came from.
    The experiment vouches that they are what this run would train (the same settings up to
    the first exchange). Returns what it did (None: nothing)."""
    taken = []
    for v in VIEWS:
        theirs, mine = src / "iter-1" / v, out / "iter-1" / v
        if not (theirs / "model" / "task.json").is_file() or (mine / "model").exists():
            continue
        if latest_checkpoint(mine) is not None:  # its own training under way
            continue
        mine.mkdir(parents=True, exist_ok=True)
        for name in ("train.jsonl", "metrics.jsonl", "dev.json"):
            if (theirs / name).is_file() and not (mine / name).exists():
                link_or_copy(theirs / name, mine / name)
        atomic_write_text(mine / SHARED, json.dumps({"shared_from": str(theirs)}) + "\n")
        with atomic_folder(mine / "model") as tmp:  # last: the view's marker
            for f in sorted((theirs / "model").iterdir()):
                link_or_copy(f, tmp / f.name)
        taken.append(v)
    if not taken:
        return None
    return f"cotrain iteration 1: the {' and '.join(taken)} view(s) taken from {src}"


def draw(
    pool: np.ndarray, conf: np.ndarray, threshold: float, size: int, seed: int, it: int, view: int
) -> np.ndarray:
    """Rows of ``pool`` (bool [|U|]) whose confidence is above ``threshold``: at most ``size``
    of them, drawn at random from (seed, iteration, view), in increasing order."""
    candidates = np.flatnonzero(pool & (conf > threshold))
    if len(candidates) <= size:
        return candidates
    rng = np.random.default_rng([seed, it, view])
    return np.sort(rng.choice(candidates, size, replace=False))


def _view_config(
    cfg: CotrainConfig, v: str, init: str, folder: Path, labels, train_file
) -> FinetuneConfig:
    """The fine-tuning of view ``v`` in ``folder / v``: a linear head on its representation."""
    reps = {"lm": cfg.lm_representation, "emb": cfg.emb_representation}
    return FinetuneConfig(
        batch_size=cfg.batch_size,
        max_tokens=cfg.max_tokens,
        train=cfg.train,
        model=init,
        train_file=str(train_file),
        out=str(folder / v),
        format="jsonl",
        labels=tuple(labels),
        head="linear",
        representation=reps[v],
        freeze_layers=cfg.freeze_layers,
        freeze_embeddings=cfg.freeze_embeddings,
        max_len=cfg.max_len,
        device=cfg.device,
        eval_max_tokens=cfg.eval_max_tokens,
    )


def _check_shared(view: Path, text: str, echo) -> None:
    """A view laid down from another run whose training data are not this run's (its settings
    matched, its data did not) is dropped, to be trained here."""
    if (view / "train.jsonl").is_file() and (view / "train.jsonl").read_text("utf-8") == text:
        return
    for name in ("model", SHARED):
        path = view / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if echo:
        echo(f"cotrain: {view}: the view taken from another run read other data; trained here")


def _fit_view(cfg: CotrainConfig, v: str, ft: FinetuneConfig, echo, progress) -> Path:
    """View ``v``'s model of an iteration: found finished (trained by this run, or laid down
    from another: ``lay_down_iteration1``), resumed, or fine-tuned."""
    folder = Path(ft.out)
    if not distributed.rank0_view((folder / "model" / "task.json").is_file()):  # its marker
        again = latest_checkpoint(folder) is not None
        run_finetune(ft, resume=again, echo=echo, progress=progress)
    return folder / "model"


def _exchange(cfg: CotrainConfig, it: int, probs: dict, state: tuple, labels, size: int):
    """Each view's confident pool rows (a draw of at most ``size``) go with its predicted labels
    to the other view (``exchange = "cross"``) or to itself; returns the new (pools, given) and
    the record of what moved."""
    pools, given = state
    new_pools, new_given, record = {v: pools[v].copy() for v in VIEWS}, dict(given), {}
    for k, v in enumerate(VIEWS):
        other = VIEWS[1 - k] if cfg.exchange == "cross" else v
        conf, pred = probs[v].max(-1), probs[v].argmax(-1)
        chosen = draw(pools[v], conf, cfg.threshold, size, cfg.train.seed, it, k)
        new_pools[v][chosen] = False
        rows, ids = new_given[other]
        new_given[other] = (
            np.concatenate([rows, chosen]).astype(np.int64),
            np.concatenate([ids, pred[chosen]]).astype(np.int64),
        )
        record[f"{v}->{other}"] = {
            "candidates": int((pools[v] & (conf > cfg.threshold)).sum()),
            "chosen": len(chosen),
            "rows": chosen.tolist(),
            "labels": [labels[i] for i in pred[chosen].tolist()],
            "distribution": by_name(label_counts(pred[chosen], len(labels)), labels),
        }
    return (new_pools, new_given), record


def _save_iteration(folder: Path, probs: dict, before: dict, record: dict, state: tuple) -> None:
    """Rank 0: the predictions, the exchange record, then the state (last: it marks the
    iteration done)."""
    pools, given = state
    tensors = {f"{v}.probs": probs[v] for v in VIEWS}
    tensors |= {f"{v}.pool": before[v].astype(np.uint8) for v in VIEWS}
    atomic_write_bytes(folder / "predictions.safetensors", save_numpy(tensors))
    atomic_write_text(folder / "exchange.json", json.dumps(record, indent=1) + "\n")
    saved = {f"{v}.pool": pools[v].astype(np.uint8) for v in VIEWS}
    for v in VIEWS:
        saved[f"{v}.rows"], saved[f"{v}.labels"] = given[v]
    atomic_write_bytes(folder / "state.safetensors", save_numpy(saved))


def _finish(cfg: CotrainConfig, out: Path, records: list, models: dict) -> dict | None:
    """dev.json (the final prediction's dev accuracy), then the stage's marker."""
    final, rank = None, rank_world()[0]
    if records and "dev_accuracy" in records[-1]:
        final = {
            "metric": "accuracy",
            "predict_with": cfg.predict_with,
            "score": records[-1]["dev_accuracy"][cfg.predict_with],
        }
        if rank == 0:
            atomic_write_text(out / "dev.json", json.dumps(final, indent=2) + "\n")
    if rank == 0:  # last: it marks the stage finished
        summary = {
            "models": {v: str(p) for v, p in models.items()},
            "predict_with": cfg.predict_with,
            "iterations": cfg.iterations,
            "dev": final,
        }
        atomic_write_text(out / MARKER, json.dumps(summary, indent=2) + "\n")
    distributed.barrier()
    return final


def run_cotrain(
    cfg: CotrainConfig, resume: bool = False, echo=print, progress=None
) -> CotrainResult:
    out = Path(cfg.out)
    device = distributed.init(cfg.device)
    rank, _ = rank_world()
    seed = cfg.train.seed
    source = read_task_file(cfg.train_file, cfg.format, False, cfg.max_train, seed)
    pool_data = read_task_file(cfg.unlabeled_file, cfg.format, True, cfg.max_unlabeled, seed)
    dev = (
        read_task_file(cfg.dev_file, cfg.format, False, cfg.max_dev, seed) if cfg.dev_file else None
    )
    labels = list(cfg.labels) if cfg.labels else label_set([source])
    n, m = len(source), len(pool_data)
    size = max(1, round(cfg.subset_fraction * n))
    base = _records(source, np.arange(n), source.labels)
    # the state: each view's pool and the rows (and labels) it has been given
    state = (
        {v: np.ones(m, dtype=bool) for v in VIEWS},
        {v: (np.zeros(0, np.int64), np.zeros(0, np.int64)) for v in VIEWS},
    )
    records: list[dict] = []
    models: dict[str, Path] = {}
    encoders = {"lm": cfg.model, "emb": cfg.embedding_model}
    toks = {v: load_tokenizer(encoders[v]) for v in VIEWS}  # fine-tuning keeps the tokenizer
    # the pool and dev encoded once per view (each view has its own tokenizer)
    pool_enc = {v: encode(pool_data, toks[v], labels, cfg.max_len) for v in VIEWS}
    dev_enc = {v: encode(dev, toks[v], labels, cfg.max_len) for v in VIEWS} if dev else None
    if not resume and (out / "iter-1").exists():
        raise ValueError(
            f"{out} holds an earlier co-training run: resume it (--resume) or choose another folder"
        )
    for it in range(1, cfg.iterations + 1):
        folder = out / f"iter-{it}"
        if distributed.rank0_view((folder / "state.safetensors").is_file()):
            st = load_numpy(folder / "state.safetensors")
            state = (
                {v: st[f"{v}.pool"].astype(bool) for v in VIEWS},
                {v: (st[f"{v}.rows"], st[f"{v}.labels"]) for v in VIEWS},
            )
            records.append(read_json(folder / "exchange.json"))
            models = {v: folder / v / "model" for v in VIEWS}
            continue
        for v in VIEWS:
            rows, ids = state[1][v]
            train_file = folder / v / "train.jsonl"
            extra = _records(pool_data, rows, [labels[i] for i in ids.tolist()])
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in base + extra)
            if rank == 0 and (folder / v / SHARED).is_file():
                _check_shared(folder / v, text, echo)
            if rank == 0:
                train_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(train_file, text)
            distributed.barrier()
            init = encoders[v] if cfg.reinit or it == 1 else str(models[v])
            ft = _view_config(cfg, v, init, folder, labels, train_file)
            models[v] = _fit_view(cfg, v, ft, echo, progress)
        probs = {v: _view_probs(models[v], pool_enc[v], toks[v].pad_id, cfg, device) for v in VIEWS}
        record: dict = {"iteration": it, "labeled": {v: n + len(state[1][v][0]) for v in VIEWS}}
        if dev is not None:
            dev_probs = {
                v: _view_probs(models[v], dev_enc[v], toks[v].pad_id, cfg, device) for v in VIEWS
            }
            dev_probs["mean"] = (dev_probs["lm"] + dev_probs["emb"]) / 2
            record["dev_accuracy"] = {
                k: accuracy(dev.labels, [labels[i] for i in p.argmax(-1).tolist()])
                for k, p in dev_probs.items()
            }
        record["exchange"] = {}
        before = dict(state[0])  # the pools this iteration predicted (kept with the predictions)
        if it < cfg.iterations:
            state, record["exchange"] = _exchange(cfg, it, probs, state, labels, size)
        if rank == 0:
            _save_iteration(folder, probs, before, record, state)
        distributed.barrier()
        records.append(record)
        if echo and rank == 0:
            moved = {k: x["chosen"] for k, x in record["exchange"].items()}
            echo(f"cotrain iteration {it}: dev {record.get('dev_accuracy')}, moved {moved}")
    return CotrainResult(models, records, _finish(cfg, out, records, models))
